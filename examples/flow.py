"""A masked autoregressive flow (MAF) whose masked layers are ``HollowLinear(Mask)``.

    pip install scikit-learn             # the data ship inside its wheel (no download)
    pip install zuko                     # optional: zuko's MaskedLinear side by side
    python examples/flow.py --json flow.json

MADE / MAF (Germain et al. 2015, Papamakarios et al. 2017) make an MLP autoregressive by
masking its weights: output i may only read inputs that come before i. zuko and most codes keep
a dense weight and multiply it by the mask in every forward, so the stored weight keeps its
initial random values under the mask; a `HollowLinear` with a `Mask` pattern stores exact zeros
there instead, and its gradient is exactly 0.0 there too.

The data: scikit-learn's bundled Wisconsin breast-cancer table (569 x 30, continuous), log1p and
standardised with training statistics, split 60/20/20 with a fixed seed. Both models are built
from the same seed (identical free weights), trained on the same batches step by step in turn
(so machine noise hits both alike), and each is evaluated at its best validation epoch.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from torch_hollow import HollowLinear
from torch_hollow.patterns import Mask

Linear = Callable[[torch.Tensor], nn.Module]  # allowed (out, in) -> a masked linear layer


def hollow_linear(allowed: torch.Tensor) -> nn.Module:
    """torch-hollow: held entries stored as bitwise 0.0."""
    return HollowLinear(allowed.shape[1], allowed.shape[0], pattern=Mask(allowed))


def zuko_linear(allowed: torch.Tensor) -> nn.Module:
    """zuko's MaskedLinear: a dense weight times the mask in each forward."""
    from zuko.nn import MaskedLinear

    return MaskedLinear(allowed)


def load_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train, validation, test) from scikit-learn's bundled breast-cancer data (float32)."""
    try:
        from sklearn.datasets import load_breast_cancer
    except ImportError:
        raise SystemExit(
            "The data ship inside scikit-learn's wheel: pip install scikit-learn"
        ) from None
    x = torch.log1p(torch.tensor(load_breast_cancer().data, dtype=torch.float64))
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_train, n_val = int(0.6 * len(x)), int(0.2 * len(x))
    train, val, test = (
        x[perm[:n_train]],
        x[perm[n_train : n_train + n_val]],
        x[perm[n_train + n_val :]],
    )
    mean, std = train.mean(0), train.std(0)
    return tuple(((t - mean) / std).float() for t in (train, val, test))  # type: ignore[return-value]


class MADE(nn.Module):
    """An autoregressive MLP: (shift, log-scale) of feature i read features before i only."""

    def __init__(self, order: torch.Tensor, hidden: list[int], linear: Linear) -> None:
        super().__init__()
        d, self.order = len(order), order
        degrees = [order + 1]  # input degrees 1..d in this transform's order
        layers: list[nn.Module] = []
        for width in hidden:
            deg = torch.arange(width) % max(d - 1, 1) + 1
            layers += [linear(deg[:, None] >= degrees[-1][None, :]), nn.ReLU()]
            degrees.append(deg)
        out = (order + 1).repeat(2)  # shift and log-scale of each feature
        layers.append(linear(out[:, None] > degrees[-1][None, :]))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift, log_scale = self.net(x).chunk(2, dim=-1)
        return shift, log_scale.tanh() * 3  # bounded scales keep early training stable


class MAF(nn.Module):
    """z = (x - shift(x)) * exp(-log_scale(x)) per transform, orders reversed in turn."""

    def __init__(self, d: int, transforms: int, hidden: list[int], linear: Linear) -> None:
        super().__init__()
        orders = [
            torch.arange(d) if k % 2 == 0 else torch.arange(d).flip(0) for k in range(transforms)
        ]
        self.made = nn.ModuleList(MADE(order, hidden, linear) for order in orders)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        log_det = torch.zeros(x.shape[0], dtype=x.dtype)
        for made in self.made:
            shift, log_scale = made(x)
            x = (x - shift) * torch.exp(-log_scale)
            log_det = log_det - log_scale.sum(-1)
        return -0.5 * (x.square() + math.log(2 * math.pi)).sum(-1) + log_det


