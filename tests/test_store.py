"""attmemo.store components on tiny literal data: values, index, keys, policy, stats, manifest, corpus.

The last test looks up in the real tiny database (conftest ``tiny_db``).
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from attmemo.store import MemoDatabaseError, index, keys, manifest, values
from attmemo.store.corpus import iter_texts
from attmemo.store.manifest import KeySpec, Manifest
from attmemo.store.policy import HitPolicy
from attmemo.store.stats import MemoStats

HEADS = 2


def _probs(n: int, seed: int) -> np.ndarray:
    """float32[HEADS, n, n] softmax rows."""
    logits = np.random.default_rng(seed).standard_normal((HEADS, n, n)).astype(np.float32) * 3
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("dtype, atol", [("unorm16", 1e-4), ("float16", 5e-4), ("float32", 0)])
def test_values_round_trip_through_a_fresh_mapping(tmp_path, dtype, atol):
    path = tmp_path / "b8.values"
    stored = {0: _probs(5, 0), 1: _probs(8, 1)}
    writer = values.ValueFile(path, count=2, heads=HEADS, bucket=8, dtype=dtype, mode="w+")
    for row, p in stored.items():
        writer.write(row, p)
    writer.flush()
    del writer
    itemsize = {"unorm16": 2, "float16": 2, "float32": 4}[dtype]
    assert path.stat().st_size == 2 * values.entry_bytes(HEADS, 8, dtype) == 2 * HEADS * 8 * 8 * itemsize
    reader = values.ValueFile(path, count=2, heads=HEADS, bucket=8, dtype=dtype, mode="r")
    scale = values.codec(dtype).fed_scale or 1.0
    for row, p in stored.items():
        n = p.shape[-1]
        np.testing.assert_allclose(reader.read(row, n), p, atol=atol)
        # What the lookup op returns, and what the document key feeds the fed model.
        np.testing.assert_allclose(reader.unorm16(row, n) / values.UNORM_MAX, p, atol=atol + 1e-4)
        fed = reader.fed(row, n, np.full((1, HEADS, n, n), np.nan, values.codec(dtype).fed_dtype))
        np.testing.assert_allclose(fed[0].astype(np.float32) * scale, p, atol=atol)
    # A float16 or float32 block filling its bucket is handed over in place, not copied.
    fed = reader.fed(1, 8, np.empty((1, HEADS, 8, 8), values.codec(dtype).fed_dtype))
    assert np.shares_memory(fed, reader.rows) == (dtype != "unorm16")


def test_unorm16_rows_sum_to_one_exactly():
    decoded = np.empty((HEADS, 7, 7), np.float32)
    codec = values.codec("unorm16")
    codec.decode(codec.encode(_probs(7, 3)), decoded)
    np.testing.assert_allclose(decoded.sum(-1), 1.0, atol=1e-6)


def _value_file(tmp_path, probs):
    vf = values.ValueFile(tmp_path / "v", count=1, heads=HEADS, bucket=8, dtype="unorm16", mode="w+")
    vf.write(0, probs)
    return vf


def test_raw_right_padding_puts_no_mass_on_padding(tmp_path):
    probs = _probs(3, 4)
    out = np.full((HEADS, 5, 5), 7, np.uint16)   # raw_into must write every element
    _value_file(tmp_path, probs).raw_into(0, 3, out)
    np.testing.assert_allclose(out[:, :3, :3] / values.UNORM_MAX, probs, atol=1e-4)
    assert (out[:, :, 3:] == 0).all()
    assert (out[:, 3:, :3].astype(int).sum(-1) == values.UNORM_MAX).all()   # padding rows: uniform over real tokens
    assert np.abs(out[:, 3:, :3].astype(int) - values.UNORM_MAX / 3).max() <= 1
    assert (out.astype(int).sum(-1) == values.UNORM_MAX).all()              # every row sums to exactly 1


def test_raw_left_padding_places_the_block_on_the_real_tokens(tmp_path):
    probs = _probs(3, 5)
    out = np.full((HEADS, 5, 5), 7, np.uint16)
    _value_file(tmp_path, probs).raw_into(0, 3, out, positions=np.array([2, 3, 4]))
    np.testing.assert_allclose(out[:, 2:, 2:] / values.UNORM_MAX, probs, atol=1e-4)
    assert (out[:, :, :2] == 0).all()
    assert (out.astype(int).sum(-1) == values.UNORM_MAX).all()


def test_index_round_trip_and_length_separation(tmp_path):
    keys_NK = np.array([[0, 0], [1, 0], [0, 1], [0, 0]], np.float32)
    lengths = np.array([4, 4, 4, 5])
    index.build(keys_NK, lengths, tmp_path / "b8.ann", trees=4, seed=0)
    loaded = index.KeyIndex(tmp_path / "b8.ann", dim=2, count=4)
    assert loaded.nearest(np.array([0.9, 0.1], np.float32), 4)[0] == 1
    row, distance = loaded.nearest(np.array([0, 0], np.float32), 5)
    assert (row, distance) == (3, 0.0)
    row, distance = loaded.nearest(np.array([0, 0], np.float32), 4)
    assert (row, distance) == (0, 0.0)
    with pytest.raises(MemoDatabaseError, match="3 items|4 items"):
        index.KeyIndex(tmp_path / "b8.ann", dim=2, count=3)


def test_index_build_is_reproducible(tmp_path):
    vectors = np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32)
    lengths = np.full(200, 10)
    for name in ("a.ann", "b.ann"):
        index.build(vectors, lengths, tmp_path / name, trees=5, seed=3)
    assert (tmp_path / "a.ann").read_bytes() == (tmp_path / "b.ann").read_bytes()


def test_pool_averages_position_segments_and_hidden_groups():
    spec = KeySpec(segments=2, hidden_pool=2, width=4, dim=2)
    hidden = np.array([[1, 3, 0, 0], [3, 5, 2, 2], [10, 10, 4, 4], [20, 20, 8, 8]], np.float32)
    # segments: rows {0,1} and {2,3}; then adjacent hidden units averaged in pairs
    np.testing.assert_allclose(keys.pool(hidden, spec), [3, 1, 15, 6])
    # fewer tokens than segments: each segment still averages at least one token
    np.testing.assert_allclose(keys.pool(hidden[:1], spec), [2, 0, 2, 0])


def test_key_embedding_saves_and_loads_without_pickle(tmp_path):
    rng = np.random.default_rng(0)
    key = keys.KeyEmbedding(*(rng.standard_normal(s).astype(np.float32) for s in ((6, 4), (4,), (4, 3), (3,))))
    key.save(tmp_path)
    loaded = keys.KeyEmbedding.load(tmp_path)
    x = rng.standard_normal((2, 6)).astype(np.float32)
    np.testing.assert_array_equal(loaded.embed(x), key.embed(x))
    np.save(tmp_path / "key.b2.npy", np.array([object()]), allow_pickle=True)
    with pytest.raises(MemoDatabaseError, match="key.b2.npy"):
        keys.KeyEmbedding.load(tmp_path)


def test_policy_needs_similarity_and_the_same_length():
    policy = HitPolicy(threshold=0.9)
    assert policy.is_hit(distance=0.05, stored_length=7, query_length=7)
    assert not policy.is_hit(distance=0.2, stored_length=7, query_length=7)
    assert not policy.is_hit(distance=0.0, stored_length=8, query_length=7)
    assert policy.similarity(0.25) == 0.75


def test_stats_count_from_many_threads():
    stats = MemoStats()

    def work():
        for _ in range(1000):
            stats.record(2, lookups=2, hits=1, seconds=0.001)
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = stats.snapshot()
    assert snap[2]["lookups"] == 8000 and snap[2]["hits"] == 4000
    assert snap[2]["lookup_seconds"] == pytest.approx(4.0)


def _manifest_folder(tmp_path):
    (tmp_path / "L0").mkdir()
    (tmp_path / "L0" / "x.bin").write_bytes(b"abcd")
    m = Manifest(model_id="m1", layers={0: 2}, buckets={8: 1}, dtype="unorm16", threshold=0.9,
                 key=KeySpec(8, 4, 64, 64), corpus={"texts": 1},
                 files={"L0/x.bin": manifest.file_entry(tmp_path / "L0" / "x.bin")})
    manifest.write(m, tmp_path)
    return m


def test_manifest_round_trip(tmp_path):
    written = _manifest_folder(tmp_path)
    assert manifest.load(tmp_path, verify_checksums=True) == written


def test_manifest_names_the_damaged_file(tmp_path):
    _manifest_folder(tmp_path)
    (tmp_path / "L0" / "x.bin").write_bytes(b"abcde")
    with pytest.raises(MemoDatabaseError, match=r"x\.bin: 5 bytes, the manifest says 4"):
        manifest.load(tmp_path)
    (tmp_path / "L0" / "x.bin").write_bytes(b"abce")
    with pytest.raises(MemoDatabaseError, match=r"x\.bin: checksum"):
        manifest.load(tmp_path, verify_checksums=True)
    (tmp_path / "L0" / "x.bin").unlink()
    with pytest.raises(MemoDatabaseError, match=r"x\.bin: listed in the manifest but missing"):
        manifest.load(tmp_path)


def test_manifest_rejects_other_schemas_and_non_databases(tmp_path):
    with pytest.raises(MemoDatabaseError, match="no such database folder"):
        manifest.load(tmp_path / "nothing")
    with pytest.raises(MemoDatabaseError, match="manifest.json: missing"):
        manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(MemoDatabaseError, match="schema version 99"):
        manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(MemoDatabaseError, match="not a valid attmemo manifest"):
        manifest.load(tmp_path)


def test_corpus_formats(tmp_path):
    (tmp_path / "a.txt").write_text("first text\n\nsecond text\n")
    (tmp_path / "b.jsonl").write_text('{"text": "one"}\n\n{"text": "two", "id": 3}\n')
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "2.txt").write_text("doc two\nline two")
    (folder / "1.txt").write_text("doc one")
    assert list(iter_texts(tmp_path / "a.txt")) == ["first text", "second text"]
    assert list(iter_texts(tmp_path / "b.jsonl", limit=1)) == ["one"]
    assert list(iter_texts(folder)) == ["doc one", "doc two\nline two"]


def test_corpus_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such corpus"):
        list(iter_texts(tmp_path / "missing.txt"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"title": "no text"}\n')
    with pytest.raises(MemoDatabaseError, match=r"bad\.jsonl:2: not a JSON object with a \"text\" field"):
        list(iter_texts(tmp_path / "bad.jsonl"))
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(MemoDatabaseError, match="unknown corpus format"):
        list(iter_texts(tmp_path / "data.csv"))


def _write_manifest(tmp_path, **changes):
    m = _manifest_folder(tmp_path)
    data = json.loads(m.to_json())
    data.update(changes)
    (tmp_path / "manifest.json").write_text(json.dumps(data))


@pytest.mark.parametrize("changes, problem", [
    ({"threshold": 0}, "'threshold' must be a number in"),
    ({"threshold": float("nan")}, "'threshold' must be a number in"),
    ({"threshold": "0.9"}, "'threshold' must be a number in"),
    ({"model_id": ""}, "'model_id' must be a non-empty"),
    ({"layers": {"-1": 2}}, "'layers' must map"),
    ({"layers": {"0": True}}, "'layers' must map"),
    ({"buckets": {"0": 1}}, "'buckets' must map"),
    ({"dtype": "bfloat16"}, "'dtype' must be one of unorm16, float16, float32"),
    ({"key": {"segments": 8, "hidden_pool": 4, "width": 64}}, "'key' must hold exactly"),
    ({"files": {"../x.bin": {"bytes": 4, "sha256": "0" * 64}}}, "'../x.bin' is not a relative path inside"),
    ({"files": {"/etc/passwd": {"bytes": 4, "sha256": "0" * 64}}}, "'/etc/passwd' is not a relative path inside"),
    ({"files": {"L0/x.bin": {"bytes": 4, "sha256": "abc"}}}, "must be {\"bytes\": integer >= 0, \"sha256\""),
])
def test_manifest_schema_names_the_field_in_one_line(tmp_path, changes, problem):
    _write_manifest(tmp_path, **changes)
    with pytest.raises(MemoDatabaseError) as error:
        manifest.load(tmp_path)
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'manifest.json'}: not a valid attmemo manifest") and "\n" not in message
    assert problem in message


def test_small_files_are_rehashed_at_every_load_value_stores_only_on_verify(tmp_path):
    (tmp_path / "L0").mkdir()
    for name in ("L0/b8.ann", "L0/b8.values"):
        (tmp_path / name).write_bytes(b"abcd")
    m = Manifest(model_id="m1", layers={0: 2}, buckets={8: 1}, dtype="unorm16", threshold=0.9,
                 key=KeySpec(8, 4, 64, 64), corpus={},
                 files={name: manifest.file_entry(tmp_path / name) for name in ("L0/b8.ann", "L0/b8.values")})
    manifest.write(m, tmp_path)
    (tmp_path / "L0" / "b8.values").write_bytes(b"abce")
    assert manifest.load(tmp_path) == m
    with pytest.raises(MemoDatabaseError, match=r"b8\.values: checksum"):
        manifest.load(tmp_path, verify_checksums=True)
    (tmp_path / "L0" / "b8.ann").write_bytes(b"abce")
    with pytest.raises(MemoDatabaseError, match=r"b8\.ann: checksum"):
        manifest.load(tmp_path)


def test_a_listed_file_behind_a_symlink_out_of_the_folder_is_refused(tmp_path):
    db = tmp_path / "db"
    db.mkdir()
    _manifest_folder(db)
    outside = tmp_path / "elsewhere"
    (db / "L0").rename(outside)
    (db / "L0").symlink_to(outside)   # same bytes, same checksum: only the path is wrong
    with pytest.raises(MemoDatabaseError, match=r"manifest\.json: lists L0/x\.bin, a symlink to .* outside"):
        manifest.load(db)


def test_a_value_store_must_be_exactly_as_long_as_its_rows(tmp_path):
    path = tmp_path / "b8.values"
    values.ValueFile(path, count=2, heads=HEADS, bucket=8, dtype="unorm16", mode="w+").flush()
    with open(path, "ab") as f:
        f.write(b"\0" * 2)   # np.memmap alone would map this without complaint
    with pytest.raises(MemoDatabaseError, match=r"b8\.values: 514 bytes, but 2 rows of \[2, 8, 8\] unorm16 take 512"):
        values.ValueFile(path, count=2, heads=HEADS, bucket=8, dtype="unorm16", mode="r")


def test_unusable_lookup_inputs_miss_and_are_counted(tiny_db):
    """Inside the op nothing may raise: bad inputs miss, are counted as fallbacks, and NaN never reaches Annoy."""
    from attmemo.store import MemoDatabase
    from tiny_models import HIDDEN
    db = MemoDatabase.open(tiny_db[1])
    features = keys.feature_size(db.manifest.key, HIDDEN)
    mask = np.ones((2, 6), np.int64)
    cases = [
        (np.full((2, features), np.nan, np.float32), mask, 2),        # NaN: both sequences miss alone
        (np.zeros((2, features + 1), np.float32), mask, 2),           # wrong feature size
        (np.zeros((2, features), np.float64), mask, 2),               # wrong dtype
        (np.zeros((2, features), np.float32), np.ones(6, np.int64), 2),  # mask not [B, S]
        (np.zeros((3, features), np.float32), mask, 2),               # batch disagrees with the mask
    ]
    for features_BF, mask_BS, fallbacks in cases:
        db.stats.reset()
        hit_B, stored = db.lookup(0, features_BF, mask_BS)
        assert not hit_B.any() and stored.shape == (1, 1, 1, 1)
        assert db.stats.snapshot()[0]["fallbacks"] == fallbacks
    db.stats.reset()
    one_bad = np.zeros((2, features), np.float32)
    one_bad[1, 3] = np.inf
    db.lookup(0, one_bad, mask)
    stats = db.stats.snapshot()[0]
    assert (stats["lookups"], stats["hits"], stats["fallbacks"]) == (2, 0, 1)
