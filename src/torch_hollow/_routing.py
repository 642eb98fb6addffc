"""How a forward reads a held parameter: the paths, and when each is taken.

`linear` routes `HollowLinear`'s own forward; `before_forward` does the same for a module held
by hooks (`torch_hollow._hooks`), before its own forward reads the parameter.

==================  =======================================  ===================================
path                taken when                               what the forward computes with
==================  =======================================  ===================================
stored, eager       plain eager, the module's own Parameter  the stored weight, its rules
                                                             restored first (a raw write may
                                                             have come since the last step); the
                                                             gradient masked by a tensor hook on
                                                             ``weight.t()`` (hooks: ``.grad`` after
                                                             ``backward()``)
stored, no grad     eager without grad, or the legacy ONNX   the stored weight, restored first;
                    exporter's trace                         no gradient to mask
stored, compiled    inside ``torch.compile``                 the stored weight, restored by a
                                                             functional write in the graph; the
                                                             gradient masked by an
                                                             ``autograd.Function``'s backward
stored, exported    inside ``torch.export`` (strict or not)  the stored weight as it is: an
                                                             exported graph may not write
                                                             parameters and has no backward
copy                a tensor the module does not own         ``rule.apply(tensor)``, a copy that
                    (``torch.func.functional_call``, a       obeys the rule; autograd (any mode
                    parametrization's result), a             or order) sees the copy, and the
                    ``torch.func`` transform, or             tensor is never written
                    ``torch.jit.trace``
refused             hooks, under ``torch.compile``, with a   a `HollowError`: a hook cannot put
                    tensor the module does not own           a copy in its place in a graph.
                                                             Dynamo then breaks the graph and
                                                             runs the forward eagerly (the copy
                                                             path); with ``fullgraph=True`` it
                                                             raises ``Unsupported``, caused by
                                                             the `HollowError` (whose message
                                                             torch 2.8's dynamo drops)
==================  =======================================  ===================================

Private torch internals the paths rely on live here too: the autograd node's hook dict
(`_hook`), dynamo's export flag (`_exporting`) and the functorch interpreter stack.
"""

from __future__ import annotations

__all__ = [
    "before_forward",
    "copied_linear",
    "elsewhere",
    "graph_writes_allowed",
    "linear",
    "stored_linear",
]

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import guard, shards
from ._state import Held, holder, parameter
from .errors import at, located
from .patterns import Pattern
from .rules import Rule


def linear(layer: nn.Linear, held: Held, input: Tensor) -> Tensor:
    """`HollowLinear`'s forward: route ``F.linear`` over its held ``weight``."""
    rule = held.rules["weight"]
    weight, bias = layer.weight, layer.bias
    if torch.compiler.is_compiling():
        if not isinstance(weight, nn.Parameter):  # functional_call: the caller's tensor
            return copied_linear(input, weight, bias, rule)
        if graph_writes_allowed():  # in a compiled graph: a functional mutation
            guard.enforce_traced(layer)
        return stored_linear(input, weight, bias, rule)
    own = held.own.get("weight")  # the hot path: our own Parameter, plain eager
    if (own is None or own() is not weight) and not guard.owns(layer, held, "weight", weight):
        return copied_linear(input, weight, bias, rule)  # the caller's tensor
    if elsewhere():
        return copied_linear(input, weight, bias, rule)
    guard.enforce_own(layer, held, "weight", weight)  # a raw write since the last step
    return eager_linear(input, weight, bias, rule)


def before_forward(module: nn.Module, held: Held) -> None:
    """Before a hook-held module's forward: restore its rules, or swap in obeying copies."""
    if torch.compiler.is_compiling():
        _before_compiled(module, held)
        return
    if module not in guard._GUARDED:  # a deepcopy or an unpickled module: not registered yet
        guard.register(module)
    names = held.rules
    if not elsewhere() and all(guard.owns(module, held, n, parameter(module, n)) for n in names):
        guard.enforce(module)
        return
    # A tensor the caller owns (functional_call), a transform or a trace: the forward reads a
    # copy put in the parameter's place, and the forward hook puts the tensor back.
    swapped = []
    for name, rule in names.items():
        done = _swap(module, held, name, rule)
        if done is not None:
            swapped.append(done)
    held.swapped.append(swapped)


