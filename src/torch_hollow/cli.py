"""The ``torch-hollow`` command: ``demo`` (more subcommands join as they land)."""

from __future__ import annotations

__all__ = ["main"]

import argparse
import time


def _demo(args: argparse.Namespace) -> int:
    from .demo import format_table, run_demo

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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``torch-hollow`` console script."""
    parser = argparse.ArgumentParser(prog="torch-hollow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="show the naive recipes failing and torch-hollow holding")
    demo.add_argument("--steps", type=int, default=50, help="optimizer steps (default 50)")
    demo.add_argument("--dim", type=int, default=16, help="layer size (default 16)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    return args.run(args)
