"""Side-by-side comparison of the zero-diagonal recipes: time, memory, and whether zeros hold.

Every recipe is timed interleaved with plain ``nn.Linear``, round after round, in one process
with a fixed thread count; a ratio is taken inside each round (recipe time / plain time of the
same round) and the median and half the inter-quartile range of those ratios are reported, so
drift of the machine cancels. Memory: parameter + buffer bytes and state-dict bytes over plain,
and the peak memory of one training step (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the
growth of the resident set over one step, in a fresh subprocess). Correctness: the largest
|value| on the held entries of what each recipe stores, after training with AdamW (weight decay)
and with Muon, and of the weight its forward uses.

`bench_models` does the same for whole training steps of real models (a MAF, a GOLEM SEM, a
NOTEARS-MLP, a 4-layer MLP), torch-hollow against what each model's users write instead.
"""

from __future__ import annotations

__all__ = [
    "BenchRow",
    "ModelRow",
    "bench",
    "bench_models",
    "format_model_rows",
    "format_rows",
    "plot_rows",
    "to_json",
]

import io
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from torch_hollow import HollowError, rules_of
from torch_hollow.patterns import Diagonal

from .model_recipes import MODELS, Model, held_entries
from .recipes import RECIPES, MaskedLinear, Spec, stored_params

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


def _state_bytes(module: nn.Module) -> int:
    # Parameters, buffers, tensor attributes (prune's computed weight) and torch-hollow's masks,
    # each storage once.
    tensors = [*module.parameters(), *module.buffers()]
    for m in module.modules():
        tensors += [v for v in vars(m).values() if isinstance(v, Tensor)]
        tensors += [t for rule in rules_of(m).values() for t in rule.pattern.tensors()]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def _state_dict_bytes(module: nn.Module) -> int:
    # As saved: torch.save also writes the state dict's metadata (a Mask's pattern is there).
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


