"""The optimizer guard follows every change of an optimizer's parameters.

The guard re-zeroes, after each ``step()``, the held entries of the hollow modules whose
parameters the stepped optimizer holds. Which parameters an optimizer holds can change under it:
an entry of ``param_groups[i]["params"]`` swapped in place, a group's list replaced,
``add_param_group``, ``load_state_dict``, a module made hollow after its optimizer stepped, a
deepcopy, or an optimizer built from a generator or from param-group dicts. After each such event
the stored held entries must be +0.0 right after the next ``opt.step()``, with no forward in
between (a forward would re-zero them itself and hide a stale guard).

Every loss here also reads each weight directly (``weight.sum()``), and the gradients are taken
with ``torch.autograd.grad`` and assigned to ``.grad``: the direct read gives a `HollowLinear`'s
held entries a gradient, and ``autograd.grad`` bypasses the gradient hook of a module held by
hooks. So every optimizer moves the held entries off 0.0 unless the guard writes them back;
``test_setup_moves_the_held_entries_of_plain_layers`` checks this on plain layers trained the
same way. Held entries are found by index arithmetic (``diag_mask``), never through
torch_hollow's own patterns, and checked bitwise: the float32 bits are all zero (+0.0).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from _optim import HAS_MUON, MATRIX, MUON_MISSING, OPTIMIZERS, Factory, optimizer_params
from conftest import diag_mask
from torch import Tensor, nn

from torch_hollow import hollow_

ALL_OPTIMIZERS = optimizer_params(OPTIMIZERS)
STEPS = 3  # steps after each event, each one checked


def _bits_nonzero(t: Tensor, mask: Tensor) -> tuple[int, float]:
    """How many held entries are not +0.0 (any bit set), and their largest |value|."""
    values = t.detach()[..., mask.to(t.device)].float()
    assert values.numel() > 0, "the mask holds no entry: the test would prove nothing"
    bad = values.view(torch.int32) != 0
    return int(bad.sum()), float(values.abs().max())


def _assert_held_zero(what: str, t: Tensor, mask: Tensor) -> None:
    count, largest = _bits_nonzero(t, mask)
    assert count == 0, f"{what}: {count} held entries are not +0.0, max |held| = {largest:.6g}"


# ---- one training step, the same for every layer kind ----


def _params(opt: torch.optim.Optimizer) -> list[Tensor]:
    return [p for group in opt.param_groups for p in group["params"]]


def _step(opt: torch.optim.Optimizer, loss_fn: Callable[[], Tensor]) -> None:
    """One ``opt.step()`` on ``loss_fn``'s gradients, LBFGS through a closure."""

    def closure() -> Tensor:
        loss = loss_fn()
        params = [p for p in _params(opt) if p.requires_grad]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        return loss

    if isinstance(opt, torch.optim.LBFGS):
        opt.step(closure)
    else:
        closure()
        opt.step()


# ---- HollowLinear layers: a square and a rectangular hollow layer and a plain one ----


class World(nn.Module):
    """``a`` and ``b`` (6x6) and ``c`` (5 out, 7 in) made hollow, ``plain`` (6x6) left plain.

    ``held`` names the hollow ones with their held entries (the main diagonal, by index).
    ``a``, ``b`` and ``plain`` have one shape, so that LBFGS (which caches the total size of
    its parameters) can take a swap between them.
    """

    def __init__(self, bias: bool, hollow: bool = True) -> None:
        super().__init__()
        self.a = nn.Linear(6, 6, bias=bias)
        self.b = nn.Linear(6, 6, bias=bias)
        self.c = nn.Linear(7, 5, bias=bias)
        self.plain = nn.Linear(6, 6, bias=bias)
        self.held: dict[str, Tensor] = {}
        if hollow:
            for name in ("a", "b", "c"):
                self.make_hollow(name)

    def layers(self) -> tuple[nn.Linear, ...]:
        return self.a, self.b, self.c, self.plain

    def make_hollow(self, name: str) -> None:
        layer = hollow_(getattr(self, name))
        self.held[name] = diag_mask(layer.out_features, layer.in_features)

    def loss(self, step: int) -> Tensor:
        g = torch.Generator().manual_seed(step)
        device = self.a.weight.device
        x6 = torch.randn(8, 6, generator=g).to(device)
        x7 = torch.randn(8, 7, generator=g).to(device)
        outs = (self.a(x6), self.b(x6), self.c(x7), self.plain(x6))
        direct = sum(m.weight.sum() for m in self.layers())
        return sum(o.square().mean() for o in outs) + direct

    def check(self, what: str) -> None:
        for name, mask in self.held.items():
            _assert_held_zero(f"{what}: {name}.weight", getattr(self, name).weight, mask)