def _before_compiled(module: nn.Module, held: Held) -> None:
    for name in held.rules:
        if not isinstance(parameter(module, name), nn.Parameter):
            raise located(
                type(module).__name__,
                name,
                None,
                "got a tensor it does not own (torch.func.functional_call?) under "
                "torch.compile, where a hook-held parameter cannot be masked",
                "call functional_call outside torch.compile, or hold the parameter's "
                "held entries at 0.0 in the tensors you pass",
            )
    if graph_writes_allowed():
        guard.enforce_traced(module)


def _swap(
    module: nn.Module, held: Held, name: str, rule: Rule
) -> tuple[nn.Module, str, Tensor] | None:
    owner, leaf = holder(module, name)
    params = {} if owner is None else owner._parameters
    tensor, orig = params.get(leaf), params.get(leaf + "_orig")
    if tensor is None and orig is not None and guard.owns(module, held, name, orig):
        # Pruned by torch.nn.utils.prune since: our Parameter is its ``_orig``, and its
        # pre-hook, after this one, computes the weight from it. from_prune hands it back.
        rule.enforce_(orig.data)
        return None
    if tensor is None or owner is None:  # e.g. parametrized after hollow_: not ours to hold
        raise located(
            type(module).__name__,
            name,
            None,
            "is no longer a Parameter of the module (torch.nn.utils.prune or a "
            "parametrization replaced it?); torch-hollow holds stored parameters",
            "after pruning, call torch_hollow.from_prune(model); for a parametrization, "
            "remove_parametrizations() or remove() the constraint before parametrizing",
        )
    owner._parameters[leaf] = rule.apply(tensor)
    return owner, leaf, tensor


def copied_linear(input: Tensor, weight: Tensor, bias: Tensor | None, rule: Rule) -> Tensor:
    """``F.linear`` on ``rule.apply(weight)``, a copy that obeys the rule; never writes it.

    For weights torch-hollow does not own (a tensor passed by ``torch.func.functional_call``,
    a parametrization's computed weight) and for transforms and tracing. Autograd (forward and
    reverse mode, any order) sees the copy, so the held entries get no gradient and no tangent.
    """
    return F.linear(input, rule.apply(weight), bias)


def stored_linear(input: Tensor, weight: Tensor, bias: Tensor | None, rule: Rule) -> Tensor:
    """``F.linear`` for a weight that already obeys ``rule``; masks its gradient.

    Eager: `eager_linear`. Under ``torch.compile`` a hook would break the graph, so an
    autograd.Function with the same backward is traced instead; under ``torch.export``, a
    plain linear (an exported graph has no backward).
    """
    if torch.compiler.is_compiling():
        if torch.compiler.is_dynamo_compiling() and _exporting():
            # Strict export (torch 2.6's default) would trace the Function's forward under
            # no_grad; an exported graph carries no backward anyway: plain linear, as non-strict.
            return F.linear(input, weight, bias)
        return _traced_linear(input, weight, bias, rule)
    return eager_linear(input, weight, bias, rule)


def eager_linear(input: Tensor, weight: Tensor, bias: Tensor | None, rule: Rule) -> Tensor:
    """`stored_linear` outside ``torch.compile`` and ``torch.export``.

    The linear runs on ``weight.t()``, whose gradient comes fresh out of a matrix product and
    gets its held entries zeroed by a tensor hook, for ``backward()`` and
    ``torch.autograd.grad`` alike.
    """
    masked = rule.grad_pattern
    if masked is None or not (weight.requires_grad and torch.is_grad_enabled()) or _is_tracing():
        return F.linear(input, weight, bias)  # tracing: only the legacy ONNX exporter gets here
    wt = weight.t()
    if type(wt) is not Tensor and shards.is_dtensor(wt):  # tensor parallel: a sharded gradient
        _hook(wt, functools.partial(_sharded_grad_hook, masked, weight.shape))
    else:
        _hook(wt, masked.zero_transposed_grad_)
    if input.dim() == 2 and bias is not None:
        return torch.addmm(bias, input, wt)
    # F.linear's own split: fold a contiguous N-D input into one addmm, else matmul then add.
    if input.dim() > 2 and bias is not None and input.is_contiguous():
        out = torch.addmm(bias, input.reshape(-1, input.shape[-1]), wt)
        return out.view(*input.shape[:-1], out.shape[-1])
    out = torch.matmul(input, wt)
    return out if bias is None else out + bias


