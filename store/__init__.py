"""attmemo.store: the memo database (key -> index -> hit policy -> stored value -> stats).

    db = MemoDatabase.open("model.memo")          # run time: numpy + annoy only
    # built by attmemo.builder.build.build_database (onnxruntime, torch, transformers)

Modules: manifest (the folder's table of contents), keys (key embedding
inference), index (Annoy), policy (hit rule), values (stored probabilities),
documents (the token-id key asked once per run), stats (counters), serving
(which layers and keys serve, chosen by attmemo calibrate), document_executor
(the document key's lookup -> policy -> delivery -> stats), layout (file names),
database (MemoDatabase); for building: corpus (text sources), augment and pairs
(training pairs), align and shift_index (reuse under edits); admission,
admitted_index, admitted_entry and admitted_folder (texts admitted from traffic, within a byte budget). Nothing here imports
onnxruntime, torch or anything of attmemo above it (tests/test_layers.py).
"""

from .database import MemoDatabase, default_db_dir
from .manifest import MemoDatabaseError

__all__ = ["MemoDatabase", "MemoDatabaseError", "default_db_dir"]
