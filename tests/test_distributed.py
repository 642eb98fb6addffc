"""DDP, FSDP2, tensor parallel and distributed checkpoints on 2 gloo ranks (CPU).

Each case spawns two processes, bounded in time, with a fresh port and a destroyed process group.
Assertions run inside the ranks; a failing rank fails the test with its traceback. With
``--device cuda`` the same cases run on one GPU: NCCL, world size 1.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from _optim import HAS_MUON, NewtonSchulz
from distributed_utils import run_ranks
from torch import nn

import torch_hollow as th


def _launch(device, case, *args):
    if device.type == "cuda":
        run_ranks(case, "cuda", *args, world=1, backend="nccl")
    else:
        run_ranks(case, "cpu", *args)


def _mask(rows, cols, offset=0):
    return torch.arange(cols)[None, :] - torch.arange(rows)[:, None] == offset


def _zero(t, mask):
    from torch.distributed.tensor import DTensor

    full = t.full_tensor() if isinstance(t, DTensor) else t
    values = full.detach()[mask.to(full.device)]
    assert values.numel() and not ((values != 0) | torch.signbit(values)).any(), values


def _plain(device):
    return nn.Sequential(
        nn.Linear(7, 9), nn.Tanh(), nn.Linear(9, 9), nn.Tanh(), nn.Linear(9, 9)
    ).to(device)


def _model(device, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        th.HollowLinear(7, 9),
        nn.Tanh(),
        th.HollowLinear(9, 9, offset=1),
        nn.Tanh(),
        nn.Linear(9, 9),
    ).to(device)


MASKS = {0: _mask(9, 7), 2: _mask(9, 9, 1)}
OPTS = {
    "newton-schulz": lambda held, m: NewtonSchulz(held, lr=0.05),  # Muon's update, any torch
    "adamw-fused": lambda held, m: torch.optim.AdamW(
        m.parameters(), lr=0.05, fused=True, weight_decay=0.1
    ),
}
if HAS_MUON:
    OPTS["muon"] = lambda held, m: torch.optim.Muon(held, lr=0.05)
MATRIX_OPT = OPTS["muon" if HAS_MUON else "newton-schulz"]


def _steps(model, run, opt, device, steps=3):
    torch.manual_seed(dist.get_rank())
    for _ in range(steps):
        opt.zero_grad()
        x = torch.randn(6, 7, device=device)
        F.mse_loss(run(x), torch.zeros(6, 9, device=device)).backward()
        for i, mask in MASKS.items():
            _zero(model[i].weight.grad, mask)
        opt.step()
        for i, mask in MASKS.items():
            _zero(model[i].weight, mask)


def _ddp_case(rank, world, device, bucket_view, compiled):
    from torch.nn.parallel import DistributedDataParallel as DDP

    for name, factory in OPTS.items():
        model = _model(device)
        ddp = DDP(model, gradient_as_bucket_view=bucket_view)
        run = torch.compile(ddp) if compiled else ddp
        _steps(model, run, factory([model[0].weight, model[2].weight], model), device)
        gathered = [torch.empty_like(model[0].weight) for _ in range(world)]
        dist.all_gather(gathered, model[0].weight.detach())
        assert all(torch.equal(gathered[0], g) for g in gathered), f"{name}: ranks diverged"


@pytest.mark.parametrize("bucket_view", [True, False])
def test_ddp(bucket_view, device):
    _launch(device, _ddp_case, bucket_view, False)


def test_ddp_compiled(device):
    _launch(device, _ddp_case, True, True)


def _fsdp_case(rank, world, device, per_layer, reshard, hollow_after):
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    for factory in OPTS.values():
        torch.manual_seed(0)
        model = _plain(device) if hollow_after else _model(device)
        if per_layer:
            for layer in model:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer, reshard_after_forward=reshard)
        fully_shard(model, reshard_after_forward=reshard)
        if hollow_after:  # plain layers, sharded first, made hollow afterwards
            th.hollow_(model[0])
            th.hollow_(model[2], offset=1)
            nn.init.ones_(model[0].weight)  # a raw write on the sharded parameter
        assert isinstance(model[0].weight, DTensor)
        _steps(model, model, factory([model[0].weight, model[2].weight], model), device)
        rows = {r.name: r for r in th.audit(model)}  # a collective: every rank calls it
        assert rows["0.weight"].pattern == "Diagonal(offset=0)"
        assert not rows["0.weight"].violated and not rows["2.weight"].violated


@pytest.mark.parametrize("per_layer,reshard", [(True, True), (True, False), (False, True)])
def test_fsdp2(per_layer, reshard, device):
    _launch(device, _fsdp_case, per_layer, reshard, False)


def test_fsdp2_hollow_after_wrapping(device):
    _launch(device, _fsdp_case, True, True, True)


def _tp_case(rank, world, device):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    mesh = init_device_mesh(device, (world,))
    torch.manual_seed(0)
    model = nn.Sequential(th.HollowLinear(8, 6, offset=-1), nn.Tanh(), th.HollowLinear(6, 6)).to(
        device
    )
    parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
    assert model[0].weight.placements[0].dim == 0 and model[2].weight.placements[0].dim == 1
    masks = {0: _mask(6, 8, -1), 2: _mask(6, 6)}
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    x = torch.randn(5, 8, device=device)  # the same input on every rank (replicated)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().sum().backward()
        for i, mask in masks.items():
            assert isinstance(model[i].weight.grad, DTensor)
            _zero(model[i].weight.grad, mask)
        opt.step()
        for i, mask in masks.items():
            _zero(model[i].weight, mask)
    nn.init.ones_(model[2].weight)
    th.zero_diagonal_(model[2].weight)  # the global diagonal, not a replicated copy
    _zero(model[2].weight, masks[2])
    assert (model[2].weight.full_tensor()[~masks[2].to(device)] == 1).all()


def test_tensor_parallel_colwise_and_rowwise(device):
    _launch(device, _tp_case)


def _partial_case(rank, world, device):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial

    mesh = init_device_mesh(device, (world,))
    module = nn.Module()
    local = torch.ones(3, 3, device=device)
    module.w = nn.Parameter(DTensor.from_local(local, mesh, [Partial()]))
    with pytest.raises(
        th.HollowError, match=r"'Module\.w' \(shape \(3, 3\)\).*holds partial sums"
    ):
        th.hollow_(module, "w")
    assert not th.is_hollow(module) and not module._forward_pre_hooks  # nothing changed
    # stepped after the layout changed under a held parameter: refused by the guard, located
    held = th.hollow_(nn.Linear(3, 3, device=device), "weight")
    held.weight = nn.Parameter(
        DTensor.from_local(torch.ones(3, 3, device=device), mesh, [Partial()])
    )
    with pytest.raises(
        th.HollowError, match=r"'HollowLinear\.weight' \(shape \(3, 3\)\).*partial sums"
    ):
        th.guard.enforce(held)


def test_partial_placement_is_refused(device):
    _launch(device, _partial_case)


def _dcp_case(rank, world, device, path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.fsdp import fully_shard

    model = _model(device)
    fully_shard(model)
    _steps(model, model, MATRIX_OPT([model[0].weight, model[2].weight], model), device, 2)
    dcp.save({"model": model.state_dict()}, checkpoint_id=path)
    twin = _model(device, seed=5)
    fully_shard(twin)
    state = {"model": twin.state_dict()}
    dcp.load(state, checkpoint_id=path)
    twin.load_state_dict(state["model"])
    for i in MASKS:
        assert torch.equal(twin[i].weight.full_tensor(), model[i].weight.full_tensor())
    # A dense checkpoint (a plain model's): the diagonal is dropped with a warning.
    plain = _plain(device)
    with torch.no_grad():
        plain[0].weight.fill_(0.5)
        plain[0].weight[3, 3] = -2.5
    dense = path + "-dense"
    dcp.save({"model": plain.state_dict()}, checkpoint_id=dense)
    state = {"model": twin.state_dict()}
    dcp.load(state, checkpoint_id=dense)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        twin.load_state_dict(state["model"])
    messages = [str(w.message) for w in caught if issubclass(w.category, th.HollowWarning)]
    assert any("'0.weight' set 7 non-zero" in m and "dropped: 2.5" in m for m in messages), (
        messages
    )
    _zero(twin[0].weight, MASKS[0])
    assert (twin[0].weight.full_tensor()[~MASKS[0].to(device)] == 0.5).all()


def test_distributed_checkpoint_roundtrip_and_dense_load(tmp_path, device):
    _launch(device, _dcp_case, str(tmp_path / "ckpt"))
