"""Side-by-side timing of torch-hollow against plain ``nn.Linear``.

Every recipe is timed interleaved with the plain layer, round after round, in one process with
a fixed thread count; a ratio is taken inside each round (recipe time / plain time of the same
round) and the median and spread of those ratios are reported, so drift of the machine cancels.
Memory: parameter + buffer bytes and state-dict bytes of the layer, and the peak memory of one
training step (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the step's peak resident set
growth, measured in a fresh subprocess).
"""

from __future__ import annotations

__all__ = ["RECIPES", "BenchRow", "bench", "format_rows"]

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .nn import HollowLinear

Builder = Callable[[int, torch.device, torch.dtype], nn.Module]

RECIPES: dict[str, Builder] = {
    "plain": lambda n, device, dtype: nn.Linear(n, n, device=device, dtype=dtype),
    "torch-hollow": lambda n, device, dtype: HollowLinear(n, n, device=device, dtype=dtype),
}


@dataclass(frozen=True)
class BenchRow:
    """One recipe at one (n, batch, mode) point; times in microseconds."""

    recipe: str
    n: int
    batch: int
    mode: str  # "eager" or "compiled"
    forward_us: float
    step_us: float
    forward_ratio: float  # median over rounds of recipe / plain
    forward_spread: float  # half the inter-quartile range of those ratios
    step_ratio: float
    step_spread: float
    state_bytes: int  # parameters + buffers + tensor attributes
    state_dict_bytes: int
    peak_step_bytes: int  # peak memory growth during one training step


def _state_bytes(module: nn.Module) -> int:
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    for m in module.modules():
        tensors.update({id(v): v for v in vars(m).values() if isinstance(v, torch.Tensor)})
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _state_dict_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


class _Case:
    """A model, its optimizer and inputs, with forward-only and train-step callables."""

    def __init__(
        self,
        recipe: str,
        n: int,
        batch: int,
        device: torch.device,
        dtype: torch.dtype,
        compiled: bool,
    ) -> None:
        torch.manual_seed(0)
        self.module = RECIPES[recipe](n, device, dtype)
        self.run = torch.compile(self.module) if compiled else self.module
        self.opt = torch.optim.SGD(self.module.parameters(), lr=1e-4)
        self.x = torch.randn(batch, n, device=device, dtype=dtype)

    def forward(self) -> None:
        with torch.no_grad():
            self.run(self.x)

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.run(self.x).float().square().mean().backward()
        self.opt.step()


def _timed(fn: Callable[[], None], iters: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1e6


def _iters_for(fn: Callable[[], None], device: torch.device, budget_s: float) -> int:
    one = _timed(fn, 3, device) * 1e-6
    return max(1, int(budget_s / max(one, 1e-7)))


def _peak_step_bytes(
    recipe: str, n: int, batch: int, device: torch.device, dtype: torch.dtype, compiled: bool
) -> int:
    if device.type == "cuda":
        case = _Case(recipe, n, batch, device, dtype, compiled)
        case.step()
        case.opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        case.step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device) - base
    # CPU: the growth of the resident set over one step, in a fresh process so that nothing
    # measured before raises the high-water mark.
    code = (
        "import resource, torch\n"
        "from torch_hollow.bench import _Case\n"
        "def rss():\n"
        "    with open('/proc/self/statm') as f:\n"
        "        return int(f.read().split()[1]) * resource.getpagesize()\n"
        f"case = _Case({recipe!r}, {n}, {batch}, torch.device('cpu'), {dtype}, {compiled})\n"
        "case.step(); case.opt.zero_grad(set_to_none=True)\n"
        "base = rss()\n"
        "case.step()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600
    )
    return max(0, int(done.stdout.strip().splitlines()[-1]))


