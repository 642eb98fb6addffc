"""torch_hollow._routing: which path a forward takes to read a held parameter, and what it reads.

One test per row of the module's table: the stored weight (eager, no grad, compiled, exported),
the copy (functional_call, torch.func, jit.trace), and the refusal. Everything runs in float64
and is compared bitwise with ``F.linear`` on a weight masked by index arithmetic.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_bitwise_zero, diag_mask, masked
from torch import nn
from torch.overrides import TorchFunctionMode

from torch_hollow import HollowLinear, hollow_
from torch_hollow._routing import elsewhere, graph_writes_allowed

D = torch.float64
MASK = diag_mask(4, 4, 1)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().view(torch.int64)


def _layer(seed: int = 0) -> HollowLinear:
    torch.manual_seed(seed)
    return HollowLinear(4, 4, offset=1, dtype=D)


def _reference(x, weight, bias):
    """F.linear on a float64 copy of ``weight`` with the held entries set by index arithmetic."""
    return F.linear(x, masked(weight, MASK), bias)


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class Recorder(TorchFunctionMode):
    """Records the torch functions a forward calls and the tensors it hands to them."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls.append((getattr(func, "__name__", str(func)), args))
        return func(*args, **(kwargs or {}))


def test_eager_reads_the_stored_weight_restored_and_masks_its_gradient():
    layer = _layer()
    x = torch.randn(3, 4, dtype=D)
    nn.init.ones_(layer.weight)  # a raw write since the last step
    with Recorder() as recorder:
        out = layer(x)
    names = [name for name, _ in recorder.calls]
    assert "clone" not in names, f"a copy was made: {names}"
    (_, (_, _, wt)) = next(c for c in recorder.calls if c[0] == "addmm")
    assert wt.data_ptr() == layer.weight.data_ptr() and wt._base is layer.weight
    assert_bitwise_zero(layer.weight, MASK)  # restored in place, before the product
    assert torch.equal(_bits(out), _bits(_reference(x, torch.ones(4, 4, dtype=D), layer.bias)))
    out.square().sum().backward()
    assert_bitwise_zero(layer.weight.grad, MASK)
    assert (layer.weight.grad[~MASK] != 0).all()


def test_eager_without_grad_reads_the_stored_weight_restored():
    layer = _layer()
    x = torch.randn(3, 4, dtype=D)
    nn.init.constant_(layer.weight, -2.0)
    with torch.no_grad():
        out = layer(x)
    assert_bitwise_zero(layer.weight, MASK)
    expected = _reference(x, torch.full((4, 4), -2.0, dtype=D), layer.bias)
    assert torch.equal(_bits(out), _bits(expected))


def test_functional_call_reads_a_copy_and_never_writes_the_callers_tensor():
    layer = _layer()
    x = torch.randn(3, 4, dtype=D)
    theirs = torch.randn(4, 4, dtype=D, requires_grad=True)
    before, stored = _bits(theirs).clone(), _bits(layer.weight).clone()
    out = torch.func.functional_call(layer, {"weight": theirs}, (x,))
    assert torch.equal(_bits(theirs), before) and torch.equal(_bits(layer.weight), stored)
    assert torch.equal(_bits(out), _bits(_reference(x, theirs, layer.bias)))
    out.square().sum().backward()
    assert_bitwise_zero(theirs.grad, MASK)
    assert torch.equal(_bits(theirs), before)


def test_func_grad_and_vmap_take_the_copy_path():
    layer = _layer()
    x = torch.randn(5, 4, dtype=D)
    w = torch.randn(4, 4, dtype=D)

    def loss(weight, xs):
        return torch.func.functional_call(layer, {"weight": weight}, (xs,)).square().sum()

    grad = torch.func.grad(loss)(w, x)
    reference = w.clone().requires_grad_()
    F.linear(x, reference.masked_fill(MASK, 0.0), layer.bias).square().sum().backward()
    assert_bitwise_zero(grad, MASK)
    assert torch.equal(_bits(grad), _bits(reference.grad))
    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(w, x[:, None])
    assert_bitwise_zero(per_sample, MASK)
    # The module's own Parameter inside a transform: a copy too, the stored weight not written.
    nn.init.ones_(layer.weight)
    out = torch.func.vmap(layer)(x)
    assert torch.equal(_bits(out), _bits(_reference(x, torch.ones(4, 4, dtype=D), layer.bias)))
    assert (layer.weight.detach()[MASK] == 1).all()


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
def test_jit_trace_computes_the_held_entries_in_the_trace():
    layer = _layer()
    x = torch.randn(3, 4, dtype=D)
    traced = torch.jit.trace(layer, (x,), check_trace=False)
    nn.init.ones_(layer.weight)  # after tracing, behind the trace's back
    first, second = traced(x), traced(x)
    expected = _reference(x, torch.ones(4, 4, dtype=D), layer.bias)
    assert torch.equal(_bits(first), _bits(expected))
    assert torch.equal(_bits(second), _bits(first))
    assert (layer.weight.detach()[MASK] == 1).all(), "the trace reads a copy, it writes nothing"


