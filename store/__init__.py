"""attmemo.store: the memo database (key -> index -> hit policy -> stored value -> stats).

    db = MemoDatabase.open("model.memo")          # run time: numpy + annoy only
    build_database("model.onnx", "corpus.jsonl")  # build time: onnxruntime, torch, transformers

Modules: manifest (the folder's table of contents), keys (key embedding
inference), index (Annoy), policy (hit rule), values (stored probabilities),
documents (the token-id key asked once per run), stats (counters), serving
(which layers and keys serve, chosen by attmemo calibrate),
database (MemoDatabase); building: corpus (text sources),
recorder (runs the model), augment and pairs (training pairs), train (key
embedding and indexes per layer), build (the whole build, atomic).
"""

from .database import MemoDatabase, default_db_dir
from .manifest import MemoDatabaseError

__all__ = ["MemoDatabase", "MemoDatabaseError", "default_db_dir"]
