"""torch_hollow.constraints: constrain_ keeps a parameter in its sets on every path.

Every check compares with a projection computed here, in float64, from the constraint's
definition (``clamp``, ``(W + W^T) / 2``, norms rescaled), never through torch_hollow's own
code, and with set membership tested directly (``w >= 0``, ``w == w.T`` on the bits, float64
norms). Elementwise constraints and Symmetric are checked bitwise; norms to rounding, within
the band the docs state (``(4 + log2(k)) * eps`` of the dtype for slices of ``k`` entries).
Held zeros are checked bitwise (+0.0) with ``diag_mask``.
"""

from __future__ import annotations

import copy
import io
import math
import pickle
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from _optim import MATRIX, OPTIMIZERS, optimizer_params
from conftest import assert_bitwise_zero, diag_mask
from distributed_utils import run_ranks
from torch import Tensor, nn

from torch_hollow import (
    HollowError,
    HollowLinear,
    HollowWarning,
    audit,
    freeze_,
    hollow_,
    remove,
    rules_of,
)
from torch_hollow.constraints import (
    Bounds,
    Constrained,
    MaxNorm,
    MinMaxNorm,
    NonNeg,
    Symmetric,
    UnitNorm,
    constrain_,
)
from torch_hollow.patterns import Diagonal
from torch_hollow.rules import Zeros

N = 6


# ---- the cases, each with its own float64 reference ----


@dataclass(frozen=True)
class Case:
    """A constraint set on an N x N weight, and how the tests check it."""

    constraints: tuple
    hollow: bool = False  # held zeros on the diagonal too
    box: tuple[float, float] | None = None
    symmetric: bool = False
    norm: tuple[float, float, int | tuple[int, ...]] | None = None  # lo, hi, dim

    @property
    def exact(self) -> bool:
        return self.norm is None

    def make(self, layer: nn.Module, name: str = "weight") -> nn.Module:
        if self.hollow:
            hollow_(layer, name)
        return constrain_(layer, name, *self.constraints)

    def held(self, shape: tuple[int, ...]) -> Tensor | None:
        return diag_mask(*shape[-2:]) if self.hollow else None


CASES = {
    "NonNeg": Case((NonNeg(),), box=(0.0, math.inf)),
    "Bounds": Case((Bounds(-0.05, 0.1),), box=(-0.05, 0.1)),
    "Symmetric": Case((Symmetric(),), symmetric=True),
    "MaxNorm": Case((MaxNorm(0.5),), norm=(0.0, 0.5, 1)),
    "UnitNorm-dim0": Case((UnitNorm(dim=0),), norm=(1.0, 1.0, 0)),
    "MinMaxNorm": Case((MinMaxNorm(0.3, 0.6),), norm=(0.3, 0.6, 1)),
    "hollow+NonNeg (SLIM)": Case((NonNeg(),), hollow=True, box=(0.0, math.inf)),
    "hollow+Bounds+Symmetric": Case(
        (Symmetric(), Bounds(-0.05, 0.1)), hollow=True, box=(-0.05, 0.1), symmetric=True
    ),
    "hollow+NonNeg+MaxNorm": Case(
        (MaxNorm(0.4), NonNeg()), hollow=True, box=(0.0, math.inf), norm=(0.0, 0.4, 1)
    ),
}


def reference(case: Case, w: Tensor) -> Tensor:
    """The projection of ``w`` onto ``case``'s sets, computed in float64 from the definitions."""
    x = w.detach().double()
    held = case.held(tuple(w.shape))
    if held is not None:
        x = x.masked_fill(held, 0.0)
    if case.box is not None:
        lo, hi = case.box
        x = x.clamp(min=_in(lo, w.dtype), max=_in(hi, w.dtype))
    if case.symmetric:
        x = (x + x.mT) / 2
    if case.norm is not None:
        lo, hi, dim = case.norm
        n = torch.linalg.vector_norm(x, dim=dim, keepdim=True)
        factor = torch.where(n > hi, hi / n, torch.where((n < lo) & (n > 0), lo / n, 1.0))
        x = x * factor
    if held is not None:
        x = x.masked_fill(held, 0.0)
    return x.to(w.dtype)


