"""HollowLinear vs plain nn.Linear: forward and training step, eager and compiled.

Run: python benchmarks/bench_core.py [--device cuda] [--threads 2] [--json out.json]
Ratios are taken inside each interleaved round, then the median (± half the IQR) is shown.
"""

from __future__ import annotations

import argparse
import platform

import torch

from torch_hollow.bench import bench, format_rows, to_json

POINTS = [(256, 1), (1024, 8), (1024, 512)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--modes", default="eager,compiled")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    rows = bench(
        ["torch-hollow"],
        points=POINTS,
        device=args.device,
        threads=args.threads,
        rounds=args.rounds,
        modes=tuple(args.modes.split(",")),
        progress=print,
    )
    card = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor()
    print(
        f"\ntorch {torch.__version__}, {args.device} ({card}), {args.threads} threads, "
        f"optimizer SGD, float32\n"
    )
    print(format_rows(rows))
    if args.json:
        with open(args.json, "w") as f:
            f.write(to_json(rows))


if __name__ == "__main__":
    main()
