"""Where a database folder keeps each file (see manifest.py for the whole table).

    lengths/b{b}.npy   tokens/b{b}.npy   L{layer}/b{b}.ann   L{layer}/b{b}.values   L{layer}/<key weights>
    shift/<shift_index.FILES>   (the document key's shift index, when built)
    admitted/<name>.entry   admitted/store.json   admitted/generation   (texts admitted from traffic)

b is a bucket length, layer a model layer. Every reader and writer names files through
these functions, so a layout change is one edit.
"""

from __future__ import annotations


def layer_dir(layer: int) -> str:
    return f"L{layer}"


def lengths_file(bucket: int) -> str:
    return f"lengths/b{bucket}.npy"


def tokens_file(bucket: int) -> str:
    return f"tokens/b{bucket}.npy"


def index_file(layer: int, bucket: int) -> str:
    return f"{layer_dir(layer)}/b{bucket}.ann"


def values_file(layer: int, bucket: int) -> str:
    return f"{layer_dir(layer)}/b{bucket}.values"


def shift_dir() -> str:
    return "shift"


# Texts admitted from traffic (admission.py): one self-describing file per text, committed by rename.
ADMITTED_DIR = "admitted"
ADMITTED_DESCRIPTOR = f"{ADMITTED_DIR}/store.json"     # model id, heads, codec of a folder with no build
ADMITTED_GENERATION = f"{ADMITTED_DIR}/generation"     # replaced after every commit: readers stat it per run
ADMITTED_LOCK = f"{ADMITTED_DIR}/.lock"                # held by the one process writing
ADMITTED_SUFFIX = ".entry"
ADMITTED_TEMPORARY = ".tmp-"                           # a write in progress (or killed): never read


def admitted_entry(name: str) -> str:
    return f"{ADMITTED_DIR}/{name}{ADMITTED_SUFFIX}"
