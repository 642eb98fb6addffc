"""The ``torch-hollow`` command: ``demo`` and ``check``."""

from __future__ import annotations

__all__ = ["main"]

import argparse
import sys
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


def _check(args: argparse.Namespace) -> int:
    from .audit import audit, format_audit
    from .errors import HollowError

    try:
        rows = audit(args.path, trust_pickle=args.trust_pickle)
    except HollowError as err:
        print(err, file=sys.stderr)
        return 2
    print(format_audit(rows, as_json=args.json))
    return 1 if any(r.violated for r in rows) else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``torch-hollow`` console script."""
    parser = argparse.ArgumentParser(prog="torch-hollow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="show the naive recipes failing and torch-hollow holding")
    demo.add_argument("--steps", type=int, default=50, help="optimizer steps (default 50)")
    demo.add_argument("--dim", type=int, default=16, help="layer size (default 16)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)
    check = sub.add_parser("check", help="audit a checkpoint: exit 1 if a held entry is non-zero")
    check.add_argument("path", help="a torch.save file (state dict or model) or .safetensors")
    check.add_argument("--json", action="store_true", help="print JSON rows")
    check.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow a pickled model (torch.load weights_only=False)",
    )
    check.set_defaults(run=_check)
    args = parser.parse_args(argv)
    return args.run(args)
