"""The constraint examples (examples/slim.py, examples/ising.py) at their quick sizes.

The invariants are checked bitwise after every optimizer step, by this file's own code: SLIM's
W >= 0 with a diagonal of +0.0 bits; the Ising couplings J == J^T and a diagonal of +0.0 bits.
MovieLens-100K ships inside the recbole wheel (``pip install --no-deps recbole``); the SLIM
reference needs scikit-learn (the test extra).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import ease
import ising

pytestmark = pytest.mark.filterwarnings("ignore::torch_hollow.HollowWarning")

ALPHA, L1_RATIO = 0.2, 0.01


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    threads = torch.get_num_threads()  # the examples' main() sets them
    yield
    torch.set_num_threads(threads)


def _diag_bits_zero(w: torch.Tensor) -> bool:
    ints = {torch.float32: torch.int32, torch.float64: torch.int64}[w.dtype]
    return bool((w.detach().diagonal().view(ints) == 0).all())


# ----------------------------------------------------------------------------- SLIM


@pytest.fixture(scope="module")
def slim():
    pytest.importorskip("sklearn")
    if importlib.util.find_spec("recbole") is None:
        pytest.skip("MovieLens-100K ships inside recbole: pip install --no-deps recbole")
    import slim

    return slim


@pytest.fixture(scope="module")
def ml300(slim):
    x_train, x_test = ease.load(300, 0)
    return x_train, x_test, slim.sklearn_slim(x_train, ALPHA, L1_RATIO)


def test_slim_weight_is_nonnegative_and_hollow_after_every_step(slim, ml300):
    x_train, x_test, reference = ml300
    steps = []

    def check(layer):
        w = layer.weight.detach()
        assert bool((w >= 0).all()) and not bool(w.isnan().any())
        assert not bool(torch.signbit(w).any())  # no -0.0 either: +0.0 bits wherever held
        assert _diag_bits_zero(w)
        steps.append(int((w != 0).sum()))

    layer, iters = slim.hollow_slim(x_train, ALPHA, L1_RATIO, on_step=check)
    assert len(steps) == iters and steps[-1] > 0  # a trained, sparse, non-empty W
    b = layer.weight.detach().T.double()
    assert steps[-1] < 0.5 * b.numel()
    recall, ndcg = ease.metrics(b, x_train, x_test)
    ref_recall, ref_ndcg = ease.metrics(reference, x_train, x_test)
    assert abs(recall - ref_recall) <= 0.005 and abs(ndcg - ref_ndcg) <= 0.005
    assert ref_recall > 0.4  # a real recommender


def test_slim_solves_scikit_learns_problem(slim, ml300):
    """Run to a tight tolerance, the ADMM lands on ElasticNet's solution: the same problem."""
    x_train, _, reference = ml300
    layer, _ = slim.hollow_slim(
        x_train, ALPHA, L1_RATIO, tol=1e-4, max_iter=2000, dtype=torch.float64
    )
    b = layer.weight.detach().T
    assert (b.norm() - reference.norm()).abs() / reference.norm() < 1e-3
    assert (b - reference).norm() / reference.norm() < 1e-2
    ours = slim.objective(b, x_train, ALPHA, L1_RATIO)
    theirs = slim.objective(reference, x_train, ALPHA, L1_RATIO)
    assert abs(ours - theirs) <= 1e-5 * theirs
    # the reference itself: columns fitted with their own item zeroed, non-negative
    assert (reference >= 0).all() and (reference.diagonal() == 0).all()


