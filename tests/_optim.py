"""A test-only stand-in for ``torch.optim.Muon``, which torch before 2.9 does not have.

What makes Muon matter here is that it orthogonalises the whole update matrix (a Newton-Schulz
iteration), so a gradient that is 0.0 on the diagonal still gets a non-zero update there. The
`NewtonSchulz` optimizer below does exactly that (momentum, Muon's quintic iteration in bfloat16,
decoupled weight decay), as a plain ``torch.optim.Optimizer`` subclass, so the matrix-optimizer
guarantee is tested on every supported torch; where ``torch.optim.Muon`` exists the tests run
both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest
import torch
from torch import Tensor

HAS_MUON = hasattr(torch.optim, "Muon")
MUON_MISSING = "torch.optim.Muon needs torch >= 2.9; NewtonSchulz covers the same guarantee"


def orthogonalise(g: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """Muon's quintic Newton-Schulz iteration: roughly ``U V^T`` for ``g = U S V^T``."""
    if hasattr(g, "full_tensor"):  # a DTensor (FSDP2): on the full matrix, sharded back
        # (DTensor's own matmuls give inf here on torch 2.7)
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(orthogonalise(g.full_tensor()), g.device_mesh, g.placements)
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16()
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(g.dtype)


class NewtonSchulz(torch.optim.Optimizer):
    """SGD with momentum whose update is orthogonalised as a whole, like Muon (2-D only)."""

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 0.02,
        momentum: float = 0.95,
        weight_decay: float = 0.1,
    ) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.dim() != 2:
                    raise ValueError(f"NewtonSchulz takes 2-D parameters, got {tuple(p.shape)}")
                state = self.state[p]
                if "buf" not in state:
                    state["buf"] = torch.zeros_like(p.grad)
                buf = state["buf"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = orthogonalise(p.grad.lerp(buf, group["momentum"]))
                scale = max(1.0, p.size(0) / p.size(1)) ** 0.5  # Muon's default lr adjustment
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * scale)
        return loss


def make_matrix_optimizer(name: str, params: Iterable[Tensor], lr: float) -> torch.optim.Optimizer:
    """``"Muon"`` (torch's) or ``"NewtonSchulz"`` (the stand-in) over ``params``."""
    if name == "Muon":
        return torch.optim.Muon(params, lr=lr)
    return NewtonSchulz(params, lr=lr)


def optimizer_params(names: Iterable[str]) -> list[object]:
    """``names`` for ``@pytest.mark.parametrize``, Muon's skipped where torch has no Muon."""
    skip = pytest.mark.skipif(not HAS_MUON, reason=MUON_MISSING)
    return [pytest.param(n, marks=skip) if n.lower() == "muon" else n for n in names]


# Both where torch has Muon, the stand-in alone where it does not.
MATRIX_OPTIMIZERS = optimizer_params(["Muon", "NewtonSchulz"])


# The README's optimizer list, each with settings that move every entry in a few steps:
# weight decay, momentum, matrix-wide updates. Matrix optimizers take 2-D parameters only.
Factory = Callable[[Iterable], torch.optim.Optimizer]

OPTIMIZERS: dict[str, Factory] = {
    "SGD-momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "SGD-nesterov-wd": lambda p: torch.optim.SGD(
        p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1
    ),
    "Adam": lambda p: torch.optim.Adam(p, lr=0.05),
    "Adam-amsgrad": lambda p: torch.optim.Adam(p, lr=0.05, amsgrad=True),
    "AdamW-foreach": lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1, foreach=True),
    "AdamW-fused": lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1, fused=True),
    "AdamW-forloop": lambda p: torch.optim.AdamW(p, lr=0.05, foreach=False),
    "Adagrad": lambda p: torch.optim.Adagrad(p, lr=0.1),
    "Adadelta": lambda p: torch.optim.Adadelta(p, lr=1.0),
    "RMSprop": lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5),
    "Adafactor": lambda p: torch.optim.Adafactor(p, lr=0.05),
    "Adamax": lambda p: torch.optim.Adamax(p, lr=0.05),
    "NAdam": lambda p: torch.optim.NAdam(p, lr=0.05),
    "RAdam": lambda p: torch.optim.RAdam(p, lr=0.05),
    "ASGD": lambda p: torch.optim.ASGD(p, lr=0.1),
    "Rprop": lambda p: torch.optim.Rprop(p, lr=0.05),
    # max_eval above max_iter: the step ends on an update, not on a closure (whose forward
    # would re-zero the held entries itself).
    "LBFGS": lambda p: torch.optim.LBFGS(p, lr=0.5, max_iter=3, max_eval=5),
    # Matrix optimizers: 2-D parameters only, so their layers have no bias.
    "Muon": lambda p: torch.optim.Muon(p, lr=0.05),
    "NewtonSchulz": lambda p: NewtonSchulz(p, lr=0.05),
}
MATRIX = {"Muon", "NewtonSchulz"}
