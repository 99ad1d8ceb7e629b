"""The README is a promise: its quick-start commands run and do what it says."""

from __future__ import annotations

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
