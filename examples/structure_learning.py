"""NOTEARS-style structure learning of a linear SEM, with W held hollow by torch-hollow.

    python examples/structure_learning.py                    # ER2 graphs, d=20, n=1000, 5 seeds
    pip install --no-deps cdt && python examples/structure_learning.py --sachs
    pip install dagma && python examples/structure_learning.py   # dagma side by side

A linear SEM X = X W + E has no self-loops: diag(W) = 0. The reference NOTEARS code keeps it only
through L-BFGS-B bounds, which torch optimizers ignore; here W is the transpose of a
`HollowLinear(d, d, bias=False)` weight, so it is exactly 0 before thresholding. The learner
minimises 0.5/n ||X - X W||^2 + lam1 |W|_1 under h(W) = tr(exp(W o W)) - d = 0 with the augmented
Lagrangian of NOTEARS (Zheng et al. 2018), each subproblem solved by torch's L-BFGS; and
`--method dagma`: DAGMA's log-det central path (Bello et al. 2022) with Adam, W hollow too.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from torch_hollow import HollowLinear


def simulate(d: int, n: int, seed: int, edges_per_node: float = 2.0):
    """An Erdos-Renyi DAG (expected d * edges_per_node edges), weights +-[0.5, 2], Gaussian SEM."""
    gen = torch.Generator().manual_seed(seed)
    p = 2 * edges_per_node / (d - 1)
    upper = (torch.rand(d, d, generator=gen) < p).triu(1)
    perm = torch.randperm(d, generator=gen)
    dag = upper[perm][:, perm]
    scale = torch.rand(d, d, generator=gen, dtype=torch.float64) * 1.5 + 0.5
    sign = torch.where(torch.rand(d, d, generator=gen) < 0.5, -1.0, 1.0).double()
    w_true = dag * scale * sign
    noise = torch.randn(n, d, generator=gen, dtype=torch.float64)
    x = noise @ torch.linalg.inv(torch.eye(d, dtype=torch.float64) - w_true)
    return x, dag


def acyclicity(w: torch.Tensor) -> torch.Tensor:
    return torch.linalg.matrix_exp(w * w).diagonal().sum() - w.shape[0]


def notears(
    x: torch.Tensor,
    lam1: float = 0.1,
    threshold: float = 0.3,
    h_tol: float = 1e-8,
    rho_max: float = 1e16,
    max_outer: int = 100,
    eps: float = 0.05,
    iters: int = 200,
):
    """Return (W before thresholding, W after thresholding) for data ``x`` (n x d).

    The augmented Lagrangian of NOTEARS: rho grows tenfold while h does not shrink by 4x, then
    alpha += rho * h. Each subproblem is solved by torch's L-BFGS with |w| smoothed as
    sqrt(w^2 + eps^2) - eps (eps far below the 0.3 threshold).
    """
    n, d = x.shape
    x = x - x.mean(0)
    layer = HollowLinear(d, d, bias=False, dtype=torch.float64)
    torch.nn.init.zeros_(layer.weight)
    rho, alpha, h = 1.0, 0.0, float("inf")
    for _ in range(max_outer):
        while rho < rho_max:
            opt = torch.optim.LBFGS(
                layer.parameters(),
                max_iter=iters,
                history_size=20,
                tolerance_grad=1e-7,
                tolerance_change=1e-10,
                line_search_fn="strong_wolfe",
            )

            def closure(opt=opt, rho=rho, alpha=alpha):
                opt.zero_grad()
                w = layer.weight.T  # X W: column j of W holds the parents of node j
                hw = acyclicity(w)
                loss = (
                    0.5 / n * (x - layer(x)).square().sum()
                    + lam1 * ((w * w + eps * eps).sqrt() - eps).sum()
                    + 0.5 * rho * hw * hw
                    + alpha * hw
                )
                loss.backward()
                return loss

            opt.step(closure)
            with torch.no_grad():
                h_new = acyclicity(layer.weight.T).item()
            if h_new > 0.25 * h:
                rho *= 10
            else:
                break
        h = h_new
        alpha += rho * h
        if h <= h_tol or rho >= rho_max:
            break
    raw = layer.weight.detach().T.clone()
    return raw, raw.masked_fill(raw.abs() < threshold, 0.0)


def dagma_style(
    x: torch.Tensor,
    lam1: float = 0.02,
    threshold: float = 0.3,
    s_path: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6),
    mu_init: float = 1.0,
    mu_factor: float = 0.1,
    warm_iter: int = 30000,
    max_iter: int = 60000,
    lr: float = 3e-4,
    checkpoint: int = 1000,
    tol: float = 1e-6,
):
    """DAGMA's central path (Bello et al. 2022) with W held hollow: (raw W, thresholded W).

    Minimises mu (0.5/n ||X - X W||^2 + lam1 |W|_1) + h(W), h = -logdet(sI - W o W) + d log s,
    with Adam, for mu = 1, 0.1, ...; W must keep sI - W o W an M-matrix, else the stage restarts
    with half the step and a larger s. dagma itself leaves diag(W) free; here it is exactly 0.
    """
    d = x.shape[1]
    x = x - x.mean(0)
    layer = HollowLinear(d, d, bias=False, dtype=torch.float64)
    torch.nn.init.zeros_(layer.weight)
    eye = torch.eye(d, dtype=torch.float64)
    mu = mu_init
    for stage, s in enumerate(s_path):
        iters = max_iter if stage == len(s_path) - 1 else warm_iter
        start, step = layer.weight.detach().clone(), lr
        while not _dagma_stage(layer, x, eye, mu, s, lam1, iters, step, checkpoint, tol):
            with torch.no_grad():
                layer.weight.copy_(start)
            step, s = step / 2, s + 0.1
        mu *= mu_factor
    raw = layer.weight.detach().T.clone()
    return raw, raw.masked_fill(raw.abs() < threshold, 0.0)


def _dagma_stage(
    layer: HollowLinear,
    x: torch.Tensor,
    eye: torch.Tensor,
    mu: float,
    s: float,
    lam1: float,
    iters: int,
    lr: float,
    checkpoint: int,
    tol: float,
) -> bool:
    n, d = x.shape
    opt = torch.optim.Adam(layer.parameters(), lr=lr, betas=(0.99, 0.999))
    previous = None
    for it in range(1, iters + 1):
        w = layer.weight.T  # X W: column j of W holds the parents of node j
        with torch.no_grad():
            if (torch.linalg.inv(s * eye - w * w) < -1e-12).any():
                return False  # left the M-matrix domain: restart the stage more carefully
        opt.zero_grad()
        score = 0.5 / n * (x - layer(x)).square().sum()
        h = -torch.linalg.slogdet(s * eye - w * w)[1] + d * math.log(s)
        loss = mu * (score + lam1 * w.abs().sum()) + h
        loss.backward()
        opt.step()
        if it % checkpoint == 0:  # stop once the objective moves by less than tol, relatively
            if previous is not None and abs(previous - loss.item()) <= tol * abs(previous):
                break
            previous = loss.item()
    return True


def accuracy(b_true: torch.Tensor, w_est: torch.Tensor) -> dict[str, float]:
    """SHD (a reversed edge counts once), TPR, FDR and edge count, as NOTEARS reports them."""
    pred, true = w_est != 0, b_true.bool()
    reverse = pred & true.T & ~true
    false_pos = pred & ~true & ~true.T
    und_pred, und_true = (pred | pred.T).triu(1), (true | true.T).triu(1)
    extra = (und_pred & ~und_true).sum()
    missing = (und_true & ~und_pred).sum()
    return {
        "shd": int(extra + missing + reverse.sum()),
        "tpr": (pred & true).sum().item() / max(int(true.sum()), 1),
        "fdr": (reverse.sum() + false_pos.sum()).item() / max(int(pred.sum()), 1),
        "edges": int(pred.sum()),
    }


DAGMA_SCRIPT = """
import json, sys, time, numpy as np
from dagma.linear import DagmaLinear
x = np.load(sys.argv[1]); start = time.perf_counter()
w = DagmaLinear(loss_type="l2").fit(x, lambda1=0.02, w_threshold=0.3)
print(json.dumps({"w": w.tolist(), "time": time.perf_counter() - start}))
"""


def run_dagma(x: torch.Tensor) -> tuple[torch.Tensor, float] | None:
    """dagma's DagmaLinear on the same data, in a separate process; None if not installed."""
    if importlib.util.find_spec("dagma") is None:
        return None
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npy"
        np.save(path, x.numpy())
        done = subprocess.run(
            [sys.executable, "-c", DAGMA_SCRIPT, str(path)],
            capture_output=True,
            text=True,
            check=True,
            timeout=1800,
        )
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return torch.tensor(out["w"], dtype=torch.float64), out["time"]


