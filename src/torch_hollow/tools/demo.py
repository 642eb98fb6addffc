"""The problem and the fix side by side: three recipes, three optimizers, one table.

Every recipe fits the same self-prediction model ``x -> W x`` (no bias) to correlated data.
Without a zero diagonal the model would just copy its input (W = I); the diagonal is exactly
the part that must stay zero, so any leak shows up in it at once.
"""

from __future__ import annotations

__all__ = ["DemoRow", "format_table", "run_demo"]

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from torch_hollow import HollowLinear

RECIPES = ("seed recipe", "gradient mask", "torch-hollow")
OPTIMIZERS: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "SGD": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "AdamW": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
    "Muon": lambda p: torch.optim.Muon(p, lr=0.02),
}
# torch.optim.Muon arrived in torch 2.9; older torch gets rows that say so.
_MISSING = {} if hasattr(torch.optim, "Muon") else {"Muon": "needs torch >= 2.9"}


@dataclass(frozen=True)
class DemoRow:
    """One recipe trained with one optimizer."""

    optimizer: str
    recipe: str
    after_first_step: float  # max |diag| after step 1
    worst: float  # max |diag| over all steps
    final_loss: float
    note: str = ""  # why the row has no numbers (NaN), e.g. "needs torch >= 2.9"


def _layer(recipe: str, dim: int) -> nn.Linear:
    if recipe == "torch-hollow":
        return HollowLinear(dim, dim, bias=False)
    layer = nn.Linear(dim, dim, bias=False)
    # The usual answer: clone, fill_diagonal_(0), assign back through .data.
    w = layer.weight.clone()
    w.fill_diagonal_(0)
    layer.weight.data = w
    if recipe == "gradient mask":
        layer.weight.register_hook(lambda g: g.masked_fill(torch.eye(dim, dtype=torch.bool), 0))
    return layer


def _data(dim: int, samples: int, generator: torch.Generator) -> torch.Tensor:
    mixing = torch.randn(dim // 2, dim, generator=generator)
    latent = torch.randn(samples, dim // 2, generator=generator)
    return latent @ mixing + 0.1 * torch.randn(samples, dim, generator=generator)


def run_demo(steps: int = 50, dim: int = 16, seed: int = 0) -> list[DemoRow]:
    """Train every recipe with every optimizer; return one row each.

    Args:
        steps: optimizer steps per run.
        dim: the layer is ``dim x dim``.
        seed: seeds data and initial weights (the same for every recipe).

    Returns:
        Rows in the order optimizer x recipe; an optimizer this torch lacks (Muon before
        torch 2.9) gets rows with NaN values and a ``note`` saying so.

    Example:
        >>> rows = run_demo(steps=3, dim=8)
        >>> {r.recipe: r.worst == 0.0 for r in rows if r.optimizer == "AdamW"}
        {'seed recipe': False, 'gradient mask': True, 'torch-hollow': True}
    """
    x = _data(dim, 256, torch.Generator().manual_seed(seed))
    rows = []
    for opt_name, make_opt in OPTIMIZERS.items():
        for recipe in RECIPES:
            if opt_name in _MISSING:
                nan = float("nan")
                rows.append(DemoRow(opt_name, recipe, nan, nan, nan, _MISSING[opt_name]))
                continue
            torch.manual_seed(seed)
            layer = _layer(recipe, dim)
            opt = make_opt([layer.weight])
            diag = list(_train(layer, opt, x, steps))
            loss = F.mse_loss(layer(x), x).item()
            rows.append(DemoRow(opt_name, recipe, diag[0], max(diag), loss))
    return rows


def _train(
    layer: nn.Linear, opt: torch.optim.Optimizer, x: torch.Tensor, steps: int
) -> Iterator[float]:
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(layer(x), x).backward()
        opt.step()
        yield layer.weight.detach().diagonal().abs().max().item()


def format_table(rows: list[DemoRow]) -> str:
    """The rows as an aligned text table."""
    head = ("optimizer", "recipe", "max|diag| step 1", "max|diag| all steps", "final loss")
    body = [
        (
            (r.optimizer, r.recipe, r.note, "", "")
            if r.note
            else (
                r.optimizer,
                r.recipe,
                f"{r.after_first_step:.3g}",
                f"{r.worst:.3g}",
                f"{r.final_loss:.4f}",
            )
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in [head, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
