"""Works with: torch.func, parametrizations, TorchScript, legacy ONNX, copies, check on pickles.

Each test walks one path a user walks with a layer that goes where an ``nn.Linear`` goes, and
asserts that what the layer computes and stores has bitwise 0.0 on its held entries, or that the
library refuses with a `HollowError` naming the fix; never a write into the caller's tensor.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_bitwise_zero, diag_mask, masked
from test_nn import COPIES  # deepcopy, pickle, torch.save + load
from torch import nn
from torch.func import (
    functional_call,
    grad,
    grad_and_value,
    hessian,
    jacfwd,
    jacrev,
    stack_module_state,
    vmap,
)
from torch.nn.utils import parametrizations, parametrize

import torch_hollow as th
from torch_hollow.patterns import BlockDiagonal, Diagonal, Mask


def _held(kind: str, device) -> tuple[int, int, object, torch.Tensor]:
    """(out, in, pattern, held mask built by index arithmetic) for each kind of pattern."""
    if kind == "diagonal":
        return 5, 5, Diagonal(0), diag_mask(5, 5, 0, device)
    if kind == "offset-rect":
        return 4, 7, Diagonal(2), diag_mask(4, 7, 2, device)
    if kind == "block":  # NOTEARS-MLP: rows 2g, 2g+1 must not read input g
        i = torch.arange(6, device=device)[:, None] // 2
        return 6, 3, BlockDiagonal(rows=2, cols=1), i == torch.arange(3, device=device)[None]
    allowed = torch.rand(5, 6, generator=torch.Generator().manual_seed(3)) > 0.4
    return 5, 6, Mask(allowed), ~allowed.to(device)


KINDS = ["diagonal", "offset-rect", "block", "mask"]


def _layer_and_params(kind, device, seed=0):
    out, inp, pattern, held = _held(kind, device)
    torch.manual_seed(seed)
    layer = th.HollowLinear(inp, out, pattern=pattern, device=device)
    # The caller's own tensors, with non-zero values on the held entries.
    params = {
        "weight": torch.randn(out, inp, device=device),
        "bias": torch.randn(out, device=device),
    }
    return layer, params, held


def _reference_loss(weight, bias, x, held):
    return F.linear(x, weight.masked_fill(held, 0.0), bias).square().sum()


# --- torch.func ---------------------------------------------------------------------------


@pytest.mark.parametrize("as_parameter", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_functional_call_never_writes_the_callers_tensor(kind, as_parameter, device):
    layer, params, held = _layer_and_params(kind, device)
    if as_parameter:  # e.g. another model's Parameters: still the caller's
        params = {k: nn.Parameter(v) for k, v in params.items()}
    before = {k: v.detach().clone() for k, v in params.items()}
    versions = {k: v._version for k, v in params.items()}
    own = layer.weight
    x = torch.randn(3, params["weight"].shape[1], device=device)
    out = functional_call(layer, params, (x,))
    for k, v in params.items():
        assert torch.equal(v.detach(), before[k]) and v._version == versions[k]
    assert layer.weight is own
    w0 = masked(before["weight"], held)
    assert torch.equal(out, F.linear(x, w0, before["bias"]))


@pytest.mark.parametrize("kind", KINDS)
def test_func_grad_and_grad_and_value_are_hollow(kind, device):
    layer, params, held = _layer_and_params(kind, device)
    x = torch.randn(4, params["weight"].shape[1], device=device)

    def loss(p):
        return functional_call(layer, p, (x,)).square().sum()

    g = grad(loss)(params)
    g2, value = grad_and_value(loss)(params)
    w = params["weight"].clone().requires_grad_()
    ref = _reference_loss(w, params["bias"], x, held)
    ref.backward()
    assert_bitwise_zero(g["weight"], held)
    assert torch.equal(g["weight"], w.grad) and torch.equal(g2["weight"], w.grad)
    assert torch.equal(value, ref.detach())


@pytest.mark.parametrize("kind", KINDS)
def test_vmap_per_sample_gradients_are_each_hollow(kind, device):
    layer, params, held = _layer_and_params(kind, device)
    x = torch.randn(6, params["weight"].shape[1], device=device)

    def loss(p, sample):
        return functional_call(layer, p, (sample[None],)).square().sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, x)["weight"]
    assert per_sample.shape == (6, *params["weight"].shape)
    for i in range(6):
        w = params["weight"].clone().requires_grad_()
        _reference_loss(w, params["bias"], x[i : i + 1], held).backward()
        assert_bitwise_zero(per_sample[i], held)
        torch.testing.assert_close(per_sample[i], w.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("transform", [jacrev, jacfwd])
def test_input_jacobian_has_an_exact_zero_diagonal(transform, device):
    layer = th.HollowLinear(6, 6, device=device)
    with torch.no_grad():
        layer.weight.normal_()  # a raw write: the stored diagonal is non-zero now
    jac = transform(layer)(torch.randn(6, device=device))
    assert torch.equal(jac, masked(layer.weight, diag_mask(6, 6, 0, device)))
    assert_bitwise_zero(jac, diag_mask(6, 6, 0, device))


def test_hessian_through_a_hollow_layer(device):
    layer = th.HollowLinear(5, 5, device=device)
    x = torch.randn(5, device=device)
    hess = hessian(lambda v: torch.tanh(layer(v)).sum())(x)
    w0 = masked(layer.weight, diag_mask(5, 5, 0, device))
    ref = torch.autograd.functional.hessian(
        lambda v: torch.tanh(F.linear(v, w0, layer.bias)).sum(), x
    )
    torch.testing.assert_close(hess, ref)


def test_stack_module_state_ensemble(device):
    models = [th.HollowLinear(5, 5, device=device) for _ in range(4)]
    with torch.no_grad():
        for m in models:
            m.weight.add_(1.0)  # raw: each stored diagonal is 1.0 now
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x = torch.randn(3, 5, device=device)
    out = vmap(lambda p, b: functional_call(base, (p, b), (x,)))(params, buffers)
    assert (params["weight"].diagonal(0, -2, -1) == 1.0).all()  # never wrote the stacks
    for i, m in enumerate(models):
        ref = F.linear(x, masked(params["weight"][i], diag_mask(5, 5, 0, device)), m.bias)
        torch.testing.assert_close(out[i], ref)  # a batched matmul: rounding may differ
        jac = vmap(jacrev(lambda p, b, v: functional_call(base, (p, b), (v,)), 2), (0, 0, None))
        assert_bitwise_zero(jac(params, buffers, x[0])[i], diag_mask(5, 5, 0, device))

    def loss(p, b):
        return functional_call(base, (p, b), (x,)).square().sum()

    grads = vmap(grad(loss))(params, buffers)["weight"]
    for i in range(4):
        assert_bitwise_zero(grads[i], diag_mask(5, 5, 0, device))


def test_maml_inner_loop_with_create_graph(device):
    layer = th.HollowLinear(5, 5, device=device)
    x, y = torch.randn(8, 5, device=device), torch.randn(8, 5, device=device)
    params = dict(layer.named_parameters())
    inner = F.mse_loss(functional_call(layer, params, (x,)), y)
    grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
    fast = {k: v - 0.5 * g for (k, v), g in zip(params.items(), grads, strict=True)}
    assert_bitwise_zero(fast["weight"], diag_mask(5, 5, 0, device))
    before = layer.weight.detach().clone()
    outer = F.mse_loss(functional_call(layer, fast, (x,)), y)
    outer.backward()  # second order: through the inner gradient
    assert_bitwise_zero(layer.weight.grad, diag_mask(5, 5, 0, device))
    assert torch.equal(layer.weight.detach(), before)


def test_hook_held_parameter_under_functional_call(device):
    torch.manual_seed(0)
    lstm = th.hollow_(nn.LSTM(3, 4, device=device), "weight_hh_l0")
    own = lstm.weight_hh_l0
    theirs = {name: torch.randn_like(p) for name, p in lstm.named_parameters()}
    before = {k: v.clone() for k, v in theirs.items()}
    x = torch.randn(5, 2, 3, device=device)
    out, _ = functional_call(lstm, theirs, (x,))
    assert all(torch.equal(theirs[k], before[k]) for k in theirs)
    assert lstm.weight_hh_l0 is own  # the module's own tensor is back in its place
    held = torch.eye(4, dtype=torch.bool, device=device).repeat(4, 1)  # each gate's diagonal
    plain = nn.LSTM(3, 4, device=device)
    with torch.no_grad():
        for name, p in plain.named_parameters():
            p.copy_(
                before[name].masked_fill(held, 0.0) if name == "weight_hh_l0" else before[name]
            )
    assert torch.equal(out, plain(x)[0])

    def loss(p):
        return functional_call(lstm, p, (x,))[0].square().sum()

    assert_bitwise_zero(grad(loss)(theirs)["weight_hh_l0"], held)


# --- parametrizations ---------------------------------------------------------------------


class _Mix(nn.Module):
    """A parametrization that moves mass onto the diagonal: W + W^T @ W / n."""

    def forward(self, w):
        return w + w.T @ w / w.shape[0]


class _Twice(nn.Module):
    def forward(self, w):
        return 2 * w


PARAMETRIZATIONS = {
    "weight_norm": lambda m: parametrizations.weight_norm(m),
    "spectral_norm": lambda m: parametrizations.spectral_norm(m),
    "orthogonal": lambda m: parametrizations.orthogonal(m),
    "custom": lambda m: parametrize.register_parametrization(m, "weight", _Mix()),
}


@pytest.mark.parametrize("name", list(PARAMETRIZATIONS))
def test_parametrization_over_a_hollow_layer_computes_hollow(name, device):
    torch.manual_seed(0)
    layer = PARAMETRIZATIONS[name](th.HollowLinear(6, 6, device=device))
    opt = torch.optim.Adam(layer.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        layer(torch.randn(8, 6, device=device)).square().sum().backward()
        opt.step()
    layer.eval()  # spectral_norm stops its power iteration: the computed weight is fixed
    x = torch.randn(4, 6, device=device)
    computed = layer.weight.detach()
    if name != "weight_norm":  # weight_norm keeps a zero diagonal zero (up to its sign)
        assert computed.diagonal().abs().max() > 0  # the parametrization does fill it
    assert torch.equal(layer(x), F.linear(x, masked(computed, diag_mask(6, 6)), layer.bias))
    jac = jacrev(layer)(x[0])
    assert_bitwise_zero(jac, diag_mask(6, 6, 0, device))


@pytest.mark.parametrize("name", list(PARAMETRIZATIONS))
def test_hollow_on_a_parametrized_linear_refuses_with_the_fix(name, device):
    layer = PARAMETRIZATIONS[name](nn.Linear(4, 4, device=device))
    with pytest.raises(th.HollowError, match=r"parametrized.*register the parametrization after"):
        th.hollow_(layer)
    with pytest.raises(th.HollowError, match=r"'0\.weight'.*parametrized"):
        th.convert(nn.Sequential(layer))


def test_parametrizing_a_hook_held_parameter_afterwards_is_refused_at_forward(device):
    mha = th.hollow_(nn.MultiheadAttention(4, 2, device=device), "in_proj_weight")
    parametrize.register_parametrization(mha, "in_proj_weight", _Twice())
    x = torch.randn(3, 1, 4, device=device)
    with pytest.raises(th.HollowError, match=r"in_proj_weight.*no longer a Parameter"):
        mha(x, x, x)


# --- TorchScript and the legacy ONNX exporter ---------------------------------------------


def _model(device):
    torch.manual_seed(0)
    return nn.Sequential(
        th.HollowLinear(5, 5, device=device),
        nn.Tanh(),
        th.HollowLinear(5, 5, pattern=Diagonal(1), device=device),
    )


def _masked_forward(model, x):
    h = torch.tanh(F.linear(x, masked(model[0].weight, diag_mask(5, 5)), model[0].bias))
    return F.linear(h, masked(model[2].weight, diag_mask(5, 5, 1)), model[2].bias)


def test_jit_trace_computes_with_zeros_after_steps_and_raw_writes(device):
    model = _model(device)
    x = torch.randn(4, 5, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, x)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(3):  # train through the traced module: the guard holds the shared weights
        opt.zero_grad()
        traced(x).square().sum().backward()
        assert_bitwise_zero(model[0].weight.grad, diag_mask(5, 5, 0, device))
        opt.step()
        assert_bitwise_zero(model[0].weight, diag_mask(5, 5, 0, device))
    with torch.no_grad():
        model[0].weight.fill_(0.5)  # raw: the traced graph must still read zeros
        model[2].weight.fill_(0.25)
    assert torch.equal(traced(x), _masked_forward(model, x))


def test_jit_script_refuses_and_points_to_trace(device):
    with pytest.raises(th.HollowError, match=r"torch\.jit\.trace"):
        torch.jit.script(_model(device))
    lstm = th.hollow_(nn.LSTM(2, 3), "weight_hh_l0")
    with pytest.raises(th.HollowError, match=r"LSTM \(held: weight_hh_l0\).*torch\.jit\.trace"):
        torch.jit.script(lstm)
    th.remove(lstm)
    torch.jit.script(lstm)  # released: scriptable again


def test_legacy_onnx_export_is_plain_gemm(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = _model("cpu")
    with torch.no_grad():
        model[0].weight.fill_(0.5)  # a raw write right before export
    x = torch.randn(4, 5)
    path = tmp_path / "legacy.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False)
    graph = onnx.load(str(path)).graph
    assert [n.op_type for n in graph.node] == ["Gemm", "Tanh", "Gemm"]
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    assert (torch.from_numpy(weights["0.weight"].copy()).diagonal() == 0).all()
    session = ort.InferenceSession(str(path))
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), _masked_forward(model, x))


# --- copies right after a raw write -------------------------------------------------------


@pytest.mark.parametrize("how", list(COPIES))
def test_copies_right_after_a_raw_write_carry_zeros(how, device):
    model = _model(device)
    model[0].weight.data.fill_diagonal_(0.7)
    model[2].weight.data.fill_(0.3)
    twin = COPIES[how](model)
    assert_bitwise_zero(twin[0]._parameters["weight"], diag_mask(5, 5, 0, device))
    assert_bitwise_zero(twin[2]._parameters["weight"], diag_mask(5, 5, 1, device))


# --- torch-hollow check on a whole-model file ---------------------------------------------


_CUSTOM = """
import torch
import torch_hollow as th


