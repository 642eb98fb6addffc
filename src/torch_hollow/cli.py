"""The ``torch-hollow`` command: ``demo``, ``bench`` and ``check``."""

from __future__ import annotations

__all__ = ["main"]

import argparse
import sys
import time
from collections.abc import Callable


def _demo(args: argparse.Namespace) -> int:
    from .tools.demo import format_table, run_demo

    start = time.perf_counter()
    print(
        f"Fitting x -> W x ({args.dim}x{args.dim}, no bias) for {args.steps} steps; the "
        "diagonal of W must stay 0.0.\n"
    )
    print(format_table(run_demo(steps=args.steps, dim=args.dim, seed=args.seed)))
    print(
        "\nseed recipe: clone, fill_diagonal_(0), assign .data (holds for one instant).\n"
        "gradient mask: the seed recipe plus a hook zeroing the gradient's diagonal (Muon "
        "still fills it).\ntorch-hollow: HollowLinear; the diagonal is bitwise 0.0 after "
        f"every step.\n({time.perf_counter() - start:.1f} s)"
    )
    return 0


def _check(args: argparse.Namespace) -> int:
    from .audit import audit, format_audit
    from .errors import HollowError

    try:
        rows = audit(
            args.path, trust_pickle=args.trust_pickle, nm=args.nm, mask=args.mask, only=args.only
        )
    except HollowError as err:
        print(err, file=sys.stderr)
        return 2
    print(format_audit(rows, as_json=args.json))
    return 1 if any(r.violated for r in rows) else 0


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _points(text: str | None) -> list[tuple[int, int]] | None:
    if not text:
        return None
    return [(int(n), int(b)) for n, b in (p.split("x") for p in text.split(",") if p)]


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _run_bench(
    args: argparse.Namespace,
    measure: Callable[[], list],
    header: Callable[[], str],
    table: Callable[[list], str],
) -> int:
    """Measure, plot, print ``header`` and the table, write JSON; 2 on a HollowError."""
    from .errors import HollowError
    from .tools.report import plot_rows, to_json

    try:
        rows = measure()
        if args.plot:
            plot_rows(rows, args.plot)
    except HollowError as err:
        print(err, file=sys.stderr)
        return 2
    print(header() + "\n")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            f.write(to_json(rows))
    return 0


def _where(device: str) -> str:
    import platform

    import torch

    return torch.cuda.get_device_name() if device == "cuda" else platform.machine()


def _bench_models(args: argparse.Namespace) -> int:
    import torch

    from .tools.bench_models import bench_models, format_model_rows

    return _run_bench(
        args,
        lambda: bench_models(
            None if args.models == "all" else args.models.split(","),
            modes=("eager", "compiled") if args.compile else ("eager",),
            device=args.device,
            tiny=args.tiny,
            threads=args.threads,
            rounds=args.rounds,
            steps=args.steps,
            progress=_progress,
        ),
        lambda: (
            f"torch {torch.__version__}, {args.device} ({_where(args.device)}), float32, "
            f"{args.threads} threads, each model's optimizer step (Adam; AdamW for "
            f"sparse-llm); ratios: over the peer, median ± half IQR over "
            f"{args.rounds} interleaved rounds; held columns after {args.steps} lockstep steps"
        ),
        format_model_rows,
    )


