"""torch.compile, torch.export and ONNX: zero graph breaks, plain ops, same numbers."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_bitwise_zero, diag_mask, masked
from torch import nn

from torch_hollow import HollowLinear


def _model(device, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        HollowLinear(6, 6, device=device), nn.Tanh(), HollowLinear(6, 4, offset=1, device=device)
    )


MASKS = {0: (6, 6, 0), 2: (4, 6, 1)}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_training_has_no_graph_break_and_matches_eager(device):
    eager = _model(device)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True)
    x = torch.randn(8, 6, device=device)
    target = torch.randn(8, 4, device=device)
    opts = [
        torch.optim.AdamW(m.parameters(), lr=0.05, weight_decay=0.1)
        for m in (eager, compiled_model)
    ]
    for _ in range(10):
        for fn, opt in zip((eager, compiled), opts, strict=True):
            opt.zero_grad()
            F.mse_loss(fn(x), target).backward()
            opt.step()
    for i, (rows, cols, offset) in MASKS.items():
        mask = diag_mask(rows, cols, offset, device)
        assert_bitwise_zero(compiled_model[i].weight, mask)
        torch.testing.assert_close(compiled_model[i].weight, eager[i].weight)
    explained = torch._dynamo.explain(_model(device))(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1


def test_compiled_gradient_is_masked_for_autograd_grad(device):
    model = _model(device)
    compiled = torch.compile(model, fullgraph=True)
    loss = compiled(torch.randn(3, 6, device=device)).square().sum()
    g0, g2 = torch.autograd.grad(loss, [model[0].weight, model[2].weight])
    assert_bitwise_zero(g0, diag_mask(6, 6, 0, device))
    assert_bitwise_zero(g2, diag_mask(4, 6, 1, device))
    assert g0.abs().sum() > 0


def test_compiled_forward_after_raw_init_computes_with_zeros(device):
    model = _model(device)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(3, 6, device=device)
    compiled(x)  # compile first, then write behind its back
    nn.init.ones_(model[0].weight)
    w0 = masked(model[0].weight, diag_mask(6, 6, 0, device))
    expected = F.linear(torch.tanh(F.linear(x, w0, model[0].bias)), model[2].weight, model[2].bias)
    torch.testing.assert_close(compiled(x), expected)
    assert_bitwise_zero(model[0].weight, diag_mask(6, 6, 0, device))


def test_compiled_weight_sharing(device):
    layer = HollowLinear(5, 5, device=device)
    compiled = torch.compile(lambda x: layer(torch.tanh(layer(x))), fullgraph=True)
    compiled(torch.randn(2, 5, device=device)).sum().backward()
    assert_bitwise_zero(layer.weight.grad, diag_mask(5, 5, device=device))


def test_compiled_autocast(device):
    model = _model(device)
    compiled = torch.compile(model, fullgraph=True)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        y = compiled(torch.randn(3, 6, device=device))
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert model[0].weight.grad.dtype == torch.float32
    assert_bitwise_zero(model[0].weight.grad, diag_mask(6, 6, 0, device))


def test_export_is_plain_linear(device):
    model = _model(device)
    x = torch.randn(3, 6, device=device)
    program = torch.export.export(model, (x,))
    ops = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert ops == ["aten.linear.default", "aten.tanh.default", "aten.linear.default"]
    assert torch.equal(program.module()(x), model(x))
    weight = program.state_dict["0.weight"]
    assert_bitwise_zero(weight, diag_mask(6, 6, 0, device))


def test_onnx_export_gives_gemm_and_matches_onnxruntime(tmp_path):
    import onnxruntime as ort  # from the test extra

    model = _model("cpu")
    x = torch.randn(3, 6)
    program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    ops = [node.op_type for node in program.model_proto.graph.node]
    assert ops == ["Gemm", "Tanh", "Gemm"]
    path = tmp_path / "hollow.onnx"
    program.save(str(path))
    session = ort.InferenceSession(str(path))
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), model(x).detach(), rtol=1e-5, atol=1e-6)
