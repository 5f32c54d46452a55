"""bench/speed.py's GPU section, run on the CPU with the tiny config: the code a GPU machine will run, known to work
(random Llama, 8 + 8 samples of 256 tokens, ATWU/GradDiff/NPO through the engine and the plain peft loop)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_the_gpu_section_runs_on_a_cpu_with_the_tiny_config(tmp_path):
    cmd = [
        sys.executable,
        str(BENCH / "speed.py"),
        "--device",
        "cpu",
        "--gpu-config",
        "tiny",
        "--quick",
        "--steps",
        "1",
        "--gradient-checkpointing",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| tiny | 0.2 M |")]  # the step table
    loops = ["graddiff", "atwu", "npo", "graddiff, bf16 LoRA", "plain peft GradDiff"]
    assert [row.split("|")[3].strip() for row in rows] == loops
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert float(cells[3]) > 0 and float(cells[6].replace(",", "")) > 0  # step seconds, tokens/s
        assert float(cells[9]) >= 0 and float(cells[11].replace(",", "")) > 0  # host syncs, aten calls a step
    job = next(line for line in proc.stdout.splitlines() if line.startswith("| tiny | 2 |"))  # the whole job
    assert all(float(c) >= 0 for c in job.split("|")[4:-1])
    assert "<!-- bench:speed gpu checkpointing -->" in (tmp_path / "results.md").read_text(encoding="utf-8")
