"""Instructions per training step of one layer, plain vs torch-hollow, under callgrind.

Instruction counts are deterministic, so unlike a timing they can be compared across commits
on a loaded machine. One run counts ``--steps`` SGD steps of one ``(n, n)`` layer at batch 1
(forward, backward, ``opt.step()``, ``zero_grad``) inside one ``functools.reduce`` call, so
that callgrind's ``--toggle-collect=functools_reduce`` counts the steps alone; the warm-up
steps before it run in a plain loop and are not counted. ``benchmarks/callgrind.sh`` runs both
layers and prints the instructions per step.
"""

from __future__ import annotations

import argparse
import functools

import torch
import torch.nn.functional as F

from torch_hollow import HollowLinear


def step(layer: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, i: int) -> int:
    F.mse_loss(layer(x), x).backward()
    opt.step()
    opt.zero_grad()
    return i + 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("layer", choices=["plain", "hollow"])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    kind = torch.nn.Linear if args.layer == "plain" else HollowLinear
    layer = kind(args.n, args.n)
    opt = torch.optim.SGD(layer.parameters(), lr=1e-3)
    x = torch.randn(1, args.n)
    for i in range(20):  # warm-up: caches, lazy imports, first-call paths; not collected
        step(layer, opt, x, i)
    functools.reduce(lambda i, _: step(layer, opt, x, i), range(args.steps), 0)


if __name__ == "__main__":
    main()
