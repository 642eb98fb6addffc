"""Lottery ticket on scikit-learn's digits, twice: torch.nn.utils.prune and torch-hollow.

    pip install scikit-learn                   # the 8x8 digits ship inside its wheel
    python examples/lottery_ticket.py [--json out.json]

Iterative magnitude pruning with rewinding (Frankle et al. 2019/2020): train a small CNN, prune
the smallest-magnitude weights of all layers together (prune's ``global_unstructured``), rewind
the surviving weights to their values early in training, retrain; three rounds to ~80 %
sparsity. The same run is made with prune's reparametrization (``weight_orig * weight_mask``
before every forward) and with torch-hollow (the masks, from the same prune call, handed over
by ``from_prune``: one stored weight with exact zeros). Both compute the same function, so the
accuracies match; the report shows what each keeps in memory and on disk, its step time, and
the largest value stored on a pruned entry after SGD with momentum and weight decay.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

import torch_hollow as th

KEEP = 0.585  # per round: 0.585^3 ~ 0.2 of the weights survive three rounds


def digits(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """scikit-learn's 8x8 digits (1797 images, shipped in its wheel): train/test tensors."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("The digits ship inside scikit-learn: pip install scikit-learn") from None
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    test, train = order[:360], order[360:]
    return x[train], y[train], x[test], y[test]


def cnn(width: int = 16) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * 16, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


PRUNED = (0, 2, 6, 8)  # the layers whose weights are pruned


def _params(model: nn.Sequential) -> list[tuple[nn.Module, str]]:
    return [(model[i], "weight") for i in PRUNED]


def _weight(module: nn.Module) -> torch.Tensor:
    """The stored tensor behind a pruned weight: prune's weight_orig, or the hollow weight."""
    return module._parameters.get("weight_orig", module._parameters.get("weight"))


def _held(module: nn.Module) -> torch.Tensor:
    if hasattr(module, "weight_mask"):
        return module.weight_mask == 0
    rule = th.rules_of(module).get("weight")
    return torch.zeros_like(module.weight, dtype=torch.bool) if rule is None else rule.pattern.held


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of every tensor the model keeps: parameters, buffers, prune's computed weights
    and torch-hollow's masks (each storage once)."""
    seen: dict[int, int] = {}
    for module in model.modules():
        tensors = [*module._parameters.values(), *module._buffers.values()]
        tensors += [v for v in vars(module).values() if isinstance(v, torch.Tensor)]
        for rule in th.rules_of(module).values():
            tensors += rule.pattern.tensors()
        for t in tensors:
            if t is not None:
                storage = t.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _batches(n: int, epochs: int, gen: torch.Generator) -> list[torch.Tensor]:
    return [idx for _ in range(epochs) for idx in torch.randperm(n, generator=gen).split(64)]


def _train(model, opt, x, y, batches):
    for idx in batches:
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def run(
    method: str,
    rounds: int = 3,
    epochs: int = 8,
    rewind_steps: int = 20,
    width: int = 16,
    seed: int = 0,
    log=print,
) -> list[dict]:
    """One lottery-ticket run with ``method`` "prune" or "torch-hollow".

    Returns the records (one per round) and the final model with its optimizer.
    """
    x, y, x_test, y_test = digits(seed)
    torch.manual_seed(seed)
    model = cnn(width)
    gen = torch.Generator().manual_seed(seed + 1)

    def optimizer():
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    opt = optimizer()
    first = _batches(len(y), epochs, gen)
    _train(model, opt, x, y, first[:rewind_steps])  # the weights to rewind to: early ones
    rewind = {k: v.detach().clone() for k, v in model.state_dict().items()}
    records, held_total = [], 0
    total = sum(m.weight.numel() for m, _ in _params(model))
    for r in range(rounds + 1):
        if r:
            new = round((1 - KEEP) * (total - held_total))  # of the weights still free
            if method == "prune":  # prune's container: an amount of the surviving weights
                prune.global_unstructured(_params(model), prune.L1Unstructured, amount=new)
            else:  # a fresh prune call sees the held zeros as the smallest: prune them too
                amount = held_total + new
                prune.global_unstructured(_params(model), prune.L1Unstructured, amount=amount)
                th.from_prune(model)
            held_total += new
            with torch.no_grad():  # rewind the survivors (a raw write: held entries re-zero)
                for name, value in rewind.items():
                    stored = name.replace(".weight", ".weight_orig") if method == "prune" else name
                    model.get_parameter(stored).copy_(value)
            opt = optimizer()
        batches = first[rewind_steps:] if r == 0 else _batches(len(y), epochs, gen)
        _train(model, opt, x, y, batches)
        held_max = max(
            (
                _weight(m).detach()[_held(m)].abs().amax().item()
                for m, _ in _params(model)
                if _held(m).any()
            ),
            default=0.0,
        )
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        record = {
            "method": method,
            "round": r,
            "sparsity": held_total / total,
            "test_acc": _accuracy(model, x_test, y_test),
            "tensors_mib": tensor_bytes(model) / 2**20,
            "state_dict_mib": buffer.getbuffer().nbytes / 2**20,
            "state_dict_keys": sorted(model.state_dict()),
            "max_abs_pruned": held_max,
        }
        log(
            f"{method:12s} round {r}: sparsity {record['sparsity']:.3f}  test acc "
            f"{record['test_acc']:.4f}  max |pruned| "
            f"{held_max:.3g}"
        )
        records.append(record)
    return records, model, opt


def step_ms(runs: dict, rounds: int = 15, steps: int = 5, seed: int = 0) -> dict[str, float]:
    """Median time of one training step of each final model, interleaved round by round so that
    both meet the same machine load; the steps train the models a little further."""
    x, y, _, _ = digits(seed)
    gen = torch.Generator().manual_seed(seed + 2)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        batches = _batches(len(y), 1, gen)[:steps]
        for name, (model, opt) in runs.items():
            start = time.perf_counter()
            _train(model, opt, x, y, batches)
            times[name].append((time.perf_counter() - start) / steps)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def format_table(records: list[dict], timing: dict[str, float]) -> str:
    head = (
        "| method | round | sparsity | test acc | tensors held (MiB) | state dict (MiB) | "
        "state-dict keys of layer 0 | max stored \\|pruned\\| |\n|---|---|---|---|---|---|---|---|"
    )
    rows = [
        f"| {r['method']} | {r['round']} | {r['sparsity']:.3f} | {r['test_acc']:.4f} | "
        f"{r['tensors_mib']:.3f} | {r['state_dict_mib']:.3f} | "
        f"{', '.join(k for k in r['state_dict_keys'] if k.startswith('0.'))} | "
        f"{r['max_abs_pruned']:.3g} |"
        for r in records
    ]
    ratio = timing["torch-hollow"] / timing["prune"]
    steps = ", ".join(f"{name} {ms:.2f} ms" for name, ms in timing.items())
    return "\n".join([head, *rows, "", f"step at the last round: {steps} (ratio {ratio:.2f})"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8, help="training epochs per round")
    parser.add_argument("--width", type=int, default=16, help="channels of the first conv")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the records to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    records, runs = [], {}
    for method in ("prune", "torch-hollow"):
        rows, model, opt = run(method, args.rounds, args.epochs, width=args.width, seed=args.seed)
        records += rows
        runs[method] = (model, opt)
    timing = step_ms(runs, seed=args.seed)
    records += [
        {"method": m, "step_ms": ms, "sparsity": records[-1]["sparsity"]}
        for m, ms in timing.items()
    ]
    print(format_table([r for r in records if "round" in r], timing))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
