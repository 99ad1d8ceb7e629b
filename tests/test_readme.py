"""The README is a promise: every command and every Python block in it runs and does what it says.

- Quick start: ``./run.sh demo`` runs as ``./run.sh demo --quick`` (the same steps on fewer
  texts; the full demo takes minutes), ``./run.sh test`` is what runs this file.
- Use: the section runs top to bottom as one script, shell commands and Python blocks in the
  order they appear, in a fresh folder holding the files the README names, made from the tiny
  random-weight BERT: ``path/to/model_dir`` (its Hugging Face folder), ``exported.onnx`` (its
  plain export), ``texts.txt`` (a corpus), ``heldout.jsonl`` (edited corpus texts, labelled).
  Each command is run as written after these substitutions (``_runnable``): an optional
  ``[...]`` part is dropped, ``a|b|c`` takes ``a``, and ``EXTRA`` adds flags where the written
  command would take minutes or does not fit the tiny model (it takes 126 tokens at most).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Flags added to a command (matched by its start), after the substitutions of _runnable.
EXTRA = {
    "attmemo bench": ["--rounds", "2"],
    # The bundled all-MiniLM-L6-v2 exported by the quick demo (fixture ``quick_demo``), at small sizes.
    "attmemo eval --workload": ["--stored", "8", "--queries", "8", "--rounds", "1", "--max-length", "64"],
    "attmemo eval --model": ["--rounds", "1"],
}
REPLACE = {"--seq 128 512": "--seq 16 32"}   # the tiny model takes 126 tokens at most


def _section(name: str) -> str:
    text = (ROOT / "README.md").read_text()
    return re.search(rf"^## {name}\n(.*?)(?=^## )", text, re.S | re.M).group(1)


def _blocks(section: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced block, in order."""
    return re.findall(r"```(\w*)\n(.*?)```", section, re.S)


def _commands(code: str) -> list[str]:
    return [line.split("#")[0].strip() for line in code.splitlines() if line.strip() and not line.startswith("#")]


def _runnable(command: str) -> list[str]:
    for written, used in REPLACE.items():
        command = command.replace(written, used)
    command = re.sub(r"\s*\[[^\]]*\]", "", command)
    argv = [word.split("|")[0] for word in command.split()]
    extra = [flags for start, flags in EXTRA.items() if " ".join(argv).startswith(start)]
    return argv + (extra[0] if extra else [])


def test_readme_quick_start_has_the_two_commands():
    commands = [c for lang, code in _blocks(_section("Quick start")) for c in _commands(code)]
    assert commands == ["./run.sh demo", "./run.sh test"]


def test_the_substitutions_are_what_the_docstring_says():
    assert _runnable("attmemo calibrate m.onnx --corpus h.jsonl [--db m.memo] [--budget 0.99,0.97,0.5]") == \
        ["attmemo", "calibrate", "m.onnx", "--corpus", "h.jsonl"]
    assert _runnable("attmemo eval --workload edited|diverse [--max-length 256] --json o.json")[:6] == \
        ["attmemo", "eval", "--workload", "edited", "--json", "o.json"]


def _disk(folder: Path) -> int:
    total = 0
    for p in folder.rglob("*"):
        try:
            total += p.stat().st_size if p.is_file() else 0
        except OSError:   # removed while we walked
            pass
    return total


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """``./run.sh demo --quick`` in its own work folder: (completed process, work folder, peak disk bytes)."""
    tmp = tmp_path_factory.mktemp("demo")
    env = dict(os.environ, ATTMEMO_VENV=sys.prefix, ATTMEMO_NO_SETUP="1")
    work = tmp / "work"
    command = ["./run.sh", "demo", "--quick", "--workdir", str(work)]
    log, err = tmp / "demo.log", tmp / "demo.err"
    with open(log, "w") as out, open(err, "w") as errors:
        demo = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=errors, text=True)
        peak, start = 0, time.monotonic()
        while demo.poll() is None and time.monotonic() - start < 900:
            peak = max(peak, _disk(work)) if work.exists() else peak
            time.sleep(0.5)
        if demo.poll() is None:
            demo.kill()
    return subprocess.CompletedProcess(command, demo.wait(), log.read_text(), err.read_text()), work, peak


