"""The op: a linear map that reads the held entries of its weight as exactly zero."""

from __future__ import annotations

__all__ = ["hollow_linear", "zero_diagonal_"]

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from . import shards
from .errors import HollowError, refuse
from .patterns import Diagonal, Pattern


def hollow_linear(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    offset: int = 0,
    *,
    pattern: Pattern | None = None,
) -> Tensor:
    """``F.linear`` with the held entries of ``weight`` read as 0.0, whatever ``weight`` holds.

    The output equals ``F.linear(input, w0, bias)`` bitwise, where ``w0`` is ``weight`` with
    the entries ``torch.diagonal(weight, offset)`` (or those of ``pattern``) set to 0.0, and the
    gradient with respect to ``weight`` is exactly 0.0 there. This form works on any weight, so it
    makes one masked copy of ``weight`` per call; `HollowLinear` keeps its stored weight zero and
    needs no copy.

    Args:
        input: ``(*, in_features)``.
        weight: ``(out_features, in_features)``, floating point.
        bias: ``(out_features,)`` or None.
        offset: which diagonal is held at zero (shorthand for ``pattern=Diagonal(offset)``).
        pattern: the held entries; overrides ``offset``.

    Returns:
        ``(*, out_features)``.

    Raises:
        HollowError: ``weight`` is not a floating 2-D tensor or the pattern does not fit it.

    Example:
        >>> import torch
        >>> from torch_hollow.functional import hollow_linear
        >>> w = torch.ones(2, 2, requires_grad=True)
        >>> y = hollow_linear(torch.tensor([1.0, 2.0]), w)
        >>> y.detach()
        tensor([2., 1.])
        >>> y.sum().backward()
        >>> w.grad
        tensor([[0., 2.],
                [1., 0.]])
    """
    pattern = resolve_pattern(offset, pattern)
    check_weight("", "weight", weight, pattern, max_dim=2)
    return masked_linear(input, weight, bias, pattern)


def zero_diagonal_(tensor: Tensor, offset: int = 0) -> Tensor:
    """Write 0.0 into ``torch.diagonal(tensor, offset, -2, -1)`` in place and return ``tensor``.

    The one-shot operation done right: it works on a Parameter that requires grad (under
    ``torch.no_grad``, bumping its version so a stale graph fails loudly instead of silently using
    the old values) and on batched ``(..., n, m)`` tensors. On an intermediate result of a graph
    the write is recorded, so the gradient through the zeroed entries is exactly 0.0. It does not
    keep the entries zero: for that use `HollowLinear` or `hollow_`.

    Args:
        tensor: at least 2-D.
        offset: which diagonal; ``-rows < offset < cols``.

    Returns:
        ``tensor``, modified in place.

    Raises:
        HollowError: ``tensor`` has fewer than 2 dimensions or ``offset`` misses it.

    Example:
        >>> import torch
        >>> from torch_hollow import zero_diagonal_
        >>> w = torch.nn.Parameter(torch.ones(2, 3))
        >>> zero_diagonal_(w, offset=1).data
        tensor([[1., 0., 1.],
                [1., 1., 0.]])
    """
    pattern = Diagonal(offset)
    check_weight("", "tensor", tensor, pattern, floating=False)
    if _in_graph(tensor):  # record the write: the gradient through the zeroed entries is 0.0
        shards.zero_(tensor, pattern)
        return tensor
    with torch.no_grad():
        shards.zero_(tensor, pattern)
    return tensor


def _in_graph(t: Tensor) -> bool:
    # An intermediate result of a graph (not a parameter, nor a view of one): a write under
    # no_grad would leave its gradient the identity on entries that no longer depend on it.
    if t.is_leaf or not (t.requires_grad and torch.is_grad_enabled()) or shards.is_dtensor(t):
        return False
    return t._base is None or not t._base.is_leaf


def resolve_pattern(offset: int, pattern: Pattern | None) -> Pattern:
    """``pattern`` if given, else ``Diagonal(offset)``; both at once must agree."""
    if pattern is None:
        return Diagonal(offset)
    if not isinstance(pattern, Pattern):
        raise HollowError(
            f"torch_hollow: pattern must be a torch_hollow.patterns.Pattern, got {pattern!r}. "
            "Fix: pass e.g. Diagonal(1)."
        )
    if offset != 0:
        raise HollowError(
            f"torch_hollow: got both offset={offset} and pattern={pattern!r}. "
            f"Fix: pass one of them (offset={offset} means pattern=Diagonal({offset}))."
        )
    return pattern


def check_weight(
    path: str,
    name: str,
    weight: object,
    pattern: Pattern,
    *,
    max_dim: int | None = None,
    floating: bool = True,
) -> None:
    """Raise a `HollowError` unless ``weight`` is a tensor ``pattern`` can hold."""
    if not isinstance(weight, Tensor):
        raise refuse(
            path,
            name,
            None,
            f"is {type(weight).__name__}, not a tensor",
            "pass a floating-point torch.Tensor or nn.Parameter",
        )
    if floating and not (weight.is_floating_point() or weight.is_complex()):
        raise refuse(
            path,
            name,
            weight.shape,
            f"has dtype {weight.dtype}, not floating point",
            "hold a floating-point parameter (e.g. .float())",
        )
    if max_dim is not None and weight.dim() > max_dim:
        raise refuse(
            path,
            name,
            weight.shape,
            f"is {weight.dim()}-D, this needs a matrix",
            "pass a 2-D (out_features, in_features) weight",
        )
    problem = pattern.problem(weight.shape)
    if problem is not None:
        raise refuse(path, name, weight.shape, problem[0], problem[1])


