"""The README is a promise: its quick-start commands run and do what it says."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start.*?```(?:sh|bash)?\n(.*?)```", text, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_quick_start_has_the_two_commands():
    assert quick_start_commands() == ["./run.sh demo", "./run.sh test"]


def _disk(folder: Path) -> int:
    total = 0
    for p in folder.rglob("*"):
        try:
            total += p.stat().st_size if p.is_file() else 0
        except OSError:   # removed while we walked
            pass
    return total


def test_readme_demo_command_runs(tmp_path):
    env = dict(os.environ, ATTMEMO_VENV=sys.prefix, ATTMEMO_NO_SETUP="1")
    work = tmp_path / "work"
    command = quick_start_commands()[0].split() + ["--workdir", str(work)]
    log = tmp_path / "demo.log"
    with open(log, "w") as out, open(tmp_path / "demo.err", "w") as err:
        demo = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=err, text=True)
        peak, start = 0, time.monotonic()
        while demo.poll() is None and time.monotonic() - start < 900:
            peak = max(peak, _disk(work)) if work.exists() else peak
            time.sleep(0.5)
        if demo.poll() is None:
            demo.kill()
    result = subprocess.CompletedProcess(command, demo.wait(), log.read_text(), (tmp_path / "demo.err").read_text())
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
    assert peak < 2 * 2**30, f"the README promises under 2 GB, the demo used {peak / 2**30:.2f} GiB at its peak"