def _bench(args: argparse.Namespace) -> int:
    if args.models:
        return _bench_models(args)
    import torch

    from .tools.bench import bench, format_rows

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

    def header() -> str:
        return (
            f"torch {torch.__version__}, {args.device} ({_where(args.device)}), {args.dtype}, "
            f"{args.threads} threads, SGD step"
            + (f", {args.sparsity:.0%} of each weight pruned" if args.sparsity else "")
            + f"; ratios: median ± half IQR over {args.rounds} interleaved rounds"
        )

    return _run_bench(
        args,
        lambda: bench(
            args.recipes.split(",") if args.recipes else None,
            sizes=_ints(args.sizes),
            batches=_ints(args.batches),
            points=_points(args.points),
            device=args.device,
            dtype=dtype[args.dtype],
            modes=("eager", "compiled") if args.compile else ("eager",),
            sparsity=args.sparsity,
            threads=args.threads,
            rounds=args.rounds,
            memory=not args.no_memory,
            steps=args.steps,
            progress=_progress,
        ),
        header,
        format_rows,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``torch-hollow`` console script."""
    parser = argparse.ArgumentParser(prog="torch-hollow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_demo, _add_check, _add_bench):
        add(sub)
    args = parser.parse_args(argv)
    return args.run(args)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="show the naive recipes failing and torch-hollow holding")
    demo.add_argument("--steps", type=int, default=50, help="optimizer steps (default 50)")
    demo.add_argument("--dim", type=int, default=16, help="layer size (default 16)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)


def _add_check(sub: argparse._SubParsersAction) -> None:
    check = sub.add_parser(
        "check",
        help="audit a checkpoint: exit 1 if a held entry is non-zero",
        description="Audit a checkpoint: the patterns torch-hollow recorded, or the N:M "
        "sparsity or mask asked for. Exit 0 if every held entry is 0.0 (-0.0 counts as 0.0), "
        "1 if one is not, 2 if the check cannot run.",
    )
    check.add_argument(
        "path",
        help="a torch.save file (state dict or model), a .safetensors file, or a directory of "
        "safetensors shards (those its *.safetensors.index.json names, or every *.safetensors)",
    )
    check.add_argument("--json", action="store_true", help="print JSON rows")
    check.add_argument(
        "--nm",
        metavar="N:M",
        help="check N:M sparsity: at least N of every M consecutive entries along the last dim "
        "are 0.0 (e.g. 2:4), in the 2-D *weight tensors whose name contains none of embed, "
        "norm, lm_head (or those --only chooses)",
    )
    check.add_argument(
        "--mask",
        metavar="FILE",
        help="check against masks (safetensors or torch.save file of bool tensors keyed by "
        "parameter name, True = free; prune's float NAME_mask too): every entry where the mask "
        "is False must be 0.0",
    )
    check.add_argument(
        "--only",
        metavar="REGEX",
        help="with --nm or --mask: check only the tensors whose name matches (re.search)",
    )
    check.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow a pickled model (torch.load weights_only=False)",
    )
    check.set_defaults(run=_check)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="time and check the zero-diagonal recipes side by side")
    bench.add_argument("--device", default="cpu", help="cpu or cuda")
    bench.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    bench.add_argument("--compile", action="store_true", help="also time torch.compile'd modules")
    bench.add_argument("--sizes", default="256,1024", help="layer sizes n, comma-separated")
    bench.add_argument("--batches", default="1,8,512", help="batch sizes, comma-separated")
    bench.add_argument(
        "--points",
        help="explicit NxBATCH points, e.g. 256x1,1024x8 (overrides --sizes and --batches)",
    )
    bench.add_argument("--recipes", help="comma-separated subset (default: all)")
    bench.add_argument(
        "--sparsity",
        type=float,
        default=0.0,
        help="the pruning comparison: hold a random mask of this fraction of each weight "
        "(e.g. 0.8 with --recipes torch-hollow,prune) instead of the diagonal",
    )
    bench.add_argument(
        "--models",
        nargs="?",
        const="all",
        help="time whole training steps of real models against what their users write "
        "instead: all, or some of maf,golem,notears-mlp,mlp,sparse-llm (the layer options do not "
        "apply; sparse-llm needs transformers)",
    )
    bench.add_argument("--tiny", action="store_true", help="with --models: tiny sizes (tests)")
    bench.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    bench.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    bench.add_argument("--steps", type=int, default=20, help="steps for the correctness columns")
    bench.add_argument("--no-memory", action="store_true", help="skip the peak-memory column")
    bench.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    bench.add_argument("--plot", metavar="PATH.png", help="grouped bars of the ratios")
    bench.set_defaults(run=_bench)
