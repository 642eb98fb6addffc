"""Side-by-side comparison of the zero-diagonal recipes: time, memory, and whether zeros hold.

Every recipe is timed interleaved with plain ``nn.Linear``, round after round, in one process
with a fixed thread count; a ratio is taken inside each round (recipe time / plain time of the
same round) and the median and half the inter-quartile range of those ratios are reported, so
drift of the machine cancels. Memory: parameter + buffer bytes and state-dict bytes over plain,
and the peak memory of one training step (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the
growth of the resident set over one step, in a fresh subprocess). Correctness: the largest
|value| on the held entries of what each recipe stores, after training with AdamW (weight decay)
and with Muon, and of the weight its forward uses.

`torch_hollow.tools.bench_models` does the same for whole training steps of real models.
"""

from __future__ import annotations

__all__ = [
    "OPTIMIZERS",
    "BenchRow",
    "bench",
    "format_rows",
    "peak_step_bytes",
    "state_bytes",
    "state_dict_bytes",
    "train",
]

import io
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from torch_hollow import HollowError, rules_of
from torch_hollow.patterns import Diagonal

from .measure import check_device, held_max, interleaved, timing
from .recipes import RECIPES, Spec, stored_params, used_weight
from .report import markdown, number

_HAS_MUON = hasattr(torch.optim, "Muon")  # torch >= 2.9


@dataclass(frozen=True)
class BenchRow:
    """One recipe at one (n, batch, mode) point; times in microseconds, memory in bytes."""

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
    extra_state_bytes: int  # parameters + buffers + tensor attributes, over plain
    extra_state_dict_bytes: int
    peak_step_bytes: int  # peak memory growth during one training step (-1: not measured)
    stored_adamw: float  # max |held entries| of the stored weight after AdamW steps
    stored_muon: float  # ... after Muon steps (NaN: Muon cannot train this weight, or no Muon)
    forward_muon: float  # ... of the weight the forward uses, after Muon steps

    def plot_key(self) -> tuple[str, str]:
        """(group, series) of the row's bar: a group per (mode, n, batch) point."""
        return f"{self.mode}\nn={self.n} b={self.batch}", self.recipe


def state_bytes(module: nn.Module) -> int:
    """Bytes ``module`` keeps in memory, each storage once.

    Parameters, buffers, tensor attributes (prune's computed weight) and the tensors of
    torch-hollow's patterns (a `Mask`'s mask).
    """
    tensors = [*module.parameters(), *module.buffers()]
    for m in module.modules():
        tensors += [v for v in vars(m).values() if isinstance(v, Tensor)]
        tensors += [t for rule in rules_of(m).values() for t in rule.pattern.tensors()]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def state_dict_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s state dict as ``torch.save`` writes it, metadata included."""
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getbuffer().nbytes


class _Case:
    """A recipe's module, its optimizer and inputs: forward-only and train-step callables."""

    def __init__(self, recipe: str, spec: Spec, batch: int, compiled: bool) -> None:
        torch.manual_seed(0)
        self.module = RECIPES[recipe](spec)
        self.run = torch.compile(self.module) if compiled else self.module
        self.opt = torch.optim.SGD(self.module.parameters(), lr=1e-4)
        shape = (spec.groups, batch, spec.n) if spec.groups else (batch, spec.n)
        self.x = torch.randn(shape, device=spec.device, dtype=spec.dtype)

    def forward(self) -> None:
        with torch.no_grad():
            self.run(self.x)

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.run(self.x).float().square().mean().backward()
        self.opt.step()


