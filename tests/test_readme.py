"""The README is a promise: its quick-start commands run and do what it says."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start.*?```(?:sh|bash)?\n(.*?)```", text, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_quick_start_has_the_two_commands():
    assert quick_start_commands() == ["./run.sh demo", "./run.sh test"]


def test_readme_demo_command_runs(tmp_path):
    env = dict(os.environ, ATTMEMO_VENV=sys.prefix, ATTMEMO_NO_SETUP="1")
    command = quick_start_commands()[0].split() + ["--workdir", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    assert "rewrote 6 of 6 attention layers" in result.stdout
    assert "max |difference| to the unmodified export = 0.00e+00" in result.stdout
    assert (tmp_path / "minilm.onnx").exists()
    # calibrate + eval on the workload where reuse is real and the one where it is not
    for workload in ("edited", "diverse"):
        assert f"workload {workload}, max 256 tokens" in result.stdout
        data = json.loads((tmp_path / f"eval-{workload}.json").read_text())
        assert data["cosine"]["mean"] >= 0.99 and data["cosine"]["p1"] >= 0.97, "the default budget holds"
        assert (tmp_path / f"eval-{workload}.png").exists()
    assert json.loads((tmp_path / "eval-edited.json").read_text())["memo_rate"] > 0.5
    disk = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert disk < 2 * 2**30, f"the README promises under 2 GB, the demo wrote {disk / 2**30:.2f} GiB"
