"""Whole training steps of real models: torch-hollow against what each model's users write.

The models (a MAF, a GOLEM SEM, a NOTEARS-MLP, a 4-layer MLP, a pruned Llama) are those of
`torch_hollow.tools.model_recipes`; each is timed interleaved with its peer, as
`torch_hollow.tools.bench.bench` times a layer against plain ``nn.Linear``.
"""

from __future__ import annotations

__all__ = ["ModelRow", "bench_models", "format_model_rows"]

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from torch_hollow import HollowError

from .measure import check_device, held_max, interleaved, timing
from .model_recipes import MODELS, Model, held_entries
from .report import markdown, number


@dataclass(frozen=True)
class ModelRow:
    """A whole model built one way (its peer, or torch-hollow) in one mode; times in us."""

    model: str
    size: str
    mode: str  # "eager" or "compiled"
    recipe: str  # what the peer writes (e.g. "W*mask"), or "torch-hollow"
    forward_us: float  # the loss under no_grad
    step_us: float  # zero_grad, loss, backward, optimizer step (and the peer's after_step)
    forward_ratio: float  # median over rounds of this build / the peer
    forward_spread: float  # half the inter-quartile range of those ratios
    step_ratio: float
    step_spread: float
    stored_held: float  # max |held entries| of the stored weights after the lockstep steps
    forward_held: float  # ... of the weights the forward uses
    loss_diff: float  # max relative difference from the peer's losses (NaN: another function)

    def plot_key(self) -> tuple[str, str]:
        """(group, series) of the row's bar; a model's peer is one series whatever it writes."""
        series = "torch-hollow" if self.recipe == "torch-hollow" else "peer"
        return f"{self.mode}\n{self.model}", series


class _ModelCase:
    """A model's module, its optimizer and one fixed batch: forward and step callables."""

    def __init__(
        self,
        model: Model,
        build: Callable[..., nn.Module],
        tiny: bool,
        compiled: bool,
        device: torch.device,
    ) -> None:
        size, batch = model.sized(tiny)
        torch.manual_seed(0)  # the peer and torch-hollow start from the same free values
        self.module = build(**size).to(device)
        self.run = torch.compile(self.module) if compiled else self.module
        self.opt = model.optimizer(self.module.parameters())
        self.after_step = getattr(self.module, "after_step", None)  # the peer's re-zeroing
        self.x = model.data(batch, size, torch.Generator().manual_seed(0)).to(device)

    def forward(self) -> None:
        with torch.no_grad():
            self.run(self.x)

    def step(self) -> Tensor:
        self.opt.zero_grad(set_to_none=True)
        loss = self.run(self.x)
        loss.backward()
        self.opt.step()
        if self.after_step is not None:
            self.after_step()
        return loss


def bench_models(
    models: Sequence[str] | None = None,
    *,
    modes: Sequence[str] = ("eager",),
    device: str = "cpu",
    tiny: bool = False,
    threads: int = 2,
    rounds: int = 15,
    round_s: float = 0.05,
    steps: int = 20,
    progress: Callable[[str], None] | None = None,
) -> list[ModelRow]:
    """Time whole training steps of real models, torch-hollow against what their users write.

    For each model of `torch_hollow.tools.model_recipes.MODELS` (``maf``, ``golem``,
    ``notears-mlp``, ``mlp``, ``sparse-llm``), the peer and the torch-hollow build start from
    the same seed, data and optimizer (Adam; AdamW with weight decay for ``sparse-llm``, whose
    peer re-zeroes with ``p.mul_(mask)`` after every step); both first take ``steps`` steps in
    lockstep (warm-up and compilation), after which the correctness columns are read: the
    largest |value| on the entries the peer holds (its own masks, for both builds) of the
    stored weights and of the weights the forward uses (NaN if no entry is held; |-0.0| reads
    0.0, so a mask-mul peer's -0.0 entries read as held), and the largest relative difference
    of the two loss trajectories. Then steps and forwards are timed interleaved, round after
    round, as `torch_hollow.tools.bench.bench` does.

    Args:
        models: names from ``MODELS`` (default: all).
        modes: ``eager`` and/or ``compiled`` (``torch.compile`` of the model).
        device: ``cpu`` or ``cuda`` (models are built on the CPU from the seed, then moved).
        tiny: each model's tiny size (for tests) instead of its full size.
        threads: ``torch.set_num_threads`` for the run.
        rounds: interleaved rounds per model and mode.
        round_s: seconds per build per round.
        steps: lockstep optimizer steps before timing (at least 1).
        progress: called with a line of text as each model starts.

    Returns:
        Two rows per model and mode: the peer (ratio 1.0), then torch-hollow.

    Raises:
        HollowError: an unknown model name, or no CUDA.

    Example:
        >>> rows = bench_models(["maf"], tiny=True, rounds=2, round_s=0.001, steps=3)
        >>> [(r.recipe, r.stored_held > 0, r.forward_held, r.loss_diff) for r in rows]
        [('W*mask', True, 0.0, 0.0), ('torch-hollow', False, 0.0, 0.0)]
    """
    names = list(models or MODELS)
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        raise HollowError(
            f"torch_hollow: unknown model(s) {unknown}. Fix: choose from {list(MODELS)}."
        )
    dev = check_device(device, torch.float32)
    torch.set_num_threads(threads)
    rows: list[ModelRow] = []
    start = time.perf_counter()
    for mode in modes:
        for name in names:
            if progress:
                progress(
                    f"[{len(rows) // 2 + 1}/{len(names) * len(modes)}] {mode} {name} "
                    f"({time.perf_counter() - start:.0f} s)"
                )
            rows += _measure_model(name, mode, dev, tiny, rounds, round_s, max(steps, 1))
    return rows