def graph_writes_allowed() -> bool:
    """Whether a traced forward may zero the stored weight in its graph (compile, not export).

    ``torch.export`` graphs must not mutate parameters (ONNX cannot take them; strict export,
    torch 2.6's default, fails on them). Non-strict export traces outside dynamo; inside dynamo
    the question goes to `_exporting`, which dynamo runs as plain Python.
    """
    return torch.compiler.is_dynamo_compiling() and not _exporting()


def _exporting() -> bool:
    # Dynamo runs this function while tracing and keeps its result as a constant (what
    # torch.compiler.assume_constant_result marks; set by hand so that importing torch_hollow
    # does not import torch._dynamo). Asked from the traced code instead, dynamo answers
    # is_exporting() with True under torch.compile too before torch 2.13 (pytorch#176347), and
    # torch 2.6 has no is_exporting(); what the running tracer says works on both.
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
    the recorded graph must compute the zeros itself, the same ops on every call. The legacy
    ONNX exporter traces too, but keeps the weight as a constant: zeroed before, it stays a Gemm.
    """
    if _interpreter_stack() is not None:
        return True
    return _is_tracing() and not torch.onnx.is_in_onnx_export()


# Called on every eager forward: the C functions behind torch.jit.is_tracing and the functorch
# interpreter stack, without their Python wrappers.
_interpreter_stack = getattr(torch._C._functorch, "peek_interpreter_stack", lambda: None)
_is_tracing = getattr(torch._C, "_is_tracing", torch.jit.is_tracing)


def masked_linear(input: Tensor, weight: Tensor, bias: Tensor | None, pattern: Pattern) -> Tensor:
    """``F.linear`` on a copy of ``weight`` with its held entries set to 0.0; never writes it.

    For weights torch-hollow does not own (a tensor passed by ``torch.func.functional_call``,
    a parametrization's computed weight) and for transforms and tracing. Autograd (forward and
    reverse mode, any order) sees the copy, so the held entries get no gradient and no tangent.
    """
    w0 = weight.clone()
    pattern.zero_(w0)
    return F.linear(input, w0, bias)


def stored_linear(input: Tensor, weight: Tensor, bias: Tensor | None, pattern: Pattern) -> Tensor:
    """``F.linear`` for a weight whose held entries already read 0.0; masks its gradient.

    Eager: the linear runs on ``weight.t()``, whose gradient comes fresh out of a matrix product
    and gets its held entries zeroed by a tensor hook, for ``backward()`` and
    ``torch.autograd.grad`` alike. Under ``torch.compile`` and ``torch.export`` a hook would
    break the graph, so an autograd.Function with the same backward is traced instead.
    """
    if torch.compiler.is_compiling():
        if torch.compiler.is_dynamo_compiling() and _exporting():
            # Strict export (torch 2.6's default) would trace the Function's forward under
            # no_grad; an exported graph carries no backward anyway: plain linear, as non-strict.
            return F.linear(input, weight, bias)
        return _traced_linear(input, weight, bias, pattern)
    return eager_linear(input, weight, bias, pattern)


def eager_linear(input: Tensor, weight: Tensor, bias: Tensor | None, pattern: Pattern) -> Tensor:
    """`stored_linear` outside ``torch.compile`` and ``torch.export``."""
    if not (weight.requires_grad and torch.is_grad_enabled()) or _is_tracing():
        return F.linear(input, weight, bias)  # tracing: only the legacy ONNX exporter gets here
    wt = weight.t()
    if type(wt) is not Tensor and shards.is_dtensor(wt):  # tensor parallel: a sharded gradient
        _hook(wt, functools.partial(shards.zero_transposed_grad_, pattern))
    else:
        _hook(wt, pattern.zero_transposed_grad_)
    if input.dim() == 2 and bias is not None:
        return torch.addmm(bias, input, wt)
    # F.linear's own split: fold a contiguous N-D input into one addmm, else matmul then add.
    if input.dim() > 2 and bias is not None and input.is_contiguous():
        out = torch.addmm(bias, input.reshape(-1, input.shape[-1]), wt)
        return out.view(*input.shape[:-1], out.shape[-1])
    out = torch.matmul(input, wt)
    return out if bias is None else out + bias


def _hook(t: Tensor, fn: Callable[[Tensor], None]) -> None:
    # What Tensor.register_hook does, minus the RemovableHandle (a hook on a fresh view is never
    # removed): 1.7 us instead of 10 us on the CI machine, paid on every eager forward.
    register = getattr(t.grad_fn, "_register_hook_dict", None)
    if register is None:  # a torch without these internals
        t.register_hook(fn)
        return
    t._backward_hooks = {0: fn}
    register(t)


class _MaskedGradLinear(torch.autograd.Function):
    # Classic ctx style: the autocast cast happens outside, in `_traced_linear`.
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
            ctx.pattern.zero_(grad_weight)
        if ctx.needs_input_grad[2]:
            grad_bias = flat_grad.sum(0)
        return grad_input, grad_weight, grad_bias, None


def _traced_linear(input: Tensor, weight: Tensor, bias: Tensor | None, pattern: Pattern) -> Tensor:
    device = input.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        with torch.autocast(device, enabled=False):
            cast_bias = None if bias is None else bias.to(dtype)
            return _MaskedGradLinear.apply(input.to(dtype), weight.to(dtype), cast_bias, pattern)
    return _MaskedGradLinear.apply(input, weight, bias, pattern)
