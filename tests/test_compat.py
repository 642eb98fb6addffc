"""Files saved by torch-hollow 0.1.0 (tests/data/v0_1_0, written by its make.py at 0.1.0).

A whole model pickled with ``torch.save(model)`` and a state dict must still load, compute the
same outputs bitwise and hold their zeros through training. The held entries are found by index
arithmetic and by re-drawing the masks from make.py's seeds, not by torch-hollow's patterns.
"""

from __future__ import annotations

import copy
import importlib.util
import pickle
from pathlib import Path

import pytest
import torch
from conftest import assert_bitwise_zero, diag_mask

from torch_hollow import audit, is_hollow, rules_of
from torch_hollow.cli import main

DATA = Path(__file__).parent / "data" / "v0_1_0"


def _make():
    spec = importlib.util.spec_from_file_location("make_v0_1_0", DATA / "make.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKE = _make()


def held_entries() -> dict[str, torch.Tensor]:
    """The held entries of every held parameter, as make.py drew them."""
    g = torch.Generator().manual_seed(0)
    mask_allowed = torch.rand(3, 4, generator=g) > 0.5
    conv_allowed = torch.rand(2, 3, 2, generator=g) > 0.5
    i, j = torch.arange(6)[:, None], torch.arange(3)[None, :]
    return {
        "diag.weight": diag_mask(4, 4),
        "mask.weight": ~mask_allowed,
        "union.weight": (i // 2 == j) | (j - i == 1),
        "lstm.weight_hh_l0": torch.arange(12)[:, None] % 3 == torch.arange(3)[None, :],
        "mha.out_proj.weight": diag_mask(3, 3),
        "conv.weight": ~conv_allowed,
    }


def _io() -> tuple[torch.Tensor, torch.Tensor]:
    io = torch.load(DATA / "io.pt", weights_only=True)
    return io["input"], io["output"]


def _whole_model() -> torch.nn.Module:
    return torch.load(DATA / "model.pt", weights_only=False)


def _from_state_dict(recwarn: pytest.WarningsRecorder) -> torch.nn.Module:
    model = MAKE.build()
    model.load_state_dict(torch.load(DATA / "state_dict.pt", weights_only=True))
    assert not recwarn.list  # the saved zeros are zeros: nothing dropped, nothing to say
    return model


def _assert_held(model: torch.nn.Module) -> None:
    params = dict(model.named_parameters())
    for name, held in held_entries().items():
        assert_bitwise_zero(params[name], held)


@pytest.mark.parametrize("load", ["torch.save(model)", "state_dict"])
def test_a_0_1_0_file_loads_computes_the_same_and_holds(load, recwarn):
    model = _whole_model() if load == "torch.save(model)" else _from_state_dict(recwarn)
    x, y = _io()
    with torch.no_grad():
        out = MAKE.run(model, x)
    assert torch.equal(out, y)
    _assert_held(model)
    assert list(rules_of(model["mha"])) == ["out_proj.weight"]
    assert all(is_hollow(model[k]) for k in ("diag", "mask", "union", "lstm", "mha", "conv"))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    for _ in range(3):
        MAKE.run(model, x).square().sum().backward()
        opt.step()
        opt.zero_grad()
        _assert_held(model)  # right after the step: no forward has restored anything


def test_a_0_1_0_pickle_keeps_no_legacy_state_once_used():
    model = _whole_model()
    x, _ = _io()
    MAKE.run(model, x)
    for module in model.values():
        assert not [k for k in module.__dict__ if k.startswith("_hollow_")]
    # a copy, a pickle and a new save of it load and hold as well
    for again in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        with torch.no_grad():
            assert torch.equal(MAKE.run(again, x), MAKE.run(model, x))
        _assert_held(again)


def test_a_0_1_0_hook_held_module_still_hooks_its_gradient():
    model = _whole_model()
    x, _ = _io()
    MAKE.run(model, x).sum().backward()
    lstm = dict(model.named_parameters())["lstm.weight_hh_l0"]
    assert lstm.grad.abs().sum() > 0
    assert_bitwise_zero(lstm.grad, held_entries()["lstm.weight_hh_l0"])


def test_check_reads_a_0_1_0_model_file_without_trust(capsys):
    assert main(["check", str(DATA / "model.pt")]) == 0
    assert "VIOLATED" not in capsys.readouterr().out
    rows = {r.name: r for r in audit(DATA / "state_dict.pt")}
    assert rows["union.weight"].pattern.startswith("Union(")
    assert not any(r.violated for r in rows.values())
