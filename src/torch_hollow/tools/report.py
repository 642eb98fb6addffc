"""The benches' rows written out: markdown tables, JSON, and bars of their time ratios."""

from __future__ import annotations

__all__ = ["Row", "markdown", "number", "plot_rows", "to_json"]

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, Protocol

from torch_hollow import HollowError


class Row(Protocol):
    """What `plot_rows` reads of a row (a `BenchRow` or a `ModelRow`, both dataclasses)."""

    forward_ratio: float
    forward_spread: float
    step_ratio: float
    step_spread: float

    def plot_key(self) -> tuple[str, str]:
        """(group, series) of the row's bar."""
        ...


def number(x: float) -> str:
    """``x`` to three significant digits; NaN as ``n/a``."""
    return "n/a" if x != x else f"{x:.3g}"


def markdown(head: Sequence[str], cells: list[list[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def to_json(rows: Sequence[Any]) -> str:
    """The rows (dataclasses) as JSON (a list of objects)."""
    return json.dumps([asdict(r) for r in rows], indent=2)


def plot_rows(rows: Sequence[Row], path: str) -> None:
    """Grouped bars of the forward and step ratios, one group per point (or model) and mode.

    Needs matplotlib (``pip install 'torch-hollow[plot]'``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise HollowError(
            "torch_hollow: --plot needs matplotlib. Fix: pip install "
            "'torch-hollow[plot]' (or matplotlib)."
        ) from None
    by = {r.plot_key(): r for r in rows}
    points = list(dict.fromkeys(p for p, _ in by))
    recipes = list(dict.fromkeys(s for _, s in by))
    fig, axes = plt.subplots(
        2, 1, figsize=(max(8, 0.5 * len(points) * len(recipes)), 7), sharex=True
    )
    width = 0.8 / len(recipes)
    for ax, kind in zip(axes, ("forward", "step"), strict=True):
        for i, recipe in enumerate(recipes):
            xs = [j + i * width for j in range(len(points))]
            rs = [by[p, recipe] for p in points]
            ax.bar(
                xs,
                [getattr(r, f"{kind}_ratio") for r in rs],
                width,
                yerr=[getattr(r, f"{kind}_spread") for r in rs],
                label=recipe,
            )
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_ylabel(f"{kind} time / {recipes[0]}")
    axes[1].set_xticks([j + 0.4 - width / 2 for j in range(len(points))], points)
    axes[0].legend(ncol=3, fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
