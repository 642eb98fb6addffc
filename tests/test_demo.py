"""The demo shows the failure and the fix; the CLI prints it."""

from __future__ import annotations

import subprocess
import sys

from _optim import HAS_MUON

from torch_hollow.cli import main
from torch_hollow.tools.demo import RECIPES, format_table, run_demo


def test_demo_rows_show_who_keeps_the_diagonal():
    rows = {(r.optimizer, r.recipe): r for r in run_demo(steps=10, dim=8)}
    assert len(rows) == 9
    for opt in ("SGD", "AdamW", "Muon") if HAS_MUON else ("SGD", "AdamW"):
        assert rows[opt, "seed recipe"].after_first_step > 0
        assert rows[opt, "torch-hollow"].worst == 0.0
        assert rows[opt, "torch-hollow"].final_loss > 0
    assert rows["SGD", "gradient mask"].worst == 0.0
    assert rows["AdamW", "gradient mask"].worst == 0.0
    if HAS_MUON:
        assert rows["Muon", "gradient mask"].after_first_step > 0
    else:
        assert all(rows["Muon", r].note == "needs torch >= 2.9" for r in RECIPES)
        table = format_table(list(rows.values())).splitlines()
        assert [line.split()[:2] for line in table if "needs torch >= 2.9" in line] == [
            ["Muon", "seed"],
            ["Muon", "gradient"],
            ["Muon", "torch-hollow"],
        ]
    # torch-hollow trains exactly what the gradient mask trains while the mask holds
    assert rows["SGD", "torch-hollow"].final_loss == rows["SGD", "gradient mask"].final_loss


def test_cli_demo_prints_the_table(capsys):
    assert main(["demo", "--steps", "2", "--dim", "6"]) == 0
    out = capsys.readouterr().out
    assert "max|diag| all steps" in out
    assert out.count("torch-hollow") >= 3


def test_python_dash_m_runs_the_demo():
    done = subprocess.run(
        [sys.executable, "-m", "torch_hollow", "demo", "--steps", "1", "--dim", "4"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Muon" in done.stdout