def test_readme_demo_command_runs(quick_demo):
    result, work, peak = quick_demo
    assert result.returncode == 0, result.stderr
    assert "rewrote 6 of 6 attention layers" in result.stdout
    assert "max |difference| to the unmodified export = 0.00e+00" in result.stdout
    assert (work / "minilm.onnx").exists()
    # calibrate + eval on the workload where reuse is real and the one where it is not
    for workload in ("edited", "diverse"):
        assert f"workload {workload}, max 256 tokens" in result.stdout
        data = json.loads((work / f"eval-{workload}.json").read_text())
        assert data["cosine"]["mean"] >= 0.99 and data["cosine"]["p1"] >= 0.97, "the default budget holds"
        assert (work / f"eval-{workload}.png").exists()
    assert json.loads((work / "eval-edited.json").read_text())["memo_rate"] > 0.5
    verdict = result.stdout.strip().splitlines()[-1]
    assert verdict.startswith("verdict: On the edited queries, the memoized model reused ")
    assert "On the diverse queries, memoization switched itself off because " in verdict
    assert peak < 2 * 2**30, f"the README promises under 2 GB, the demo used {peak / 2**30:.2f} GiB at its peak"


@pytest.fixture
def readme_folder(tmp_path, tiny_model):
    """A folder holding the files the Use section names, from the tiny BERT."""
    from conftest import TINY_CORPUS

    folder, plain = tiny_model("bert")
    shutil.copytree(folder, tmp_path / "path" / "to" / "model_dir")
    shutil.copyfile(plain, tmp_path / "exported.onnx")
    (tmp_path / "texts.txt").write_text("\n".join(TINY_CORPUS) + "\n")
    # Held out: corpus texts with their first word changed, labelled by length.
    held = [" ".join(["a", *text.split()[1:]]) for text in TINY_CORPUS]
    (tmp_path / "heldout.jsonl").write_text("".join(
        json.dumps({"text": t, "label": "long" if len(t.split()) > 6 else "short"}) + "\n" for t in held))
    return tmp_path


def test_readme_use_section_runs_as_written(readme_folder, quick_demo, monkeypatch):
    """Every shell command and Python block of Use, in order, in one folder (see the module docstring)."""
    _, demo_work, _ = quick_demo
    monkeypatch.chdir(readme_folder)
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    namespace: dict = {}
    ran = []
    for lang, code in _blocks(_section("Use")):
        if lang == "python":
            exec(compile(code, "README.md", "exec"), namespace)   # noqa: S102 - the README's own code
            ran.append("python")
            continue
        for command in _commands(code):
            argv = _runnable(command)
            if argv[:3] == ["attmemo", "eval", "--workload"]:
                argv += ["--workdir", str(demo_work)]    # its exported MiniLM, so no second export
            result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
            assert result.returncode == 0, f"{' '.join(argv)}:\n{result.stderr}"
            ran.append(argv[1] if argv[0] == "attmemo" else argv[0])
    assert ran == ["attmemo-export", "transform", "python", "build-db", "python", "verify-db", "calibrate",
                   "python", "python", "eval", "eval", "bench"]
    # The serving block: one unit-norm embedding per text, and the session's counters.
    embeddings, session = namespace["embeddings"], namespace["session"]
    assert embeddings.shape[0] == len(namespace["texts"])
    assert abs(float((embeddings ** 2).sum(axis=1).min()) - 1) < 1e-5
    assert session.memo_status.startswith(("serving ", "off: ")) and isinstance(session.memo_stats(), dict)
    assert (readme_folder / "mine.json").exists() and (readme_folder / "mine.png").exists()
    assert (readme_folder / "out.json").exists() and (readme_folder / "out.png").exists()
