"""torch-hollow bench --models on tiny sizes: structure and correctness columns, no timings."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import assert_bitwise_zero

from torch_hollow import HollowError
from torch_hollow.cli import main
from torch_hollow.tools.bench_models import _ModelCase, bench_models, format_model_rows
from torch_hollow.tools.measure import held_max
from torch_hollow.tools.model_recipes import MODELS, held_entries


@pytest.fixture(scope="module")
def rows():
    # One round: each ratio is then exactly this build's time over its peer's of that round.
    return bench_models(tiny=True, rounds=1, round_s=0.001, steps=5)


def test_a_row_per_model_and_build_with_ratios_over_the_peer(rows):
    assert [(r.model, r.recipe) for r in rows] == [
        (name, recipe) for name, m in MODELS.items() for recipe in (m.peer_name, "torch-hollow")
    ]
    for peer, hollow in zip(rows[::2], rows[1::2], strict=True):
        assert peer.mode == hollow.mode == "eager" and peer.size == hollow.size
        for kind in ("forward", "step"):
            ratio, us = getattr(hollow, f"{kind}_ratio"), getattr(hollow, f"{kind}_us")
            assert math.isfinite(ratio) and ratio > 0 and us > 0
            assert ratio == us / getattr(peer, f"{kind}_us"), (hollow.model, kind)


def test_torch_hollow_stores_and_uses_exact_zeros(rows):
    # The columns read both builds on the peer's masks (the model's own arithmetic, see
    # test_the_peers_masks_are_the_models_own), so a torch-hollow build holding the wrong
    # entries, or none, cannot read 0.0 (an empty selection reads NaN).
    by = {(r.model, r.recipe): r for r in rows}
    for name in MODELS:
        hollow = by[name, "torch-hollow"]
        assert (hollow.stored_held, hollow.forward_held) == (0.0, 0.0)
    # The masked peers keep their initial random values under the mask; GOLEM starts W at 0 and
    # its gradient there is 0, so Adam leaves its stored diagonal at 0 too.
    assert by["maf", "W*mask"].stored_held > 0 and by["maf", "W*mask"].forward_held == 0.0
    assert by["notears-mlp", "fc1 W*mask"].stored_held > 0
    assert by["notears-mlp", "fc1 W*mask"].forward_held == 0.0
    assert by["golem", "W*(1-I)"].stored_held == 0.0
    assert by["mlp", "plain"].forward_held > 0  # plain learns its diagonal
    # p.mul_(mask) after each step: |held| reads 0.0, -0.0 included (see the test below).
    assert (
        by["sparse-llm", "p.mul_(mask)"].stored_held,
        by["sparse-llm", "p.mul_(mask)"].forward_held,
    ) == (0.0, 0.0)


def test_loss_trajectories_agree_where_the_function_is_the_same(rows):
    for r in rows:
        if r.model == "mlp":
            assert math.isnan(r.loss_diff)
        else:
            assert r.loss_diff < 1e-5, r
    assert "n/a (peer is plain)" in format_model_rows(rows)


def test_the_peers_masks_are_the_models_own():
    d, m = 4, 3
    # MAF: what survives the three held masks is autoregressive: output o (shift and
    # log-scale of feature o % d) reads only inputs before it, and does read some.
    maf = MODELS["maf"].peer(d=d, hidden=8, transforms=1)
    allowed = [~held for _, _, held in held_entries(maf)]
    reach = allowed[2].long() @ allowed[1].long() @ allowed[0].long()
    o, j = torch.arange(2 * d)[:, None] % d, torch.arange(d)[None, :]
    assert (reach[o <= j] == 0).all() and (reach[o > j] > 0).all()
    # NOTEARS-MLP: hidden unit j*m + k belongs to node j and must not read input j.
    [(_, _, fc1)] = held_entries(MODELS["notears-mlp"].peer(d=d, m=m))
    assert all(fc1[j * m + k, i] == (i == j) for j in range(d) for k in range(m) for i in range(d))
    for name, size in (("golem", {"d": 5}), ("mlp", {"width": 5, "depth": 2})):
        for _, _, held in held_entries(MODELS[name].peer(**size)):
            assert torch.equal(held, torch.eye(5, dtype=torch.bool))
    # sparse-llm: the pruning's own masks, half of each row of every decoder projection (7 per
    # layer), on the smallest |w| of the unpruned weight drawn from the same seed.
    llm = MODELS["sparse-llm"]
    size, _ = llm.sized(tiny=True)
    torch.manual_seed(0)
    peer = llm.peer(**size)
    entries = held_entries(peer)
    assert len(entries) == 7 * size["layers"]
    torch.manual_seed(0)
    dense = type(peer.lm)(peer.lm.config)
    for name, (_, _, held) in zip(peer.pruned, entries, strict=True):
        assert ".layers." in f".{name}" and (held.sum(1) == held.shape[1] // 2).all()
        w = dense.get_parameter(name).detach().abs()
        assert (
            w[held].view(-1, held.shape[1] // 2).amax(1)
            <= w[~held].view(held.shape[0], -1).amin(1)
        ).all()


@pytest.mark.parametrize("name", list(MODELS))
def test_both_builds_start_from_the_same_free_values(name):
    model = MODELS[name]
    size, _ = model.sized(tiny=True)
    built = []
    for build in (model.peer, model.hollow):
        torch.manual_seed(0)
        built.append(held_entries(build(**size)))
    assert len(built[0]) == len(built[1]) > 0
    for (_, used_peer, held_peer), (stored, used, held) in zip(*built, strict=True):
        assert torch.equal(held_peer, held)  # torch-hollow's rule holds the peer's entries
        assert_bitwise_zero(stored, held)
        assert torch.equal(used_peer[~held], used[~held])


def test_compiled_mode_keeps_the_zeros():
    rows = bench_models(["maf"], modes=("compiled",), tiny=True, rounds=1, round_s=0.001, steps=2)
    hollow = rows[1]
    assert (hollow.mode, hollow.stored_held, hollow.forward_held) == ("compiled", 0.0, 0.0)
    assert hollow.loss_diff < 1e-5


def test_cli_prints_the_table_and_writes_json_and_plot(tmp_path, capsys):
    out, png = tmp_path / "models.json", tmp_path / "models.png"
    args = ["bench", "--models", "golem,mlp", "--tiny", "--rounds", "2", "--steps", "2"]
    assert main([*args, "--json", str(out), "--plot", str(png)]) == 0
    text = capsys.readouterr()
    assert "| golem | d=6 batch=16 | eager | torch-hollow |" in text.out
    assert "[2/2] eager mlp" in text.err
    assert [(r["model"], r["recipe"]) for r in json.loads(out.read_text())] == [
        ("golem", "W*(1-I)"),
        ("golem", "torch-hollow"),
        ("mlp", "plain"),
        ("mlp", "torch-hollow"),
    ]
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_unknown_models_are_refused(capsys):
    assert main(["bench", "--models", "maf,vae"]) == 2
    assert "unknown model(s) ['vae']" in capsys.readouterr().err
    with pytest.raises(HollowError, match="unknown model"):
        bench_models(["vae"])


def test_sparse_llm_held_entries_after_adamw_steps():
    # Lockstep AdamW steps as the bench takes them: torch-hollow stores +0.0 on every pruned
    # entry; the peer's p.mul_(mask) stores 0.0 with the sign of the step (-0.0 on about half),
    # which the held columns read as 0.0 (they take |value|).
    model = MODELS["sparse-llm"]
    cases = [
        _ModelCase(model, b, True, False, torch.device("cpu")) for b in (model.peer, model.hollow)
    ]
    losses = [[case.step().item() for _ in range(3)] for case in cases]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    peer, hollow = (held_entries(case.module) for case in cases)
    for (stored_peer, _, held), (stored, _, held_hollow) in zip(peer, hollow, strict=True):
        assert torch.equal(held, held_hollow)
        assert_bitwise_zero(stored, held)
        assert (stored_peer.detach()[held] == 0).all()
    negative = sum(int(torch.signbit(p.detach()[held]).sum()) for p, _, held in peer)
    assert negative > 0  # -0.0: the peer's entries are 0.0, not +0.0
    assert held_max((p, held) for p, _, held in peer) == 0.0