def _in(bound: float, dtype: torch.dtype) -> float:
    # The bound as the weight's dtype holds it (what clamp compares with).
    return bound if math.isinf(bound) else torch.tensor(bound, dtype=dtype).item()


def bits(t: Tensor) -> Tensor:
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.detach().contiguous().view(ints)


def slack(dtype: torch.dtype, count: int = N) -> float:
    """The norms' documented band: ``(4 + log2(k)) * eps`` for slices of ``k`` entries."""
    return (4 + math.log2(count)) * torch.finfo(dtype).eps


def assert_in_sets(case: Case, w: Tensor, what: str = "") -> None:
    """``w`` lies in every set of ``case``: checked directly, bitwise where exact."""
    w = w.detach()
    held = case.held(tuple(w.shape))
    if held is not None:
        assert_bitwise_zero(w, held)
    x = w.double()
    if case.box is not None:
        lo, hi = (_in(b, w.dtype) for b in case.box)
        bad = (x < lo) | (x > hi)
        assert not bad.any(), f"{what}: {int(bad.sum())} entries outside [{lo}, {hi}]"
    if case.symmetric:
        assert torch.equal(bits(w), bits(w.mT)), f"{what}: not bitwise symmetric"
    if case.norm is not None:
        lo, hi, dim = case.norm
        n = torch.linalg.vector_norm(x, dim=dim)
        s = slack(w.dtype)
        ok = ((n <= hi * (1 + s)) & (n >= lo * (1 - s))) | (n == 0)
        assert ok.all(), f"{what}: norms {n[~ok].tolist()} outside [{lo}, {hi}]"


def assert_projected(case: Case, got: Tensor, raw: Tensor, what: str = "") -> None:
    """``got`` is the projection of ``raw``: bitwise for exact sets, to rounding for norms."""
    want = reference(case, raw)
    if case.exact:
        assert torch.equal(bits(got), bits(want)), f"{what}: differs from the reference"
    else:
        torch.testing.assert_close(got.detach(), want, rtol=4 * slack(got.dtype), atol=0)
    assert_in_sets(case, got, what)


def case_params(names=CASES):
    return [pytest.param(CASES[n], id=n) for n in names]


