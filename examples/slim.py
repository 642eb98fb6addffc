"""SLIM (Ning & Karypis 2011) on MovieLens-100K: a HollowLinear + NonNeg() weight vs scikit-learn.

    pip install scikit-learn && pip install --no-deps recbole   # ml-100k ships inside recbole
    python examples/slim.py --json slim.json                     # about 12 s on a 2-core CPU

SLIM learns item-item weights W >= 0 with diag(W) = 0 (an item must not recommend itself), an
elastic net per column j, as scikit-learn's ElasticNet writes it (n = users):

    min_w  1/(2n) ||x_j - X w||^2 + alpha l1 ||w||_1 + alpha (1 - l1)/2 ||w||^2,  w >= 0, w_j = 0.

The reference is the standard SLIM code: `ElasticNet(positive=True, fit_intercept=False)` fitted
column by column, with the diagonal excluded by zeroing column j of X (sparse, as SLIM codes
keep it). The torch-hollow learner solves all columns at once, on the same objective, by ADMM
(as ADMM SLIM, Steck et al. 2020, does): B = argmin of the smooth part plus rho/2 ||B - W + U||^2
with diag(B) = 0 in closed form (one Cholesky, then one matmul per iteration); W = the prox of
the L1 term and W >= 0 at B + U, taken as one `torch.optim.SGD` step of rate 1/rho on
alpha l1 sum(W) + rho/2 ||W - (B + U)||^2 (it lands on B + U - alpha l1/rho); the projection
that makes that step the prox is torch-hollow's: the weight belongs to
`constrain_(HollowLinear(items, items, bias=False), "weight", NonNeg())`, which holds
W >= 0 and diag(W) = +0.0 in the stored weight after every step. Since sum(W) = ||W||_1 on
W >= 0, the L1 term is linear there and the clamp is its exact prox: the stored W is sparse.

The data, split and metrics are examples/ease.py's (ratings >= 4, a seeded 20 % of interactions
held out, Recall@20 and NDCG@20); EASE's closed form is the third row. `--tune` picks alpha and
l1_ratio on a validation split cut from the training interactions (never the test set).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ease  # examples/ease.py: the data, the split and the metrics

from torch_hollow import HollowLinear
from torch_hollow.constraints import NonNeg, constrain_


def _split(alpha: float, l1_ratio: float) -> tuple[float, float]:
    return alpha * l1_ratio, alpha * (1 - l1_ratio)


def objective(b: torch.Tensor, x: torch.Tensor, alpha: float, l1_ratio: float) -> float:
    """ElasticNet's objective summed over the columns of B (scores = X B)."""
    l1, l2 = _split(alpha, l1_ratio)
    b, x = b.double(), x.double()
    fit = (x - x @ b).square().sum() / (2 * x.shape[0])
    return (fit + l1 * b.abs().sum() + 0.5 * l2 * b.square().sum()).item()