class Custom(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = th.HollowLinear(3, 3)
"""


def _check(path, *extra):
    # Run where a user's own module (custom.py) is importable, as in their project.
    return subprocess.run(
        [sys.executable, "-m", "torch_hollow", "check", path.name, *extra],
        cwd=path.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_audits_a_whole_model_file_without_trust_pickle(tmp_path):
    model = nn.Sequential(
        th.HollowLinear(4, 4),
        nn.ReLU(),
        th.HollowLinear(4, 4, pattern=Mask(torch.rand(4, 4) > 0.5)),
        th.hollow_(nn.LSTM(2, 3), "weight_hh_l0"),
    )
    path = tmp_path / "model.pt"
    torch.save(model, path)
    done = _check(path)
    assert done.returncode == 0, done.stderr
    assert "0.weight" in done.stdout and "3.weight_hh_l0" in done.stdout
    assert "StackedDiagonal" in done.stdout and "VIOLATED" not in done.stdout


def test_check_refuses_foreign_classes_in_one_clean_line(tmp_path):
    (tmp_path / "custom.py").write_text(_CUSTOM)
    save = "import torch, custom; torch.save(custom.Custom(), 'custom.pt')"
    subprocess.run([sys.executable, "-c", save], cwd=tmp_path, check=True, timeout=120)
    path = tmp_path / "custom.pt"
    done = _check(path)
    assert done.returncode == 2 and done.stdout == ""
    message = done.stderr.strip()
    assert "\n" not in message and "\x1b" not in message and message.endswith(".")
    assert "--trust-pickle" in message and "'custom.Custom'" in message
    trusted = _check(path, "--trust-pickle")
    assert trusted.returncode == 0 and "fc.weight" in trusted.stdout


def test_hook_held_module_rebuilt_by_to_empty_keeps_every_guarantee(device):
    with torch.device("meta"):
        lstm = th.hollow_(nn.LSTM(3, 4), "weight_hh_l0")
    lstm.to_empty(device=device)  # new Parameter objects, with uninitialised values
    for p in lstm.parameters():
        nn.init.normal_(p)
    held = torch.eye(4, dtype=torch.bool, device=device).repeat(4, 1)
    opt = torch.optim.SGD(lstm.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        lstm(torch.randn(5, 2, 3, device=device))[0].square().sum().backward()
        assert_bitwise_zero(lstm.weight_hh_l0.grad, held)
        opt.step()
        assert_bitwise_zero(lstm.weight_hh_l0, held)


@pytest.mark.parametrize(
    "payload",
    [
        "torch_hollow.cli.main",  # a torch-hollow function that is not one of its hooks
        "torch.hub.load",  # torch, but not a torch.nn class
        "torch.nn.init.normal_",  # torch.nn, but a function
    ],
)
def test_check_refuses_any_other_global_by_name(tmp_path, payload):
    module, _, name = payload.rpartition(".")
    path = tmp_path / "payload.pt"
    torch.save({"f": getattr(__import__(module, fromlist=[name]), name)}, path)
    done = _check(path)
    assert done.returncode == 2 and f"'{payload}'" in done.stderr, done.stderr
