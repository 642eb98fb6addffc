"""Structure learning with W held hollow by torch-hollow: NOTEARS, DAGMA and DAGMA-MLP.

    python examples/structure_learning.py --method all --seeds 0,1,2,3,4 --json out.json
    pip install dagma gcastle    # the peers run side by side, each in its own process
    pip install --no-deps cdt && python examples/structure_learning.py --sachs

A structural equation model has no self-loops: node j never reads itself. The reference codes
keep that with L-BFGS-B bounds (NOTEARS) or not at all (dagma's diagonal drifts to ~1e-5 and is
thresholded away). Here the weights live in torch-hollow layers and the self-loops are bitwise
0.0 before any thresholding:

- ``notears``: NOTEARS (Zheng et al. 2018) as its reference code runs it: W = W+ - W-, both >= 0,
  least squares + lam1 * sum(W+ + W-), augmented Lagrangian on h(W) = tr(exp(W o W)) - d, each
  subproblem solved by scipy's L-BFGS-B. W+ and W- are two ``HollowLinear(d, d)`` weights, so
  the diagonal needs no (0, 0) bounds: autograd through the layers gives it a zero gradient.
- ``dagma``: DAGMA's log-det central path (Bello et al. 2022) with its closed-form gradient and
  Adam, W the weight of a ``HollowLinear(d, d)`` whose pattern masks the gradient; the steps run
  in numpy on the weight's own storage, op for op as dagma's.
- ``mlp``: DAGMA-MLP: node j = MLP_j(X), the first layer a ``HollowLinear(d, d*m)`` held with
  ``BlockDiagonal(rows=m, cols=1)``: the m hidden units of node j never read input j.

Peers, each when installed (run in a subprocess: gcastle sets torch's default dtype globally):
dagma's ``DagmaLinear`` and ``DagmaMLP``, gcastle's ``Notears`` (which uses the polynomial h of
Yu et al. 2019 instead of the matrix exponential).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from torch_hollow import HollowLinear
from torch_hollow.patterns import BlockDiagonal

if TYPE_CHECKING:
    import numpy as np  # imported where used: only the scipy-based learners need it

LINEAR_LEARNERS = ("torch-hollow notears", "gcastle notears", "torch-hollow dagma", "dagma linear")
MLP_LEARNERS = ("torch-hollow mlp", "dagma mlp")


# ----------------------------------------------------------------------------- data


def random_dag(d: int, gen: torch.Generator, edges_per_node: float) -> tuple[torch.Tensor, list]:
    """An Erdos-Renyi DAG (expected d * edges_per_node edges) and a topological order."""
    p = 2 * edges_per_node / (d - 1)
    upper = (torch.rand(d, d, generator=gen) < p).triu(1)
    perm = torch.randperm(d, generator=gen)
    return upper[perm][:, perm], torch.argsort(perm).tolist()


def _signed_uniform(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    scale = torch.rand(shape, generator=gen, dtype=torch.float64) * 1.5 + 0.5  # [0.5, 2]
    return torch.where(torch.rand(shape, generator=gen) < 0.5, -scale, scale)


def simulate(d: int, n: int, seed: int, edges_per_node: float = 2.0):
    """Linear Gaussian SEM on an ER DAG, weights +-[0.5, 2]: (X, true adjacency)."""
    gen = torch.Generator().manual_seed(seed)
    dag, _ = random_dag(d, gen, edges_per_node)
    w_true = dag * _signed_uniform((d, d), gen)
    noise = torch.randn(n, d, generator=gen, dtype=torch.float64)
    x = noise @ torch.linalg.inv(torch.eye(d, dtype=torch.float64) - w_true)
    return x, dag


def simulate_mlp(d: int, n: int, seed: int, edges_per_node: float = 1.0, hidden: int = 100):
    """dagma's ``mlp`` SEM: x_j = sigmoid(X_pa W1) W2 + N(0, 1), W1, W2 +-[0.5, 2]."""
    gen = torch.Generator().manual_seed(seed)
    dag, order = random_dag(d, gen, edges_per_node)
    x = torch.zeros(n, d, dtype=torch.float64)
    for j in order:
        z = torch.randn(n, generator=gen, dtype=torch.float64)
        parents = dag[:, j].nonzero().flatten()
        if len(parents):
            w1 = _signed_uniform((len(parents), hidden), gen)
            w2 = _signed_uniform((hidden,), gen)
            z = z + torch.sigmoid(x[:, parents] @ w1) @ w2
        x[:, j] = z
    return x, dag


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


