"""Texts to build a database from: a .txt file (one text per line), a .jsonl file
(one object with a "text" field per line, and an optional "label", which
calibration uses) or a folder of .txt files (one text per file, searched
recursively, in sorted path order).

.txt files are read as UTF-8; bytes that are not are replaced with U+FFFD and a
warning names the lines. A .jsonl file must be UTF-8 JSON throughout: a line
that is not stops the build with its line number.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

from .manifest import MemoDatabaseError

log = logging.getLogger(__name__)

# What errors="surrogateescape" turns undecodable bytes into.
_ESCAPED = re.compile("[\udc80-\udcff]")
# Files already warned about: a build reads its corpus more than once.
_warned: set[tuple[Path, tuple[int, ...]]] = set()


def iter_texts(path: str | Path, *, limit: int | None = None) -> Iterator[str]:
    """Yield the non-empty texts of ``path`` in order, at most ``limit`` of them."""
    for text, _ in iter_records(path, limit=limit):
        yield text


def iter_records(path: str | Path, *, limit: int | None = None) -> Iterator[tuple[str, str | None]]:
    """Yield (text, label) of the non-empty texts of ``path``; label is None unless a .jsonl line has one."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such corpus; give a .txt, a .jsonl or a folder of .txt files.")
    count = 0
    for text, label in _records(path):
        if limit is not None and count >= limit:
            return
        if text.strip():
            count += 1
            yield text.strip(), label


def _records(path: Path) -> Iterator[tuple[str, str | None]]:
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise MemoDatabaseError(f"{path}: the folder has no .txt files; put one text per .txt file in it.")
        for file in files:
            yield "".join(_txt_lines(file)), None
    elif path.suffix == ".jsonl":
        yield from _jsonl(path)
    elif path.suffix == ".txt":
        yield from ((line, None) for line in _txt_lines(path))
    else:
        raise MemoDatabaseError(f"{path}: unknown corpus format; use a .txt (one text per line), "
                         "a .jsonl with a \"text\" field, or a folder of .txt files.")


def _txt_lines(path: Path) -> Iterator[str]:
    """The lines of a text file as UTF-8, undecodable bytes replaced (and warned about once per file)."""
    bad: list[int] = []
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            for number, line in enumerate(f, 1):
                if _ESCAPED.search(line):
                    bad.append(number)
                    line = line.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                yield line
    finally:
        if bad and (path.resolve(), tuple(bad)) not in _warned:
            _warned.add((path.resolve(), tuple(bad)))
            shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
            log.warning("%s: %d %s not valid UTF-8 (%s %s); the undecodable bytes were replaced with U+FFFD.",
                        path, len(bad), *(("line is", "line") if len(bad) == 1 else ("lines are", "lines")), shown)


def _jsonl(path: Path) -> Iterator[tuple[str, str | None]]:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise MemoDatabaseError(f"{path}:{number}: not valid UTF-8 (byte {raw[error.start]:#04x} at column "
                                        f"{error.start + 1}); save the file as UTF-8.") from error
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                reason = (f"{error.msg.removesuffix(' at')} at column {error.colno}"
                          if isinstance(error, json.JSONDecodeError) else str(error))
                raise MemoDatabaseError(f"{path}:{number}: not JSON ({reason}); "
                                        "write one JSON object per line.") from error
            if not isinstance(record, dict) or "text" not in record:
                raise MemoDatabaseError(f"{path}:{number}: not a JSON object with a \"text\" field; "
                                        "write each line as {\"text\": \"...\"}.")
            text = record["text"]
            if not isinstance(text, str):
                raise MemoDatabaseError(f"{path}:{number}: \"text\" is not a string but {type(text).__name__}; "
                                        "give each text as a JSON string.")
            label = record.get("label")
            yield text, None if label is None else str(label)