def peak_step_bytes(recipe: str, spec: Spec, batch: int, compiled: bool) -> int:
    """Peak memory growth during one SGD step of ``recipe`` (-1: not measured for this spec).

    CUDA: ``torch.cuda.max_memory_allocated``; CPU (Linux): the growth of the resident set, in a
    fresh subprocess.
    """
    if spec.device.type == "cuda":
        case = _Case(recipe, spec, batch, compiled)
        case.step()
        case.opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(spec.device)
        base = torch.cuda.memory_allocated(spec.device)
        case.step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(spec.device) - base
    if spec.pattern != Diagonal(0):
        return -1  # the subprocess below rebuilds diagonal and pruning specs only
    # CPU (Linux): the growth of the resident set over one step, in a fresh process, with the
    # high-water mark reset after a warm-up step (/proc/self/clear_refs). A fixed mmap threshold
    # makes glibc return every large block on free, so the resident set tracks live tensors.
    code = (
        "import re, torch\n"
        "from torch_hollow.tools.bench import _Case\n"
        "from torch_hollow.tools.recipes import Spec\n"
        "def kib(field):\n"
        "    with open('/proc/self/status') as f:\n"
        "        return int(re.search(field + r':\\s+(\\d+)', f.read()).group(1))\n"
        f"spec = Spec({spec.n}, torch.device('cpu'), {spec.dtype}, groups={spec.groups}, "
        f"sparsity={spec.sparsity})\n"
        f"case = _Case({recipe!r}, spec, {batch}, {compiled})\n"
        "case.step(); case.opt.zero_grad(set_to_none=True)\n"
        "base = kib('VmRSS')\n"
        "with open('/proc/self/clear_refs', 'w') as f:\n"
        "    f.write('5')\n"
        "case.step()\n"
        "print((kib('VmHWM') - base) * 1024)\n"
    )
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
        env=env,
    )
    return max(0, int(done.stdout.strip().splitlines()[-1]))


OPTIMIZERS: dict[str, Callable[[list[Tensor]], torch.optim.Optimizer]] = {
    "AdamW": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "Muon": lambda p: torch.optim.Muon(p, lr=1e-2),
}


def train(recipe: str, spec: Spec, optimizer: str, steps: int) -> nn.Module:
    """``recipe``'s module after ``steps`` steps of ``optimizer`` on what it stores.

    What the correctness columns read: seed 1, a fixed batch of 8, ``optimizer`` one of
    `OPTIMIZERS`; one more forward at the end refreshes the weight the forward uses (prune
    recomputes it in a pre-hook).
    """
    torch.manual_seed(1)
    module = RECIPES[recipe](spec)
    opt = OPTIMIZERS[optimizer]([stored_params(module)])
    shape = (spec.groups, 8, spec.n) if spec.groups else (8, spec.n)
    x = torch.randn(shape, device=spec.device, dtype=spec.dtype)
    for _ in range(steps):
        opt.zero_grad()
        module(x).float().square().mean().backward()
        opt.step()
    module(x)
    return module


def _correctness(recipe: str, spec: Spec, steps: int) -> tuple[float, float, float]:
    """max |held| of the stored weight after AdamW and after Muon, and of the forward's weight."""
    held = spec.held().held_mask(spec.shape, spec.device)
    adamw = held_max([(stored_params(train(recipe, spec, "AdamW", steps)), held)])
    if not _HAS_MUON or spec.groups:  # shown as "needs torch >= 2.9"; Muon takes 2-D only
        return adamw, math.nan, math.nan
    muon = train(recipe, spec, "Muon", steps)
    return adamw, held_max([(stored_params(muon), held)]), held_max([(used_weight(muon), held)])


def _check_recipes(recipes: Sequence[str]) -> None:
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise HollowError(
            f"torch_hollow: unknown recipe(s) {unknown}. Fix: choose from {list(RECIPES)}."
        )


