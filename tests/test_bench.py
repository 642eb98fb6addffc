"""torch-hollow bench end to end on a tiny grid: structure and the correctness column only."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _optim import HAS_MUON

from torch_hollow import HollowError
from torch_hollow.cli import main
from torch_hollow.patterns import BlockDiagonal
from torch_hollow.tools.bench import bench, format_rows
from torch_hollow.tools.recipes import RECIPES, Spec


@pytest.fixture(scope="module")
def rows():
    return bench(points=[(16, 3)], rounds=2, round_s=0.001, memory=False, steps=5)


def test_every_recipe_has_a_row_with_ratios(rows):
    assert [r.recipe for r in rows] == list(RECIPES)
    plain = rows[0]
    assert plain.forward_ratio == 1.0 and plain.step_ratio == 1.0
    for r in rows:
        assert r.forward_us > 0 and r.step_us > 0 and r.step_ratio > 0
        assert r.mode == "eager" and (r.n, r.batch) == (16, 3)


def test_correctness_column_tells_the_recipes_apart(rows):
    by = {r.recipe: r for r in rows}
    assert by["torch-hollow"].stored_adamw == 0.0
    assert by["plain"].stored_adamw > 0
    for name in ("W*mask", "parametrize", "prune"):  # raw values kept under the mask
        assert by[name].stored_adamw > 0
    assert by["grad-hook"].stored_adamw == 0.0
    if not HAS_MUON:
        assert all(math.isnan(r.stored_muon) and math.isnan(r.forward_muon) for r in rows)
        assert "| needs torch >= 2.9 | needs torch >= 2.9 |" in format_rows(rows)
        return
    hollow = by["torch-hollow"]
    assert (hollow.stored_muon, hollow.forward_muon) == (0.0, 0.0)
    for name in ("W*mask", "parametrize", "prune"):
        assert by[name].forward_muon == 0.0
    assert by["grad-hook"].stored_muon > 0


def test_memory_columns(rows):
    by = {r.recipe: r for r in rows}
    assert by["torch-hollow"].extra_state_bytes == 0
    # On disk (torch.save): only the pattern's spec in the state dict's metadata, a few bytes
    # whatever n is, where prune adds weight_mask (n^2 floats; weight_orig replaces weight).
    assert 0 < by["torch-hollow"].extra_state_dict_bytes < 256
    assert by["prune"].extra_state_dict_bytes > 16 * 16 * 4
    assert "| eager | 16 | 3 | torch-hollow |" in format_rows(rows)


def test_peak_memory_of_a_step_shows_no_extra_weight_copy():
    rows = bench(
        ["torch-hollow", "parametrize"], points=[(1024, 2)], rounds=1, round_s=0.001, steps=0
    )
    peak = {r.recipe: r.peak_step_bytes for r in rows}
    weight = 1024 * 1024 * 4
    assert peak["torch-hollow"] < peak["plain"] + weight / 2
    assert peak["parametrize"] > peak["plain"] + weight / 2
    assert math.isnan(rows[0].stored_adamw)


def test_batched_pattern_spec():
    rows = bench(
        ["torch-hollow", "W*mask"],
        points=[(8, 2)],
        rounds=1,
        round_s=0.001,
        memory=False,
        steps=3,
        spec=Spec(8, pattern=BlockDiagonal(2), groups=3),
    )
    by = {r.recipe: r for r in rows}
    assert by["torch-hollow"].stored_adamw == 0.0
    assert math.isnan(by["torch-hollow"].stored_muon)  # Muon takes 2-D parameters only


def test_cli_bench_json_and_plot(tmp_path, capsys):
    out, png = tmp_path / "rows.json", tmp_path / "ratios.png"
    code = main(
        [
            "bench",
            "--sizes",
            "8",
            "--batches",
            "2",
            "--rounds",
            "2",
            "--steps",
            "2",
            "--no-memory",
            "--recipes",
            "torch-hollow,grad-hook",
            "--json",
            str(out),
            "--plot",
            str(png),
        ]
    )
    assert code == 0
    text = capsys.readouterr()
    assert "| eager | 8 | 2 | grad-hook |" in text.out and "[1/1]" in text.err
    assert [r["recipe"] for r in json.loads(out.read_text())] == [
        "plain",
        "torch-hollow",
        "grad-hook",
    ]
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cli_bench_refuses_what_it_cannot_honour(capsys):
    assert main(["bench", "--recipes", "magic"]) == 2
    assert "unknown recipe" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["bench", "--device", "cuda"]) == 2
        assert "torch.cuda.is_available() is False" in capsys.readouterr().err


def test_bench_errors_are_hollow_errors():
    with pytest.raises(HollowError, match="unknown recipe"):
        bench(["nope"], points=[(4, 1)])


def test_cli_bench_points(capsys):
    code = main(
        [
            "bench",
            "--points",
            "8x1,12x2",
            "--rounds",
            "1",
            "--steps",
            "0",
            "--no-memory",
            "--recipes",
            "torch-hollow",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "| eager | 8 | 1 | torch-hollow |" in out and "| eager | 12 | 2 | plain |" in out


def test_gpu_timing_script_runs_and_checks_its_zeros_on_cpu(tmp_path):
    """benchmarks/gpu_timing.py (the GPU script's per-layer timing) on a tiny CPU size: a row per
    point and mode, the held entries 0 after the timed steps, and the reduce-overhead check."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "timing.json"
    args = ["--device", "cpu", "--dtype", "float32", "--sizes", "16", "--batches", "4"]
    args += ["--min-rounds", "4", "--max-rounds", "4", "--round-ms", "1", "--warmup", "2"]
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "gpu_timing.py"), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(root / "src")},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| 16 | 4 | eager |" in done.stdout and "| 16 | 4 | compiled |" in done.stdout
    result = json.loads(out.read_text())
    [point] = result["points"]
    assert point["held_max_after"] == {"eager": 0.0, "compiled": 0.0}
    assert point["eager"]["hollow_us"] > 0 and point["compiled"]["hollow_us"] > 0
    assert result["reduce_overhead"]["stored_diagonal_bitwise_zero"] is True
    assert result["reduce_overhead"]["forward_matches_masked_reference"] is True