def acyclicity(w: torch.Tensor) -> torch.Tensor:
    """NOTEARS' h(W) = tr(exp(W o W)) - d: 0 exactly on DAGs."""
    return torch.linalg.matrix_exp(w * w).diagonal().sum() - w.shape[0]


def _threshold(raw: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    return raw, raw.masked_fill(raw.abs() < threshold, 0.0)


# ----------------------------------------------------------------------------- NOTEARS


def notears(
    x: torch.Tensor,
    lam1: float = 0.1,
    threshold: float = 0.3,
    h_tol: float = 1e-8,
    rho_max: float = 1e16,
    max_iter: int = 100,
):
    """NOTEARS, linear, as the reference code runs it: (raw W, thresholded W).

    The variables are W+ and W- (``2 d^2`` of them, bounds ``(0, None)``) for scipy's L-BFGS-B,
    with the reference's closed-form gradient. W+ and W- belong to two ``HollowLinear(d, d)``
    layers, whose pattern masks the gradient as their backward would: the diagonal's gradient is
    exactly 0.0, so L-BFGS-B never moves it from 0.0 and the reference's (0, 0) bounds are not
    needed. The raw W returned is L-BFGS-B's own solution (no re-zeroing); it is then loaded into
    the layers, and reading it back through their forward gives the same tensor.
    """
    import numpy as np
    import scipy.linalg as sla
    import scipy.optimize as sopt

    n, d = x.shape
    x = x - x.mean(0)
    cov = x.T @ x / n  # 0.5/n ||X - XW||^2 = 0.5 tr((I - W)^T C (I - W))
    eye = torch.eye(d, dtype=torch.float64)
    pos = HollowLinear(d, d, bias=False, dtype=torch.float64)  # pos.weight = (W+)^T
    neg = HollowLinear(d, d, bias=False, dtype=torch.float64)
    grad = torch.zeros(2, d, d, dtype=torch.float64)  # the reference's layout: W+, then W-
    hold = pos.pattern.zero_

    def func(flat: np.ndarray, rho: float, alpha: float) -> tuple[float, np.ndarray]:
        halves = torch.from_numpy(flat).view(2, d, d)
        w = halves[0] - halves[1]
        e = torch.from_numpy(sla.expm((w * w).numpy()))  # 5x faster than torch's at d = 20
        h = e.diagonal().sum().item() - d
        rhs = cov @ (eye - w)
        loss = 0.5 * torch.vdot((eye - w).flatten(), rhs.flatten()).item()
        g = torch.addcmul(rhs, e.T, w, value=-2 * (rho * h + alpha)).neg_()  # dL/dW + dh/dW
        hold(grad[0].copy_(g).add_(lam1))
        hold(grad[1].copy_(g).neg_().add_(lam1))
        obj = loss + 0.5 * rho * h * h + alpha * h + lam1 * float(flat.sum())
        return obj, grad.view(-1).numpy()

    def h_of(flat: np.ndarray) -> float:
        w = torch.from_numpy(flat).view(2, d, d)
        return acyclicity(w[0] - w[1]).item()

    w_est, rho, alpha, h = np.zeros(2 * d * d), 1.0, 0.0, math.inf
    bounds = [(0, None)] * (2 * d * d)
    for _ in range(max_iter):
        w_new, h_new = w_est, h
        while rho < rho_max:
            sol = sopt.minimize(
                func, w_est, args=(rho, alpha), method="L-BFGS-B", jac=True, bounds=bounds
            )
            w_new, h_new = sol.x, h_of(sol.x)
            if h_new > 0.25 * h:
                rho *= 10
            else:
                break
        w_est, h = w_new, h_new
        alpha += rho * h
        if h <= h_tol or rho >= rho_max:
            break
    halves = torch.from_numpy(w_est).view(2, d, d)
    raw = halves[0] - halves[1]  # the solver's own numbers: its diagonal was never touched
    with torch.no_grad():
        pos.weight.copy_(halves[0].T)
        neg.weight.copy_(halves[1].T)
        assert torch.equal(pos(eye) - neg(eye), raw)  # eye @ weight^T, through the layers
    return _threshold(raw, threshold)


# ----------------------------------------------------------------------------- DAGMA, linear


def dagma_linear(
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

    Minimises mu (0.5 tr((I-W)^T C (I-W)) + lam1 |W|_1) + h(W), h = -logdet(sI - W o W) + d log s,
    C the covariance, for mu = 1, 0.1, ...; the step and the stopping rule are dagma's (its own
    Adam, a halved step when W leaves the M-matrix domain, a stage retried with a larger s), op
    for op in numpy as dagma's ``DagmaLinear`` takes them. W is the transpose of a
    ``HollowLinear(d, d)`` weight, updated in place in that weight's storage; the closed-form
    gradient is masked by the layer's pattern, as its backward would, so the stored diagonal is
    exactly 0.0 at every step (the raw W returned is that stored weight, not re-zeroed).
    """
    n, d = x.shape
    centred = x.numpy() - x.numpy().mean(axis=0, keepdims=True)  # dagma's C, op for op
    cov = centred.T @ centred / float(n)
    x = torch.from_numpy(centred)
    layer = HollowLinear(d, d, bias=False, dtype=torch.float64)
    torch.nn.init.zeros_(layer.weight)
    s_path = list(s_path)
    mu = mu_init
    for stage in range(len(s_path)):
        iters = max_iter if stage == len(s_path) - 1 else warm_iter
        start, step = layer.weight.detach().clone(), lr
        while not _dagma_stage(
            layer, x, cov, mu, s_path[stage], lam1, iters, step, checkpoint, tol
        ):
            with torch.no_grad():
                layer.weight.copy_(start)
            step, s_path[stage] = step / 2, s_path[stage] + 0.1
        mu *= mu_factor
    raw = layer.weight.detach().T.clone()  # the stored weight, as the Adam steps left it
    return _threshold(raw, threshold)


def _dagma_objective(layer: HollowLinear, x: torch.Tensor, mu: float, s: float, lam1: float):
    with torch.no_grad():  # through the layer's forward, which re-zeroes any stray write
        w = layer.weight.T
        score = 0.5 / x.shape[0] * (x - layer(x)).square().sum()
        eye = torch.eye(w.shape[0], dtype=w.dtype)
        h = -torch.linalg.slogdet(s * eye - w * w)[1] + w.shape[0] * math.log(s)
        return (mu * (score + lam1 * w.abs().sum()) + h).item()


def _dagma_stage(
    layer: HollowLinear,
    x: torch.Tensor,
    cov: np.ndarray,
    mu: float,
    s: float,
    lam1: float,
    iters: int,
    lr: float,
    checkpoint: int,
    tol: float,
    beta1: float = 0.99,
    beta2: float = 0.999,
) -> bool:
    """One stage, dagma's loop op for op, in numpy on the layer's own storage.

    At d = 20 a step is ~25 element-wise ops on 400 numbers, and a torch op's dispatch costs
    more than its arithmetic; numpy's ufuncs writing into preallocated buffers cost ~1 us each.
    ``w`` is W = weight^T, a numpy view of the stored weight, so every step lands in the layer.
    The gradient's buffer is also a torch tensor, which the layer's pattern masks in place as
    HollowLinear's backward masks its gradient; a 0.0 gradient keeps Adam's moments and step at
    0.0 there, so the held entries stay 0.0 (and each checkpoint's forward re-zeroes them).
    """
    import numpy as np

    w = layer.weight.detach().numpy().T
    d = w.shape[0]
    eye, s_eye, minus_mu_cov = np.eye(d), s * np.eye(d), -mu * cov
    inverse = _dagma_inverse(d)
    grad, m1, m2, direction, tmp = (np.zeros((d, d)) for _ in range(5))
    mask_grad = layer.pattern.zero_transposed_grad_  # grad is d/dW, the weight's transpose
    grad_t = torch.from_numpy(grad)
    previous = 1e16
    for it in range(1, iters + 1):
        inv = inverse(np.subtract(s_eye, np.multiply(w, w, out=tmp), out=tmp))
        while inv.min() < 0:  # sI - W o W is not an M-matrix
            if it == 1 or s <= 0.9:
                return False
            w += np.multiply(direction, lr, out=tmp)  # undo the last step, retake it at half
            lr *= 0.5
            if lr <= 1e-16:
                return True
            w -= np.multiply(direction, lr, out=tmp)
            inv = inverse(np.subtract(s_eye, np.multiply(w, w, out=tmp), out=tmp))
        # dagma's -mu C (I - W) + mu lam1 sign(W) + 2 W o inv(M)^T, in its order of operations
        np.matmul(minus_mu_cov, np.subtract(eye, w, out=tmp), out=grad)
        grad += np.multiply(np.sign(w, out=tmp), mu * lam1, out=tmp)
        grad += np.multiply(np.multiply(w, 2, out=tmp), inv.T, out=tmp)
        mask_grad(grad_t)  # what HollowLinear's backward does to its gradient
        m1 *= beta1  # dagma's Adam
        m1 += np.multiply(grad, 1 - beta1, out=tmp)
        m2 *= beta2
        m2 += np.multiply(np.multiply(grad, grad, out=tmp), 1 - beta2, out=tmp)
        np.divide(m2, 1 - beta2**it, out=tmp)
        np.add(np.sqrt(tmp, out=tmp), 1e-8, out=tmp)
        np.divide(np.divide(m1, 1 - beta1**it, out=direction), tmp, out=direction)
        w -= np.multiply(direction, lr, out=tmp)
        if it % checkpoint == 0 or it == iters:
            current = _dagma_objective(layer, x, mu, s, lam1)
            if abs((previous - current) / previous) <= tol:
                break
            previous = current
    return True


def _dagma_inverse(d: int) -> Callable[[np.ndarray], np.ndarray]:
    """``m -> inv(m) + 1e-16`` as dagma computes it with ``scipy.linalg.inv``: LAPACK's getrf and
    getri, called directly (at d = 20 ``inv``'s input checks cost as much as the inverse)."""
    import numpy as np
    from scipy.linalg import lapack

    getrf, getri, getri_lwork = lapack.get_lapack_funcs(
        ("getrf", "getri", "getri_lwork"), (np.zeros((d, d)),)
    )
    lwork = int(getri_lwork(d)[0])

    def inverse(m):
        lu, piv, info = getrf(m)
        if info == 0:
            inv, info = getri(lu, piv, lwork=lwork)
        if info != 0:
            raise np.linalg.LinAlgError(f"sI - W o W is singular (LAPACK info {info})")
        return np.add(inv, 1e-16, out=inv)

    return inverse


# ----------------------------------------------------------------------------- DAGMA, MLP


class HollowMLP(nn.Module):
    """DAGMA-MLP's model: node j = b_j + sum_k a_jk sigmoid(fc1(X)_jk); fc1 block-hollow.

    ``fc1`` is a ``HollowLinear(d, d*m)`` held with ``BlockDiagonal(rows=m, cols=1)``: rows
    ``[j*m, (j+1)*m)`` (the hidden units of node j) read input j through a weight that is
    exactly 0.0, so no node ever reads itself.
    """

    def __init__(self, d: int, hidden: int = 10) -> None:
        super().__init__()
        self.d, self.hidden = d, hidden
        self.fc1 = HollowLinear(
            d, d * hidden, dtype=torch.float64, pattern=BlockDiagonal(rows=hidden, cols=1)
        )
        nn.init.zeros_(self.fc1.weight)
        nn.init.zeros_(self.fc1.bias)
        bound = 1 / math.sqrt(hidden)  # dagma's LocallyConnected(d, m, 1) init
        self.fc2_weight = nn.Parameter(torch.empty(d, hidden, 1, dtype=torch.float64))
        self.fc2_bias = nn.Parameter(torch.empty(d, 1, dtype=torch.float64))
        nn.init.uniform_(self.fc2_weight, -bound, bound)
        nn.init.uniform_(self.fc2_bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.sigmoid(self.fc1(x).view(-1, self.d, self.hidden))
        return torch.einsum("ndm,dm->nd", hidden, self.fc2_weight[..., 0]) + self.fc2_bias[:, 0]

    def squared_adjacency(self) -> torch.Tensor:
        """A[i, j] = sum_k fc1.weight[j*m + k, i]^2: how strongly node j reads node i."""
        return self.fc1.weight.view(self.d, self.hidden, self.d).square().sum(1).T

    def acyclicity(self, s: float = 1.0) -> torch.Tensor:
        eye = torch.eye(self.d, dtype=torch.float64)
        return -torch.linalg.slogdet(s * eye - self.squared_adjacency())[1] + self.d * math.log(s)


def dagma_mlp(
    x: torch.Tensor,
    hidden: int = 10,
    lam1: float = 0.02,
    lam2: float = 0.005,
    threshold: float = 0.3,
    stages: int = 4,
    mu_init: float = 0.1,
    mu_factor: float = 0.1,
    s: float = 1.0,
    warm_iter: int = 50000,
    max_iter: int = 80000,
    lr: float = 2e-4,
    checkpoint: int = 1000,
    tol: float = 1e-6,
    seed: int = 0,
):
    """DAGMA-MLP (Bello et al. 2022) on a `HollowMLP`: (raw W, thresholded W), W = sqrt(A).

    dagma's ``DagmaNonlinear.fit`` loop: per stage, Adam (weight decay mu * lam2) on
    mu (0.5 d log(MSE) + lam1 |fc1|_1) + h, stopped when the objective moves by less than tol
    between checkpoints; a stage whose h turns negative restarts at half the rate.
    """
    torch.manual_seed(seed)
    x = x.to(torch.float64)
    model = HollowMLP(x.shape[1], hidden)
    mu = mu_init
    for stage in range(stages):
        iters = max_iter if stage == stages - 1 else warm_iter
        saved = {k: v.clone() for k, v in model.state_dict().items()}
        s_cur, decay = s, False
        while not _mlp_stage(model, x, iters, lr, lam1, lam2, mu, s_cur, decay, checkpoint, tol):
            model.load_state_dict(saved)
            lr, decay, s_cur = lr * 0.5, True, 1.0
            if lr < 1e-10:
                break
        mu *= mu_factor
    with torch.no_grad():
        raw = model.squared_adjacency().sqrt()
    return _threshold(raw, threshold)


def _mlp_stage(model, x, iters, lr, lam1, lam2, mu, s, decay, checkpoint, tol) -> bool:
    n, d = x.shape
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.99, 0.999), weight_decay=mu * lam2)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.8) if decay else None
    previous = 1e16
    for i in range(iters):
        opt.zero_grad()
        h = model.acyclicity(s)
        if h.item() < 0:
            return False
        score = 0.5 * d * torch.log((model(x) - x).square().sum() / n)
        obj = mu * (score + lam1 * model.fc1.weight.abs().sum()) + h
        obj.backward()
        opt.step()
        if scheduler is not None and (i + 1) % 1000 == 0:
            scheduler.step()
        if i % checkpoint == 0 or i == iters - 1:
            current = obj.item()
            if abs((previous - current) / previous) <= tol:
                break
            previous = current
    return True


# ----------------------------------------------------------------------------- peers

PEER_SCRIPT = r"""
import json, sys, time
import numpy as np
job = json.load(open(sys.argv[1]))
x = np.load(job["x"])
if job["learner"] == "dagma linear":
    from dagma.linear import DagmaLinear
    start = time.perf_counter()
    w = DagmaLinear(loss_type="l2").fit(x, lambda1=job["lam1"], w_threshold=0.0)
elif job["learner"] == "dagma mlp":
    import torch
    from dagma.nonlinear import DagmaMLP, DagmaNonlinear
    torch.set_num_threads(job["threads"])
    torch.manual_seed(job["seed"])
    model = DagmaNonlinear(DagmaMLP(dims=[x.shape[1], job["hidden"], 1], bias=True))
    start = time.perf_counter()
    w = model.fit(x, w_threshold=0.0, **job["fit"])
elif job["learner"] == "gcastle notears":
    from castle.algorithms import Notears
    start = time.perf_counter()
    model = Notears(lambda1=job["lam1"], loss_type="l2", w_threshold=0.0)
    model.learn(x)
    w = np.asarray(model.weight_causal_matrix)
print(json.dumps({"w": np.asarray(w).tolist(), "time": time.perf_counter() - start}))
"""

PEER_MODULES = {"dagma linear": "dagma", "dagma mlp": "dagma", "gcastle notears": "castle"}


def start_peer(learner: str, x: torch.Tensor, threads: int, **job) -> Callable[[], tuple | None]:
    """Start a peer on ``x`` in a separate process; the returned call waits for it and gives
    (raw W, fit seconds), or None if the peer is not installed or failed."""
    if importlib.util.find_spec(PEER_MODULES[learner]) is None:
        return lambda: None
    import numpy as np

    env = dict(os.environ)  # the same thread count for every BLAS the peer may use
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    tmp = tempfile.TemporaryDirectory()
    np.save(Path(tmp.name) / "x.npy", x.numpy())
    spec = Path(tmp.name) / "job.json"
    spec.write_text(
        json.dumps(
            {"learner": learner, "x": str(Path(tmp.name) / "x.npy"), "threads": threads, **job}
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", PEER_SCRIPT, str(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )

    def finish() -> tuple | None:
        stdout, stderr = proc.communicate(timeout=3600)
        tmp.cleanup()
        if proc.returncode != 0:
            print(f"{learner} failed:\n{stderr[-2000:]}", file=sys.stderr)
            return None
        out = json.loads(stdout.strip().splitlines()[-1])
        return torch.tensor(out["w"], dtype=torch.float64), out["time"]

    return finish


def run_peer(learner: str, x: torch.Tensor, threads: int, **job) -> tuple | None:
    """A peer's (raw W, fit seconds), run in a separate process; None if not installed."""
    return start_peer(learner, x, threads, **job)()


# ----------------------------------------------------------------------------- runs


def _record(learner: str, data: str, seed, truth, raw, thresholded, seconds) -> dict:
    return {
        "learner": learner,
        "data": data,
        "seed": seed,
        **accuracy(truth, thresholded),
        "time_s": round(seconds, 3),
        "max_abs_diag": raw.diagonal().abs().max().item(),
    }


def run_linear(
    x, truth, data: str, seed, threads: int, methods, lam1: dict, log=print, **kw
) -> list[dict]:
    """torch-hollow NOTEARS / DAGMA and their peers on one data set: one record each."""
    ours: dict[str, tuple[str, Callable]] = {
        "notears": ("torch-hollow notears", notears),
        "dagma": ("torch-hollow dagma", dagma_linear),
    }
    peers = {"notears": "gcastle notears", "dagma": "dagma linear"}
    records = []
    for key in methods:
        name, learn = ours[key]
        finish = start_peer(peers[key], x, threads, lam1=lam1[key])  # alongside: the same load
        start = time.perf_counter()
        raw, w = learn(x, lam1=lam1[key], **kw.get(key, {}))
        records.append(_record(name, data, seed, truth, raw, w, time.perf_counter() - start))
        log(_line(records[-1]))
        peer = finish()
        if peer is None:
            log(f"  {peers[key]}: not installed, skipped")
            continue
        raw, seconds = peer
        records.append(_record(peers[key], data, seed, truth, *_threshold(raw, 0.3), seconds))
        log(_line(records[-1]))
    return records


def run_mlp(x, truth, data: str, seed, threads: int, hidden: int, fit: dict, log=print):
    """torch-hollow DAGMA-MLP and dagma's DagmaMLP on the same data and settings."""
    finish = start_peer("dagma mlp", x, threads, seed=seed, hidden=hidden, fit=fit)
    start = time.perf_counter()
    raw, w = dagma_mlp(x, hidden=hidden, seed=seed, **_mlp_kwargs(fit))
    records = [_record("torch-hollow mlp", data, seed, truth, raw, w, time.perf_counter() - start)]
    log(_line(records[-1]))
    peer = finish()
    if peer is None:
        log("  dagma mlp: not installed, skipped")
    else:
        raw, seconds = peer
        records.append(_record("dagma mlp", data, seed, truth, *_threshold(raw, 0.3), seconds))
        log(_line(records[-1]))
    return records


def _mlp_kwargs(fit: dict) -> dict:
    names = {"lambda1": "lam1", "lambda2": "lam2", "T": "stages"}
    return {names.get(k, k): v for k, v in fit.items()}


def _line(r: dict) -> str:
    return (
        f"  {r['learner']:22s} SHD {r['shd']:3d}  TPR {r['tpr']:.2f}  FDR {r['fdr']:.2f}  "
        f"max|diag| {r['max_abs_diag']:.1e}  {r['time_s']:.1f} s"
    )


def table(records: list[dict]) -> str:
    """The README's table: one row per (data, learner), seeds in the order they ran."""
    rows: dict[tuple, list[dict]] = {}
    for r in records:
        rows.setdefault((r["data"], r["learner"]), []).append(r)
    lines = [
        "| data | learner | SHD per seed | mean SHD | TPR | FDR | max \\|diag W\\| before "
        "threshold | time per seed (s) | mean time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (data, learner), rs in rows.items():
        shd = [r["shd"] for r in rs]
        times = [r["time_s"] for r in rs]
        diag = max(r["max_abs_diag"] for r in rs)
        lines.append(
            f"| {data} | {learner} | {', '.join(map(str, shd))} | {sum(shd) / len(shd):.1f} | "
            f"{sum(r['tpr'] for r in rs) / len(rs):.2f} | "
            f"{sum(r['fdr'] for r in rs) / len(rs):.2f} | "
            f"{'0.0' if diag == 0 else f'{diag:.1e}'} | "
            f"{', '.join(f'{t:.1f}' for t in times)} | {sum(times) / len(times):.1f} s |"
        )
    return "\n".join(lines)


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


def limit_threads(threads: int) -> None:
    """One thread count for torch and for the BLAS that numpy and scipy load (scipy's L-BFGS-B
    calls its own OpenBLAS: left at two threads on two busy cores, NOTEARS ran 7x slower)."""
    torch.set_num_threads(threads)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)  # for BLAS libraries loaded from now on
    try:
        import scipy.linalg
        import scipy.optimize  # noqa: F401  (load scipy's BLAS before limiting it)
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(threads)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--method", choices=["notears", "dagma", "mlp", "all"], default="all")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds")
    parser.add_argument("--d", type=int, default=20, help="nodes, linear SEM (ER2)")
    parser.add_argument("--n", type=int, default=1000, help="samples, both SEMs")
    parser.add_argument("--mlp-d", type=int, default=8, help="nodes, MLP SEM (ER1)")
    parser.add_argument("--mlp-n", type=int, default=500, help="samples, MLP SEM")
    parser.add_argument("--hidden", type=int, default=10, help="hidden units per node (MLP)")
    parser.add_argument("--mlp-lr", type=float, default=1e-3, help="Adam rate (dagma: 2e-4)")
    parser.add_argument("--mlp-warm-iter", type=int, default=1500, help="steps, stages 1-3")
    parser.add_argument("--mlp-max-iter", type=int, default=3000, help="steps, last stage")
    parser.add_argument("--sachs", action="store_true", help="also the Sachs data (cdt), linear")
    parser.add_argument("--threads", type=int, default=1, help="for every learner and peer")
    parser.add_argument("--json", type=Path, help="write the records here")
    parser.add_argument("--table", type=Path, help="only print the table of a --json file")
    args = parser.parse_args(argv)
    if args.table:
        records = json.loads(args.table.read_text())
        print(table(records))
        return records
    limit_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    linear = ["notears", "dagma"] if args.method == "all" else [args.method]
    linear = [m for m in linear if m != "mlp"]
    lam1 = {"notears": 0.1, "dagma": 0.02}
    fit = {
        "lambda1": 0.02,
        "lambda2": 0.005,
        "warm_iter": args.mlp_warm_iter,
        "max_iter": args.mlp_max_iter,
        "lr": args.mlp_lr,
    }
    records: list[dict] = []
    started = time.perf_counter()
    for seed in seeds:
        if linear:
            print(f"linear SEM, ER2, d={args.d}, n={args.n}, seed {seed}", flush=True)
            x, truth = simulate(args.d, args.n, seed)
            records += run_linear(x, truth, "ER2", seed, args.threads, linear, lam1)
        if args.method in ("mlp", "all"):
            print(f"MLP SEM, ER1, d={args.mlp_d}, n={args.mlp_n}, seed {seed}", flush=True)
            x, truth = simulate_mlp(args.mlp_d, args.mlp_n, seed)
            records += run_mlp(x, truth, "MLP ER1", seed, args.threads, args.hidden, fit)
    if args.sachs and linear:
        print("Sachs (7466 x 11, standardised)", flush=True)
        x, truth, _ = sachs()
        x = (x - x.mean(0)) / x.std(0)
        records += run_linear(x, truth, "Sachs", None, args.threads, linear, lam1)
    print(f"\n{table(records)}\n\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(records, indent=1) + "\n")
    return records


if __name__ == "__main__":
    main()
