"""examples/new_tokens.py at --quick size: new tokens' rows trained four ways, and unlearning.

Every frozen value is compared bit for bit with a snapshot the test takes itself (the pretrained
model's rows, the unlearning case's theta_0), read from the trained models' own parameters; the
grad-hook recipe's old rows are compared with AdamW's weight decay applied to that snapshot by
the test, so a leak is seen and its size is checked, not only its presence.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import new_tokens as nt

CFG = nt.QUICK
OLD = nt.BYTES
TIED = [pytest.param(False, id="untied"), pytest.param(True, id="tied")]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny matrices: a second intra-op thread only waits (as in test_llm.py).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def result(one_thread):
    return nt.experiment(CFG, seed=0, log=lambda *_: None)


@pytest.fixture(scope="module")
def snapshot(result):
    """{tied: {name: old rows}} of the pretrained models, rebuilt here: the same seed, the same
    pretraining (the resized models must carry exactly these rows)."""
    text = nt.split(CFG)
    out = {}
    for tied in (False, True):
        model = nt.build_model(CFG, tied, seed=0)
        nt.pretrain(model, nt.encode(text["train"]), CFG, seed=0)
        weights = {"model.embed_tokens": model.model.embed_tokens.weight}
        if not tied:
            weights["lm_head"] = model.lm_head.weight
        out[tied] = {n: w.detach().clone() for n, w in weights.items()}
    return out


def _bits(t):
    return t.detach().contiguous().view(torch.int32)


def _stored(model, name):
    """The weight tensor the optimizer or the forward's base reads (peft's base layer's)."""
    module = nt.inner(model).get_submodule(name)
    return getattr(module, "base_layer", module).weight.detach()


def _records(result):
    return {(r["tied"], r["method"]): r for r in result["records"]}


@pytest.mark.parametrize("tied", TIED)
def test_the_resized_model_starts_from_the_pretrained_rows(result, snapshot, tied):
    resized = result["resized"][tied]
    assert resized.config.vocab_size == OLD + len(nt.NEW_TOKENS)
    assert (resized.lm_head.weight is resized.model.embed_tokens.weight) == tied
    for name, rows in snapshot[tied].items():
        assert torch.equal(_bits(_stored(resized, name)[:OLD]), _bits(rows)), name


@pytest.mark.parametrize("tied", TIED)
@pytest.mark.parametrize("method", ["torch-hollow", "peft"])
def test_old_rows_keep_their_bits(result, snapshot, tied, method):
    model = result["models"][tied, method]
    effective = nt.token_weights(model)  # what the forward reads (peft's rows merged)
    assert set(effective) == set(snapshot[tied])
    for name, rows in snapshot[tied].items():
        assert torch.equal(_bits(_stored(model, name)[:OLD]), _bits(rows)), name
        assert torch.equal(_bits(effective[name][:OLD]), _bits(rows)), name
    record = _records(result)[tied, method]
    assert record["frozen_changed"] == 0 and record["max_frozen_change"] == 0.0


@pytest.mark.parametrize("tied", TIED)
def test_torch_hollow_gradient_is_zero_on_the_old_rows(result, tied):
    model = result["models"][tied, "torch-hollow"]
    for name in ("model.embed_tokens", "lm_head"):
        grad = model.get_submodule(name).weight.grad
        assert grad is not None and grad[OLD:].abs().sum() > 0, name
        assert (_bits(grad[:OLD]) == 0).all(), name  # +0.0


@pytest.mark.parametrize("tied", TIED)
def test_grad_hook_old_rows_shrink_by_weight_decay(result, snapshot, tied):
    """The hook zeroes the old rows' gradients, so AdamW's update there is 0, but its decoupled
    decay multiplies them by (1 - lr * weight_decay) at every step: exactly what is stored."""
    model = result["models"][tied, "grad-hook"]
    for name, rows in snapshot[tied].items():
        decayed = rows.clone()
        for _ in range(CFG.steps):
            decayed.mul_(1 - CFG.lr * CFG.weight_decay)
        stored = _stored(model, name)[:OLD]
        assert torch.equal(_bits(stored), _bits(decayed)), name
        assert (_bits(stored) != _bits(rows)).sum() > rows.numel() // 2, name
    record = _records(result)[tied, "grad-hook"]
    assert record["frozen_changed"] > 0 and record["max_frozen_change"] > 0


@pytest.mark.parametrize("tied", TIED)
def test_torch_hollow_and_peft_train_the_same_rows(result, tied):
    """Same forward values, same gradients on the new rows, elementwise AdamW: bitwise equal
    losses and new rows. The grad-hook's decayed old rows change the function."""
    records = _records(result)
    hollow, peft = records[tied, "torch-hollow"], records[tied, "peft"]
    assert hollow["losses"] == peft["losses"]
    assert hollow["losses"] != records[tied, "grad-hook"]["losses"]
    a = nt.token_weights(result["models"][tied, "torch-hollow"])
    b = nt.token_weights(result["models"][tied, "peft"])
    for name in a:
        assert torch.equal(_bits(a[name]), _bits(b[name])), name


