"""A pruned language-model weight held by a `Mask`: memory per entry and the cost of holding it.

One Llama-7B MLP weight (11008 x 4096, bfloat16, 86 MiB), pruned 2:4 or 50 % unstructured. It
reports the bytes the `Mask` keeps (its packed bits, every cache), the largest transient
allocation of one zeroing pass (NumPy buffers, traced by tracemalloc), and the time of that pass
beside the weight's own AdamW ``step()`` (foreach, weight decay), interleaved, 2 threads.

Run: python benchmarks/mask_memory.py [--rounds 7] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import tracemalloc

import torch

from torch_hollow import HollowLinear, rules_of
from torch_hollow.patterns import Mask

ROWS, COLS = 11008, 4096


def pruned(kind: str, generator: torch.Generator) -> torch.Tensor:
    """``allowed`` (True = kept) for 50 % unstructured or 2:4 along the input dim."""
    scores = torch.rand(ROWS, COLS, generator=generator)
    if kind == "2:4":
        groups = scores.view(ROWS, COLS // 4, 4)
        keep = groups.argsort(-1, descending=True)[..., :2]
        return torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True).view(ROWS, COLS)
    return scores >= scores.median()


def measure(kind: str, rounds: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    allowed = pruned(kind, generator)
    layer = HollowLinear(COLS, ROWS, bias=False, dtype=torch.bfloat16, pattern=Mask(allowed))
    mask = rules_of(layer)["weight"].pattern
    layer.weight.grad = torch.randn_like(layer.weight)
    opt = torch.optim.AdamW([layer.weight], lr=1e-4, weight_decay=0.1, foreach=True)
    opt.step()  # state allocated, the guard's plan made
    plan = layer._hollow.plans["weight"][1]  # the writes the guard runs after each step

    def zero() -> None:
        for call in plan.calls:
            call()

    tracemalloc.start()
    zero()
    _, transient = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    steps, zeros = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        opt.step()  # the guard's pass runs inside: subtract it below
        mid = time.perf_counter()
        zero()
        end = time.perf_counter()
        zeros.append(end - mid)
        steps.append(mid - start - (end - mid))
    held = ~allowed
    stored = layer.weight.detach()[held]
    kept = sum(t.untyped_storage().nbytes() for t in mask.tensors())
    return {
        "pattern": kind,
        "shape": [ROWS, COLS],
        "dtype": "bfloat16",
        "weight_bytes": layer.weight.nbytes,
        "mask_bytes": kept,
        "bits_per_entry": 8 * kept / held.numel(),
        "transient_bytes": transient,
        "adamw_step_ms": 1e3 * statistics.median(steps),
        "zeroing_ms": 1e3 * statistics.median(zeros),
        "ratio": statistics.median(z / s for z, s in zip(zeros, steps, strict=True)),
        "held_nonzero_after": int((stored.view(torch.int16) != 0).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = [measure(kind, args.rounds) for kind in ("2:4", "50%")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {ROWS}x{COLS} bf16")
    print(
        "| pattern | Mask MiB | bits/entry | transient MiB | AdamW step ms | zeroing ms | ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['pattern']} | {r['mask_bytes'] / 2**20:.2f} | {r['bits_per_entry']:.3f} | "
            f"{r['transient_bytes'] / 2**20:.2f} | {r['adamw_step_ms']:.1f} | "
            f"{r['zeroing_ms']:.1f} | {r['ratio']:.3f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