def test_slim_cli_writes_the_records(slim, tmp_path, capsys):
    path = tmp_path / "slim.json"
    slim.main(["--quick", "--json", str(path)])
    rows = {r["method"]: r for r in json.loads(path.read_text())}
    assert set(rows) == {"torch-hollow slim", "sklearn slim", "ease"}
    for row in rows.values():
        assert {"recall20", "ndcg20", "time_s", "min_w", "max_abs_diag"} <= set(row)
    ours, ref = rows["torch-hollow slim"], rows["sklearn slim"]
    assert ours["min_w"] == 0.0 and ours["max_abs_diag"] == 0.0
    assert abs(ours["recall20"] - ref["recall20"]) <= 0.005
    assert rows["ease"]["min_w"] < 0  # EASE's weights are not constrained to be >= 0
    assert "| torch-hollow slim |" in capsys.readouterr().out


# ----------------------------------------------------------------------------- Ising


@pytest.fixture(scope="module")
def spins():
    j_true, h_true = ising.couplings(16, 3, seed=0)
    return ising.gibbs(j_true, h_true, chains=1000, sweeps=50, seed=0), j_true


def _symmetric_hollow_every_step(steps: list):
    def check(layer):
        w = layer.weight.detach()
        steps.append(torch.equal(w, w.T) and _diag_bits_zero(w))

    return check


def test_sampled_couplings_are_symmetric_and_hollow(spins):
    s, j_true = spins
    assert torch.equal(j_true, j_true.T) and (j_true.diagonal() == 0).all()
    assert set(s.unique().tolist()) == {-1.0, 1.0} and s.shape == (1000, 16)


@pytest.mark.parametrize(
    "optimizer",
    [
        "adam",
        pytest.param(
            "muon",
            marks=pytest.mark.skipif(
                not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon: torch >= 2.9"
            ),
        ),
    ],
)
def test_ising_couplings_stay_symmetric_and_hollow(spins, optimizer):
    s, j_true = spins
    lr = 0.05 if optimizer == "adam" else 0.02
    held = []
    row = ising.train(
        "torch-hollow",
        s,
        j_true,
        optimizer,
        steps=60,
        lr=lr,
        on_step=_symmetric_hollow_every_step(held),
    )
    assert len(held) == 60 and all(held)
    assert row["rel_error"] < 0.5  # J is recovered, not only held
    assert (row["after_load"], row["after_reset"]) == ("held", "held")


def test_ising_recipe_takes_torch_hollows_adam_steps_and_none_leaks(spins):
    s, j_true = spins
    ours = ising.train("torch-hollow", s, j_true, "adam", steps=60)
    recipe = ising.train("recipe", s, j_true, "adam", steps=60)
    none = ising.train("none", s, j_true, "adam", steps=60)
    # Adam is elementwise: the projected steps are the recipe's, bit for bit
    assert torch.equal(ours["layer"].weight.detach(), recipe["layer"].weight.detach())
    assert recipe["asymmetric_steps"] == recipe["nonzero_diag_steps"] == 0
    assert (recipe["after_load"], recipe["after_reset"]) == ("broken", "broken")
    # left alone, J leaves the constraints and a self-coupling explains each spin by itself
    w = none["layer"].weight.detach()
    assert not torch.equal(w, w.T) and w.diagonal().abs().min() > 0.1
    assert none["loss"] < 0.5 * ours["loss"] and none["rel_error"] > 1.0


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon: torch >= 2.9")
def test_ising_gradient_hook_is_not_enough_under_muon(spins):
    s, j_true = spins
    hook = ising.train("grad hook", s, j_true, "muon", steps=20, lr=0.02)
    w = hook["layer"].weight.detach()
    assert not torch.equal(w, w.T)  # Newton-Schulz rounding: a symmetric update, not bitwise


def test_ising_cli_writes_the_records(tmp_path, capsys):
    path = tmp_path / "ising.json"
    ising.main(["--quick", "--json", str(path)])
    rows = json.loads(path.read_text())
    ours = [r for r in rows if r["method"] == "torch-hollow"]
    assert ours and all(r["asymmetric_steps"] == r["nonzero_diag_steps"] == 0 for r in ours)
    assert {r["method"] for r in rows} == set(ising.METHODS)
    assert "| adam | torch-hollow |" in capsys.readouterr().out
