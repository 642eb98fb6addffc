"""The application examples, reduced to CI size, with real assertions.

The data ship inside wheels installed without their dependencies (``.ci/run`` does
``pip install --no-deps recbole cdt``): MovieLens-100K in recbole, the Sachs data in cdt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import ease
import structure_learning as sl


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


def test_structure_learning_recovers_a_small_graph():
    torch.set_num_threads(2)
    x, truth = sl.simulate(d=8, n=600, seed=1)
    raw, w = sl.notears(x)
    assert (raw.diagonal() == 0).all() and not torch.signbit(raw.diagonal()).any()
    acc = sl.accuracy(truth, w)
    assert acc["shd"] <= 2 and acc["tpr"] >= 0.8, acc
    assert sl.acyclicity(w).abs() < 1e-6  # the thresholded graph is a DAG


def test_accuracy_counts_reversed_edges_once():
    truth = torch.zeros(3, 3, dtype=torch.bool)
    truth[0, 1] = truth[1, 2] = True
    est = torch.zeros(3, 3)
    est[1, 0] = est[1, 2] = est[0, 2] = 1.0  # one reversed, one right, one extra
    acc = sl.accuracy(truth, est)
    assert (acc["shd"], acc["edges"]) == (2, 3)
    assert acc["tpr"] == 0.5 and abs(acc["fdr"] - 2 / 3) < 1e-12


def test_sachs_data_load_from_the_cdt_wheel():
    x, target, names = sl.sachs()
    assert x.shape == (7466, 11) and len(names) == 11
    assert 17 <= int(target.sum()) <= 20 and not target.diagonal().any()


def test_dagma_style_learner_recovers_a_small_graph():
    torch.set_num_threads(2)
    x, truth = sl.simulate(d=8, n=600, seed=1)
    raw, w = sl.dagma_style(x, lam1=0.05, warm_iter=5000, max_iter=10000, lr=1e-3)
    assert (raw.diagonal() == 0).all() and not torch.signbit(raw.diagonal()).any()
    acc = sl.accuracy(truth, w)
    assert acc["shd"] <= 1 and acc["tpr"] >= 0.9, acc
