"""torch-hollow bench end to end on a tiny grid: structure and the correctness column only.

The held entries are found independently of the code under test: the diagonal by ``torch.eye``,
other patterns by the index arithmetic of ``_reference_patterns``.
"""

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
from _reference_patterns import PATTERNS
from conftest import assert_bitwise_zero

from torch_hollow import HollowError
from torch_hollow.cli import main
from torch_hollow.tools.bench import bench, format_rows, train
from torch_hollow.tools.measure import held_max, timing
from torch_hollow.tools.recipes import RECIPES, Spec, stored_params, used_weight

N, STEPS = 16, 5
DIAGONAL = torch.eye(N, dtype=torch.bool)


@pytest.fixture(scope="module")
def rows():
    # One round: each ratio is then exactly this row's time over plain's time of that round.
    return bench(points=[(N, 3)], rounds=1, round_s=0.001, memory=False, steps=STEPS)


def test_every_recipe_has_a_row_with_ratios_over_plain(rows):
    assert [r.recipe for r in rows] == list(RECIPES)
    plain = rows[0]
    for r in rows:
        assert r.mode == "eager" and (r.n, r.batch) == (N, 3)
        for kind in ("forward", "step"):
            ratio, us = getattr(r, f"{kind}_ratio"), getattr(r, f"{kind}_us")
            assert math.isfinite(ratio) and ratio > 0 and us > 0
            assert ratio == us / getattr(plain, f"{kind}_us"), (r.recipe, kind)


def test_ratios_are_taken_inside_each_round():
    # The median of the per-round ratios (2, 2, 1, 2), not the ratio of the medians (2.5 / 1.5).
    times = {("a", k): [2.0, 4.0, 3.0, 2.0] for k in ("forward", "step")}
    times |= {("p", k): [1.0, 2.0, 3.0, 1.0] for k in ("forward", "step")}
    times |= {("q", k): [4.0, 4.0, 4.0, 4.0] for k in ("forward", "step")}
    assert timing(times, "a", "p")["step_ratio"] == 2.0
    assert timing(times, "a", "p")["step_us"] == 2.5
    assert timing(times, "a", "q")["forward_ratio"] == 0.625  # over the reference named


def test_correctness_columns_read_the_held_entries(rows):
    # Each column is the max |value| on the diagonal (torch.eye, not the pattern) of the
    # weights the bench trained.
    for r in rows:
        stored = stored_params(train(r.recipe, Spec(N), "AdamW", STEPS))
        assert r.stored_adamw == stored.detach()[DIAGONAL].abs().max().item(), r.recipe
        if HAS_MUON:
            muon = train(r.recipe, Spec(N), "Muon", STEPS)
            assert r.stored_muon == stored_params(muon).detach()[DIAGONAL].abs().max().item()
            assert r.forward_muon == used_weight(muon).detach()[DIAGONAL].abs().max().item()
    assert_bitwise_zero(train("torch-hollow", Spec(N), "AdamW", STEPS).weight, DIAGONAL)


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
    pattern, held = PATTERNS["blocks"](8, 8)  # held: by index arithmetic, not the pattern
    spec = Spec(8, pattern=pattern, groups=3)
    rows = bench(
        ["torch-hollow", "W*mask"],
        points=[(8, 2)],
        rounds=1,
        round_s=0.001,
        memory=False,
        steps=3,
        spec=spec,
    )
    by = {r.recipe: r for r in rows}
    stored = stored_params(train("torch-hollow", spec, "AdamW", 3))
    assert_bitwise_zero(stored, held)
    assert by["torch-hollow"].stored_adamw == 0.0
    w_mask = stored_params(train("W*mask", spec, "AdamW", 3)).detach()
    assert by["W*mask"].stored_adamw == w_mask[..., held].abs().max().item() > 0
    assert math.isnan(by["torch-hollow"].stored_muon)  # Muon takes 2-D parameters only


def test_an_empty_selection_is_not_read_as_holding():
    none = torch.zeros(4, 4, dtype=torch.bool)
    assert math.isnan(held_max([(torch.ones(4, 4), none)]))
    assert math.isnan(held_max([]))
    # across layers: the max over what is held anywhere, NaN still counted
    assert held_max([(torch.ones(4, 4), none), (torch.full((4, 4), 2.0), ~none)]) == 2.0
    eye = torch.eye(2, dtype=torch.bool)  # a NaN on a held entry is not "0.0 holds" either
    assert math.isnan(held_max([(torch.zeros(2, 2), eye), (torch.full((2, 2), math.nan), eye)]))


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