def layer_for(case: Case, seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Linear:
    torch.manual_seed(seed)
    return case.make(nn.Linear(N, N, bias=False, dtype=dtype))


def loss_of(layer: nn.Module, step: int, run: Callable | None = None) -> Tensor:
    # Reads the weight directly too: every entry (held ones included) gets a gradient that
    # pulls it down and out of the sets, so each step needs the guard.
    g = torch.Generator().manual_seed(step)
    x = torch.randn(8, N, generator=g, dtype=layer.weight.dtype)
    target = 3 * torch.randn(8, N, generator=g, dtype=layer.weight.dtype)
    return F.mse_loss((run or layer)(x), target) + layer.weight.sum()


def one_step(opt: torch.optim.Optimizer, layer: nn.Module, step: int) -> None:
    def closure():
        opt.zero_grad()
        loss = loss_of(layer, step)
        loss.backward()
        return loss

    opt.step(closure)


# ---- the optimizer step ----


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("opt_name", optimizer_params(OPTIMIZERS))
@pytest.mark.parametrize("case", case_params())
def test_a_step_lands_on_the_projection_of_the_plain_step(case, opt_name):
    # The same step on a plain twin (same weight, same gradient), projected by the reference:
    # the constrained layer's weight, bitwise (to rounding for norms).
    if opt_name == "LBFGS":
        pytest.skip("LBFGS's closure runs forwards inside the step (each projects)")
    layer = layer_for(case)
    twin = nn.Parameter(layer.weight.detach().clone())
    opt, twin_opt = OPTIMIZERS[opt_name]([layer.weight]), OPTIMIZERS[opt_name]([twin])
    left = False
    for step in range(3):
        opt.zero_grad()
        loss_of(layer, step).backward()
        twin.grad = layer.weight.grad.clone()
        opt.step()
        twin_opt.step()
        left |= not torch.equal(bits(reference(case, twin)), bits(twin))
        assert_projected(case, layer.weight, twin, f"{opt_name} step {step}")
        with torch.no_grad():
            twin.copy_(layer.weight)  # the next step from the same point
    assert left, "no step left the sets: the test would prove nothing"


@pytest.mark.parametrize("opt_name", optimizer_params(OPTIMIZERS))
@pytest.mark.parametrize("case", case_params())
def test_stored_weight_stays_in_the_sets_after_every_step(case, opt_name):
    layer = layer_for(case)
    start = layer.weight.detach().clone()
    opt = OPTIMIZERS[opt_name]([layer.weight])
    for step in range(8):
        one_step(opt, layer, step)
        assert_in_sets(case, layer.weight, f"{opt_name} step {step}")
    assert not torch.equal(layer.weight, start), "the optimizer trained nothing"
    before = bits(layer.weight).clone()
    layer(torch.randn(2, N))  # the forward projects again: no bit moves (idempotent)
    assert torch.equal(bits(layer.weight), before)


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("case", case_params())
def test_compiled_optimizer_step(case):
    layer = layer_for(case)
    opt = torch.optim.AdamW([layer.weight], lr=0.05, weight_decay=0.1)
    step = torch.compile(opt.step)
    for i in range(3):
        opt.zero_grad()
        loss_of(layer, i).backward()
        step()
        assert_in_sets(case, layer.weight, f"compiled step {i}")


@pytest.mark.parametrize("case", case_params())
def test_gradient_is_plain_linear_s_except_on_held_zeros(case):
    layer = layer_for(case)
    x = torch.randn(5, N, dtype=torch.float64)
    layer.double()
    layer(x).sin().sum().backward()
    w = layer.weight.detach().clone().requires_grad_()
    F.linear(x, w).sin().sum().backward()
    want = w.grad
    held = case.held((N, N))
    if held is not None:
        want = want.masked_fill(held, 0.0)
    assert torch.equal(bits(layer.weight.grad), bits(want))


# ---- load_state_dict ----


@pytest.mark.parametrize("case", case_params())
def test_load_projects_and_warns_with_count_and_largest_change(case):
    layer = layer_for(case)
    torch.manual_seed(1)
    dense = 0.8 * torch.randn(N, N)
    want = reference(case, dense)
    changed = want.double() != dense.double()
    count = int(changed.sum())
    largest = (want.double() - dense.double()).abs().max().item()
    assert count > 0
    with pytest.warns(HollowWarning, match=rf"changed {count} value\(s\)") as caught:
        layer.load_state_dict({"weight": dense})
    message = str(caught[0].message)
    assert "'weight'" in message and "Fix:" in message
    reported = float(re.search(r"largest change: (\S+?)\.? Fix", message).group(1))
    assert reported == pytest.approx(largest, rel=1e-4)
    assert_projected(case, layer.weight, dense, "after load")


@pytest.mark.parametrize("case", case_params())
def test_load_of_a_checkpoint_in_the_sets_is_silent(case):
    layer = layer_for(case)
    state = copy.deepcopy(layer.state_dict())
    other = layer_for(case, seed=3)
    other.load_state_dict(state)  # a HollowWarning would fail the test (pytest config)
    assert torch.equal(bits(other.weight), bits(layer.weight))


def test_load_with_assign_projects_the_new_parameter():
    case = CASES["hollow+NonNeg (SLIM)"]
    layer = layer_for(case)
    dense = torch.randn(N, N)
    with pytest.warns(HollowWarning):
        layer.load_state_dict({"weight": dense}, assign=True)
    assert_projected(case, layer.weight, dense)
    opt = torch.optim.SGD([layer.weight], lr=0.5)
    one_step(opt, layer, 0)
    assert_in_sets(case, layer.weight, "step after assign")


# ---- raw writes, reset_parameters, forward ----


@pytest.mark.parametrize("case", case_params())
def test_nn_init_then_forward_computes_with_the_projection(case):
    layer = layer_for(case)
    nn.init.normal_(layer.weight, std=1.0)
    raw = layer.weight.detach().clone()
    x = torch.randn(4, N)
    out = layer(x)
    assert_projected(case, layer.weight, raw, "stored after the forward")
    assert torch.equal(bits(out), bits(F.linear(x, layer.weight.detach())))


@pytest.mark.parametrize("case", case_params())
def test_data_write_then_state_dict_saves_the_projection(case):
    layer = layer_for(case)
    raw = torch.randn(N, N)
    layer.weight.data = raw.clone()
    assert_projected(case, layer.state_dict()["weight"], raw, "saved")


@pytest.mark.parametrize("case", case_params())
def test_reset_parameters_projects_at_once(case):
    layer = layer_for(case)
    torch.manual_seed(5)
    layer.reset_parameters()
    assert_in_sets(case, layer.weight, "after reset_parameters")


# ---- copies and dtype moves ----


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
@pytest.mark.parametrize("case", case_params())
def test_copies_keep_the_rule_and_project_a_raw_write(case, how):
    layer = layer_for(case)
    nn.init.normal_(layer.weight)  # a raw write just before the copy
    raw = layer.weight.detach().clone()
    if how == "deepcopy":
        twin = copy.deepcopy(layer)
    elif how == "pickle":
        twin = pickle.loads(pickle.dumps(layer))
    else:
        buffer = io.BytesIO()
        torch.save(layer, buffer)
        buffer.seek(0)
        twin = torch.load(buffer, weights_only=False)
    assert rules_of(twin) == rules_of(layer)
    assert_projected(case, twin.weight, raw, how)
    opt = torch.optim.Adam([twin.weight], lr=0.1)
    for step in range(3):
        one_step(opt, twin, step)
        assert_in_sets(case, twin.weight, f"{how}: step {step}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", case_params())
def test_dtype_moves(case, dtype):
    # A move converts the values; the next forward, step or save projects them in the new
    # dtype (a bound rounds differently there).
    layer = layer_for(case).to(dtype)
    assert layer.state_dict()["weight"].dtype == dtype
    assert_in_sets(case, layer.weight, f"moved to {dtype}")
    raw = (2 * torch.randn(N, N)).to(dtype)
    layer.weight.data = raw.clone()
    assert_projected(case, layer.state_dict()["weight"], raw, f"{dtype} after a raw write")
    if dtype == torch.float64:
        opt = torch.optim.AdamW([layer.weight], lr=0.1)
        for step in range(3):
            one_step(opt, layer, step)
            assert_in_sets(case, layer.weight, f"float64 step {step}")


# ---- torch.compile ----


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("case", case_params())
def test_compiled_training_matches_eager(case):
    eager = layer_for(case)
    compiled = copy.deepcopy(eager)
    run = torch.compile(compiled, fullgraph=True)
    opts = [torch.optim.AdamW([m.weight], lr=0.1) for m in (eager, compiled)]
    for step in range(3):
        for forward, opt in ((eager, opts[0]), (run, opts[1])):
            opt.zero_grad()
            g = torch.Generator().manual_seed(step)
            x, target = torch.randn(8, N, generator=g), torch.randn(8, N, generator=g)
            F.mse_loss(forward(x), target).backward()
            opt.step()
        assert torch.equal(bits(compiled.weight), bits(eager.weight)), f"step {step}"
        assert_in_sets(case, compiled.weight, f"compiled step {step}")
    nn.init.normal_(compiled.weight)  # a raw write: the compiled forward projects in its graph
    raw = compiled.weight.detach().clone()
    x = torch.randn(3, N)
    out = run(x)
    assert_projected(case, compiled.weight, raw, "compiled forward after a raw write")
    torch.testing.assert_close(out, F.linear(x, reference(case, raw)))


def test_functional_call_reads_a_projected_copy_with_an_identity_gradient():
    layer = constrain_(HollowLinear(3, 3, bias=False), NonNeg())
    mine = torch.full((3, 3), -1.0, requires_grad=True)
    out = torch.func.functional_call(layer, {"weight": mine}, (torch.ones(1, 3),))
    assert (out == 0).all() and (mine == -1).all()  # the caller's tensor is never written
    out.sum().backward()
    assert torch.equal(mine.grad, 1 - torch.eye(3))  # Keras': not masked by the projection
    grad = torch.func.grad(
        lambda w: torch.func.functional_call(layer, {"weight": w}, (torch.ones(1, 3),)).sum()
    )(mine.detach())
    assert torch.equal(grad, 1 - torch.eye(3))


# ---- modules held by hooks ----


HOOKED = {
    "Conv1d MaxNorm per filter": (
        lambda: nn.Conv1d(3, 4, 3),
        "weight",
        (MaxNorm(0.3, dim=(1, 2)),),
        lambda w: torch.linalg.vector_norm(w.double(), dim=(1, 2)).max() <= 0.3 * (1 + 1e-6),
    ),
    "LSTM hh NonNeg": (
        lambda: nn.LSTM(3, 4),
        "weight_hh_l0",
        (NonNeg(),),
        lambda w: (w >= 0).all(),
    ),
    "attention out_proj Bounds": (
        lambda: nn.MultiheadAttention(4, 2),
        "out_proj.weight",
        (Bounds(-0.1, 0.1),),
        lambda w: ((w >= -0.1) & (w <= 0.1)).all(),
    ),
}


def _run_hooked(module: nn.Module) -> Tensor:
    if isinstance(module, nn.Conv1d):
        return module(torch.randn(2, 3, 5)).sum()
    if isinstance(module, nn.LSTM):
        return module(torch.randn(4, 2, 3))[0].sum()
    x = torch.randn(3, 2, 4)
    return module(x, x, x)[0].sum()


@pytest.mark.parametrize("opt_name", ["AdamW-fused", "NewtonSchulz"])
@pytest.mark.parametrize("kind", list(HOOKED))
def test_hook_held_parameters_stay_in_their_sets(kind, opt_name):
    make, name, constraints, holds = HOOKED[kind]
    torch.manual_seed(0)
    module = constrain_(make(), name, *constraints)
    param = module.get_parameter(name)
    assert holds(param)
    params = [param] if opt_name in MATRIX else list(module.parameters())
    opt = OPTIMIZERS[opt_name](params)
    if opt_name in MATRIX and param.dim() != 2:
        pytest.skip("matrix optimizers take 2-D parameters")
    for _ in range(4):
        opt.zero_grad()
        (_run_hooked(module) - 10 * param.sum()).backward()
        opt.step()
        assert holds(param)
    nn.init.normal_(param, std=2.0)
    _run_hooked(module)  # the pre-forward hook projects first
    assert holds(param)


# ---- composition and order ----


def test_constrain_a_hollow_layer_joins_its_zeros_and_hollow_after_joins_too():
    want = {"weight": Constrained((NonNeg(),), Zeros(Diagonal(0)))}
    first = constrain_(HollowLinear(4, 4), "weight", NonNeg())
    second = hollow_(constrain_(nn.Linear(4, 4), NonNeg()))
    assert rules_of(first) == want and rules_of(second) == want
    assert isinstance(second, HollowLinear)
    again = constrain_(first, NonNeg())  # the same: nothing changes
    assert rules_of(again) == want
    more = constrain_(first, MaxNorm(1.0))
    assert rules_of(more)["weight"] == Constrained((NonNeg(), MaxNorm(1.0)), Zeros(Diagonal(0)))


def test_zeros_come_before_the_norm():
    # Large values on the held diagonal must not count in the row norms: the rows are scaled by
    # the norms of their free entries.
    case = CASES["hollow+NonNeg+MaxNorm"]
    layer = layer_for(case)
    raw = torch.full((N, N), 0.3)
    raw.fill_diagonal_(100.0)
    layer.weight.data = raw.clone()
    layer(torch.randn(1, N))
    assert_projected(case, layer.weight, raw)
    free = torch.full((N - 1,), 0.3, dtype=torch.float64)
    expected = 0.3 * 0.4 / torch.linalg.vector_norm(free)
    torch.testing.assert_close(layer.weight[0, 1].double(), expected, rtol=1e-6, atol=0)


def test_elementwise_then_symmetric_keeps_both_bitwise_on_a_large_weight():
    # 300 x 300 crosses the eager write's tiles (128): tiles, whole-matrix and reference agree.
    case = CASES["hollow+Bounds+Symmetric"]
    for dtype in (torch.float16, torch.float32, torch.float64):
        torch.manual_seed(0)
        layer = case.make(nn.Linear(300, 300, bias=False, dtype=dtype))
        raw = (0.2 * torch.randn(300, 300)).to(dtype)
        layer.weight.data = raw.clone()
        layer.state_dict()  # restores the rule through the guard's eager writes
        assert_projected(case, layer.weight, raw, str(dtype))
        copy_rule = rules_of(layer)["weight"]
        assert torch.equal(bits(copy_rule.apply(raw)), bits(layer.weight)), str(dtype)


def test_nonneg_keeps_negative_zero_and_nan_as_clamp_does():
    layer = constrain_(nn.Linear(3, 1, bias=False), NonNeg())
    layer.weight.data = torch.tensor([[-0.0, float("nan"), -2.0]])
    layer.state_dict()
    w = layer.weight.detach()[0]
    assert torch.signbit(w[0]) and w[0] == 0 and w[1].isnan() and bits(w[2]) == 0


def test_all_zero_rows_stay_zero_under_unit_norm():
    layer = constrain_(nn.Linear(3, 2, bias=False), UnitNorm())
    layer.weight.data = torch.tensor([[0.0, 0.0, 0.0], [3.0, 0.0, 4.0]])
    layer.state_dict()
    assert torch.equal(layer.weight.detach(), torch.tensor([[0.0, 0.0, 0.0], [0.6, 0.0, 0.8]]))


def test_audit_shows_the_rule_and_flags_a_broken_state_dict():
    layer = constrain_(HollowLinear(3, 3, bias=False), NonNeg())
    rows = audit(layer)
    assert rows[0].pattern == repr(rules_of(layer)["weight"]) and not rows[0].violated
    assert "Constrained((NonNeg(),), Zeros(pattern=Diagonal(offset=0)))" == rows[0].pattern
    metadata = layer.state_dict()._metadata[""]
    assert metadata["constraints"] == {"weight": [{"type": "NonNeg"}]}
    assert metadata["hollow"] == {"weight": {"type": "Diagonal", "offset": 0}}


def test_remove_frees_the_weight_again():
    layer = constrain_(nn.Linear(3, 3, bias=False), NonNeg())
    remove(layer)
    assert type(layer) is nn.Linear and not rules_of(layer)
    with torch.no_grad():
        layer.weight.fill_(-1.0)
    layer(torch.randn(1, 3))
    assert (layer.weight == -1).all()


# ---- refusals: module, parameter, shape and fix named; nothing changed ----


class Ints(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3, 3, dtype=torch.int64), requires_grad=False)