def bench(
    recipes: list[str] | None = None,
    sizes: tuple[int, ...] = (256, 1024),
    batches: tuple[int, ...] = (1, 8, 512),
    points: list[tuple[int, int]] | None = None,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    modes: tuple[str, ...] = ("eager",),
    threads: int = 2,
    rounds: int = 15,
    round_s: float = 0.05,
    memory: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[BenchRow]:
    """Time ``recipes`` against ``plain`` on each (n, batch) point and mode.

    Args:
        recipes: names in `RECIPES` (``plain`` is always included as the reference).
        sizes: layer sizes n (an n x n layer).
        batches: batch sizes; the grid is ``sizes x batches`` unless ``points`` is given.
        points: explicit (n, batch) pairs.
        device: ``cpu`` or ``cuda``.
        dtype: parameter and input dtype.
        modes: ``eager`` and/or ``compiled`` (``torch.compile`` of the layer).
        threads: ``torch.set_num_threads`` for the run.
        rounds: interleaved rounds per point.
        round_s: seconds per recipe per round.
        memory: also measure the peak memory of a training step.
        progress: called with a line of text as each point starts.

    Returns:
        One row per recipe, point and mode (``plain`` included, ratio 1.0).

    Example:
        >>> rows = bench(["torch-hollow"], points=[(16, 2)], rounds=2, round_s=0.001,
        ...              memory=False)
        >>> [(r.recipe, r.state_bytes == rows[0].state_bytes) for r in rows]
        [('plain', True), ('torch-hollow', True)]
    """
    torch.set_num_threads(threads)
    dev = torch.device(device)
    names = ["plain", *[r for r in (recipes or list(RECIPES)) if r != "plain"]]
    grid = points or [(n, b) for n in sizes for b in batches]
    rows = []
    for mode in modes:
        for n, batch in grid:
            if progress:
                progress(f"{mode} n={n} batch={batch}")
            cases = {r: _Case(r, n, batch, dev, dtype, mode == "compiled") for r in names}
            for case in cases.values():  # warm-up (and compilation)
                for _ in range(3):
                    case.step()
                    case.forward()
            rows += _measure(cases, n, batch, mode, dev, dtype, rounds, round_s, memory)
    return rows


def _measure(
    cases: dict[str, _Case],
    n: int,
    batch: int,
    mode: str,
    dev: torch.device,
    dtype: torch.dtype,
    rounds: int,
    round_s: float,
    memory: bool,
) -> list[BenchRow]:
    timings: dict[str, dict[str, list[float]]] = {r: {"forward": [], "step": []} for r in cases}
    for kind in ("forward", "step"):
        iters = {r: _iters_for(getattr(c, kind), dev, round_s) for r, c in cases.items()}
        for _ in range(rounds):
            for r, c in cases.items():
                timings[r][kind].append(_timed(getattr(c, kind), iters[r], dev))
    rows = []
    for r, case in cases.items():
        fwd = _ratios(timings[r]["forward"], timings["plain"]["forward"])
        stp = _ratios(timings[r]["step"], timings["plain"]["step"])
        rows.append(
            BenchRow(
                recipe=r,
                n=n,
                batch=batch,
                mode=mode,
                forward_us=statistics.median(timings[r]["forward"]),
                step_us=statistics.median(timings[r]["step"]),
                forward_ratio=fwd[0],
                forward_spread=fwd[1],
                step_ratio=stp[0],
                step_spread=stp[1],
                state_bytes=_state_bytes(case.module),
                state_dict_bytes=_state_dict_bytes(case.module),
                peak_step_bytes=_peak_step_bytes(r, n, batch, dev, dtype, mode == "compiled")
                if memory
                else -1,
            )
        )
    return rows


def _ratios(mine: list[float], plain: list[float]) -> tuple[float, float]:
    ratios = sorted(a / b for a, b in zip(mine, plain, strict=True))
    if len(ratios) < 4:
        return statistics.median(ratios), 0.0
    q = statistics.quantiles(ratios, n=4)
    return statistics.median(ratios), (q[2] - q[0]) / 2


def format_rows(rows: list[BenchRow]) -> str:
    """A markdown table of ``rows``."""
    head = (
        "mode",
        "n",
        "batch",
        "recipe",
        "fwd us",
        "fwd ratio",
        "step us",
        "step ratio",
        "state MiB",
        "state_dict MiB",
        "peak step MiB",
    )
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    mib = 2.0**20
    for r in rows:
        peak = "n/a" if r.peak_step_bytes < 0 else f"{r.peak_step_bytes / mib:.2f}"
        out.append(
            "| "
            + " | ".join(
                [
                    r.mode,
                    str(r.n),
                    str(r.batch),
                    r.recipe,
                    f"{r.forward_us:.1f}",
                    f"{r.forward_ratio:.3f} ± {r.forward_spread:.3f}",
                    f"{r.step_us:.1f}",
                    f"{r.step_ratio:.3f} ± {r.step_spread:.3f}",
                    f"{r.state_bytes / mib:.2f}",
                    f"{r.state_dict_bytes / mib:.2f}",
                    peak,
                ]
            )
            + " |"
        )
    return "\n".join(out)


def to_json(rows: list[BenchRow]) -> str:
    """The rows as JSON (a list of objects)."""
    return json.dumps([asdict(r) for r in rows], indent=2)
