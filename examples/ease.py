"""EASE (Steck 2019) on MovieLens-100K: the closed form vs a hollow layer trained by gradient.

    pip install --no-deps recbole          # ships ml-100k.inter inside its wheel
    python examples/ease.py                # full run: 1682 items, L-BFGS in float64, then AdamW

EASE learns item-item weights B with diag(B) = 0 (an item must not recommend itself):
    min_B ||X - X B||_F^2 + lam ||B||_F^2   s.t. diag(B) = 0,
whose closed form is B = I - P diagMat(1 / diag(P)), P = (X^T X + lam I)^-1. Here B is the
transpose of a `HollowLinear(items, items, bias=False)` weight (the layer computes X W^T), trained
on the same objective; the report compares it with the closed form.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import torch

from torch_hollow import HollowLinear


def ml100k_path() -> Path:
    """ml-100k.inter inside the installed recbole package (never downloaded at run time)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "MovieLens-100K ships inside the recbole wheel; install it with:\n"
            "    pip install --no-deps recbole"
        )
    path = Path(spec.submodule_search_locations[0]) / "dataset_example/ml-100k/ml-100k.inter"
    if not path.is_file():
        raise SystemExit(f"recbole is installed but {path} is missing; reinstall recbole.")
    return path


def load(items: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Binarised ratings >= 4 as (X_train, X_test): a random 20% of interactions held out."""
    rows = [line.split("\t") for line in ml100k_path().read_text().splitlines()[1:]]
    pairs = [(int(u), int(i)) for u, i, r, _ in rows if float(r) >= 4]
    users = sorted({u for u, _ in pairs})
    counts: dict[int, int] = {}
    for _, i in pairs:
        counts[i] = counts.get(i, 0) + 1
    kept = sorted(counts, key=lambda i: (-counts[i], i))[:items] if items else sorted(counts)
    col = {i: k for k, i in enumerate(kept)}
    row = {u: k for k, u in enumerate(users)}
    idx = torch.tensor([(row[u], col[i]) for u, i in pairs if i in col])
    gen = torch.Generator().manual_seed(seed)
    test = torch.rand(len(idx), generator=gen) < 0.2
    x_train = torch.zeros(len(users), len(kept), dtype=torch.float64)
    x_test = torch.zeros_like(x_train)
    x_train[idx[~test, 0], idx[~test, 1]] = 1
    x_test[idx[test, 0], idx[test, 1]] = 1
    return x_train, x_test


def closed_form(x: torch.Tensor, lam: float) -> torch.Tensor:
    p = torch.linalg.inv(x.T @ x + lam * torch.eye(x.shape[1], dtype=x.dtype))
    b = -p / torch.diagonal(p)
    b.fill_diagonal_(0.0)
    return b


def objective(layer: HollowLinear, x: torch.Tensor, lam: float) -> torch.Tensor:
    # 0.5 ||X - X B||^2 + 0.5 lam ||B||^2, B = W^T; scaled by 1/users for a tame line search.
    residual = x - layer(x)
    return 0.5 * (residual.square().sum() + lam * layer.weight.square().sum()) / x.shape[0]


def train_lbfgs(x: torch.Tensor, lam: float, iters: int) -> HollowLinear:
    layer = HollowLinear(x.shape[1], x.shape[1], bias=False, dtype=torch.float64)
    torch.nn.init.zeros_(layer.weight)
    opt = torch.optim.LBFGS(
        layer.parameters(),
        lr=1.0,
        max_iter=iters,
        history_size=50,
        tolerance_grad=1e-12,
        tolerance_change=1e-16,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = objective(layer, x, lam)
        loss.backward()
        return loss

    opt.step(closure)
    return layer


def train_adamw(x: torch.Tensor, lam: float, steps: int) -> HollowLinear:
    layer = HollowLinear(x.shape[1], x.shape[1], bias=False, dtype=torch.float64)
    torch.nn.init.zeros_(layer.weight)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        objective(layer, x, lam).backward()
        opt.step()
    return layer


def metrics(b: torch.Tensor, x_train: torch.Tensor, x_test: torch.Tensor, k: int = 20):
    """Recall@k (hits / min(k, held-out)) and NDCG@k over users with held-out items."""
    scores = (x_train @ b).masked_fill(x_train > 0, float("-inf"))
    users = x_test.sum(1) > 0
    top = scores[users].topk(k, dim=1).indices
    hits = x_test[users].gather(1, top)
    held = x_test[users].sum(1)
    recall = (hits.sum(1) / held.clamp(max=k)).mean().item()
    discount = 1 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64))
    ideal = torch.stack([discount[: int(min(h, k))].sum() for h in held.tolist()])
    ndcg = ((hits * discount).sum(1) / ideal).mean().item()
    return recall, ndcg


def run(
    items: int | None = None,
    lam: float = 500.0,
    seed: int = 0,
    iters: int = 500,
    adamw_steps: int = 300,
    log=print,
) -> list[dict]:
    """Closed form, L-BFGS and AdamW rows: distance to the closed form, metrics, diag, time."""
    x_train, x_test = load(items, seed)
    log(
        f"ML-100K, ratings >= 4: {x_train.shape[0]} users x {x_train.shape[1]} items, "
        f"{int(x_train.sum())} train / {int(x_test.sum())} held-out interactions, lam={lam}"
    )
    start = time.perf_counter()
    reference = closed_form(x_train, lam)
    rows = [{"method": "closed form", "b": reference, "time": time.perf_counter() - start}]
    for name, train, budget in (
        ("HollowLinear + L-BFGS", train_lbfgs, iters),
        ("HollowLinear + AdamW", train_adamw, adamw_steps),
    ):
        if budget <= 0:
            continue
        log(f"training: {name} ...")
        start = time.perf_counter()
        layer = train(x_train, lam, budget)
        rows.append(
            {
                "method": name,
                "b": layer.weight.detach().T.clone(),
                "time": time.perf_counter() - start,
            }
        )
    for row in rows:
        b = row.pop("b")
        row["rel_distance"] = ((b - reference).norm() / reference.norm()).item()
        row["recall20"], row["ndcg20"] = metrics(b, x_train, x_test)
        row["max_abs_diag"] = b.diagonal().abs().max().item()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, help="keep the most popular items only (default all)")
    parser.add_argument("--lam", type=float, default=500.0)
    parser.add_argument("--iters", type=int, default=500, help="L-BFGS iterations")
    parser.add_argument("--adamw-steps", type=int, default=300, help="0 skips AdamW")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = run(args.items, args.lam, args.seed, args.iters, args.adamw_steps)
    print(
        "\n| method | rel. distance to closed form | Recall@20 | NDCG@20 | max abs diag | time s |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['method']} | {r['rel_distance']:.2e} | {r['recall20']:.4f} | "
            f"{r['ndcg20']:.4f} | {r['max_abs_diag']:.1f} | {r['time']:.1f} |"
        )


if __name__ == "__main__":
    main()
