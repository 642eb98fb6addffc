"""What differs between torch versions, probed on the running one: export vs compile, Muon."""

from __future__ import annotations

import pytest
import torch
from _optim import HAS_MUON, NewtonSchulz, orthogonalise
from conftest import assert_bitwise_zero, diag_mask
from torch import nn

from torch_hollow import HollowLinear
from torch_hollow._routing import _exporting, graph_writes_allowed


class _Writes(nn.Module):
    """Returns ``x + 1`` where the traced forward may write parameters, else ``x``."""

    def forward(self, x):
        return x + 1 if graph_writes_allowed() else x


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_marking_by_hand_is_what_assume_constant_result_does():
    def probe():
        return True

    assert torch.compiler.assume_constant_result(probe) is probe
    assert vars(probe) == vars(_exporting) == {"_dynamo_marked_constant": True}


def test_graph_writes_under_compile_only():
    x = torch.zeros(2)
    assert torch.equal(_Writes()(x), x)  # eager
    compiled = torch.compile(_Writes(), fullgraph=True, backend="eager")
    assert torch.equal(compiled(x), x + 1)


@pytest.mark.parametrize("strict", [True, False])
def test_no_graph_writes_under_export(strict):
    x = torch.zeros(2)
    program = torch.export.export(_Writes(), (x,), strict=strict)
    assert torch.equal(program.module()(x), x)


@pytest.mark.parametrize("strict", [True, False])
def test_export_both_ways_is_plain_linear(strict):
    torch.manual_seed(0)
    model = nn.Sequential(HollowLinear(5, 5), nn.Tanh())
    nn.init.ones_(model[0].weight)  # zeroed by the eager forward below, not by the export
    x = torch.randn(3, 5)
    expected = model(x)
    program = torch.export.export(model, (x,), strict=strict)
    ops = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert ops == ["aten.linear.default", "aten.tanh.default"]  # no grad-mode wrapper either
    assert not program.graph_signature.buffers_to_mutate
    assert torch.equal(program.module()(x), expected)
    assert_bitwise_zero(program.state_dict["0.weight"], diag_mask(5, 5))


def test_compile_then_export_then_compile_keep_their_own_answer():
    model = nn.Sequential(HollowLinear(4, 4))
    x = torch.randn(2, 4)
    compiled = torch.compile(model, fullgraph=True)
    compiled(x)
    torch.export.export(model, (x,), strict=True)
    nn.init.ones_(model[0].weight)
    compiled(x)  # the compiled graph still zeroes the stored weight in its graph
    assert_bitwise_zero(model[0].weight, diag_mask(4, 4))


def test_muon_presence_is_as_documented():
    # README: Muon needs torch >= 2.9; the stand-in covers older torch.
    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    assert HAS_MUON == ((major, minor) >= (2, 9))


def test_stand_in_orthogonalises_like_muon():
    g = torch.randn(6, 4, dtype=torch.float64)
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    # Muon's quintic iteration lands near U V^T, singular values roughly in (0.5, 1.5).
    s = torch.linalg.svdvals(orthogonalise(g))
    assert (s > 0.3).all() and (s < 1.5).all()
    cos = torch.nn.functional.cosine_similarity(orthogonalise(g).flatten(), (u @ vh).flatten(), 0)
    assert cos > 0.9
    if HAS_MUON:
        from torch.optim._muon import _zeropower_via_newtonschulz

        theirs = _zeropower_via_newtonschulz(g, (3.4445, -4.7750, 2.0315), 5, 1e-7)
        torch.testing.assert_close(orthogonalise(g), theirs.to(g.dtype), rtol=0.05, atol=0.02)


def test_stand_in_steps_like_muon():
    if not HAS_MUON:
        pytest.skip("torch.optim.Muon needs torch >= 2.9")
    torch.manual_seed(0)
    ours, theirs = nn.Linear(5, 7, bias=False), nn.Linear(5, 7, bias=False)
    theirs.load_state_dict(ours.state_dict())
    opts = [
        NewtonSchulz(ours.parameters(), lr=0.05),
        torch.optim.Muon(theirs.parameters(), lr=0.05),
    ]
    x = torch.randn(8, 5)
    for _ in range(3):
        for layer, opt in zip((ours, theirs), opts, strict=True):
            opt.zero_grad()
            layer(x).square().sum().backward()
            opt.step()
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=0, atol=1e-2)