class Complex(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3, 3, dtype=torch.complex64))


REFUSED: dict[str, tuple[Callable[[], nn.Module], str, tuple, str]] = {
    "lo > hi": (lambda: nn.Linear(3, 3), "weight", (Bounds(1.0, -1.0),), r"lo > hi.*Fix: swap"),
    "Symmetric non-square": (
        lambda: nn.Linear(3, 4),
        "weight",
        (Symmetric(),),
        r"\(shape \(4, 3\)\).*square.*Fix:",
    ),
    "non-floating": (lambda: Ints(), "w", (NonNeg(),), r"'Ints\.w'.*not floating point.*Fix:"),
    "complex": (lambda: Complex(), "w", (NonNeg(),), r"'Complex\.w'.*real.*Fix:"),
    "box without 0 on held zeros": (
        lambda: HollowLinear(3, 3),
        "weight",
        (Bounds(0.1, 1.0),),
        r"'HollowLinear\.weight'.*held zeros.*outside.*Fix: use bounds that contain 0",
    ),
    "Symmetric with a pattern that is not": (
        lambda: HollowLinear(3, 3, offset=1),
        "weight",
        (Symmetric(),),
        r"not a symmetric pattern.*Fix:",
    ),
    "UnitNorm with Bounds": (
        lambda: nn.Linear(3, 3),
        "weight",
        (UnitNorm(), Bounds(-1.0, 1.0)),
        r"UnitNorm.*can move them out of the interval.*Fix:",
    ),
    "MaxNorm with a box without 0": (
        lambda: nn.Linear(3, 3),
        "weight",
        (MaxNorm(1.0), Bounds(0.1, 1.0)),
        r"MaxNorm.*out of the interval.*Fix:",
    ),
    "norm with Symmetric": (
        lambda: nn.Linear(3, 3),
        "weight",
        (Symmetric(), MaxNorm(1.0)),
        r"breaks Symmetric.*Fix: drop one",
    ),
    "two norms": (
        lambda: nn.Linear(3, 3),
        "weight",
        (MaxNorm(1.0), UnitNorm()),
        r"undo the first.*Fix: keep one",
    ),
    "empty intersection": (
        lambda: nn.Linear(3, 3),
        "weight",
        (NonNeg(), Bounds(-2.0, -1.0)),
        r"leave no value.*Fix:",
    ),
    "MinMaxNorm rate": (
        lambda: nn.Linear(3, 3),
        "weight",
        (MinMaxNorm(0.1, 1.0, rate=0.5),),
        r"rate=0\.5.*Fix: use rate=1\.0",
    ),
    "dim out of range": (
        lambda: nn.Linear(3, 3),
        "weight",
        (MaxNorm(1.0, dim=2),),
        r"dim 2.*Fix: pick dims",
    ),
    "no constraint": (lambda: nn.Linear(3, 3), "weight", (), r"no constraint.*Fix:"),
    "not a constraint": (
        lambda: nn.Linear(3, 3),
        "weight",
        ("nonneg",),
        r"not a list of constraints.*Fix:",
    ),
    "missing parameter": (lambda: nn.Linear(3, 3), "weights", (NonNeg(),), r"no parameter"),
    "frozen already": (
        lambda: freeze_(nn.Linear(3, 3), pattern=Diagonal()),
        "weight",
        (NonNeg(),),
        r"already held by Frozen.*Fix: call remove\(\) first",
    ),
}