class Run:
    """Steps an optimizer on a world's loss and checks the held entries after each step."""

    def __init__(self, world: World) -> None:
        self.world, self.count = world, 0

    def __call__(self, opt: torch.optim.Optimizer, steps: int, what: str) -> None:
        for _ in range(steps):
            self.count += 1
            _step(opt, lambda: self.world.loss(self.count))
            self.world.check(f"{what}, step {self.count}")


# ---- the events: each builds an optimizer, steps it, changes its parameters ----
# Each returns (the world to go on with, its optimizer, the parameter the optimizer now trains).

Event = Callable[[World, Factory, Run], tuple[World, torch.optim.Optimizer, Tensor]]
EVENTS: dict[str, Event] = {}
# Events torch's LBFGS cannot take, and why.
NOT_FOR_LBFGS: dict[str, str] = {}
ONE_GROUP = "LBFGS takes one param group and steps the list it was built with"
NO_DEEPCOPY = (
    "torch's LBFGS does not survive a deepcopy: Optimizer.__getstate__ drops its _params, "
    "and step() raises AttributeError"
)


def _event(*, not_for_lbfgs: str = "") -> Callable[[Event], Event]:
    def register(fn: Event) -> Event:
        name = fn.__name__.lstrip("_").replace("_", "-")
        EVENTS[name] = fn
        if not_for_lbfgs:
            NOT_FOR_LBFGS[name] = not_for_lbfgs
        return fn

    return register


@_event()
def _swap_in_place(w, make, run):
    opt = make(w.a.parameters())
    run(opt, 2, "before")
    opt.param_groups[0]["params"][0] = w.b.weight  # same list, same length
    return w, opt, w.b.weight


@_event()
def _swap_slice(w, make, run):
    opt = make(w.a.parameters())
    run(opt, 2, "before")
    opt.param_groups[0]["params"][:] = list(w.b.parameters())  # same list, same length
    return w, opt, w.b.weight


@_event()
def _swap_plain_to_hollow(w, make, run):
    opt = make(w.plain.parameters())
    run(opt, 2, "before")
    opt.param_groups[0]["params"][0] = w.a.weight
    return w, opt, w.a.weight


@_event()
def _swap_hollow_to_plain_and_back(w, make, run):
    opt = make(w.a.parameters())
    run(opt, 2, "before")
    params = opt.param_groups[0]["params"]
    params[0] = w.plain.weight
    run(opt, 2, "plain in a's place")
    assert w.plain.weight.diagonal().ne(0).any(), "the guard wrote into a plain layer"
    params[0] = w.a.weight
    return w, opt, w.a.weight


@_event(not_for_lbfgs=ONE_GROUP)
def _replace_list(w, make, run):
    opt = make(w.a.parameters())
    run(opt, 2, "before")
    opt.param_groups[0]["params"] = list(w.c.parameters())
    return w, opt, w.c.weight


@_event(not_for_lbfgs=ONE_GROUP)
def _replace_list_freed_first(w, make, run):
    # The old list is freed before the new one is made: CPython's list free list then gives
    # a list display the old list's address, so the new list has the old id() and length.
    opt = make(w.a.parameters())
    run(opt, 2, "before")
    del opt.param_groups[0]["params"]
    opt.param_groups[0]["params"] = [*w.c.parameters()]
    return w, opt, w.c.weight


@_event(not_for_lbfgs=ONE_GROUP)
def _add_param_group(w, make, run):
    opt = make(w.a.parameters())
    run(opt, 2, "before")
    opt.add_param_group({"params": list(w.c.parameters())})
    return w, opt, w.c.weight


@_event()
def _load_state_dict(w, make, run):
    opt = make(w.a.parameters())
    run(opt, 2, "before")
    # State from an optimizer of a plain layer of the same shape: momentum and second moments
    # that are non-zero on the diagonal.
    other_world = World(bias=w.a.bias is not None, hollow=False).to(w.a.weight.device)
    other = make(other_world.plain.parameters())
    for i in range(2):
        _step(other, lambda i=i: other_world.loss(100 + i))
    opt.load_state_dict(other.state_dict())
    return w, opt, w.a.weight


@_event()
def _hollow_after_steps(w, make, run):
    opt = make(w.plain.parameters())
    run(opt, 2, "before")  # plain's diagonal moves meanwhile
    w.make_hollow("plain")
    return w, opt, w.plain.weight


@_event(not_for_lbfgs=NO_DEEPCOPY)
def _deepcopy_model_and_opt(w, make, run):
    opt = make(w.parameters())
    run(opt, 2, "before")
    w2, opt2 = copy.deepcopy((w, opt))
    run.world = w2
    return w2, opt2, w2.a.weight


