"""Training step for Mask, BlockDiagonal and batched patterns vs W*mask and plain nn.Linear.

Run: python benchmarks/bench_patterns.py [--device cuda] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import platform

import torch

from torch_hollow.patterns import BlockDiagonal, Mask
from torch_hollow.tools.bench import bench, format_rows
from torch_hollow.tools.recipes import Spec
from torch_hollow.tools.report import to_json

POINTS = [(256, 1), (1024, 8), (1024, 512)]


def _made(n: int) -> Mask:
    """A MADE-style autoregressive mask: output i reads inputs j < i."""
    return Mask(torch.arange(n)[:, None] > torch.arange(n)[None, :])


def _few(n: int, fraction: float = 0.03) -> Mask:
    """A seeded random mask holding ``fraction`` of the entries (pruning-like, sparse held set)."""
    draw = torch.rand(n, n, generator=torch.Generator().manual_seed(0))
    return Mask(draw >= fraction)


CASES = {
    "Mask (MADE)": lambda n: Spec(n, pattern=_made(n)),
    "Mask (3% held, random)": lambda n: Spec(n, pattern=_few(n)),
    "BlockDiagonal(16)": lambda n: Spec(n, pattern=BlockDiagonal(16)),
    "batched 4x(n,n) diagonal": lambda n: Spec(n, groups=4),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument(
        "--steps",
        type=int,
        default=10,
        help="steps for the correctness columns (0: skip them; Muon takes ~30 s a step at n=1024 "
        "on a CPU, in bfloat16)",
    )
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    all_rows = []
    for case, make in CASES.items():
        print(f"\n## {case}\n")
        rows = []
        for n, batch in POINTS:
            rows += bench(
                ["torch-hollow", "W*mask"],
                points=[(n, batch)],
                spec=make(n),
                device=args.device,
                threads=args.threads,
                rounds=args.rounds,
                memory=False,
                steps=args.steps,
            )
        print(format_rows(rows))
        all_rows += rows
    card = torch.cuda.get_device_name() if args.device == "cuda" else platform.machine()
    print(f"\ntorch {torch.__version__}, {args.device} ({card}), {args.threads} threads, SGD")
    if args.json:
        with open(args.json, "w") as f:
            f.write(to_json(all_rows))


if __name__ == "__main__":
    main()
