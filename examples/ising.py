"""A pseudo-likelihood Ising model whose couplings stay J = J^T bitwise, diag(J) = +0.0.

    python examples/ising.py --json ising.json        # about 15 s on a 2-core CPU

An Ising model on d spins s in {-1, +1}^d has p(s) ~ exp(s^T J s / 2 + h^T s) with symmetric
couplings J and no self-coupling (diag J = 0). Pseudo-likelihood (Besag 1975; Ravikumar et al.
2010) fits J and h from samples by the conditionals p(s_i | s_-i) = sigmoid(2 s_i (J s + h)_i),
a convex loss over (J, h): each row of J is a logistic regression of one spin on the others. J
is the weight and h the bias of one linear layer, held here four ways, all from the same zero
start on the same data:

- torch-hollow: `constrain_(HollowLinear(d, d), "weight", Symmetric())`; nothing in the loop.
- recipe: an `nn.Linear` and `J.data = (J.data + J.data.T) / 2; J.data.fill_diagonal_(0)` after
  each optimizer step.
- grad hook: an `nn.Linear` whose gradient is symmetrised (and its diagonal zeroed) by a hook.
- none: a plain `nn.Linear` (the control: what the optimizer does to J on its own).

The data are sampled in the script: a sparse random coupling graph (each spin coupled to about
`degree` others, |J_ij| in [0.2, 0.5] with random signs, small fields), Gibbs-sampled by
`chains` independent chains run for `sweeps` sweeps each (one sample per chain). After every
step the script checks J == J^T bitwise and diag(J) == +0.0 (bits, not values); it reports how
many steps broke either, the recovery error ||J - J_true||_F / ||J_true||_F, and what happens
to each J on a checkpoint load and a re-initialisation, where no optimizer step follows.
Adam trains every method; Muon (torch >= 2.9; J only, h by Adam) too, where it exists.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from torch_hollow import HollowLinear, HollowWarning
from torch_hollow.constraints import Symmetric, constrain_

METHODS = ("torch-hollow", "recipe", "grad hook", "none")


def couplings(d: int, degree: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A sparse symmetric J (zero diagonal, about ``degree`` edges per spin) and fields h."""
    gen = torch.Generator().manual_seed(seed)
    edges = torch.rand(d, d, generator=gen) < degree / (d - 1)
    edges = torch.triu(edges, diagonal=1)
    size = 0.2 + 0.3 * torch.rand(d, d, generator=gen, dtype=torch.float64)
    sign = torch.where(torch.rand(d, d, generator=gen) < 0.5, -1.0, 1.0).double()
    j = torch.where(edges, size * sign, 0.0)
    h = 0.1 * torch.randn(d, generator=gen, dtype=torch.float64)
    return j + j.T, h


def gibbs(j: torch.Tensor, h: torch.Tensor, chains: int, sweeps: int, seed: int) -> torch.Tensor:
    """``chains`` independent Gibbs chains, ``sweeps`` full sweeps each: one sample per chain."""
    gen = torch.Generator().manual_seed(seed)
    d = j.shape[0]
    s = torch.where(torch.rand(chains, d, generator=gen) < 0.5, -1.0, 1.0).double()
    for _ in range(sweeps):
        for i in range(d):
            field = s @ j[i] + h[i]
            up = torch.rand(chains, generator=gen, dtype=torch.float64) < torch.sigmoid(2 * field)
            s[:, i] = torch.where(up, 1.0, -1.0)
    return s.float()


def pseudo_nll(layer: nn.Module, s: torch.Tensor) -> torch.Tensor:
    """Mean negative log pseudo-likelihood: sum_i softplus(-2 s_i (J s + h)_i)."""
    return nn.functional.softplus(-2 * s * layer(s)).sum(1).mean()


def _symmetrise_(w: torch.Tensor) -> None:
    w.data = (w.data + w.data.T) / 2
    w.data.fill_diagonal_(0)


def build(method: str, d: int) -> tuple[nn.Module, object]:
    """The layer for ``method``, zero-initialised, and what to call after each step (or None)."""
    if method == "torch-hollow":
        layer = constrain_(HollowLinear(d, d), "weight", Symmetric())
    else:
        layer = nn.Linear(d, d)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    if method == "grad hook":
        off = 1 - torch.eye(d)
        layer.weight.register_hook(lambda g: (g + g.T) / 2 * off)
    after = (lambda: _symmetrise_(layer.weight)) if method == "recipe" else None
    return layer, after


def optimizers(layer: nn.Module, name: str, lr: float) -> list[torch.optim.Optimizer]:
    if name == "adam":
        return [torch.optim.Adam(layer.parameters(), lr=lr)]
    # Muon takes 2-D parameters only: J by Muon, h by Adam
    return [
        torch.optim.Muon([layer.weight], lr=lr, adjust_lr_fn="match_rms_adamw"),
        torch.optim.Adam([layer.bias], lr=lr),
    ]


def held(w: torch.Tensor) -> tuple[bool, bool]:
    """(J == J^T bitwise, every diagonal entry +0.0 bitwise)."""
    bits = w.detach().diagonal().view(torch.int32 if w.dtype == torch.float32 else torch.int64)
    return torch.equal(w.detach(), w.detach().T), bool((bits == 0).all())


