"""The MemoAttention op's memo paths, driven by a real in-test memo.

The database itself is attmemo.store; here a tiny memo that returns given
probabilities exercises the graph around it: the gate, the lookup, the per-
sequence merge of hits and misses, and the ndarray bridge. Hits must change
the output to what the stored probabilities imply and nothing else.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

import attmemo
from attmemo.custom_ops import registry
from attmemo.store.values import encode_unorm16
from attmemo.transforms.fuse import MODEL_ID_KEY
from attmemo.transforms.model_file import transform_file
from attmemo.transforms.names import probs_value
from attmemo.transforms.unfuse import oracle_model, recording_model
from conftest import max_diff_on_real_tokens, padded_feeds, run_model


# unorm16 stores each probability to within 1/131070; through two layers that is ~1e-4 on the output.
STORED_ATOL = 1e-3


def _plain(bert) -> ort.InferenceSession:
    """A plain onnxruntime session of the MemoAttention model: its ops ask the op registry at run time.

    (attmemo.InferenceSession with no database runs the exact model, with no op to ask.)
    """
    return ort.InferenceSession(str(bert["memo"]), attmemo.session_options())


class GivenProbabilities:
    """A memo whose layer L returns probs[L] (in the stored unorm16 format) for the sequences in ``hits``."""

    def __init__(self, probs: dict[int, np.ndarray], hits: np.ndarray):
        self.hits, self.lookups = hits, 0
        self.stored = {layer: encode_unorm16(p) for layer, p in probs.items()}

    def serves(self, layer, batch, seq_len):
        return True

    def lookup(self, layer, features_BF, mask_BS):
        self.lookups += 1
        return self.hits.copy(), np.where(self.hits[:, None, None, None], self.stored[layer], 0).astype(np.uint16)


@pytest.fixture(scope="module")
def bert(tiny_model, tmp_path_factory):
    model_dir, plain = tiny_model("bert")
    tmp = tmp_path_factory.mktemp("paths")
    memo = tmp / "memo.onnx"
    transform_file(plain, memo)
    model = ir.load(memo)
    layers = recording_model(model)
    ir.save(model, tmp / "recording.onnx")
    oracle = ir.load(memo)
    oracle_inputs = oracle_model(oracle)
    ir.save(oracle, tmp / "oracle.onnx")
    model_id = ir.load(memo).metadata_props[MODEL_ID_KEY]
    return dict(dir=model_dir, memo=memo, recording=tmp / "recording.onnx", layers=layers,
                oracle=tmp / "oracle.onnx", oracle_inputs=oracle_inputs, model_id=model_id)


@pytest.fixture
def attached(bert):
    def attach(memo):
        registry.attach(bert["model_id"], memo)
        return memo
    yield attach
    registry.detach(bert["model_id"])


def record(bert, feeds):
    session = ort.InferenceSession(str(bert["recording"]))
    outputs = dict(zip([o.name for o in session.get_outputs()], run_all(session, feeds)))
    return {lv.layer: outputs[lv.probs] for lv in bert["layers"]}, outputs["last_hidden_state"]


def run_all(session, feeds):
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in names})


def uniform_over_real_tokens(probs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    u = np.broadcast_to(mask[:, None, None, :].astype(np.float32), probs.shape)
    return (u / u.sum(-1, keepdims=True)).astype(np.float32)


def test_all_hits_with_exact_probabilities_reproduce_the_model(bert, attached):
    feeds = padded_feeds(bert["dir"])
    probs, exact = record(bert, feeds)
    memo = attached(GivenProbabilities(probs, hits=np.ones(3, bool)))
    got = run_model(_plain(bert), feeds)
    assert memo.lookups == len(probs)
    assert max_diff_on_real_tokens(got, exact, feeds["attention_mask"]) <= STORED_ATOL


def test_hits_use_the_stored_probabilities(bert, attached):
    """Reusing uniform attention gives what the oracle computes from uniform attention."""
    feeds = padded_feeds(bert["dir"])
    probs, exact = record(bert, feeds)
    uniform = {layer: uniform_over_real_tokens(p, feeds["attention_mask"]) for layer, p in probs.items()}
    attached(GivenProbabilities(uniform, hits=np.ones(3, bool)))
    got = run_model(_plain(bert), feeds)
    oracle_feeds = dict(feeds, **{probs_value(layer): p for layer, p in uniform.items()})
    want = run_model(ort.InferenceSession(str(bert["oracle"])), oracle_feeds)
    assert max_diff_on_real_tokens(got, want, feeds["attention_mask"]) <= STORED_ATOL
    assert max_diff_on_real_tokens(got, exact, feeds["attention_mask"]) > 1e-2


def test_hits_and_misses_of_one_batch_merge_per_sequence(bert, attached):
    feeds = padded_feeds(bert["dir"])
    probs, exact = record(bert, feeds)
    uniform = {layer: uniform_over_real_tokens(p, feeds["attention_mask"]) for layer, p in probs.items()}
    attached(GivenProbabilities(uniform, hits=np.array([False, True, False])))
    got = run_model(_plain(bert), feeds)
    mask = feeds["attention_mask"]
    for missed in (0, 2):  # computed exactly, untouched by the other sequence's hit
        assert max_diff_on_real_tokens(got[missed:missed + 1], exact[missed:missed + 1], mask[missed:missed + 1]) <= 1e-5
    assert max_diff_on_real_tokens(got[1:2], exact[1:2], mask[1:2]) > 1e-2


def test_a_failing_memo_falls_back_to_the_exact_path(bert, attached):
    """A Python exception inside an onnxruntime-extensions op would abort the process."""
    class Broken(GivenProbabilities):
        def lookup(self, layer, features_BF, mask_BS):
            raise RuntimeError("disk on fire")
    feeds = padded_feeds(bert["dir"])
    _, exact = record(bert, feeds)
    attached(Broken({}, hits=np.ones(3, bool)))
    got = run_model(_plain(bert), feeds)
    assert max_diff_on_real_tokens(got, exact, feeds["attention_mask"]) <= 1e-5


def test_plain_onnxruntime_session_with_attmemo_options(bert):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    assert attmemo.session_options(sess_options=so) is so
    feeds = padded_feeds(bert["dir"])
    _, exact = record(bert, feeds)
    got = run_model(ort.InferenceSession(str(bert["memo"]), so), feeds)
    assert max_diff_on_real_tokens(got, exact, feeds["attention_mask"]) <= 1e-5


def test_inference_session_honours_the_callers_options(bert):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    session = attmemo.InferenceSession(str(bert["memo"]), sess_options=so, providers=["CPUExecutionProvider"])
    assert isinstance(session, ort.InferenceSession)
    assert session.get_session_options().intra_op_num_threads == 1
    assert session.get_providers() == ["CPUExecutionProvider"]


def test_inference_session_without_a_database_runs_the_exact_model(bert, attached):
    """No MemoGate, no If: it costs what the unmodified export costs, and asks no memo."""
    feeds = padded_feeds(bert["dir"])
    probs, exact = record(bert, feeds)
    memo = attached(GivenProbabilities(probs, hits=np.ones(3, bool)))   # would serve a session that asks
    session = attmemo.InferenceSession(str(bert["memo"]))
    assert session.memo_status == "no database"
    assert max_diff_on_real_tokens(run_model(session, feeds), exact, feeds["attention_mask"]) <= 1e-5
    assert memo.lookups == 0