def sklearn_slim(
    x: torch.Tensor, alpha: float, l1_ratio: float, tol: float = 1e-4, jobs: int = 1
) -> torch.Tensor:
    """The reference: one ElasticNet(positive=True) per item, column j of X zeroed (B, float64)."""
    import numpy as np
    from scipy import sparse

    dense = x.double().numpy()
    items = dense.shape[1]

    def fit(columns: np.ndarray) -> np.ndarray:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import ElasticNet

        model = ElasticNet(
            alpha=alpha,
            l1_ratio=l1_ratio,
            positive=True,
            fit_intercept=False,
            copy_X=False,
            max_iter=1000,
            tol=tol,
        )
        xs = sparse.csc_matrix(dense)  # each worker zeroes its own copy
        out = np.zeros((items, len(columns)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for k, j in enumerate(columns):
                start, stop = xs.indptr[j], xs.indptr[j + 1]
                kept = xs.data[start:stop].copy()
                xs.data[start:stop] = 0.0  # item j may not explain itself
                model.fit(xs, dense[:, j])
                xs.data[start:stop] = kept
                out[:, k] = model.coef_
        return out

    chunks = np.array_split(np.arange(items), jobs)
    if jobs == 1:
        return torch.from_numpy(fit(chunks[0]))
    from joblib import Parallel, delayed

    # threads: ElasticNet's coordinate descent runs without the GIL
    parts = Parallel(n_jobs=jobs, backend="threading")(delayed(fit)(c) for c in chunks)
    return torch.from_numpy(np.concatenate(parts, axis=1))


def hollow_slim(
    x: torch.Tensor,
    alpha: float,
    l1_ratio: float,
    rho: float = 0.5,
    relax: float = 1.6,
    tol: float = 0.05,
    max_iter: int = 100,
    dtype: torch.dtype = torch.float32,
    on_step=None,
) -> tuple[HollowLinear, int]:
    """ADMM on the same objective; W = the weight of a HollowLinear + NonNeg() (W^T = B).

    Stops when ||B - W|| and ||W - W_prev|| are both at most ``tol * ||W||`` (relative primal
    residual and relative change). ``on_step(layer)`` is called after every optimizer step.
    """
    l1, l2 = _split(alpha, l1_ratio)
    n, items = x.shape
    xs = x.to(dtype)
    gram = xs.T @ xs / n
    system = gram.clone()
    system.diagonal().add_(l2 + rho)
    p = torch.cholesky_inverse(torch.linalg.cholesky(system))  # symmetric, as gram is
    p_diag = p.diagonal()
    layer = constrain_(HollowLinear(items, items, bias=False, dtype=dtype), "weight", NonNeg())
    w = layer.weight
    torch.nn.init.zeros_(w)
    opt = torch.optim.SGD([w], lr=1 / rho)
    u = torch.zeros_like(gram)
    step = 0
    while step < max_iter:
        step += 1
        with torch.no_grad():
            # B^T = (G + rho (W - U)) P, then diag(B) = 0 through its Lagrange multipliers
            b = (gram + rho * (w - u)) @ p
            b -= (b.diagonal() / p_diag)[:, None] * p
            target = relax * b + (1 - relax) * w + u  # over-relaxed ADMM
            previous = w.detach().clone()
        opt.zero_grad(set_to_none=False)
        (l1 * w.sum() + 0.5 * rho * (w - target).square().sum()).backward()
        opt.step()  # lands on target - l1/rho; torch-hollow clamps it to >= 0, diagonal 0.0
        if on_step is not None:
            on_step(layer)
        with torch.no_grad():
            u = target - w
            scale = tol * w.norm()
            if (b - w).norm() <= scale and (w - previous).norm() <= scale:
                break
    return layer, step


def run(
    items: int | None = None,
    alpha: float = 0.2,
    l1_ratio: float = 0.01,
    lam: float = 500.0,
    seed: int = 0,
    rho: float = 0.5,
    relax: float = 1.6,
    tol: float = 0.05,
    jobs: int = 1,
    repeats: int = 3,
    log=print,
) -> list[dict]:
    """The torch-hollow, scikit-learn and EASE rows: median wall and CPU time over ``repeats``
    interleaved runs (after a warm-up on 100 items), metrics of the last run."""
    x_train, x_test = ease.load(items, seed)
    log(
        f"ML-100K, ratings >= 4: {x_train.shape[0]} users x {x_train.shape[1]} items, "
        f"alpha={alpha}, l1_ratio={l1_ratio}; EASE lam={lam}"
    )
    runs = {
        "torch-hollow slim": lambda: hollow_slim(x_train, alpha, l1_ratio, rho, relax, tol),
        "sklearn slim": lambda: sklearn_slim(x_train, alpha, l1_ratio, jobs=jobs),
        "ease": lambda: ease.closed_form(x_train, lam),
    }
    # warm-up on a slice (imports, first-call costs), then timed runs
    hollow_slim(x_train[:, :100], alpha, l1_ratio, rho, relax, tol)
    sklearn_slim(x_train[:, :100], alpha, l1_ratio, jobs=jobs)
    ease.closed_form(x_train[:, :100], lam)
    results = {name: [] for name in runs}
    for _ in range(repeats):  # interleaved, so that load on the machine hits all alike
        for name, fn in runs.items():
            start, cpu = time.perf_counter(), time.process_time()
            out = fn()
            seconds = time.perf_counter() - start, time.process_time() - cpu
            results[name].append((out, seconds))
    reference = results["sklearn slim"][-1][0]
    rows = []
    for name, outs in results.items():
        out = outs[-1][0]
        b = out[0].weight.detach().T.double() if name == "torch-hollow slim" else out.double()
        recall, ndcg = ease.metrics(b, x_train, x_test)
        row = {
            "method": name,
            "recall20": recall,
            "ndcg20": ndcg,
            "time_s": statistics.median(wall for _, (wall, _) in outs),
            "cpu_s": statistics.median(cpu for _, (_, cpu) in outs),
            "min_w": b.min().item(),
            "max_abs_diag": b.diagonal().abs().max().item(),
            "objective": objective(b, x_train, alpha, l1_ratio),
            "nonzeros_per_item": (b != 0).sum().item() / b.shape[1],
            "rel_distance_to_sklearn": ((b - reference).norm() / reference.norm()).item(),
        }
        if name == "torch-hollow slim":
            row["iterations"] = out[1]
            log(f"torch-hollow slim: {out[1]} ADMM iterations")
        if name == "sklearn slim":
            row["jobs"] = jobs
        rows.append(row)
    return rows


def tune(
    alphas: list[float], ratios: list[float], seed: int = 0, log=print
) -> tuple[float, float]:
    """Grid on a validation split (20 % of the training interactions): the sparsest setting
    whose validation Recall@20 is within 0.005 of the best (scikit-learn's solver)."""
    x_train, _ = ease.load(None, seed)
    held = (torch.rand(x_train.shape, generator=torch.Generator().manual_seed(seed + 1)) < 0.2) & (
        x_train > 0
    )
    x_fit, x_val = x_train.masked_fill(held, 0), held.double()
    grid = []
    for alpha in alphas:
        for ratio in ratios:
            b = sklearn_slim(x_fit, alpha, ratio)
            recall, _ = ease.metrics(b, x_fit, x_val)
            nonzeros = (b != 0).sum().item() / b.shape[1]
            log(
                f"alpha={alpha:g} l1_ratio={ratio:g}: validation Recall@20 {recall:.4f}, "
                f"{nonzeros:.1f} non-zeros per item"
            )
            grid.append((recall, nonzeros, alpha, ratio))
    best = max(r for r, *_ in grid)
    _, _, alpha, ratio = min((g for g in grid if g[0] >= best - 0.005), key=lambda g: g[1])
    log(f"best validation Recall@20 {best:.4f}; chosen alpha={alpha:g}, l1_ratio={ratio:g}")
    return alpha, ratio


def table(rows: list[dict]) -> str:
    lines = [
        "| method | Recall@20 | NDCG@20 | time s | CPU s | min W | max abs diag W | objective | "
        "non-zeros per item | rel. distance to sklearn |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['recall20']:.4f} | {r['ndcg20']:.4f} | {r['time_s']:.2f} | "
            f"{r['cpu_s']:.2f} | "
            f"{r['min_w']:.3g} | {r['max_abs_diag']:.3g} | {r['objective']:.6f} | "
            f"{r['nonzeros_per_item']:.1f} | {r['rel_distance_to_sklearn']:.2e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, help="keep the most popular items only (default all)")
    parser.add_argument("--alpha", type=float, default=0.2)
    parser.add_argument("--l1-ratio", type=float, default=0.01)
    parser.add_argument("--lam", type=float, default=500.0, help="EASE's L2 weight")
    parser.add_argument("--rho", type=float, default=0.5, help="ADMM penalty")
    parser.add_argument("--relax", type=float, default=1.6, help="ADMM over-relaxation")
    parser.add_argument("--tol", type=float, default=0.05, help="ADMM relative residuals")
    parser.add_argument("--jobs", type=int, default=1, help="scikit-learn worker threads")
    parser.add_argument("--threads", type=int, default=1, help="torch (and BLAS) threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="300 items, 1 run: seconds")
    parser.add_argument("--tune", action="store_true", help="pick alpha, l1_ratio first")
    parser.add_argument("--json", type=Path, help="write the records here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:  # numpy's and scipy's BLAS on as many threads as torch
        from threadpoolctl import threadpool_limits

        blas = threadpool_limits(args.threads)
    except ImportError:
        blas = contextlib.nullcontext()
    with blas:
        rows = _rows(args)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


def _rows(args: argparse.Namespace) -> list[dict]:
    """The rows for the parsed command line (--quick, --tune, then `run`)."""
    if args.quick:
        args.items, args.repeats = args.items or 300, 1
    if args.tune:
        args.alpha, args.l1_ratio = tune(
            [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5], [0.001, 0.003, 0.01, 0.05, 0.1], args.seed
        )
    return run(
        args.items,
        args.alpha,
        args.l1_ratio,
        args.lam,
        args.seed,
        args.rho,
        args.relax,
        args.tol,
        args.jobs,
        args.repeats,
    )


if __name__ == "__main__":
    main()