def masked_layers(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def max_abs_held(model: nn.Module) -> float:
    """Largest stored |weight| on an entry the mask forbids, over all masked layers."""
    largest = 0.0
    for layer in masked_layers(model):
        held = (
            ~layer.mask if hasattr(layer, "mask") else layer.pattern.held_mask(layer.weight.shape)
        )
        values = layer.weight.detach()[held]
        largest = max(largest, values.abs().max().item() if values.numel() else 0.0)
    return largest


def train(
    builders: dict[str, Linear],
    epochs: int = 200,
    batch: int = 64,
    transforms: int = 3,
    hidden: tuple[int, ...] = (32, 32),
    lr: float = 1e-3,
    seed: int = 0,
    log=print,
) -> list[dict]:
    """Train one MAF per builder on the same batches, in turn; one record per model."""
    x_train, x_val, x_test = load_data(seed)
    d = x_train.shape[1]
    log(f"breast cancer: {len(x_train)} train / {len(x_val)} val / {len(x_test)} test, d = {d}")
    models, opts = {}, {}
    for name, linear in builders.items():
        torch.manual_seed(seed)  # the same free weights for every model
        models[name] = MAF(d, transforms, list(hidden), linear)
        opts[name] = torch.optim.Adam(models[name].parameters(), lr=lr)
    best = {name: (math.inf, None, 0) for name in models}
    step_s = {name: 0.0 for name in models}
    steps = 0
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        for idx in torch.randperm(len(x_train), generator=gen).split(batch):
            xb = x_train[idx]
            for name, model in models.items():
                start = time.perf_counter()
                opts[name].zero_grad()
                loss = -model.log_prob(xb).mean()
                loss.backward()
                opts[name].step()
                step_s[name] += time.perf_counter() - start
            steps += 1
        with torch.no_grad():
            for name, model in models.items():
                val = -model.log_prob(x_val).mean().item()
                if val < best[name][0]:
                    best[name] = (val, copy.deepcopy(model.state_dict()), epoch)
        if epoch % 25 == 0 or epoch == epochs - 1:
            log(f"epoch {epoch:4d}  " + "  ".join(f"{n}: val {best[n][0]:.3f}" for n in models))
    records = []
    for name, model in models.items():
        model.load_state_dict(best[name][1])
        with torch.no_grad():
            test_nll = -model.log_prob(x_test).mean().item()
        records.append(
            {
                "model": name,
                "test_nll": round(test_nll, 4),
                "val_nll": round(best[name][0], 4),
                "best_epoch": best[name][2],
                "step_ms": round(1e3 * step_s[name] / steps, 4),
                "max_abs_held": max_abs_held(model),
            }
        )
    return records


def table(records: list[dict]) -> str:
    """The README's table; step times relative to zuko's (when it ran)."""
    base = next((r for r in records if r["model"].startswith("zuko")), records[0])["step_ms"]
    lines = [
        "| masked layer | test NLL (nats) | best epoch | step ms | step time vs zuko | "
        "max \\|stored weight\\| under the mask |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        held = "0.0" if r["max_abs_held"] == 0 else f"{r['max_abs_held']:.3g}"
        lines.append(
            f"| {r['model']} | {r['test_nll']:.3f} | {r['best_epoch']} | {r['step_ms']:.2f} | "
            f"{r['step_ms'] / base:.2f}x | {held} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--transforms", type=int, default=3)
    parser.add_argument("--hidden", default="32,32", help="hidden widths of each MADE")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the records here")
    parser.add_argument("--table", type=Path, help="only print the table of a --json file")
    args = parser.parse_args(argv)
    if args.table:
        records = json.loads(args.table.read_text())
        print(table(records))
        return records
    torch.set_num_threads(args.threads)
    builders = {"torch-hollow HollowLinear(Mask)": hollow_linear}
    if importlib.util.find_spec("zuko") is not None:
        builders["zuko MaskedLinear"] = zuko_linear
    else:
        print("zuko is not installed (pip install zuko): torch-hollow only")
    started = time.perf_counter()
    records = train(
        builders,
        epochs=args.epochs,
        batch=args.batch,
        transforms=args.transforms,
        hidden=tuple(int(h) for h in args.hidden.split(",")),
        seed=args.seed,
    )
    print(f"\n{table(records)}\n\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(records, indent=1) + "\n")
    return records


if __name__ == "__main__":
    main()
