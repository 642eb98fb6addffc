"""The application examples, reduced to CI size, with real assertions.

The data ship inside wheels (``.ci/run`` does ``pip install --no-deps recbole cdt``; scikit-learn
is in the test extra): MovieLens-100K in recbole, the Sachs data in cdt, the breast-cancer table
in scikit-learn. The peers (dagma, gcastle, zuko) are optional: their comparisons are skipped
when they are not installed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import ease
import flow
import structure_learning as sl

ROOT = Path(__file__).resolve().parents[1]


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _exactly_zero(t: torch.Tensor) -> bool:
    return bool((t == 0).all()) and not bool(torch.signbit(t).any())


# ----------------------------------------------------------------------------- EASE


def test_ease_gradient_training_reaches_the_closed_form():
    torch.set_num_threads(2)
    rows = {r["method"]: r for r in ease.run(items=300, iters=300, adamw_steps=0, log=print)}
    exact, trained = rows["closed form"], rows["HollowLinear + L-BFGS"]
    assert trained["rel_distance"] <= 1e-5
    assert trained["max_abs_diag"] == 0.0
    assert round(trained["recall20"], 3) == round(exact["recall20"], 3)
    assert round(trained["ndcg20"], 3) == round(exact["ndcg20"], 3)
    assert exact["recall20"] > 0.2  # a real recommender, not an empty ranking


def test_ease_closed_form_is_hollow_and_optimal():
    x = (torch.rand(40, 12, generator=torch.Generator().manual_seed(0)) < 0.3).double()
    b = ease.closed_form(x, lam=2.0)
    assert (b.diagonal() == 0).all()
    # KKT: the gradient of the objective vanishes off the diagonal
    grad = x.T @ (x @ b - x) + 2.0 * b
    grad.fill_diagonal_(0)
    assert grad.abs().max() < 1e-9


# ----------------------------------------------------------------------------- linear SEM


def test_accuracy_counts_reversed_edges_once():
    truth = torch.zeros(3, 3, dtype=torch.bool)
    truth[0, 1] = truth[1, 2] = True
    est = torch.zeros(3, 3)
    est[1, 0] = est[1, 2] = est[0, 2] = 1.0  # one reversed, one right, one extra
    acc = sl.accuracy(truth, est)
    assert (acc["shd"], acc["edges"]) == (2, 3)
    assert acc["tpr"] == 0.5 and abs(acc["fdr"] - 2 / 3) < 1e-12


def test_simulated_graphs_are_dags_and_the_mlp_sem_follows_them():
    for seed in range(3):
        _, dag = sl.simulate(12, 50, seed)
        assert sl.acyclicity(dag.double()).abs() < 1e-12 and not dag.diagonal().any()
    x, dag = sl.simulate_mlp(6, 200, seed=0)
    roots = (~dag.any(0)).nonzero().flatten()
    assert len(roots) and torch.allclose(
        x[:, roots].std(0), torch.ones(len(roots), dtype=x.dtype), atol=0.15
    )


def test_notears_recovers_a_small_graph_with_an_exact_zero_diagonal():
    pytest.importorskip("scipy")
    sl.limit_threads(1)
    x, truth = sl.simulate(d=8, n=600, seed=1)
    raw, w = sl.notears(x)
    assert _exactly_zero(raw.diagonal())
    acc = sl.accuracy(truth, w)
    assert acc["shd"] <= 2 and acc["tpr"] >= 0.8, acc
    assert sl.acyclicity(w).abs() < 1e-6  # the thresholded graph is a DAG


@pytest.mark.skipif(not _installed("castle"), reason="gcastle not installed")
def test_notears_is_no_worse_than_gcastle():
    sl.limit_threads(1)
    x, truth = sl.simulate(d=8, n=600, seed=2)
    _, w = sl.notears(x)
    peer, _ = sl.run_peer("gcastle notears", x, threads=1, lam1=0.1)
    ours, theirs = sl.accuracy(truth, w)["shd"], sl.accuracy(truth, sl._threshold(peer, 0.3)[1])
    assert ours <= theirs["shd"], (ours, theirs)


def test_dagma_linear_recovers_a_small_graph_with_an_exact_zero_diagonal():
    sl.limit_threads(1)
    x, truth = sl.simulate(d=8, n=600, seed=1)
    raw, w = sl.dagma_linear(x, lam1=0.05, warm_iter=5000, max_iter=10000, lr=1e-3)
    assert _exactly_zero(raw.diagonal())
    acc = sl.accuracy(truth, w)
    assert acc["shd"] <= 1 and acc["tpr"] >= 0.9, acc


@pytest.mark.skipif(not _installed("dagma"), reason="dagma not installed")
def test_dagma_linear_follows_dagmas_path():
    sl.limit_threads(1)
    x, truth = sl.simulate(d=8, n=600, seed=1)
    raw, w = sl.dagma_linear(x)
    peer, _ = sl.run_peer("dagma linear", x, threads=1, lam1=0.02)
    assert _exactly_zero(raw.diagonal()) and peer.diagonal().abs().max() > 0  # dagma's drifts
    off = ~torch.eye(8, dtype=torch.bool)
    assert (raw - peer)[off].abs().max() < 0.02  # the same optimiser, up to the diagonal
    assert sl.accuracy(truth, w)["shd"] <= sl.accuracy(truth, sl._threshold(peer, 0.3)[1])["shd"]


@pytest.mark.skipif(not _installed("dagma"), reason="dagma not installed")
def test_dagma_linear_takes_dagmas_steps_op_for_op(monkeypatch):
    from dagma.linear import DagmaLinear  # numpy and scipy only: safe in this process

    from torch_hollow.patterns import Diagonal

    sl.limit_threads(1)
    x, _ = sl.simulate(d=8, n=600, seed=1)
    peer = DagmaLinear(loss_type="l2", verbose=False).fit(
        x.numpy().copy(), lambda1=0.02, w_threshold=0.0, T=1, s=[1.0], max_iter=300
    )
    # Without the pattern's mask the steps are dagma's, bit for bit; the last step's checkpoint
    # goes through the layer's forward, which zeroes the stored diagonal, so compare off it.
    monkeypatch.setattr(Diagonal, "zero_transposed_grad_", lambda self, grad: None)
    raw, _ = sl.dagma_linear(x, s_path=(1.0,), max_iter=300)
    off = ~torch.eye(8, dtype=torch.bool)
    assert torch.equal(raw[off], torch.from_numpy(peer)[off])
    assert _exactly_zero(raw.diagonal())


def test_sachs_data_load_from_the_cdt_wheel():
    x, target, names = sl.sachs()
    assert x.shape == (7466, 11) and len(names) == 11
    assert 17 <= int(target.sum()) <= 20 and not target.diagonal().any()


# ----------------------------------------------------------------------------- MLP SEM


def test_mlp_first_layer_never_reads_its_own_node():
    sl.limit_threads(1)
    d, m = 5, 4
    model = sl.HollowMLP(d, hidden=m)
    torch.nn.init.normal_(model.fc1.weight)  # a raw write: the forward re-zeroes the blocks
    x = torch.randn(16, d, dtype=torch.float64, requires_grad=True)
    out = model(x)
    jac = torch.stack(
        [torch.autograd.grad(out[:, j].sum(), x, retain_graph=True)[0] for j in range(d)]
    )
    assert _exactly_zero(torch.stack([jac[j, :, j] for j in range(d)]))  # d x_j-hat / d x_j
    blocks = model.fc1.weight.detach().view(d, m, d).diagonal(0, 0, 2)
    assert _exactly_zero(blocks)
    assert _exactly_zero(model.squared_adjacency().diagonal())


def test_dagma_mlp_learns_a_small_graph_with_exact_zero_self_loops():
    sl.limit_threads(1)
    x, truth = sl.simulate_mlp(5, 500, seed=0)
    raw, w = sl.dagma_mlp(x, hidden=8, warm_iter=1500, max_iter=3000, lr=1e-3)
    assert _exactly_zero(raw.diagonal())
    acc = sl.accuracy(truth, w)
    assert acc["shd"] <= 2 and acc["tpr"] >= 0.5, acc


# ----------------------------------------------------------------------------- flow


def test_flow_data_ship_in_scikit_learn():
    pytest.importorskip("sklearn")
    train, val, test = flow.load_data(seed=0)
    assert train.shape[1] == 30 and len(train) + len(val) + len(test) == 569
    assert torch.allclose(train.mean(0), torch.zeros(30), atol=1e-5)


def test_maf_is_autoregressive_with_exact_zeros_under_the_mask():
    torch.manual_seed(0)
    d = 6
    model = flow.MAF(d, transforms=2, hidden=[16, 16], linear=flow.hollow_linear)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        (-model.log_prob(torch.randn(32, d)).mean()).backward()
        opt.step()
    assert flow.max_abs_held(model) == 0.0
    for made in model.made:
        jac = torch.autograd.functional.jacobian(lambda v, made=made: made(v)[0], torch.randn(d))
        not_before = made.order[None, :] >= made.order[:, None]  # input j not before output i
        assert (jac[not_before] == 0).all() and (jac[~not_before] != 0).any()


@pytest.mark.skipif(not _installed("zuko"), reason="zuko not installed")
def test_maf_trains_like_zukos_masked_linear():
    pytest.importorskip("sklearn")
    torch.set_num_threads(1)
    records = {
        r["model"]: r
        for r in flow.train(
            {"hollow": flow.hollow_linear, "zuko": flow.zuko_linear},
            epochs=2,
            transforms=2,
            hidden=(32,),
            log=print,
        )
    }
    assert records["hollow"]["max_abs_held"] == 0.0 and records["zuko"]["max_abs_held"] > 0
    assert abs(records["hollow"]["test_nll"] - records["zuko"]["test_nll"]) < 1e-3


# ----------------------------------------------------------------------------- the CLIs


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def test_structure_learning_cli_writes_json_records(tmp_path):
    out = tmp_path / "sl.json"
    _run(
        "structure_learning.py",
        *("--method", "all", "--seeds", "0", "--d", "6", "--n", "300", "--mlp-d", "4"),
        *("--mlp-warm-iter", "300", "--mlp-max-iter", "500", "--json", str(out)),
    )
    records = json.loads(out.read_text())
    learners = {r["learner"] for r in records}
    assert {"torch-hollow notears", "torch-hollow dagma", "torch-hollow mlp"} <= learners
    assert learners <= set(sl.LINEAR_LEARNERS + sl.MLP_LEARNERS)
    for r in records:
        assert {"learner", "seed", "shd", "time_s", "max_abs_diag"} <= r.keys()
        if r["learner"].startswith("torch-hollow"):
            assert r["max_abs_diag"] == 0.0 and r["seed"] == 0


def test_flow_cli_writes_json_records(tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "flow.json"
    _run("flow.py", "--epochs", "2", "--transforms", "2", "--hidden", "32", "--json", str(out))
    records = json.loads(out.read_text())
    assert records[0]["model"] == "torch-hollow HollowLinear(Mask)"
    for r in records:
        assert {"model", "test_nll", "step_ms", "max_abs_held"} <= r.keys()
    assert records[0]["max_abs_held"] == 0.0