def bench(
    recipes: Sequence[str] | None = None,
    sizes: Sequence[int] = (256, 1024),
    batches: Sequence[int] = (1, 8, 512),
    points: Sequence[tuple[int, int]] | None = None,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    modes: Sequence[str] = ("eager",),
    spec: Spec | None = None,
    sparsity: float = 0.0,
    threads: int = 2,
    rounds: int = 15,
    round_s: float = 0.05,
    memory: bool = True,
    steps: int = 20,
    progress: Callable[[str], None] | None = None,
) -> list[BenchRow]:
    """Time ``recipes`` against ``plain`` at each (n, batch) point and mode, side by side.

    Args:
        recipes: names from `torch_hollow.tools.recipes.RECIPES`; ``plain`` is the reference.
        sizes: layer sizes n (an n x n weight).
        batches: batch sizes; the grid is ``sizes x batches`` unless ``points`` is given.
        points: explicit (n, batch) pairs.
        device: ``cpu`` or ``cuda``.
        dtype: parameter and input dtype.
        modes: ``eager`` and/or ``compiled`` (``torch.compile`` of the module).
        spec: pattern and batching to use (its ``n``, device and dtype are overridden).
        sparsity: the pruning comparison: each weight holds a seeded random mask of this
            fraction of its entries instead of the spec's pattern.
        threads: ``torch.set_num_threads`` for the run.
        rounds: interleaved rounds per point.
        round_s: seconds per recipe per round.
        memory: also measure the peak memory of one training step.
        steps: optimizer steps for the correctness columns (0: skip them).
        progress: called with a line of text as each point starts.

    Returns:
        One row per recipe, point and mode (``plain`` included, ratio 1.0).

    Raises:
        HollowError: an unknown recipe, no CUDA, or a dtype the device cannot multiply.

    Example:
        >>> rows = bench(["torch-hollow"], points=[(16, 2)], rounds=2, round_s=0.001,
        ...              memory=False, steps=3)
        >>> [(r.recipe, r.extra_state_bytes, r.stored_adamw == 0.0) for r in rows]
        [('plain', 0, False), ('torch-hollow', 0, True)]
    """
    names = ["plain", *[r for r in (recipes or list(RECIPES)) if r != "plain"]]
    _check_recipes(names)
    dev = check_device(device, dtype)
    torch.set_num_threads(threads)
    grid = list(points or [(n, b) for n in sizes for b in batches])
    rows: list[BenchRow] = []
    total, start = len(grid) * len(modes), time.perf_counter()
    for mode in modes:
        for n, batch in grid:
            if progress:
                done = len(rows) // len(names)
                progress(
                    f"[{done + 1}/{total}] {mode} n={n} batch={batch} "
                    f"({time.perf_counter() - start:.0f} s)"
                )
            point = replace(spec or Spec(n), n=n, device=dev, dtype=dtype)
            if sparsity:
                point = replace(point, sparsity=sparsity)
            rows += _measure(names, point, batch, mode, rounds, round_s, memory, steps)
    return rows


def _measure(
    names: list[str],
    spec: Spec,
    batch: int,
    mode: str,
    rounds: int,
    round_s: float,
    memory: bool,
    steps: int,
) -> list[BenchRow]:
    cases = {r: _Case(r, spec, batch, mode == "compiled") for r in names}
    for case in cases.values():  # warm-up (and compilation)
        for _ in range(3):
            case.step()
            case.forward()
    times = interleaved(cases, rounds, round_s, spec.device)
    plain = cases["plain"].module
    rows = []
    for r, case in cases.items():
        checks = _correctness(r, spec, steps) if steps else (float("nan"),) * 3
        peak = peak_step_bytes(r, spec, batch, mode == "compiled") if memory else -1
        rows.append(
            BenchRow(
                recipe=r,
                n=spec.n,
                batch=batch,
                mode=mode,
                **timing(times, r, "plain"),
                extra_state_bytes=state_bytes(case.module) - state_bytes(plain),
                extra_state_dict_bytes=state_dict_bytes(case.module) - state_dict_bytes(plain),
                peak_step_bytes=peak,
                stored_adamw=checks[0],
                stored_muon=checks[1],
                forward_muon=checks[2],
            )
        )
    return rows


def _muon(x: float) -> str:
    return number(x) if _HAS_MUON else "needs torch >= 2.9"


def format_rows(rows: list[BenchRow]) -> str:
    """A markdown table of ``rows``."""
    head = (
        "mode",
        "n",
        "batch",
        "recipe",
        "fwd ratio",
        "step ratio",
        "step us",
        "+state MiB",
        "+state_dict MiB",
        "peak step MiB",
        "stored AdamW",
        "stored Muon",
        "forward Muon",
    )
    mib = 2.0**20
    cells = []
    for r in rows:
        peak = "n/a" if r.peak_step_bytes < 0 else f"{r.peak_step_bytes / mib:.2f}"
        cells.append(
            [
                r.mode,
                str(r.n),
                str(r.batch),
                r.recipe,
                f"{r.forward_ratio:.3f} ± {r.forward_spread:.3f}",
                f"{r.step_ratio:.3f} ± {r.step_spread:.3f}",
                f"{r.step_us:.1f}",
                f"{r.extra_state_bytes / mib:.2f}",
                f"{r.extra_state_dict_bytes / mib:.2f}",
                peak,
                number(r.stored_adamw),
                _muon(r.stored_muon),
                _muon(r.forward_muon),
            ]
        )
    return markdown(head, cells)