def _timed(fn: Callable[[], None], iters: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1e6


def _peak_step_bytes(recipe: str, spec: Spec, batch: int, compiled: bool) -> int:
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


def _held_max(t: Tensor, mask: Tensor) -> float:
    values = t.detach()[..., mask] if mask.dim() == 2 else t.detach()[mask]
    return values.abs().max().item() if values.numel() else 0.0


def _correctness(recipe: str, spec: Spec, steps: int) -> tuple[float, float, float]:
    """max |held| of the stored weight after AdamW and after Muon, and of the forward's weight."""
    out = []
    for make in (
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
        lambda p: torch.optim.Muon(p, lr=1e-2),
    ):
        if len(out) == 1 and not _HAS_MUON:
            return out[0], float("nan"), float("nan")  # shown as "needs torch >= 2.9"
        torch.manual_seed(1)
        module = RECIPES[recipe](spec)
        stored = stored_params(module)
        mask = spec.held().held_mask(stored.shape, spec.device)
        if len(out) == 1 and stored.dim() != 2:
            return out[0], float("nan"), float("nan")  # Muon takes 2-D parameters only
        opt = make([stored])
        shape = (spec.groups, 8, spec.n) if spec.groups else (8, spec.n)
        x = torch.randn(shape, device=spec.device, dtype=spec.dtype)
        for _ in range(steps):
            opt.zero_grad()
            module(x).float().square().mean().backward()
            opt.step()
        out.append(_held_max(stored, mask))
        module(x)  # refresh what the forward uses (prune recomputes it in a pre-hook)
    used = module.inner.weight * module.mask if isinstance(module, MaskedLinear) else module.weight
    return out[0], out[1], _held_max(used, mask)


def _check_options(device: str, dtype: torch.dtype, recipes: Sequence[str]) -> torch.device:
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise HollowError(
            f"torch_hollow: unknown recipe(s) {unknown}. Fix: choose from {list(RECIPES)}."
        )
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
    dev = _check_options(device, dtype, names)
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
    times = _interleaved(cases, rounds, round_s, spec.device)
    plain = cases["plain"].module
    rows = []
    for r, case in cases.items():
        checks = _correctness(r, spec, steps) if steps else (float("nan"),) * 3
        peak = _peak_step_bytes(r, spec, batch, mode == "compiled") if memory else -1
        rows.append(
            BenchRow(
                recipe=r,
                n=spec.n,
                batch=batch,
                mode=mode,
                **_timing(times, r, "plain"),
                extra_state_bytes=_state_bytes(case.module) - _state_bytes(plain),
                extra_state_dict_bytes=_state_dict_bytes(case.module) - _state_dict_bytes(plain),
                peak_step_bytes=peak,
                stored_adamw=checks[0],
                stored_muon=checks[1],
                forward_muon=checks[2],
            )
        )
    return rows


def _interleaved(
    cases: dict[str, Any], rounds: int, round_s: float, device: torch.device
) -> dict[tuple[str, str], list[float]]:
    """Microseconds per call of each case's ``forward`` and ``step``, round after round."""
    times: dict[tuple[str, str], list[float]] = {}
    for kind in ("forward", "step"):
        iters = {
            r: max(1, int(round_s / max(_timed(getattr(c, kind), 3, device) * 1e-6, 1e-7)))
            for r, c in cases.items()
        }
        for _ in range(rounds):
            for r, c in cases.items():
                times.setdefault((r, kind), []).append(_timed(getattr(c, kind), iters[r], device))
    return times


def _timing(times: dict[tuple[str, str], list[float]], r: str, ref: str) -> dict[str, float]:
    """A row's time columns: medians, and ratios over ``ref`` with their spreads."""
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


def _ratios(mine: list[float], plain: list[float]) -> tuple[float, float]:
    ratios = sorted(a / b for a, b in zip(mine, plain, strict=True))
    if len(ratios) < 4:
        return statistics.median(ratios), 0.0
    q = statistics.quantiles(ratios, n=4)
    return statistics.median(ratios), (q[2] - q[0]) / 2


@dataclass(frozen=True)
class ModelRow:
    """A whole model built one way (its peer, or torch-hollow) in one mode; times in us."""

    model: str
    size: str
    mode: str  # "eager" or "compiled"
    recipe: str  # what the peer writes (e.g. "W*mask"), or "torch-hollow"
    forward_us: float  # the loss under no_grad
    step_us: float  # zero_grad, loss, backward, Adam step
    forward_ratio: float  # median over rounds of this build / the peer
    forward_spread: float  # half the inter-quartile range of those ratios
    step_ratio: float
    step_spread: float
    stored_held: float  # max |held entries| of the stored weights after the lockstep steps
    forward_held: float  # ... of the weights the forward uses
    loss_diff: float  # max relative difference from the peer's losses (NaN: another function)


class _ModelCase:
    """A model's module, its Adam optimizer and one fixed batch: forward and step callables."""

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
        self.opt = torch.optim.Adam(self.module.parameters(), lr=1e-3)
        self.x = model.data(batch, size[model.dim], torch.Generator().manual_seed(0)).to(device)

    def forward(self) -> None:
        with torch.no_grad():
            self.run(self.x)

    def step(self) -> Tensor:
        self.opt.zero_grad(set_to_none=True)
        loss = self.run(self.x)
        loss.backward()
        self.opt.step()
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
    ``notears-mlp``, ``mlp``), the peer and the torch-hollow build start from the same seed,
    data and Adam optimizer; both first take ``steps`` steps in lockstep (warm-up and
    compilation), after which the correctness columns are read: the largest |value| on the
    held entries of the stored weights and of the weights the forward uses, and the largest
    relative difference of the two loss trajectories. Then steps and forwards are timed
    interleaved, round after round, as `bench` does.

    Args:
        models: names from ``MODELS`` (default: all).
        modes: ``eager`` and/or ``compiled`` (``torch.compile`` of the model).
        device: ``cpu`` or ``cuda`` (models are built on the CPU from the seed, then moved).
        tiny: each model's tiny size (for tests) instead of its full size.
        threads: ``torch.set_num_threads`` for the run.
        rounds: interleaved rounds per model and mode.
        round_s: seconds per build per round.
        steps: lockstep Adam steps before timing (at least 1).
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
    dev = _check_options(device, torch.float32, [])
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
    held = {
        r: [(_held_max(stored, mask), _held_max(used, mask)) for stored, used, mask in entries]
        for r, entries in ((r, held_entries(c.module)) for r, c in cases.items())
    }
    for case in cases.values():
        case.forward()  # compiles the no_grad graph too
    times = _interleaved(cases, rounds, round_s, device)
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
                **_timing(times, r, peer),
                stored_held=max(s for s, _ in held[r]),
                forward_held=max(u for _, u in held[r]),
                loss_diff=diff if model.same_function else float("nan"),
            )
        )
    return rows


def _g(x: float) -> str:
    return "n/a" if x != x else f"{x:.3g}"


def _muon(x: float) -> str:
    return _g(x) if _HAS_MUON else "needs torch >= 2.9"


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
                _g(r.stored_adamw),
                _muon(r.stored_muon),
                _muon(r.forward_muon),
            ]
        )
    return _markdown(head, cells)


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
            _g(r.stored_held),
            _g(r.forward_held),
            "n/a (peer is plain)" if r.loss_diff != r.loss_diff else _g(r.loss_diff),
        ]
        for r in rows
    ]
    return _markdown(head, cells)


def _markdown(head: Sequence[str], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def to_json(rows: Sequence[BenchRow | ModelRow]) -> str:
    """The rows as JSON (a list of objects)."""
    return json.dumps([asdict(r) for r in rows], indent=2)


def _bar(r: BenchRow | ModelRow) -> tuple[str, str]:
    # (group, series): a group per (mode, n, batch) point or (mode, model); a model's peer is
    # one series whatever it writes.
    if isinstance(r, ModelRow):
        return f"{r.mode}\n{r.model}", r.recipe if r.recipe == "torch-hollow" else "peer"
    return f"{r.mode}\nn={r.n} b={r.batch}", r.recipe


def plot_rows(rows: Sequence[BenchRow | ModelRow], path: str) -> None:
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
    by = {_bar(r): r for r in rows}
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
