"""Progress for long library steps, shown by the CLI: library code never prints.

A function that runs long takes ``bars``: a factory of progress bars with tqdm's interface,
``bars(desc=..., total=..., unit=...)`` returning an object with ``update(n)`` and
``close()`` (the CLI passes ``tqdm.tqdm`` itself). The default, ``no_bars``, shows nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Bars = Callable[..., Any]


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def no_bars(**_kwargs) -> _NoBar:
    return _NoBar()


def build_callback(bars: Bars, *, texts: int | None = None) -> Callable:
    """A ``build_database(progress=...)`` callback drawing one bar per build stage.

    texts: how many corpus texts the user gave, if known. The recording stage runs each
    text and an edited copy of some of them (training pairs for the key), so its total is
    larger; the bar says both so its count matches what the user gave.
    """
    state: dict[str, tuple[Any, int]] = {}

    def show(p) -> None:
        bar, done = state.get(p.stage, (None, 0))
        if bar is None:
            bar = bars(desc=_build_label(p.stage, p.total, texts), total=p.total, unit="run" if
                       p.stage == "record" else "layer", leave=True)
        bar.update(p.done - done)
        state[p.stage] = (bar, p.done)
        if p.done >= p.total:
            bar.close()
    return show


def _build_label(stage: str, total: int, texts: int | None) -> str:
    if stage != "record":
        return "training the key embedding of each layer"
    if texts is None or texts >= total:
        return "recording attention"
    return f"recording attention ({texts} texts + {total - texts} edited copies for training)"
