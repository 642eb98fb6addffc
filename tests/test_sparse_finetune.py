"""examples/sparse_finetune.py at --tiny size: a Wanda-pruned Llama fine-tuned three ways.

Every position checked here is computed by the test from the pruned checkpoint (the entries that
are 0.0 after Wanda), never read from a method's mask; every value is read from the fine-tuned
model's own parameters.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import sparse_finetune as sf

HELD = ("torch-hollow", "mask-mul", "prune")


@pytest.fixture(scope="module")
def result():
    return sf.experiment(sf.TINY, seed=0, log=lambda *_: None)


def _pruned_at(result, sparsity):
    """{name: bool mask} of the entries Wanda zeroed, from the pruned checkpoint."""
    checkpoint = result["pruned"][sparsity]
    return {n: checkpoint.get_submodule(n).weight.detach() == 0 for n in result["names"]}


def _param(model, name, which="weight"):
    return dict(model.named_parameters())[f"{name}.{which}"].detach()


@pytest.mark.parametrize("sparsity", sf.SPARSITIES)
def test_wanda_prunes_the_asked_structure_and_nothing_else(result, sparsity):
    checkpoint = result["pruned"][sparsity]
    assert result["names"] and all(".layers." in n for n in result["names"])
    for name, module in checkpoint.named_modules():
        if not isinstance(module, torch.nn.Linear | torch.nn.Embedding):
            continue
        zeros = module.weight.detach() == 0
        if name not in result["names"]:  # embeddings, lm_head
            assert not zeros.any(), name
        elif sparsity == "50%":
            assert (zeros.sum(1) == module.in_features // 2).all(), name
        else:
            groups = zeros.reshape(module.out_features, -1, 4).sum(-1)
            assert (groups == 2).all(), name


@pytest.mark.parametrize("sparsity", sf.SPARSITIES)
@pytest.mark.parametrize("method", ["torch-hollow", "mask-mul"])
def test_stored_pruned_entries_stay_exactly_zero(result, sparsity, method):
    model = result["models"][sparsity, method]
    for name, where in _pruned_at(result, sparsity).items():
        stored = _param(model, name)[where]
        assert (stored == 0).all(), name  # -0.0 == 0: mask-mul's p * False is -0.0 for p < 0
        if method == "torch-hollow":
            assert not stored.signbit().any(), name  # bitwise +0.0


@pytest.mark.parametrize("sparsity", sf.SPARSITIES)
def test_prune_computes_zeros_and_its_weight_orig_holds_them(result, sparsity):
    model = result["models"][sparsity, "prune"]
    for name, where in _pruned_at(result, sparsity).items():
        module = model.get_submodule(name)
        assert (module.weight.detach()[where] == 0).all(), name
        # weight_orig starts at 0.0 there (the checkpoint was pruned) and prune's mask zeroes
        # its gradient, so AdamW (decay of 0.0, zero moments) leaves it at 0.0 as well
        assert (_param(model, name, "weight_orig")[where] == 0).all(), name


@pytest.mark.parametrize("sparsity", sf.SPARSITIES)
def test_plain_finetuning_fills_the_pruned_entries(result, sparsity):
    model = result["models"][sparsity, "none"]
    pruned_at = _pruned_at(result, sparsity)
    filled = sum(int((_param(model, n)[w] != 0).sum()) for n, w in pruned_at.items())
    total = sum(int(w.sum()) for w in pruned_at.values())
    assert filled > total // 2


def test_two_four_structure_survives_finetuning(result):
    for method in HELD:
        model = result["models"]["2:4", method]
        for name in result["names"]:
            weight = model.get_submodule(name).weight.detach()  # prune's: the computed one
            groups = (weight == 0).reshape(weight.shape[0], -1, 4).sum(-1)
            assert (groups == 2).all(), (method, name)


@pytest.mark.parametrize("sparsity", sf.SPARSITIES)
def test_the_three_methods_train_the_same_function(result, sparsity):
    """Same forward values, same gradients on the free entries, so the same AdamW steps: the
    loss trajectories and the fine-tuned weights agree bitwise (-0.0 == 0.0)."""
    records = {r["method"]: r for r in result["records"] if r["sparsity"] == sparsity}
    reference = records["torch-hollow"]
    models = {m: result["models"][sparsity, m] for m in HELD}
    for method in ("mask-mul", "prune"):
        assert records[method]["losses"] == reference["losses"], method
        assert records[method]["ppl_finetuned"] == reference["ppl_finetuned"], method
        for name in result["names"]:
            computed = models[method].get_submodule(name).weight.detach()
            assert torch.equal(computed, _param(models["torch-hollow"], name)), (method, name)
    assert records["none"]["losses"][0] == reference["losses"][0]  # the same first batch
    assert records["none"]["losses"] != reference["losses"]


def test_clipping_sets_mask_mul_apart(result):
    """Under clip_grad_norm_ (Trainer's default), mask-mul's gradient norm also counts the
    pruned entries, so it clips by another factor: its trajectory leaves the other two."""
    from dataclasses import replace

    cfg = replace(sf.TINY, clip=0.05)  # small enough to clip at every step
    train, _ = sf.stdlib_text(cfg.files)
    runs = sf.finetune(result["pruned"]["2:4"], result["names"], train, cfg, 0, HELD)
    losses = {m: r.losses for m, r in runs.items()}
    assert losses["prune"] == losses["torch-hollow"]
    assert losses["mask-mul"][0] == losses["torch-hollow"][0]  # the loss before any step
    assert losses["mask-mul"] != losses["torch-hollow"]


def test_records_have_the_documented_keys_and_report_what_the_test_reads(result, tmp_path):
    out = sf.write_json(tmp_path / "out.json", result, [], sf.TINY, 0)
    loaded = json.loads((tmp_path / "out.json").read_text())
    assert loaded == json.loads(json.dumps(out))
    assert set(loaded) == {"conditions", "records", "big"}
    records = loaded["records"]
    assert [(r["sparsity"], r["method"]) for r in records] == [
        (s, m) for s in sf.SPARSITIES for m in sf.METHODS
    ]
    for r in records:
        assert tuple(r) == sf.RECORD_KEYS
        assert len(r["losses"]) == sf.TINY.steps
        entries = sum(w.numel() for w in _pruned_at(result, r["sparsity"]).values())
        assert r["pruned_entries"] == sum(
            int(w.sum()) for w in _pruned_at(result, r["sparsity"]).values()
        )
        if r["method"] == "none":
            assert r["max_pruned_stored"] > 0 and r["pruned_nonzero"] > 0
        else:
            assert r["max_pruned_stored"] == 0.0 and r["max_pruned_computed"] == 0.0
        # bytes counted another way: a bool per entry; prune's float mask and computed weight
        expected = {"mask-mul": entries, "prune": 2 * 4 * entries, "none": 0}
        if r["method"] in expected:
            assert r["extra_bytes"] == expected[r["method"]], r["method"]
        renamed = r["keys_not_in_dense"]
        assert bool(renamed) == (r["method"] == "prune")
        assert all(k.endswith(("weight_orig", "weight_mask")) for k in renamed)
        assert r["audit_held"] == (len(result["names"]) if r["method"] == "torch-hollow" else 0)
        assert r["audit_violated"] == 0


def test_big_rows_at_a_small_shape():
    rows = sf.big_rows(steps=2, tokens=4, hidden=64, intermediate=176, heads=4, log=lambda *_: 0)
    entries = 4 * 64 * 64 + 3 * 64 * 176
    assert [r["method"] for r in rows] == list(sf.METHODS)
    for r in rows:
        assert tuple(r) == sf.BIG_KEYS
        assert r["entries"] == entries
        assert (r["pruned_nonzero"] > 0) == (r["method"] == "none")
    bytes_of = {r["method"]: r["extra_bytes"] for r in rows}
    assert bytes_of["mask-mul"] == entries and bytes_of["prune"] == 2 * 2 * entries
    assert bytes_of["none"] == 0
