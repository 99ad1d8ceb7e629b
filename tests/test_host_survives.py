"""The host process survives whatever the database or the memo does.

A Python exception inside an onnxruntime-extensions op aborts the process
(SIGABRT, return code -6, uncatchable), and a corrupted Annoy index can crash
inside C++ (the one below did, SIGSEGV, before indexes were checksummed). So a
child process serves through everything that can go wrong and must exit 0
with the exact model's outputs: a damaged database found beside the model (not
strict), a memo whose lookup raises, and a memo that returns stored
probabilities of a shape the graph would silently broadcast.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys

import numpy as np
import onnxruntime as ort

import attmemo
from attmemo.custom_ops import registry
from attmemo.store import MemoDatabase
from conftest import TINY_CORPUS

RUNS = 3

_CHILD = """
import json, sys
import numpy as np
import attmemo
from attmemo.custom_ops import registry
from attmemo.export.memo_export import tokenizer_dir_for
from attmemo.store import MemoDatabase
from transformers import AutoTokenizer

model, original, pristine, out, texts = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir_for(original)))
outputs, report = {}, {}


def serve(name, session):
    names = {i.name for i in session.get_inputs()}
    for i, batch in enumerate(texts):
        feed = {k: v.astype(np.int64) for k, v in tokenizer(batch, padding=True, return_tensors="np").items()
                if k in names}
        for run in range(%(runs)d):
            outputs[f"{name}/{i}/{run}"] = session.run(None, feed)[0]


session = attmemo.InferenceSession(model)   # finds the damaged model.memo beside it: not strict
serve("damaged database", session)
report["status"] = session.memo_status
model_id = session.get_modelmeta().custom_metadata_map["attmemo.model_id"]


class Raising:
    calls = 0

    def serves(self, layer, batch, seq_len):
        return True

    def lookup(self, layer, features_BF, mask_BS):
        Raising.calls += 1
        raise RuntimeError("lookup exploded")


# A plain session keeps the rewritten graph, whose ops ask the registry (the disabled
# attmemo.InferenceSession above runs the exact model).
import onnxruntime
session = onnxruntime.InferenceSession(model, attmemo.session_options())
registry.attach(model_id, Raising())
serve("raising lookup", session)
report["raising calls"] = Raising.calls

database = MemoDatabase.open(pristine)


class OneHead:
    # The real database's hits with only the first head: [B, 1, S, S] broadcasts over the heads.
    serves, heads, fall_back = database.serves, database.heads, database.fall_back

    def lookup(self, layer, features_BF, mask_BS):
        hit_B, stored_BHSS = database.lookup(layer, features_BF, mask_BS)
        return hit_B, stored_BHSS[:, :1]


registry.attach(model_id, OneHead())
serve("one-head result", session)
report["one-head hits"] = sum(s["hits"] for s in database.stats.snapshot().values())
report["one-head fallbacks"] = sum(s["fallbacks"] for s in database.stats.snapshot().values())
registry.detach(model_id)
np.savez(out, **outputs)
print(json.dumps(report))
""" % {"runs": RUNS}


def test_the_host_survives_a_damaged_database_and_failing_memos(tiny_db, tmp_path):
    model, db, _ = tiny_db
    shutil.copyfile(model, tmp_path / "model.onnx")
    shutil.copytree(db, tmp_path / "model.memo")
    index = tmp_path / "model.memo" / "L0" / "b16.ann"
    _point_items_out_of_range(index, manifest=json.loads((db / "manifest.json").read_text()))
    batches = [[TINY_CORPUS[0]], [TINY_CORPUS[9]], [TINY_CORPUS[5], "price"]]   # corpus texts: a real hit each

    result = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "model.onnx"), str(model), str(db),
                             str(tmp_path / "out.npz"), json.dumps(batches)],
                            capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, f"the child died (return code {result.returncode}): {result.stderr[-3000:]}"
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["status"].startswith("disabled: ") and index.name in report["status"]
    assert report["raising calls"] > 0
    assert report["one-head fallbacks"] >= report["one-head hits"] > 0   # every hit refused (and counted)
    registry.detach(MemoDatabase.open(db).model_id)
    exact = _exact_outputs(model, batches)
    got = np.load(tmp_path / "out.npz", allow_pickle=False)
    assert len(got.files) == 3 * len(batches) * RUNS
    for name in got.files:
        np.testing.assert_array_equal(got[name], exact[int(name.split("/")[1])], err_msg=name)


def _point_items_out_of_range(index, *, manifest: dict) -> None:
    """Damage an Annoy index so that querying it reads far outside the file: SIGSEGV without the checksum.

    Annoy's euclidean node is int32 n_descendants, float a, int32 children[2], float v[f]; a
    tree root with n_descendants = n_items <= K lists its item ids from ``children`` on. Only
    those ids change, so the file's size and Annoy's own item count stay right.
    """
    count = manifest["buckets"]["16"]
    node = 4 + 4 + 8 + 4 * (manifest["key"]["dim"] + 1)   # keys plus the length coordinate
    data = bytearray(index.read_bytes())
    for start in range(0, len(data), node):
        if struct.unpack_from("<i", data, start)[0] == count:
            data[start + 8:start + 8 + 4 * count] = b"\x7f" * (4 * count)
    assert data != index.read_bytes()
    index.write_bytes(bytes(data))


def _exact_outputs(model, batches: list[list[str]]) -> list[np.ndarray]:
    """The model's outputs with no memo attached: every layer on its native exact path."""
    from transformers import AutoTokenizer

    from attmemo.export.memo_export import tokenizer_dir_for

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir_for(model)))
    session = ort.InferenceSession(str(model), attmemo.session_options())
    names = {i.name for i in session.get_inputs()}
    feeds = [{k: v.astype(np.int64) for k, v in tokenizer(batch, padding=True, return_tensors="np").items()
              if k in names} for batch in batches]
    return [session.run(None, feed)[0] for feed in feeds]