@pytest.mark.parametrize("kind", list(REFUSED))
def test_refusals_name_module_parameter_and_fix_and_change_nothing(kind):
    make, name, constraints, match = REFUSED[kind]
    module = make()
    kind_before, rules_before = type(module), rules_of(module)
    params = {n: p.detach().clone() for n, p in module.named_parameters()}
    with pytest.raises(HollowError, match=match) as caught:
        constrain_(module, name, *constraints)
    assert f".{name}'" in str(caught.value) and "Fix:" in str(caught.value)
    assert type(module) is kind_before and rules_of(module) == rules_before
    for n, p in module.named_parameters():
        assert torch.equal(p, params[n]), n


def test_hollow_with_another_pattern_on_a_constrained_layer_is_refused():
    layer = hollow_(constrain_(nn.Linear(3, 3), NonNeg()))
    with pytest.raises(HollowError, match="already held by Constrained"):
        hollow_(layer, offset=1)


# ---- distributed: 2 gloo ranks on CPU ----


def _ddp_case(rank, world):
    from torch.nn.parallel import DistributedDataParallel as DDP

    for name in ("hollow+NonNeg (SLIM)", "hollow+Bounds+Symmetric", "MaxNorm"):
        case = CASES[name]
        layer = layer_for(case)  # the same init on every rank
        ddp = DDP(layer)
        for opt_name in ("AdamW-fused", "NewtonSchulz"):
            opt = OPTIMIZERS[opt_name]([layer.weight])
            for step in range(3):
                opt.zero_grad()
                loss_of(layer, 10 * rank + step, ddp).backward()
                opt.step()
                assert_in_sets(case, layer.weight, f"{name} {opt_name} rank {rank}")
        gathered = [torch.empty_like(layer.weight) for _ in range(world)]
        torch.distributed.all_gather(gathered, layer.weight.detach())
        assert torch.equal(bits(gathered[0]), bits(gathered[1])), f"{name}: ranks diverged"


