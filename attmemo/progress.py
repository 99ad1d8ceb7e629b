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

    texts: how many corpus texts the user gave, if known. The recording stage also runs an
    edited copy of some texts (training pairs for the key), so the store's own count of runs
    is larger than the corpus; it reports once per corpus text, so the bar counts those calls
    and its count is the user's. Training counts layers.
    """
    state: dict[str, list] = {}   # stage -> [bar, steps shown]

    def show(p) -> None:
        record = p.stage == "record"
        total = texts if record and texts is not None else p.total
        if p.stage not in state:
            desc = "recording" if record else "training key embeddings"
            state[p.stage] = [bars(desc=desc, total=total, unit="texts" if record else "layers"), 0]
        entry = state[p.stage]
        step = entry[1] + 1 if record and texts is not None else p.done
        entry[0].update(step - entry[1])
        entry[1] = step
        if p.done >= p.total:
            entry[0].close()
    return show
