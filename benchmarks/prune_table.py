"""The README's pruning table: one nn.Linear(n, n) with a fraction of its weights pruned.

    python benchmarks/prune_table.py [--n 2048] [--sparsity 0.8]

Columns: plain ``nn.Linear``, ``torch.nn.utils.prune.custom_from_mask`` and
``hollow_(layer, pattern=Mask(allowed))`` (the same seeded mask). Rows: bytes of the tensors
each keeps, the ``torch.save``d state dict, its keys, the peak memory of one SGD step (a fresh
process each, as ``torch-hollow bench`` measures it), and the largest value stored on a pruned
entry after 5 steps of SGD with momentum and weight decay.
"""

from __future__ import annotations

import argparse

import torch

from torch_hollow.tools.bench import peak_step_bytes, state_bytes, state_dict_bytes
from torch_hollow.tools.recipes import RECIPES, Spec, stored_params

COLUMNS = {"plain": "plain", "prune": "`prune.custom_from_mask`", "torch-hollow": "hollow `Mask`"}


def measure(n: int, sparsity: float, batch: int = 8) -> dict[str, dict]:
    spec = Spec(n, sparsity=sparsity)
    held = spec.held().held_mask((n, n))
    out = {}
    for recipe in COLUMNS:
        torch.manual_seed(0)
        module = RECIPES[recipe](spec)
        opt = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9, weight_decay=0.1)
        x = torch.randn(batch, n)
        for _ in range(5):
            opt.zero_grad()
            module(x).square().mean().backward()
            opt.step()
        stored = stored_params(module).detach()
        out[recipe] = {
            "tensors": state_bytes(module),
            "state_dict": state_dict_bytes(module),
            "keys": ", ".join(f"`{k}`" for k in module.state_dict()),
            "peak": peak_step_bytes(recipe, spec, batch, False),
            "pruned_max": stored[held].abs().amax().item() if recipe != "plain" else None,
        }
    return out


def table(rows: dict[str, dict], n: int, sparsity: float) -> str:
    mib = 2.0**20

    def line(label, cell):
        return f"| {label} | " + " | ".join(cell(rows[r]) for r in COLUMNS) + " |"

    return "\n".join(
        [
            f"| `nn.Linear({n}, {n})`, {sparsity:.0%} pruned | "
            + " | ".join(COLUMNS.values())
            + " |",
            "|---|---|---|---|",
            line("tensors held", lambda r: f"{r['tensors'] / mib:.1f} MiB"),
            line("state dict on disk", lambda r: f"{r['state_dict'] / mib:.1f} MiB"),
            line("state-dict keys", lambda r: r["keys"]),
            line("peak memory of one SGD step (batch 8)", lambda r: f"{r['peak'] / mib:.1f} MiB"),
            line(
                "max stored \\|pruned entry\\| after 5 SGD steps (momentum, weight decay)",
                lambda r: "—" if r["pruned_max"] is None else f"{r['pruned_max']:.3g}",
            ),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--sparsity", type=float, default=0.8)
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(table(measure(args.n, args.sparsity), args.n, args.sparsity))


if __name__ == "__main__":
    main()
