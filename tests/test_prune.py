"""Pruned weights that stay pruned: full-shape masks on any parameter, from_prune, hollow_masks_.

References come from ``torch.nn.utils.prune`` itself: the same masks, the same forward.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from _optim import MATRIX_OPTIMIZERS, make_matrix_optimizer
from conftest import assert_bitwise_zero
from torch import nn
from torch.nn.utils import prune

import torch_hollow as th
from torch_hollow.patterns import Mask

# Every kind of layer prune users prune, with an input for it.
LAYERS = {
    "Linear": (lambda: nn.Linear(6, 5), lambda: torch.randn(4, 6)),
    "Conv1d": (lambda: nn.Conv1d(3, 4, 3), lambda: torch.randn(2, 3, 8)),
    "Conv2d": (lambda: nn.Conv2d(3, 4, 3), lambda: torch.randn(2, 3, 6, 6)),
    "Conv3d": (lambda: nn.Conv3d(2, 3, 2), lambda: torch.randn(2, 2, 4, 4, 4)),
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(3, 2, 3), lambda: torch.randn(2, 3, 5, 5)),
    "Embedding": (lambda: nn.Embedding(12, 5), lambda: torch.tensor([[1, 4, 7], [0, 11, 3]])),
}

# prune's own methods, local and structured; global_unstructured is tested on its own.
METHODS = {
    "random_unstructured": lambda m: prune.random_unstructured(m, "weight", amount=0.5),
    "l1_unstructured": lambda m: prune.l1_unstructured(m, "weight", amount=0.6),
    "random_structured": lambda m: prune.random_structured(m, "weight", amount=0.4, dim=0),
    "ln_structured": lambda m: prune.ln_structured(m, "weight", amount=0.5, n=2, dim=1),
    "custom_from_mask": lambda m: prune.custom_from_mask(
        m, "weight", torch.rand_like(m.weight) > 0.3
    ),
}


def _out(module, x):
    out = module(x)
    return out.sum() if out.dim() == 0 else out


def _train(module, x, steps=3, opt=None):
    opt = opt or torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    for _ in range(steps):
        opt.zero_grad()
        _out(module, x).square().mean().backward()
        opt.step()
    return opt


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("kind", list(LAYERS))
def test_from_prune_round_trips_every_method(kind, method):
    make, data = LAYERS[kind]
    torch.manual_seed(0)
    pruned, x = make(), data()
    plain_keys = set(make().state_dict())
    METHODS[method](pruned)
    METHODS["l1_unstructured"](pruned)  # a second round: prune's PruningContainer
    allowed = pruned.weight_mask != 0
    orig = pruned.weight_orig
    before = _out(pruned, x)
    model = nn.Sequential(pruned)
    assert th.from_prune(model) is model
    assert pruned.weight is orig  # the same Parameter object: an optimizer keeps working
    assert not prune.is_pruned(model) and th.is_hollow(pruned)
    assert {k.removeprefix("0.") for k in model.state_dict()} == plain_keys
    assert torch.equal(_out(pruned, x), before)
    assert_bitwise_zero(pruned.weight, ~allowed)
    _train(pruned, x)
    assert_bitwise_zero(pruned.weight, ~allowed)
    assert pruned.weight[allowed].abs().amax() > 0


def test_prunes_own_path_revives_pruned_entries_where_hollow_does_not():
    x = torch.randn(4, 6)
    baseline, hollow = (nn.Linear(6, 5) for _ in range(2))
    hollow.load_state_dict(baseline.state_dict())
    for module in (baseline, hollow):  # a pruned module cannot be deepcopied: prune twice
        prune.l1_unstructured(module, "weight", amount=0.5)
    th.from_prune(hollow)
    held = baseline.weight_mask == 0
    _train(baseline, x)
    _train(hollow, x)
    assert baseline.weight_orig[held].abs().amax() > 0  # weight decay moved them
    assert_bitwise_zero(hollow.weight, held)
    assert torch.equal(baseline(x), hollow(x))  # the same function all along


def test_from_prune_global_unstructured_across_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Conv1d(1, 2, 3))
    prune.global_unstructured(
        [(model[0], "weight"), (model[2], "weight")],
        pruning_method=prune.L1Unstructured,
        amount=0.7,
    )
    masks = {i: model[i].weight_mask != 0 for i in (0, 2)}
    x = torch.randn(3, 6)
    before = model[0](x)
    th.from_prune(model)
    assert type(model[0]) is th.HollowLinear and th.is_hollow(model[2])
    assert torch.equal(model[0](x), before)
    for i, allowed in masks.items():
        assert_bitwise_zero(model[i].weight, ~allowed)


def test_iterative_pruning_rounds_through_from_prune():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.Linear(12, 6))
    x = torch.randn(5, 1, 4, 4)
    params = [(model[0], "weight"), (model[2], "weight")]
    held_before = {}
    for amount in (0.4, 0.65, 0.8):  # of all entries: the zeros held so far go first
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
        masks = {i: model[i].weight_mask != 0 for i in (0, 2)}
        before = model(x)
        th.from_prune(model)
        assert torch.equal(model(x), before)
        for i, allowed in masks.items():
            assert_bitwise_zero(model[i].weight, ~allowed)
            assert (allowed <= ~held_before.get(i, torch.zeros_like(allowed))).all()
            held_before[i] = ~allowed
        _train(model, x)
    total = sum(m.numel() for m in held_before.values())
    assert sum(int(m.sum()) for m in held_before.values()) == round(0.8 * total)


def test_from_prune_refuses_a_pruned_bias_and_changes_nothing():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    prune.l1_unstructured(model[1], "bias", amount=0.5)
    keys = set(model.state_dict())
    with pytest.raises(th.HollowError, match=r"'1\.bias'.*prune\.remove"):
        th.from_prune(model)
    assert set(model.state_dict()) == keys and not th.is_hollow(model[0])


def test_hollow_masks_from_masks_computed_elsewhere():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3))
    masks = {"0.weight": torch.rand(2, 1, 3, 3) > 0.5, "2.weight": torch.rand(3, 8) > 0.5}
    th.hollow_masks_(model, masks)
    assert type(model[2]) is th.HollowLinear and th.is_hollow(model[0])
    for name, allowed in masks.items():
        assert_bitwise_zero(model.get_parameter(name), ~allowed)


def test_hollow_masks_errors_change_nothing():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    good = torch.rand(4, 4) > 0.5
    with pytest.raises(th.HollowError, match=r"'2\.weight' is not a parameter"):
        th.hollow_masks_(model, {"0.weight": good, "2.weight": good})
    with pytest.raises(th.HollowError, match=r"mask of shape \(4, 5\)"):
        th.hollow_masks_(model, {"0.weight": good, "1.weight": torch.rand(4, 5) > 0.5})
    assert not th.is_hollow(model[0]) and not th.is_hollow(model[1])


# --- every guarantee on the full-shape mask path ------------------------------------------

OPTIMIZERS = {
    "sgd-momentum-wd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1),
    "adamw-fused": lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.1, fused=True),
    "adam-foreach": lambda ps: torch.optim.Adam(ps, lr=0.05, foreach=True),
    "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=0.01, momentum=0.5),
}


def _held_layer(kind, seed=0):
    make, data = LAYERS[kind]
    torch.manual_seed(seed)
    module = make()
    allowed = torch.rand_like(module.weight) > 0.5
    th.hollow_(module, "weight", pattern=Mask(allowed))
    return module, data(), ~allowed


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("kind", list(LAYERS))
def test_full_shape_mask_survives_optimizers(kind, opt):
    module, x, held = _held_layer(kind)
    optimizer = OPTIMIZERS[opt](module.parameters())
    for _ in range(4):
        optimizer.zero_grad()
        _out(module, x).square().mean().backward()
        assert_bitwise_zero(module.weight.grad, held)
        optimizer.step()
        assert_bitwise_zero(module.weight, held)


@pytest.mark.parametrize("opt", MATRIX_OPTIMIZERS)
@pytest.mark.parametrize("kind", ["Linear", "Embedding"])
def test_full_shape_mask_survives_matrix_optimizers(kind, opt):
    module, x, held = _held_layer(kind)
    _train(module, x, steps=4, opt=make_matrix_optimizer(opt, [module.weight], lr=0.05))
    assert_bitwise_zero(module.weight, held)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_full_shape_mask_loads_inits_and_copies(kind):
    module, x, held = _held_layer(kind)
    dense = {k: torch.ones_like(v) for k, v in module.state_dict().items()}
    with pytest.warns(th.HollowWarning, match=r"weight.*held entries"):
        module.load_state_dict(dense)
    assert_bitwise_zero(module.weight, held)
    nn.init.normal_(module.weight)  # a raw re-init: the next forward reads zeros again
    reference = copy.deepcopy(module)
    with torch.no_grad():
        reference.weight.masked_fill_(held, 0.0)
    assert torch.equal(_out(module, x), _out(reference, x))
    assert_bitwise_zero(module.state_dict()["weight"], held)
    buffer = io.BytesIO()
    torch.save(module, buffer)
    for twin in (
        copy.deepcopy(module),
        pickle.loads(pickle.dumps(module)),
        torch.load(io.BytesIO(buffer.getvalue()), weights_only=False),
    ):
        _train(twin, x, steps=2)
        assert_bitwise_zero(twin.weight, held)


@pytest.fixture
def fresh_dynamo():
    # As tests/test_compile.py does: no compiled code or recompile history from other tests
    # (torch 2.8 failed to compile here after the rest of the suite, not on its own).
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("kind", ["Linear", "Conv2d", "Embedding"])
def test_full_shape_mask_under_compile(kind, fresh_dynamo):
    module, x, held = _held_layer(kind)
    compiled = torch.compile(module, fullgraph=kind == "Linear")
    opt = torch.optim.AdamW(module.parameters(), lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        _out(compiled, x).square().mean().backward()
        assert_bitwise_zero(module.weight.grad, held)
        opt.step()
        assert_bitwise_zero(module.weight, held)
    with torch.no_grad():
        module.weight.fill_(1.0)  # raw: the compiled forward zeroes it in the graph
    eager = copy.deepcopy(module)
    with torch.no_grad():
        eager.weight.masked_fill_(held, 0.0)
    torch.testing.assert_close(_out(compiled, x), _out(eager, x))


def test_conv_mask_forward_is_the_pruned_forward():
    torch.manual_seed(0)
    conv, x = nn.Conv2d(3, 4, 3), torch.randn(2, 3, 6, 6)
    allowed = torch.rand_like(conv.weight) > 0.5
    expected = F.conv2d(x, conv.weight.detach() * allowed, conv.bias)
    th.hollow_(conv, "weight", pattern=Mask(allowed))
    assert torch.equal(conv(x), expected)


# --- DDP and FSDP2 (2 gloo ranks) ---------------------------------------------------------


def _masked_cnn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 5, 3), nn.Flatten(), nn.Linear(5 * 4 * 4, 3))
    allowed = {
        "0.weight": torch.rand(5, 2, 3, 3, generator=torch.Generator().manual_seed(1)) > 0.5,
        "2.weight": torch.rand(3, 80, generator=torch.Generator().manual_seed(2)) > 0.5,
    }
    return th.hollow_masks_(model, allowed), {k: ~v for k, v in allowed.items()}


def _distributed_mask_case(rank, world, wrap):
    from torch.distributed.tensor import DTensor

    model, held = _masked_cnn()
    if wrap == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        run = DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import fully_shard

        for layer in (model[0], model[2]):
            fully_shard(layer)
        run = fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    torch.manual_seed(rank)
    for _ in range(3):
        opt.zero_grad()
        run(torch.randn(4, 2, 6, 6)).square().mean().backward()
        opt.step()
        for name, mask in held.items():
            weight = model.get_parameter(name)
            full = weight.full_tensor() if isinstance(weight, DTensor) else weight
            assert_bitwise_zero(full, mask)
    rows = {r.name: r for r in th.audit(model)}  # a collective under FSDP2
    assert rows["0.weight"].pattern.startswith("Mask") and not rows["0.weight"].violated


@pytest.mark.parametrize("wrap", ["ddp", "fsdp"])
def test_full_shape_masks_under_ddp_and_fsdp2(wrap):
    from distributed_utils import run_ranks

    run_ranks(_distributed_mask_case, wrap)


def test_lottery_ticket_example_reduced():
    pytest.importorskip("sklearn")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import lottery_ticket as lt

    torch.set_num_threads(2)
    runs = {
        m: lt.run(m, rounds=2, epochs=1, width=4, log=print) for m in ("prune", "torch-hollow")
    }
    base, hollow = runs["prune"][0], runs["torch-hollow"][0]
    assert [r["sparsity"] for r in hollow] == [r["sparsity"] for r in base]
    assert hollow[-1]["sparsity"] == pytest.approx(1 - lt.KEEP**2, abs=1e-3)
    for b, h in zip(base, hollow, strict=True):
        assert h["test_acc"] == b["test_acc"]  # the same function, step for step
        assert h["max_abs_pruned"] == 0.0
        assert all("_orig" not in k and "_mask" not in k for k in h["state_dict_keys"])
    assert base[-1]["max_abs_pruned"] > 0  # momentum and weight decay moved prune's copies
    assert hollow[-1]["tensors_mib"] < base[-1]["tensors_mib"]
    assert hollow[-1]["state_dict_mib"] < base[-1]["state_dict_mib"]
    timing = lt.step_ms({m: r[1:] for m, r in runs.items()}, rounds=2, steps=2)
    assert set(timing) == {"prune", "torch-hollow"} and min(timing.values()) > 0


def test_bench_pruning_comparison_columns(capsys):
    from torch_hollow.cli import main
    from torch_hollow.tools.bench import bench

    rows = bench(
        ["torch-hollow", "prune"],
        points=[(32, 2)],
        sparsity=0.8,
        rounds=2,
        round_s=0.001,
        memory=False,
        steps=3,
    )
    by = {r.recipe: r for r in rows}
    assert by["torch-hollow"].stored_adamw == 0.0
    if hasattr(torch.optim, "Muon"):
        assert by["torch-hollow"].stored_muon == 0.0
    assert by["prune"].stored_adamw > 0  # weight_orig keeps moving under weight decay
    # the packed bits (1 bit per entry) and, below Mask's large size, a bool per entry and the
    # 4-byte keep mask its bitwise AND zeroes with (80% held: dense)
    assert by["torch-hollow"].extra_state_bytes == 32 * 32 // 8 + 32 * 32 * (1 + 4)
    assert by["prune"].extra_state_bytes >= 2 * 32 * 32 * 4  # weight_orig + a float mask
    assert 0 < by["torch-hollow"].extra_state_dict_bytes < by["prune"].extra_state_dict_bytes
    argv = ["bench", "--sparsity", "0.8", "--recipes", "torch-hollow,prune", "--points", "16x2"]
    assert main([*argv, "--rounds", "2", "--steps", "2", "--no-memory"]) == 0
    assert "80% of each weight pruned" in capsys.readouterr().out