def _sharded_grad_hook(pattern: Pattern, shape: torch.Size, grad_t: Tensor | None) -> None:
    with at("HollowLinear", "weight", shape):
        shards.mask_transposed_grad_(pattern, grad_t)


def _hook(t: Tensor, fn: Callable[[Tensor], None]) -> None:
    # What Tensor.register_hook does, minus the RemovableHandle (a hook on a fresh view is never
    # removed), paid on every eager forward (docs/benchmarks.md has the cost).
    register = getattr(t.grad_fn, "_register_hook_dict", None)
    if register is None:  # a torch without these internals
        t.register_hook(fn)
        return
    t._backward_hooks = {0: fn}
    register(t)


class _MaskedGradLinear(torch.autograd.Function):
    # Classic ctx style: the autocast cast happens outside, in `_traced_linear`.
    # Given the rule's grad_pattern, a Pattern (a frozen dataclass, which every dynamo rebuilds).
    @staticmethod
    def forward(ctx, input, weight, bias, pattern):  # type: ignore[override]
        ctx.save_for_backward(input, weight)
        ctx.pattern = pattern
        return F.linear(input, weight, bias)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        input, weight = ctx.saved_tensors
        grad_input = grad_weight = grad_bias = None
        flat_grad = grad.reshape(-1, grad.shape[-1])
        if ctx.needs_input_grad[0]:
            grad_input = grad @ weight
        if ctx.needs_input_grad[1]:
            grad_weight = flat_grad.t() @ input.reshape(-1, input.shape[-1])
            if ctx.pattern is not None:
                ctx.pattern.zero_(grad_weight)
        if ctx.needs_input_grad[2]:
            grad_bias = flat_grad.sum(0)
        return grad_input, grad_weight, grad_bias, None


def _traced_linear(input: Tensor, weight: Tensor, bias: Tensor | None, rule: Rule) -> Tensor:
    device, masked = input.device.type, rule.grad_pattern
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        with torch.autocast(device, enabled=False):
            cast_bias = None if bias is None else bias.to(dtype)
            return _MaskedGradLinear.apply(input.to(dtype), weight.to(dtype), cast_bias, masked)
    return _MaskedGradLinear.apply(input, weight, bias, masked)


def graph_writes_allowed() -> bool:
    """Whether a traced forward may restore the stored weight in its graph (compile, not export).

    ``torch.export`` graphs must not mutate parameters (ONNX cannot take them; strict export
    fails on them). Non-strict export traces outside dynamo; inside dynamo the question goes to
    `_exporting`, which dynamo runs as plain Python.
    """
    return torch.compiler.is_dynamo_compiling() and not _exporting()


def _exporting() -> bool:
    # Dynamo runs this function while tracing and keeps its result as a constant (what
    # torch.compiler.assume_constant_result marks; set by hand so that importing torch_hollow
    # does not import torch._dynamo). Asked from the traced code instead, dynamo answers
    # is_exporting() with True under torch.compile too before torch 2.13 (pytorch#176347); what
    # the running tracer says works on every supported torch.
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    if is_exporting is not None and is_exporting():
        return True
    try:
        from torch._dynamo.symbolic_convert import InstructionTranslator

        return bool(getattr(InstructionTranslator.current_tx(), "export", False))
    except (ImportError, AttributeError):  # no tracer running, or a torch without this field
        return False


_exporting._dynamo_marked_constant = True  # type: ignore[attr-defined]


def elsewhere() -> bool:
    """Whether a forward runs where writing a parameter or hooking its gradient is wrong.

    Inside a ``torch.func`` transform (``grad``, ``vmap``, ``jacrev``, ...) tensors are
    functorch wrappers with no storage to write and no hooks to hold; under ``torch.jit.trace``
    the recorded graph must compute the rules itself, the same ops on every call. The legacy
    ONNX exporter traces too, but keeps the weight as a constant: restored before, it stays a
    Gemm.
    """
    if _interpreter_stack() is not None:
        return True
    return _is_tracing() and not torch.onnx.is_in_onnx_export()


# Called on every eager forward: the C functions behind torch.jit.is_tracing and the functorch
# interpreter stack, without their Python wrappers.
_interpreter_stack = getattr(torch._C._functorch, "peek_interpreter_stack", lambda: None)
_is_tracing = getattr(torch._C, "_is_tracing", torch.jit.is_tracing)
