"""The graph's native key pooling equals the database build's numpy pooling, padding included."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from attmemo.store import keys
from attmemo.store.manifest import KeySpec
from attmemo.transforms.key_pooling import pooled_features

SPEC = KeySpec(segments=keys.POOL_SEGMENTS, hidden_pool=keys.POOL_HIDDEN, width=8, dim=8)


@pytest.fixture(scope="module")
def pooling_session(tmp_path_factory) -> ort.InferenceSession:
    hidden = ir.Value(name="hidden", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["B", "S", "D"]))
    mask = ir.Value(name="mask", type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape(["B", "S"]))
    nodes, features = pooled_features(hidden, mask)
    features.name, features.type, features.shape = "features", ir.TensorType(ir.DataType.FLOAT), ir.Shape(["B", "F"])
    graph = ir.Graph([hidden, mask], [features], nodes=nodes, opset_imports={"": 18}, name="pool")
    path = tmp_path_factory.mktemp("pool") / "pool.onnx"
    ir.save(ir.Model(graph, ir_version=10), path)
    onnx.checker.check_model(str(path), full_check=True)
    return ort.InferenceSession(str(path))


@pytest.mark.parametrize("lengths, size, width, left", [
    ([512], 512, 384, False),            # MiniLM, one unpadded sequence
    ([5, 17, 3, 1], 17, 64, False),      # right padding; fewer tokens than segments
    ([5, 17, 9], 17, 66, True),          # left padding; hidden size not a multiple of the group
])
def test_native_pooling_equals_numpy_pooling(pooling_session, lengths, size, width, left):
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(len(lengths), size, width)).astype(np.float32)
    mask = np.zeros((len(lengths), size), np.int64)
    for b, n in enumerate(lengths):
        mask[b, size - n:] = 1 if left else 0
        mask[b, :n] = 0 if left else 1
    got = pooling_session.run(None, {"hidden": hidden, "mask": mask})[0]
    for b in range(len(lengths)):
        want = keys.pool(hidden[b][mask[b] == 1], SPEC)
        np.testing.assert_allclose(got[b], want, rtol=1e-5, atol=1e-5)