def test_ddp_two_gloo_ranks():
    run_ranks(_ddp_case, timeout=120.0)


def _fsdp_case(rank, world):
    from torch.distributed.fsdp import fully_shard

    # Elementwise constraints and dim-1 norms (whole rows on each Shard(0) shard) hold shard
    # by shard.
    for name in ("hollow+NonNeg (SLIM)", "Bounds", "MaxNorm", "hollow+NonNeg+MaxNorm"):
        case = CASES[name]
        layer = layer_for(case)
        fully_shard(layer)
        opt = OPTIMIZERS["NewtonSchulz"]([layer.weight])
        for step in range(3):
            opt.zero_grad()
            loss_of(layer, 10 * rank + step).backward()
            opt.step()
            assert_in_sets(case, layer.weight.full_tensor(), f"{name} rank {rank}")
    # Norms over the sharded dim, and Symmetric, need other ranks' entries: refused, located.
    for constraint, match in (
        (MaxNorm(0.5, dim=0), "dim 0, which is split"),
        (Symmetric(), "W^T"),
    ):
        torch.manual_seed(0)
        layer = nn.Linear(N, N, bias=False)
        fully_shard(layer)
        with pytest.raises(HollowError, match=rf"'\w*Linear\.weight'.*{re.escape(match)}.*Fix:"):
            constrain_(layer, constraint)
        assert type(layer) is not HollowLinear and not rules_of(layer)
        torch.manual_seed(0)
        held = constrain_(nn.Linear(N, N, bias=False), constraint)  # held first, then sharded
        fully_shard(held)
        opt = torch.optim.SGD(held.parameters(), lr=0.1)
        held(torch.randn(2, N)).sum().backward()
        with pytest.raises(HollowError, match=rf"'\w*Linear\.weight'.*{re.escape(match)}"):
            opt.step()


