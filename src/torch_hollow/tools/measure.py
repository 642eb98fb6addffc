"""What both benches share: interleaved timing, ratios over a reference, the max |held| column.

A ratio is taken inside each round (this build's time / the reference's time of the same round)
and the median and half the inter-quartile range of those ratios are reported, so drift of the
machine cancels.
"""

from __future__ import annotations

__all__ = ["check_device", "held_max", "interleaved", "timing"]

import math
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from torch_hollow import HollowError

Times = dict[tuple[str, str], list[float]]  # (build, "forward" | "step") -> us per round


def check_device(device: str, dtype: torch.dtype) -> torch.device:
    """``device`` as a `torch.device`, once a small ``dtype`` backward ran there.

    Raises:
        HollowError: no CUDA, or a dtype the device cannot multiply.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HollowError(
            "torch_hollow: --device cuda asked for, but torch.cuda.is_available() "
            "is False. Fix: run on a machine with a GPU, or use --device cpu."
        )
    try:
        a = torch.ones(4, 4, device=dev, dtype=dtype, requires_grad=True)
        (a @ a).sum().backward()
    except RuntimeError as err:
        raise HollowError(
            f"torch_hollow: {dtype} matrix products do not run on {dev} "
            f"({str(err).splitlines()[0][:100]}). Fix: pick another --dtype."
        ) from None
    return dev


def held_max(pairs: Iterable[tuple[Tensor, Tensor]]) -> float:
    """The largest |value| on the held entries of each ``(tensor, held mask)`` pair.

    A 2-D mask selects the same entries of every matrix of a batched tensor. NaN (shown as
    "n/a"), not 0.0, when no entry is selected at all: an empty mask must not read as "the
    zeros hold". A NaN stored on a held entry gives NaN too.

    Example:
        >>> import torch
        >>> held_max([(torch.tensor([[0.0, 2.0], [-3.0, 0.0]]), torch.eye(2, dtype=torch.bool))])
        0.0
        >>> held_max([(torch.ones(2, 2), torch.zeros(2, 2, dtype=torch.bool))])
        nan
    """
    values = [
        (t.detach()[..., mask] if mask.dim() == 2 else t.detach()[mask]).flatten().float().cpu()
        for t, mask in pairs
    ]
    held = torch.cat(values) if values else torch.empty(0)
    return held.abs().max().item() if held.numel() else math.nan


def _timed(fn: Callable[[], None], iters: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1e6


def interleaved(cases: dict[str, Any], rounds: int, round_s: float, device: torch.device) -> Times:
    """Microseconds per call of each case's ``forward`` and ``step``, round after round."""
    times: Times = {}
    for kind in ("forward", "step"):
        iters = {
            r: max(1, int(round_s / max(_timed(getattr(c, kind), 3, device) * 1e-6, 1e-7)))
            for r, c in cases.items()
        }
        for _ in range(rounds):
            for r, c in cases.items():
                times.setdefault((r, kind), []).append(_timed(getattr(c, kind), iters[r], device))
    return times


def timing(times: Times, r: str, ref: str) -> dict[str, float]:
    """A row's time columns: medians, and ratios over ``ref`` with their spreads.

    Example:
        >>> times = {("a", "forward"): [2.0, 4.0], ("a", "step"): [3.0, 3.0],
        ...          ("p", "forward"): [1.0, 2.0], ("p", "step"): [1.0, 3.0]}
        >>> timing(times, "a", "p")["forward_ratio"], timing(times, "a", "p")["step_ratio"]
        (2.0, 2.0)
    """
    fwd = _ratios(times[r, "forward"], times[ref, "forward"])
    stp = _ratios(times[r, "step"], times[ref, "step"])
    return {
        "forward_us": statistics.median(times[r, "forward"]),
        "step_us": statistics.median(times[r, "step"]),
        "forward_ratio": fwd[0],
        "forward_spread": fwd[1],
        "step_ratio": stp[0],
        "step_spread": stp[1],
    }


def _ratios(mine: list[float], ref: list[float]) -> tuple[float, float]:
    ratios = sorted(a / b for a, b in zip(mine, ref, strict=True))
    if len(ratios) < 4:
        return statistics.median(ratios), 0.0
    q = statistics.quantiles(ratios, n=4)
    return statistics.median(ratios), (q[2] - q[0]) / 2