def train_all(
    methods,
    s: torch.Tensor,
    j_true: torch.Tensor,
    optimizer: str = "adam",
    steps: int = 300,
    lr: float = 0.05,
    on_step=None,
) -> list[dict]:
    """Full-batch training of each method, one step of each in turn (so that load on the
    machine hits all alike); the invariants are checked after every step, by ``held`` and by
    ``on_step(method, layer)`` if given."""
    runs = []
    for method in methods:
        layer, after = build(method, s.shape[1])
        runs.append(
            {
                "method": method,
                "layer": layer,
                "after": after,
                "times": [],
                "opts": optimizers(layer, optimizer, lr),
                "asym": 0,
                "diag": 0,
                "max_asym": 0.0,
                "max_diag": 0.0,
            }
        )
    for _ in range(steps):
        for run in runs:
            layer, opts = run["layer"], run["opts"]
            start = time.perf_counter()
            for opt in opts:
                opt.zero_grad()
            pseudo_nll(layer, s).backward()
            for opt in opts:
                opt.step()
            if run["after"] is not None:
                run["after"]()
            run["times"].append(time.perf_counter() - start)
            w = layer.weight.detach()
            symmetric, zero_diag = held(w)
            run["asym"] += not symmetric
            run["diag"] += not zero_diag
            run["max_asym"] = max(run["max_asym"], (w - w.T).abs().max().item())
            run["max_diag"] = max(run["max_diag"], w.diagonal().abs().max().item())
            if on_step is not None:
                on_step(run["method"], layer)
    rows = []
    for run in runs:
        layer = run["layer"]
        w = layer.weight.detach().double()
        rows.append(
            {
                "method": run["method"],
                "optimizer": optimizer,
                "steps": steps,
                "asymmetric_steps": run["asym"],
                "nonzero_diag_steps": run["diag"],
                "max_abs_asym": run["max_asym"],
                "max_abs_diag": run["max_diag"],
                "loss": pseudo_nll(layer, s).item(),
                "rel_error": ((w - j_true).norm() / j_true.norm()).item(),
                "step_ms": 1e3 * statistics.median(run["times"]),
                **events(layer),
                "layer": layer,
            }
        )
    return rows


def train(
    method: str,
    s: torch.Tensor,
    j_true: torch.Tensor,
    optimizer: str = "adam",
    steps: int = 300,
    lr: float = 0.05,
    on_step=None,
) -> dict:
    """One method alone: `train_all`'s row; ``on_step(layer)`` after every step."""
    hook = None if on_step is None else (lambda _, layer: on_step(layer))
    return train_all([method], s, j_true, optimizer, steps, lr, hook)[0]


def events(layer: nn.Module) -> dict:
    """J after a load of an asymmetric checkpoint and after a re-initialisation (no step)."""
    d = layer.weight.shape[0]
    asymmetric = copy.deepcopy(layer.state_dict())
    asymmetric["weight"] = torch.randn(d, d, generator=torch.Generator().manual_seed(1))
    out = {}
    for event in ("load", "reset"):
        probe = copy.deepcopy(layer)
        with warnings.catch_warnings():  # torch-hollow warns that the load was projected
            warnings.simplefilter("ignore", HollowWarning)
            if event == "load":
                probe.load_state_dict(asymmetric)
            else:
                probe.reset_parameters()
        symmetric, zero_diag = held(probe.weight)
        out[f"after_{event}"] = "held" if symmetric and zero_diag else "broken"
    return out


def run(
    d: int = 64,
    degree: int = 3,
    chains: int = 5000,
    sweeps: int = 200,
    steps: int = 300,
    lr: float = 0.05,
    muon_lr: float = 0.02,
    seed: int = 0,
    methods=METHODS,
    log=print,
) -> list[dict]:
    j_true, h_true = couplings(d, degree, seed)
    start = time.perf_counter()
    s = gibbs(j_true, h_true, chains, sweeps, seed)
    log(
        f"{d} spins, {int((j_true != 0).sum()) // 2} couplings; {chains} Gibbs samples "
        f"({sweeps} sweeps) in {time.perf_counter() - start:.1f} s"
    )
    runs = [("adam", lr)]
    if hasattr(torch.optim, "Muon"):
        runs.append(("muon", muon_lr))
    rows = []
    for optimizer, rate in runs:
        train_all(methods, s, j_true, optimizer, 3, rate)  # warm-up: first-call costs
        rows += train_all(methods, s, j_true, optimizer, steps, rate)
        log(f"{optimizer}: done")
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| optimizer | method | steps with J != J^T | steps with diag != +0.0 | max abs(J - J^T) "
        "| max abs diag | rel. error of J | PL loss | step ms | after load | after reset |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['optimizer']} | {r['method']} | {r['asymmetric_steps']}/{r['steps']} | "
            f"{r['nonzero_diag_steps']}/{r['steps']} | {r['max_abs_asym']:.2g} | "
            f"{r['max_abs_diag']:.2g} | {r['rel_error']:.4f} | {r['loss']:.5f} | "
            f"{r['step_ms']:.2f} | {r['after_load']} | {r['after_reset']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spins", type=int, default=64)
    parser.add_argument("--degree", type=int, default=3)
    parser.add_argument("--chains", type=int, default=5000, help="samples (one per chain)")
    parser.add_argument("--sweeps", type=int, default=200)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=0.05, help="Adam")
    parser.add_argument("--muon-lr", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="16 spins, 1000 samples: seconds")
    parser.add_argument("--json", type=Path, help="write the records here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.spins, args.chains, args.sweeps, args.steps = 16, 1000, 50, 60
    rows = run(
        args.spins,
        args.degree,
        args.chains,
        args.sweeps,
        args.steps,
        args.lr,
        args.muon_lr,
        args.seed,
    )
    print(table(rows))
    if args.json:
        records = [{k: v for k, v in r.items() if k != "layer"} for r in rows]
        args.json.write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()