def test_fsdp2_two_gloo_ranks_elementwise_and_row_norms_hold_others_refused():
    pytest.importorskip("torch.distributed.fsdp")
    run_ranks(_fsdp_case, timeout=180.0)


def _tp_case(rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    mesh = init_device_mesh("cpu", (world,))
    # ColwiseParallel shards dim 0: dim-1 norms are local; elementwise constraints anywhere.
    col, row = CASES["MaxNorm"], CASES["hollow+NonNeg (SLIM)"]
    model = nn.Sequential(layer_for(col), nn.Tanh(), layer_for(row))
    parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    x = torch.randn(5, N, generator=torch.Generator().manual_seed(0))  # the same on each rank
    for step in range(3):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
        assert_in_sets(col, model[0].weight.full_tensor(), f"colwise step {step}")
        assert_in_sets(row, model[2].weight.full_tensor(), f"rowwise step {step}")
    # RowwiseParallel shards dim 1: a dim-1 norm would need an all-reduce, refused.
    plain = nn.Sequential(nn.Linear(N, N, bias=False))
    parallelize_module(plain, mesh, {"0": RowwiseParallel()})
    with pytest.raises(HollowError, match=r"'Linear\.weight'.*dim 1, which is split.*Fix:"):
        constrain_(plain[0], MaxNorm(0.5))
    assert not rules_of(plain[0])


def test_tensor_parallel_two_gloo_ranks_colwise_norms_hold_rowwise_refused():
    pytest.importorskip("torch.distributed.tensor.parallel")
    run_ranks(_tp_case, timeout=180.0)


def test_a_broken_subject_is_caught(monkeypatch):
    # The tests above can fail: with the projection switched off they see the step leave the
    # sets (the check this suite relies on, run here against a broken rule).
    monkeypatch.setattr(NonNeg, "project_", lambda self, t: t)
    case = CASES["NonNeg"]
    layer = layer_for(case)
    opt = torch.optim.SGD([layer.weight], lr=0.5)
    one_step(opt, layer, 0)
    with pytest.raises(AssertionError, match="outside"):
        assert_in_sets(case, layer.weight)


def test_warning_text_is_a_hollow_warning_not_an_error_outside_pytest():
    layer = layer_for(CASES["NonNeg"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer.load_state_dict({"weight": -torch.ones(N, N)})
    assert [w.category for w in caught] == [HollowWarning]
    assert "changed 36 value(s)" in str(caught[0].message)
    assert "largest change: 1" in str(caught[0].message)


def test_a_linear_whose_bias_is_held_keeps_that_rule_when_its_weight_is_held_too():
    from torch_hollow import rules_of

    layer = nn.Linear(3, 3)
    constrain_(layer, "bias", NonNeg())
    constrain_(layer, "weight", NonNeg())
    assert set(rules_of(layer)) == {"bias", "weight"}
    with torch.no_grad():
        layer.bias.fill_(-1.0)
        layer.weight.fill_(-1.0)
    layer(torch.randn(2, 3))
    assert (layer.bias >= 0).all() and (layer.weight >= 0).all()
