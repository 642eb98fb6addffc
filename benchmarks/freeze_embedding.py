"""Freezing 90 % of a large embedding's rows: the extra memory and the step time, side by side.

A tiny model around one ``nn.Embedding(32000, 4096)`` in bfloat16 (250 MiB: a Llama-7B
vocabulary) whose first 28,800 rows (90 %) are old tokens that must not move, and a small
``nn.Linear(4096, 64)`` head; AdamW (lr 1e-2, weight decay 0.1, foreach) on every parameter,
a batch of 8 x 128 token ids drawn over the whole vocabulary. Three models from the same
initial weights, one step each in turn (the order rotating), with a fixed thread count:

- ``plain``: every row trained (the reference step);
- ``freeze_``: ``torch_hollow.freeze_(model.embed, pattern=Rows(range(28800)))``;
- ``grad-hook``: the recipe users write, ``weight.register_hook(lambda g: g * mask)`` with a
  ``(32000, 1)`` mask 0 on the old rows (AdamW's weight decay still moves them).

The issue's bounds: the extra memory of ``freeze_`` is no more than one copy of the frozen
entries (bytes of the tensors ``rules_of(model.embed)["weight"]`` holds: its values and its
pattern's, against 28,800 x 4096 x 2 bytes), and its step time is at most 1.10x the plain
step's, the ratio taken round by round in the same run. It also checks, bit for bit, that the
frozen rows are unchanged after the steps (and counts the grad-hook's moved entries).

Run: python benchmarks/freeze_embedding.py [--rounds 15] [--threads 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import Tensor, nn

import torch_hollow as th
from torch_hollow.patterns import Rows

VOCAB, DIM, FROZEN = 32000, 4096, 28800
METHODS = ("plain", "freeze_", "grad-hook")


class Tiny(nn.Module):
    """An embedding and a small head: the embedding's step is nearly the whole step."""

    def __init__(self, vocab: int, dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, dtype=torch.bfloat16)
        self.head = nn.Linear(dim, 64, dtype=torch.bfloat16)

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(self.embed(ids)).float().square().mean()


def tensor_bytes(tensors: list[Tensor]) -> int:
    """Bytes of the tensors' storages, each once."""
    return sum(
        {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values()
    )


def setup(method: str, base: Tiny, frozen: int) -> tuple[Tiny, torch.optim.Optimizer, int]:
    """A copy of ``base`` held by ``method``, its AdamW, and the bytes the method adds."""
    model = copy.deepcopy(base)
    extra = 0
    if method == "freeze_":
        th.freeze_(model.embed, pattern=Rows(range(frozen)))
        rule = th.rules_of(model.embed)["weight"]
        held = [v for v in vars(rule).values() if isinstance(v, Tensor)]
        extra = tensor_bytes(held + rule.pattern.tensors())
    elif method == "grad-hook":
        mask = torch.ones(model.embed.num_embeddings, 1, dtype=torch.bfloat16)
        mask[:frozen] = 0
        model.embed.weight.register_hook(lambda g: g * mask)
        extra = tensor_bytes([mask])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, foreach=True)
    return model, opt, extra


def run(rounds: int, vocab: int = VOCAB, dim: int = DIM, frozen: int = FROZEN, batch=(8, 128)):
    torch.manual_seed(0)
    base = Tiny(vocab, dim)
    before = base.embed.weight.detach()[:frozen].clone()
    models = {m: setup(m, base, frozen) for m in METHODS}
    del base
    gen = torch.Generator().manual_seed(1)
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for r in range(rounds + 2):  # the first two rounds (AdamW's state, the guard's plan) left out
        ids = torch.randint(0, vocab, batch, generator=gen)
        order = list(METHODS[r % 3 :] + METHODS[: r % 3])
        for method in order:
            model, opt, _ = models[method]
            start = time.perf_counter()
            opt.zero_grad()
            model(ids).backward()
            opt.step()
            if r >= 2:
                times[method].append(time.perf_counter() - start)
    ratio = {
        m: statistics.median(a / b for a, b in zip(times[m], times["plain"], strict=True))
        for m in METHODS
    }
    frozen_bytes = frozen * dim * torch.bfloat16.itemsize
    rows = []
    for method in METHODS:
        model, _, extra = models[method]
        now = model.embed.weight.detach()[:frozen]
        rows.append(
            {
                "method": method,
                "extra_bytes": extra,
                "frozen_entries_bytes": frozen_bytes,
                "extra_per_frozen_byte": extra / frozen_bytes,
                "step_ms": 1e3 * statistics.median(times[method]),
                "step_ms_min": 1e3 * min(times[method]),
                "step_ratio_to_plain": ratio[method],
                "frozen_rows_changed": int(
                    (now.view(torch.int16) != before.view(torch.int16)).sum()
                ),
                "frozen_rows_max_change": float((now.float() - before.float()).abs().max()),
            }
        )
    return rows


def peak_one(method: str, steps: int = 3) -> int:
    """Peak resident bytes of a process that builds one model held by ``method`` and steps it."""
    torch.manual_seed(0)
    model, opt, _ = setup(method, Tiny(VOCAB, DIM), FROZEN)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randint(0, VOCAB, (8, 128), generator=gen)).backward()
        opt.step()
    try:  # this process's high-water mark (ru_maxrss would carry the parent's over exec)
        status = open("/proc/self/status").read()
        return int(status.split("VmHWM:")[1].split()[0]) * 1024
    except (OSError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peaks(threads: int) -> dict[str, int]:
    """`peak_one` of each method, each in a fresh process (so one's peak is not another's)."""
    out = {}
    for method in METHODS:
        command = [sys.executable, __file__, "--peak-one", method, "--threads", str(threads)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        out[method] = int(done.stdout.split()[-1])
    return out


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the conditions and rows to this file")
    parser.add_argument("--peak-one", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.peak_one:
        print(peak_one(args.peak_one))
        return
    begin = time.perf_counter()
    peak = peaks(args.threads)
    rows = run(args.rounds)
    for r in rows:
        r["peak_rss_bytes"] = peak[r["method"]]
        r["peak_rss_over_plain"] = peak[r["method"]] - peak["plain"]
    print(
        f"nn.Embedding({VOCAB}, {DIM}) bf16, rows 0..{FROZEN} frozen ({FROZEN / VOCAB:.0%}), "
        f"AdamW weight decay 0.1, {args.rounds} rounds, {torch.get_num_threads()} threads\n"
    )
    print(
        "| method | extra memory (per frozen-entry byte) | step ms median (min) | "
        "step / plain (median of rounds) | peak RSS over plain | frozen entries changed "
        "(max \\|change\\|) |\n|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['method']} | {r['extra_bytes'] / 2**20:.2f} MiB "
            f"({r['extra_per_frozen_byte']:.4f}) | {r['step_ms']:.0f} ({r['step_ms_min']:.0f}) | "
            f"{r['step_ratio_to_plain']:.3f} | {r['peak_rss_over_plain'] / 2**20:.0f} MiB | "
            f"{r['frozen_rows_changed']:,} "
            f"({r['frozen_rows_max_change']:.3g}) |"
        )
    seconds = time.perf_counter() - begin
    print(f"\n{seconds:.0f} s")
    if args.json:
        conditions = {
            "machine": f"{platform.machine()} {_cpu_name()}".strip(),
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "torch_hollow": th.__version__,
            "shape": [VOCAB, DIM],
            "frozen_rows": FROZEN,
            "rounds": args.rounds,
            "seconds": seconds,
        }
        with open(args.json, "w") as f:
            json.dump({"conditions": conditions, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