@_event(not_for_lbfgs=NO_DEEPCOPY)
def _deepcopy_opt(w, make, run):
    # The copy holds copies of the parameters (tensors of no module): stepping it must leave
    # the model alone, and the original goes on being guarded.
    opt = make(w.a.parameters())
    run(opt, 2, "before")
    opt2 = copy.deepcopy(opt)
    copies = _params(opt2)
    for _ in range(2):
        _step(opt2, lambda: sum((p - 0.5).square().sum() for p in copies))
        w.check("after stepping the copy")
    assert not torch.equal(copies[0], w.a.weight), "the copy stepped nothing"
    return w, opt, w.a.weight


@_event(not_for_lbfgs=NO_DEEPCOPY)
def _deepcopy_opt_onto_model(w, make, run):
    # A copy of the optimizer's state over the model's own parameters (memo), stepped instead.
    opt = make(w.a.parameters())
    run(opt, 2, "before")
    opt2 = copy.deepcopy(opt, {id(p): p for p in w.parameters()})
    assert _params(opt2)[0] is w.a.weight
    return w, opt2, w.a.weight


@_event()
def _from_generator(w, make, run):
    return w, make(w.parameters()), w.c.weight


@_event()
def _from_param_groups(w, make, run):
    groups = [{"params": w.a.parameters()}, {"params": [*w.c.parameters()], "lr": 0.02}]
    if make is OPTIMIZERS["LBFGS"]:  # one group only
        groups = [{"params": [*w.a.parameters(), *w.c.parameters()]}]
    return w, make(groups), w.c.weight


# Events that hand the optimizer a parameter it was not built with.
NEW_PARAMS = {
    "add-param-group",
    "replace-list",
    "replace-list-freed-first",
    "swap-hollow-to-plain-and-back",
    "swap-in-place",
    "swap-plain-to-hollow",
    "swap-slice",
}
EAGER_ADAGRAD = (
    "this torch's Adagrad makes its state when built, so a parameter swapped in has none "
    "(KeyError 'sum' in torch's step, before any guard runs)"
)


def _adagrad_steps_a_new_param() -> bool:
    built, new = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adagrad([built])
    opt.param_groups[0]["params"][0] = new
    new.grad = torch.ones(1)
    try:
        opt.step()
    except KeyError:
        return False
    return True


@pytest.mark.parametrize("event", sorted(EVENTS))
@pytest.mark.parametrize("opt_name", ALL_OPTIMIZERS)
def test_held_entries_are_zero_after_each_step_following(event, opt_name, device):
    if opt_name == "LBFGS" and event in NOT_FOR_LBFGS:
        pytest.skip(NOT_FOR_LBFGS[event])
    if opt_name == "Adagrad" and event in NEW_PARAMS and not _adagrad_steps_a_new_param():
        pytest.skip(EAGER_ADAGRAD)
    torch.manual_seed(0)
    world = World(bias=opt_name not in MATRIX).to(device)
    run = Run(world)
    world, opt, target = EVENTS[event](world, OPTIMIZERS[opt_name], run)
    before = target.detach().clone()
    run(opt, STEPS, event)
    assert not torch.equal(target.detach(), before), f"{event}: the optimizer trained nothing"


# ---- modules held by hooks: a Conv1d's weight, an LSTM's weight_hh_l0 ----


class Hooked:
    """A module whose parameter ``name`` is held by hooks, its held entries, and its loss."""

    def __init__(self, module: nn.Module, name: str, mask: Tensor, x: Tensor) -> None:
        self.module, self.name, self.mask, self.x = module, name, mask, x

    def held_param(self) -> nn.Parameter:
        return getattr(self.module, self.name)

    def params(self, matrices_only: bool) -> list[nn.Parameter]:
        # The held parameter first, so that params[0] is the one an event swaps.
        rest = [p for p in self.module.parameters() if p is not self.held_param()]
        if matrices_only:
            rest = [p for p in rest if p.dim() == 2]
        return [self.held_param(), *rest]

    def loss(self, step: int) -> Tensor:
        out = self.module(self.x * (1 + step / 10))
        out = out[0] if isinstance(out, tuple) else out
        return out.square().mean() + self.held_param().sum()


def _conv() -> Hooked:
    # weight (4, 4, 3): the held entries are the diagonal of each (in, kernel) matrix.
    return Hooked(nn.Conv1d(4, 4, 3), "weight", diag_mask(4, 3), torch.randn(2, 4, 8))


def _lstm() -> Hooked:
    # weight_hh_l0 (4 * 3, 3): StackedDiagonal, the diagonal of each gate's 3x3 block.
    i, j = torch.arange(12)[:, None], torch.arange(3)[None, :]
    return Hooked(nn.LSTM(3, 3), "weight_hh_l0", j == i % 3, torch.randn(5, 2, 3))


