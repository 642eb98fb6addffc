"""The examples run as the README shows them (short versions)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("wrap", ["ddp", "fsdp"])
def test_ddp_fsdp_example_under_torchrun(wrap):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(ROOT / "examples" / "ddp_fsdp.py"),
            "--wrap",
            wrap,
            "--steps",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "rank 0 step    4 loss" in done.stdout and "rank 1 step    4 loss" in done.stdout
    assert "Diagonal(offset=0)" in done.stdout and "VIOLATED" not in done.stdout
