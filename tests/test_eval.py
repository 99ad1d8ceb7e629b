"""``attmemo eval``: one workload end to end on the real all-MiniLM-L6-v2 and BBC News (small sizes).

The command builds the database, calibrates on half the queries and measures the
other half; its JSON must carry every number the issue names, consistent with
each other, and a PNG beside it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


BIN = Path(sys.executable).parent


def test_eval_edited_writes_the_table_json_and_png(tmp_path, minilm_workdir):
    out = tmp_path / "edited.json"
    result = subprocess.run([str(BIN / "attmemo"), "eval", "--workload", "edited", "--max-length", "64",
                             "--stored", "8", "--queries", "8", "--rounds", "2", "--json", str(out),
                             "--workdir", str(minilm_workdir)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    for line in ("baseline (unmodified model)", "oracle (true attention, free)", "memoized (calibrated)",
                 "ceiling (perfect retriever", "alternative nearest output", "alternative exact input cache"):
        assert line in result.stdout
    data = json.loads(out.read_text())
    assert data["workload"] == "edited" and data["max_length"] == 64
    assert set(data["latency_ms"]) >= {"baseline", "oracle", "memo"}
    assert all(v > 0 for k, v in data["latency_ms"].items() if k in ("baseline", "oracle", "memo"))
    assert set(data["cosine"]) == {"mean", "p1", "min"}
    assert data["cosine"]["min"] <= data["cosine"]["p1"] <= data["cosine"]["mean"] <= 1.0 + 1e-6
    assert set(data["accuracy"]) == {"exact", "memo"}
    assert 0 <= data["memo_rate"] <= 1 and 0 <= data["ceiling_memo_rate"] <= 1
    assert len(data["memo_rate_per_layer"]) == len(data["layers"]) == 6
    # Edited documents: a perfect retriever finds the original in (nearly) every layer.
    assert data["ceiling_memo_rate"] >= 0.75
    assert data["db_bytes"] > 0
    served = {k for k, v in data["layers"].items() if v is not None}
    served |= {str(layer) for layer in (data["documents"] or {}).get("layers", [])}
    assert all(data["memo_rate_per_layer"][k] == 0 for k in data["layers"] if k not in served)
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_refuses_bad_sizes_in_one_sentence(tmp_path):
    result = subprocess.run([str(BIN / "attmemo"), "eval", "--workload", "edited", "--stored", "1",
                             "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")


def test_eval_on_your_own_model_and_texts(tiny_db, tmp_path):
    """--model/--corpus/--queries: the same pipeline, table, JSON and PNG on the user's model and files."""
    from conftest import TINY_CORPUS

    model, _, _ = tiny_db
    corpus = tmp_path / "stored.txt"
    corpus.write_text("\n".join(TINY_CORPUS) + "\n")
    queries = tmp_path / "queries.jsonl"
    # Stored texts with their first word changed (positions stay aligned), labelled by length.
    asked = [" ".join(["a", *text.split()[1:]]) for text in TINY_CORPUS[::2]]
    queries.write_text("".join(json.dumps({"text": t, "label": "long" if len(t.split()) > 6 else "short"}) + "\n"
                               for t in asked))
    out = tmp_path / "mine.json"
    result = subprocess.run([str(BIN / "attmemo"), "eval", "--model", str(model), "--corpus", str(corpus),
                             "--queries", str(queries), "--max-length", "32", "--rounds", "1", "--json", str(out),
                             "--workdir", str(tmp_path / "work")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    for line in ("baseline (unmodified model)", "oracle (true attention, free)", "memoized (calibrated)",
                 "ceiling (perfect retriever", "alternative nearest output", "alternative exact input cache"):
        assert line in result.stdout
    assert result.stdout.strip().splitlines()[-2].startswith("verdict: On the queries queries, ")
    data = json.loads(out.read_text())
    assert data["workload"] == "queries" and data["max_length"] == 32
    assert data["stored_texts"] == len(TINY_CORPUS)
    assert data["calibration_queries"] + data["measured_queries"] == len(asked)
    assert set(data["accuracy"]) == {"exact", "memo"}
    lat = data["latency_ms"]
    # One definition of the ratio: total (mean) time over the baseline's.
    for name in ("oracle", "memo"):
        assert abs(lat["ratio"][name] - lat[name] / lat["baseline"]) < 1e-9
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Run again on the same model and stored texts: the database is reused, not rebuilt.
    from attmemo import evaluation
    said = []
    again = evaluation.evaluate(evaluation.user_workload(corpus, queries), model=model, max_length=32,
                                workdir=tmp_path / "work", settings=evaluation.EvalSettings(rounds=1), say=said.append)
    assert any(line.endswith("reused (same model and stored texts)") for line in said), said
    assert again["stored_texts"] == data["stored_texts"] and again["db_bytes"] == data["db_bytes"]
