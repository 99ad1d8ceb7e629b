"""Texts to build a database from: a .txt file (one text per line), a .jsonl file
(one object with a "text" field per line) or a folder of .txt files (one text
per file, searched recursively, in sorted path order)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from .manifest import MemoDatabaseError


def iter_texts(path: str | Path, *, limit: int | None = None) -> Iterator[str]:
    """Yield the non-empty texts of ``path`` in order, at most ``limit`` of them."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such corpus; give a .txt, a .jsonl or a folder of .txt files.")
    count = 0
    for text in _texts(path):
        if limit is not None and count >= limit:
            return
        if text.strip():
            count += 1
            yield text.strip()


def _texts(path: Path) -> Iterator[str]:
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise MemoDatabaseError(f"{path}: the folder has no .txt files; put one text per .txt file in it.")
        for file in files:
            yield file.read_text(encoding="utf-8", errors="replace")
    elif path.suffix == ".jsonl":
        yield from _jsonl(path)
    elif path.suffix == ".txt":
        with open(path, encoding="utf-8", errors="replace") as f:
            yield from f
    else:
        raise MemoDatabaseError(f"{path}: unknown corpus format; use a .txt (one text per line), "
                         "a .jsonl with a \"text\" field, or a folder of .txt files.")


def _jsonl(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (ValueError, KeyError, TypeError) as error:
                raise MemoDatabaseError(f"{path}:{number}: not a JSON object with a \"text\" field ({error}).") from error
            if not isinstance(text, str):
                raise MemoDatabaseError(f"{path}:{number}: \"text\" is not a string.")
            yield text