HOOKED = {"Conv1d": _conv, "LSTM": _lstm}


def _hooked_pair(kind: str, hollow: bool = True) -> tuple[Hooked, Hooked]:
    torch.manual_seed(0)
    pair = HOOKED[kind](), HOOKED[kind]()
    if hollow:
        for h in pair:
            hollow_(h.module, h.name)
    return pair


def _hooked_optimizer(opt_name: str, h: Hooked) -> torch.optim.Optimizer | None:
    """``opt_name`` over ``h``'s parameters; None where the shapes do not suit it."""
    matrix = opt_name in MATRIX
    if matrix and h.held_param().dim() != 2:
        return None
    return OPTIMIZERS[opt_name](h.params(matrices_only=matrix))


def _check_hooked(what: str, *hooked: Hooked) -> None:
    for i, h in enumerate(hooked):
        _assert_held_zero(f"{what}: module {i} {h.name}", h.held_param(), h.mask)


HOOK_EVENTS = ["swap-in-place", "add-param-group", "hollow-after-steps"]
HOOK_CASES = [
    ("Conv1d", "Adam"),
    ("Conv1d", "AdamW-fused"),
    ("LSTM", "Adam"),
    ("LSTM", "NewtonSchulz"),
    pytest.param("LSTM", "Muon", marks=pytest.mark.skipif(not HAS_MUON, reason=MUON_MISSING)),
]


@pytest.mark.parametrize("event", HOOK_EVENTS)
@pytest.mark.parametrize("kind,opt_name", HOOK_CASES)
def test_hook_held_entries_are_zero_after_each_step_following(event, kind, opt_name):
    first, second = _hooked_pair(kind, hollow=event != "hollow-after-steps")
    watched = [first, second] if event != "hollow-after-steps" else []
    opt = _hooked_optimizer(opt_name, first)
    assert opt is not None

    count = 0

    def run(steps: int, what: str) -> None:
        nonlocal count
        for _ in range(steps):
            count += 1
            _step(opt, lambda n=count: first.loss(n) + second.loss(n))
            _check_hooked(f"{what}, step {count}", *watched)

    run(2, "before")
    if event == "swap-in-place":
        opt.param_groups[0]["params"][0] = second.held_param()
        target = second.held_param()
    elif event == "add-param-group":
        opt.add_param_group({"params": second.params(matrices_only=opt_name in MATRIX)})
        target = second.held_param()
    else:
        hollow_(first.module, first.name)
        watched = [first]
        target = first.held_param()
    before = target.detach().clone()
    run(STEPS, event)
    assert not torch.equal(target.detach(), before), f"{event}: the optimizer trained nothing"


# ---- the setup can fail ----


def _zero_at_each_forward(module: nn.Module, name: str, mask: Tensor) -> None:
    """What a hollow module does at each forward, without the guard after the step."""

    def hook(m: nn.Module, args: object) -> None:
        getattr(m, name).data.masked_fill_(mask, 0.0)

    module.register_forward_pre_hook(hook)


@pytest.mark.parametrize("opt_name", ALL_OPTIMIZERS)
def test_setup_moves_the_held_entries_without_the_guard(opt_name, device):
    # What makes the tests above able to fail: plain layers that re-zero their held entries at
    # each forward, as hollow ones do, but have no guard after the step, trained the same way,
    # have non-zero held entries right after each step (LBFGS included: its step ends on an
    # update).
    torch.manual_seed(0)
    world = World(bias=opt_name not in MATRIX, hollow=False).to(device)
    masks = {}
    for layer in world.layers():
        masks[layer] = diag_mask(layer.out_features, layer.in_features, device=device)
        _zero_at_each_forward(layer, "weight", masks[layer])
    opt = OPTIMIZERS[opt_name](world.parameters())
    for step in range(2):
        _step(opt, lambda step=step: world.loss(step))
        for layer, mask in masks.items():
            count, _ = _bits_nonzero(layer.weight, mask)
            assert count > 0, f"{opt_name}: held entries at 0.0 without a guard, step {step}"
    for kind in HOOKED:
        first, _ = _hooked_pair(kind, hollow=False)
        _zero_at_each_forward(first.module, first.name, first.mask)
        opt = _hooked_optimizer(opt_name, first)
        if opt is None:
            continue
        for step in range(2):
            _step(opt, lambda step=step, first=first: first.loss(step))
            count, _ = _bits_nonzero(first.held_param(), first.mask)
            assert count > 0, f"{opt_name}: {kind}'s held entries at 0.0 without a guard"
