"""HollowLinear vs nn.Linear at the core issue's points: forward and step, eager and compiled.

Run: python benchmarks/bench_core.py [--device cuda] [--threads 2] [--json out.json]
(any other `torch-hollow bench` option passes through).
"""

from __future__ import annotations

import sys

from torch_hollow.cli import main

POINTS = "256x1,1024x8,1024x512"

if __name__ == "__main__":
    args = ["bench", "--recipes", "torch-hollow", "--points", POINTS, "--compile", *sys.argv[1:]]
    raise SystemExit(main(args))