def test_compile_writes_the_stored_weight_in_the_graph_and_masks_the_gradient(fresh_dynamo):
    layer = _layer()
    x = torch.randn(3, 4, dtype=D)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    compiled(x)  # compiled first, then written behind its back
    nn.init.ones_(layer.weight)
    out = compiled(x)
    assert_bitwise_zero(layer.weight, MASK)  # the graph's write reached the stored weight
    expected = _reference(x, torch.ones(4, 4, dtype=D), layer.bias)
    torch.testing.assert_close(out, expected)  # the graph may order the sums differently
    (grad,) = torch.autograd.grad(out.square().sum(), [layer.weight])
    assert_bitwise_zero(grad, MASK)
    assert (grad[~MASK] != 0).all()


@pytest.mark.parametrize("strict", [False, True], ids=["non-strict", "strict"])
def test_export_reads_the_stored_weight_and_writes_no_parameter(strict, fresh_dynamo):
    layer = _layer()
    x = torch.randn(3, 4, dtype=D)
    exported = torch.export.export(layer, (x,), strict=strict)
    signature = exported.graph_signature
    assert not signature.buffers_to_mutate and not signature.user_inputs_to_mutate
    assert not getattr(signature, "parameters_to_mutate", {})
    assert {spec.kind.name for spec in signature.output_specs} == {"USER_OUTPUT"}
    targets = [  # the whole graph, the submodules of higher-order ops included
        str(node.target)
        for graph_module in exported.graph_module.modules()
        if isinstance(graph_module, torch.fx.GraphModule)
        for node in graph_module.graph.nodes
        if node.op == "call_function"
    ]
    assert "aten.linear.default" in targets
    assert not [t for t in targets if t.endswith("_.default") or "copy_" in t], targets
    weight = exported.state_dict["weight"]
    assert_bitwise_zero(weight, MASK)
    out = exported.module()(x)
    assert torch.equal(_bits(out), _bits(_reference(x, weight, layer.bias)))


class Coupling(nn.Module):
    def __init__(self):
        super().__init__()
        self.coef = nn.Parameter(torch.randn(4, 4, dtype=D))

    def forward(self, x):
        return x @ self.coef.t()


def _chain(error: BaseException):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def test_hook_held_caller_tensor_under_fullgraph_compile_is_refused(fresh_dynamo):
    module = hollow_(Coupling(), "coef", offset=1)
    theirs = torch.randn(4, 4, dtype=D)
    before = _bits(theirs).clone()
    call = torch.compile(
        lambda x: torch.func.functional_call(module, {"coef": theirs}, (x,)),
        backend="eager",
        fullgraph=True,
    )
    with pytest.raises(Exception) as info:
        call(torch.randn(2, 4, dtype=D))
    chain = [str(e) for e in _chain(info.value)]
    assert any("HollowError" in m for m in chain), f"no HollowError in {info.value!r}"
    messages = [m for m in chain if "torch_hollow:" in m]
    if messages or torch.__version__ >= "2.13":  # torch 2.8's dynamo names the type alone
        message = messages[-1]
        assert "'Coupling.coef'" in message and "torch.compile" in message
        assert message.count("Fix:") == 1
    assert torch.equal(_bits(theirs), before)


def test_hook_held_caller_tensor_under_default_compile_runs_the_copy_eagerly(fresh_dynamo):
    # The refusal breaks the graph; dynamo runs that forward eagerly, where the copy path holds.
    module = hollow_(Coupling(), "coef", offset=1)
    theirs = torch.randn(4, 4, dtype=D)
    before = _bits(theirs).clone()
    call = torch.compile(
        lambda x: torch.func.functional_call(module, {"coef": theirs}, (x,)), backend="eager"
    )
    x = torch.randn(2, 4, dtype=D)
    expected = x @ theirs.masked_fill(diag_mask(4, 4, 1), 0.0).t()
    assert torch.equal(call(x), expected)
    assert torch.equal(_bits(theirs), before)


class Probe(nn.Module):
    """Reports (graph_writes_allowed(), elsewhere()) as numbers, read where it runs."""

    def forward(self, x):
        return x * 0 + float(2 * graph_writes_allowed() + elsewhere())


def _probe(where: str) -> tuple[bool, bool]:
    x = torch.zeros(1)
    if where == "eager":
        out = Probe()(x)
    elif where == "vmap":
        out = torch.func.vmap(Probe())(torch.zeros(2))[:1]
    elif where == "jit.trace":
        out = torch.jit.trace(Probe(), (x,), check_trace=False)(x)
    elif where == "compile":
        out = torch.compile(Probe(), backend="eager", fullgraph=True)(x)
    else:
        out = torch.export.export(Probe(), (x,), strict=where == "export strict").module()(x)
    value = int(out.item())
    return bool(value & 2), bool(value & 1)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
@pytest.mark.parametrize(
    ("where", "writes", "away"),
    [
        ("eager", False, False),
        ("vmap", False, True),
        ("jit.trace", False, True),
        ("export non-strict", False, False),
        ("export strict", False, True),
    ],
)
def test_elsewhere_and_graph_writes_allowed(where, writes, away, fresh_dynamo):
    assert _probe(where) == (writes, away)


def test_graph_writes_allowed_under_compile(fresh_dynamo):
    assert _probe("compile")[0] is True