@pytest.mark.parametrize("tied", TIED)
def test_every_way_trains_the_new_rows(result, tied):
    resized = nt.token_weights(result["resized"][tied])
    for method in nt.METHODS:
        trained = nt.token_weights(result["models"][tied, method])
        for name, w0 in resized.items():
            moved = _bits(trained[name][OLD:]) != _bits(w0[OLD:])
            assert moved.float().mean() > 0.9, (method, name)
        record = _records(result)[tied, method]
        assert record["loss_new"] < record["loss_new_before"], method


def test_state_dicts_and_loading_into_a_plain_model(result):
    for r in result["records"]:
        if r["method"] == "peft":
            assert r["keys_not_in_plain"] and r["loads_into_plain"] == "after merge_and_unload()"
        else:
            assert r["keys_not_in_plain"] == [] and r["loads_into_plain"] == "yes"
        assert r["plain_same_logits"], (r["tied"], r["method"])


@pytest.mark.parametrize("tied", TIED)
def test_bytes_counted_another_way(result, tied):
    """float32: torch-hollow keeps one copy of the old rows (Rows keeps no tensor); the hook a
    (vocab, 1) mask per weight; peft the new rows twice (parameter, originals) per adapted
    weight. Gradients and AdamW's two moments: three copies of what is stepped, and a float32
    step count per parameter."""
    hidden, new, vocab = CFG.hidden, len(nt.NEW_TOKENS), OLD + len(nt.NEW_TOKENS)
    weights = 1 if tied else 2
    records = _records(result)
    assert records[tied, "torch-hollow"]["extra_bytes"] == 4 * weights * OLD * hidden
    assert records[tied, "grad-hook"]["extra_bytes"] == 4 * weights * vocab
    assert records[tied, "peft"]["extra_bytes"] == 4 * weights * 2 * new * hidden
    assert records[tied, "none"]["extra_bytes"] == 0
    whole = weights * (3 * 4 * vocab * hidden + 4)
    for method in ("torch-hollow", "grad-hook", "none"):
        assert records[tied, method]["train_state_bytes"] == whole, method
    assert records[tied, "peft"]["train_state_bytes"] == weights * (3 * 4 * new * hidden + 4)


def test_unlearning_frozen_entries_stay_at_theta0(result):
    theta0, salient = result["theta0"], result["salient"]
    hollow = result["unlearned"]["torch-hollow"]
    hook = result["unlearned"]["grad-hook"]
    assert len(salient) == 7 * CFG.layers  # q, k, v, o, gate, up, down
    for name, free in salient.items():
        assert int(free.sum()) == max(1, int(CFG.salient * free.numel())), name
        w0 = theta0.get_submodule(name).weight.detach()
        held = ~free
        w = hollow.get_submodule(name).weight.detach()
        assert torch.equal(_bits(w)[held], _bits(w0)[held]), name
        decayed = w0[held].clone()
        for _ in range(CFG.unlearn_steps):
            decayed.mul_(1 - CFG.unlearn_lr * CFG.weight_decay)
        assert torch.equal(_bits(hook.get_submodule(name).weight)[held], _bits(decayed)), name
    records = {r["method"]: r for r in result["unlearning"]}
    assert records["torch-hollow"]["frozen_changed"] == 0
    assert records["grad-hook"]["frozen_changed"] > 0
    for r in records.values():
        assert r["free_changed"] > 0 and r["frozen_entries"] > 0.85 * r["entries"]


def test_records_have_the_documented_keys(result, tmp_path):
    out = nt.write_json(tmp_path / "out.json", result, CFG, 0)
    loaded = json.loads((tmp_path / "out.json").read_text())
    assert loaded == json.loads(json.dumps(out))
    assert set(loaded) == {"conditions", "records", "unlearning"}
    assert [(r["tied"], r["method"]) for r in loaded["records"]] == [
        (t, m) for t in (False, True) for m in nt.METHODS
    ]
    for r in loaded["records"]:
        assert tuple(r) == nt.RECORD_KEYS and len(r["losses"]) == CFG.steps
    assert [r["method"] for r in loaded["unlearning"]] == list(nt.UNLEARN_METHODS)
    for r in loaded["unlearning"]:
        assert tuple(r) == nt.UNLEARN_KEYS


def test_encode_takes_the_longest_token_first():
    ids = nt.encode(b"        return self.x", nt.NEW_TOKENS).tolist()
    four, ret, self_ = (OLD + nt.NEW_TOKENS.index(t) for t in (b"    ", b"return ", b"self."))
    assert ids == [four, four, ret, self_, ord("x")]
    assert nt.encode(b"ab").tolist() == [97, 98]