def _measure_model(
    name: str,
    mode: str,
    device: torch.device,
    tiny: bool,
    rounds: int,
    round_s: float,
    steps: int,
) -> list[ModelRow]:
    model = MODELS[name]
    compiled = mode == "compiled"
    cases = {
        model.peer_name: _ModelCase(model, model.peer, tiny, compiled, device),
        "torch-hollow": _ModelCase(model, model.hollow, tiny, compiled, device),
    }
    losses: dict[str, list[float]] = {r: [] for r in cases}
    for _ in range(steps):
        for r, case in cases.items():
            losses[r].append(case.step().item())
    held = _held_columns(cases, model.peer_name)
    for case in cases.values():
        case.forward()  # compiles the no_grad graph too
    times = interleaved(cases, rounds, round_s, device)
    peer = model.peer_name
    rows = []
    for r in cases:
        diff = max(abs(a - b) / abs(b) for a, b in zip(losses[r], losses[peer], strict=True))
        rows.append(
            ModelRow(
                model=name,
                size=model.describe(tiny),
                mode=mode,
                recipe=r,
                **timing(times, r, peer),
                stored_held=held[r][0],
                forward_held=held[r][1],
                loss_diff=diff if model.same_function else float("nan"),
            )
        )
    return rows


def _held_columns(cases: dict[str, _ModelCase], peer: str) -> dict[str, tuple[float, float]]:
    """Max |held| of each build's stored and used weights, on the entries the peer holds.

    The peer's masks come from the model's own arithmetic, so torch-hollow's build is read
    against them, not against its own rules.
    """
    masks = [mask for _, _, mask in held_entries(cases[peer].module)]
    out = {}
    for r, case in cases.items():
        entries = list(zip(held_entries(case.module), masks, strict=True))
        out[r] = (
            held_max((stored, mask) for (stored, _, _), mask in entries),
            held_max((used, mask) for (_, used, _), mask in entries),
        )
    return out


def format_model_rows(rows: list[ModelRow]) -> str:
    """A markdown table of `bench_models` rows."""
    head = (
        "model",
        "size",
        "mode",
        "recipe",
        "step ratio",
        "fwd ratio",
        "step us",
        "stored held max",
        "forward held max",
        "loss rel. diff",
    )
    cells = [
        [
            r.model,
            r.size,
            r.mode,
            r.recipe,
            f"{r.step_ratio:.3f} ± {r.step_spread:.3f}",
            f"{r.forward_ratio:.3f} ± {r.forward_spread:.3f}",
            f"{r.step_us:.1f}",
            number(r.stored_held),
            number(r.forward_held),
            "n/a (peer is plain)" if r.loss_diff != r.loss_diff else number(r.loss_diff),
        ]
        for r in rows
    ]
    return markdown(head, cells)