def sachs() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The Sachs protein-signalling data and its consensus graph, from the installed cdt wheel."""
    spec = importlib.util.find_spec("cdt")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "The Sachs data ship inside the cdt wheel; install it with:\n"
            "    pip install --no-deps cdt"
        )
    root = Path(spec.submodule_search_locations[0]) / "data/resources"
    lines = (root / "cyto_full_data.csv").read_text().splitlines()
    names = lines[0].split(",")
    x = torch.tensor(
        [[float(v) for v in line.split(",")] for line in lines[1:]], dtype=torch.float64
    )
    target = torch.zeros(len(names), len(names), dtype=torch.bool)
    for line in (root / "cyto_full_target.csv").read_text().splitlines()[1:]:
        cause, effect = (v.strip('"') for v in line.split(","))
        target[names.index(cause), names.index(effect)] = True
    return x, target, names


def report(rows: list[dict]) -> None:
    print("\n| data | method | SHD | TPR | FDR | edges | max abs diag before threshold | time s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['data']} | {r['method']} | {r['shd']} | {r['tpr']:.2f} | {r['fdr']:.2f} | "
            f"{r['edges']} | {r['diag']} | {r['time']:.1f} |"
        )


METHODS = {
    "notears": ("torch-hollow NOTEARS", notears),
    "dagma": ("torch-hollow DAGMA-style", dagma_style),
}


def evaluate(
    name: str,
    x: torch.Tensor,
    truth: torch.Tensor,
    methods: list[str],
    lam1: float | None,
    dagma: bool,
) -> list:
    rows = []
    for key in methods:
        label, learn = METHODS[key]
        start = time.perf_counter()
        raw, w = learn(x) if lam1 is None else learn(x, lam1=lam1)
        rows.append(
            {
                "data": name,
                "method": label,
                **accuracy(truth, w),
                "diag": f"{raw.diagonal().abs().max().item():.1f}",
                "time": time.perf_counter() - start,
            }
        )
    if dagma:
        result = run_dagma(x)
        if result is None:
            print("dagma is not installed (pip install dagma) - skipping the comparison")
        else:
            w_dagma, seconds = result
            rows.append(
                {
                    "data": name,
                    "method": "dagma (DagmaLinear)",
                    **accuracy(truth, w_dagma),
                    "diag": "thresholded",
                    "time": seconds,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--d", type=int, default=20)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--lam1", type=float, help="L1 weight (default: 0.1 NOTEARS, 0.02 DAGMA)")
    parser.add_argument("--method", choices=["notears", "dagma", "both"], default="both")
    parser.add_argument("--sachs", action="store_true", help="also run the Sachs data (cdt)")
    parser.add_argument("--no-dagma", action="store_true", help="skip the dagma comparison")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = ["notears", "dagma"] if args.method == "both" else [args.method]
    rows = []
    for seed in range(args.seeds):
        print(f"ER2 d={args.d} n={args.n} seed={seed} ...", flush=True)
        x, truth = simulate(args.d, args.n, seed)
        rows += evaluate(f"ER2 seed {seed}", x, truth, methods, args.lam1, not args.no_dagma)
    if args.sachs:
        print("Sachs (7466 x 11, standardised) ...", flush=True)
        x, truth, _ = sachs()
        x = (x - x.mean(0)) / x.std(0)
        rows += evaluate("Sachs", x, truth, methods, args.lam1, not args.no_dagma)
    report(rows)


if __name__ == "__main__":
    main()
