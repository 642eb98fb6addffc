"""A pruned transformers Llama kept sparse by `keep_zeros_` on the stack its users train with.

A tiny ``LlamaForCausalLM`` is built from a config (random init, nothing downloaded) and pruned
here, 50 % unstructured by magnitude per row or 2:4 along the input dim. The positions the test
pruned are the reference: every case checks them bitwise (+0.0: every bit 0) right after each
``opt.step()`` and after the run, never through torch-hollow's own masks or audit, and a twin
run without `keep_zeros_` shows that the same training moves them.
"""

from __future__ import annotations

import functools
import gc
import weakref

import pytest
import torch
from _optim import MATRIX_OPTIMIZERS, make_matrix_optimizer
from distributed_utils import run_ranks
from torch import nn

import torch_hollow as th

transformers = pytest.importorskip("transformers")

VOCAB = 64
CONFIG = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
    "vocab_size": VOCAB,
    "max_position_embeddings": 64,
}
PRUNINGS = ["unstructured", "2:4"]
KEEP = [pytest.param(True, id="keep_zeros"), pytest.param(False, id="twin")]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The matrices are tiny: a second intra-op thread only waits, and on a loaded machine its
    # spinning made single steps take seconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _llama(seed=0):
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG))


def _linear(name, module):
    return type(module) is nn.Linear


def _prune(model, kind, chosen=_linear):
    """Prune each chosen module's weight in place; ``{parameter name: pruned positions}``.

    ``"unstructured"``: the half of each row with the smallest |w|. ``"2:4"``: the 2 smallest
    |w| of every 4 consecutive inputs.
    """
    pruned = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if not chosen(name, module):
                continue
            w = module.weight
            if kind == "unstructured":
                order = w.abs().argsort(dim=1)[:, : w.shape[1] // 2]
                mask = torch.zeros_like(w, dtype=torch.bool).scatter_(1, order, True)
                assert (mask.sum(1) == w.shape[1] // 2).all()
            else:
                groups = w.abs().reshape(w.shape[0], -1, 4)
                order = groups.argsort(dim=-1)[..., :2]
                mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order, True)
                assert (mask.sum(-1) == 2).all()
                mask = mask.reshape(w.shape)
            w.masked_fill_(mask, 0.0)
            pruned[f"{name}.weight"] = mask
    assert pruned, "nothing pruned: the test would prove nothing"
    return pruned


def _full(t):
    """The global values of ``t``: a collective for a DTensor (every rank calls it in turn)."""
    t = t.detach()
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _not_zero(tensors, pruned):
    """How many pruned positions of ``tensors`` (name -> tensor) do not have every bit 0."""
    count = 0
    for name, mask in pruned.items():
        w = _full(tensors[name])
        bits = w.view(torch.int16 if w.element_size() == 2 else torch.int32)
        count += int((bits[mask] != 0).sum())
    return count


def _snapshot(model):
    return {name: _full(p).clone() for name, p in model.named_parameters()}


def _batches(steps, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (4, 16), generator=g) for _ in range(steps)]


def _train(model, opts, pruned, *, steps=3, run=None, seed=1):
    """Train; after each ``opt.step()``, how many pruned positions are not +0.0."""
    counts = []
    for ids in _batches(steps, seed):
        (model if run is None else run)(input_ids=ids, labels=ids).loss.backward()
        for opt in opts:
            opt.step()
            counts.append(_not_zero(dict(model.named_parameters()), pruned))
        for opt in opts:
            opt.zero_grad()
    return counts


def _check(model, pruned, start, counts, keep):
    """Kept: +0.0 after every step and at the end, and the weights did train. Twin: moved."""
    now = dict(model.named_parameters())
    if keep:
        assert counts == [0] * len(counts), f"pruned entries not +0.0 after the steps: {counts}"
        assert _not_zero(now, pruned) == 0
        for name in pruned:  # the free entries trained
            assert not torch.equal(_full(now[name]), start[name]), f"{name} did not train"
    else:
        assert counts[0] > 0, f"the twin's first step left every pruned entry 0.0: {counts}"
        assert _not_zero(now, pruned) > 0


def _adamw(params):
    return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)


CASTS = [
    pytest.param(None, id="float32"),
    pytest.param("before", id="bf16-before-keep_zeros_"),
    pytest.param("after", id="bf16-after-keep_zeros_"),
]


@pytest.mark.parametrize("keep", KEEP)
@pytest.mark.parametrize("cast", CASTS)
@pytest.mark.parametrize("kind", PRUNINGS)
def test_plain_loop_adamw(kind, cast, keep):
    model = _llama()
    pruned = _prune(model, kind)
    if cast == "before":
        model.to(torch.bfloat16)
    if keep:
        assert th.keep_zeros_(model) is model
    if cast == "after":
        model.to(torch.bfloat16)
    assert model.lm_head.weight.dtype == (torch.float32 if cast is None else torch.bfloat16)
    start = _snapshot(model)
    counts = _train(model, [_adamw(model.parameters())], pruned, steps=4)
    _check(model, pruned, start, counts, keep)


@pytest.mark.parametrize("keep", KEEP)
@pytest.mark.parametrize("kind", PRUNINGS)
def test_trainer_cpu_bf16(kind, keep, tmp_path):
    model = _llama()
    pruned = _prune(model, kind)
    if keep:
        th.keep_zeros_(model)
    start = _snapshot(model)
    counts = []

    class AfterStep(transformers.TrainerCallback):
        def on_optimizer_step(self, args, state, control, **kwargs):
            counts.append(_not_zero(dict(model.named_parameters()), pruned))

    data = [{"input_ids": ids[0], "labels": ids[0]} for ids in _batches(16, seed=2)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=True,
        report_to=[],
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        weight_decay=0.1,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=data, callbacks=[AfterStep()]
    )
    assert trainer.accelerator.mixed_precision == "bf16"
    trainer.train()
    assert trainer.model is model and len(counts) == 4
    _check(model, pruned, start, counts, keep)


@pytest.mark.parametrize("kind", PRUNINGS)
def test_save_pretrained_from_pretrained(kind, tmp_path):
    from safetensors.torch import load_file

    model = _llama()
    pruned = _prune(model, kind)
    th.keep_zeros_(model)
    assert _train(model, [_adamw(model.parameters())], pruned, steps=2) == [0, 0]
    saved = _snapshot(model)
    model.save_pretrained(tmp_path)
    assert _not_zero(load_file(tmp_path / "model.safetensors"), pruned) == 0

    loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path)
    assert not any(th.is_hollow(m) for m in loaded.modules())  # a fresh, plain model
    params = dict(loaded.named_parameters())
    for name in pruned:  # the same bits, so the same zeros
        assert params[name].dtype == saved[name].dtype
        assert torch.equal(params[name].view(torch.int32), saved[name].view(torch.int32))
    th.keep_zeros_(loaded)
    start = _snapshot(loaded)
    counts = _train(loaded, [_adamw(loaded.parameters())], pruned, steps=3, seed=3)
    _check(loaded, pruned, start, counts, keep=True)


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("keep", KEEP)
def test_torch_compile(keep, fresh_dynamo):
    model = _llama()
    pruned = _prune(model, "2:4")
    if keep:
        th.keep_zeros_(model)
    start = _snapshot(model)
    compiled = torch.compile(model, backend="aot_eager")
    counts = _train(model, [_adamw(model.parameters())], pruned, run=compiled)
    _check(model, pruned, start, counts, keep)


@pytest.mark.parametrize("keep", KEEP)
@pytest.mark.parametrize("opt_name", MATRIX_OPTIMIZERS)
@pytest.mark.parametrize("kind", PRUNINGS)
def test_muon_on_the_matrices(kind, opt_name, keep):
    model = _llama()
    pruned = _prune(model, kind)
    if keep:
        th.keep_zeros_(model)
    start = _snapshot(model)
    matrices = [p for p in model.parameters() if p.dim() == 2]
    rest = [p for p in model.parameters() if p.dim() != 2]
    assert matrices and rest
    opts = [make_matrix_optimizer(opt_name, matrices, lr=0.02), _adamw(rest)]
    counts = _train(model, opts, pruned)
    _check(model, pruned, start, counts, keep)  # counts[0]: after the matrix optimizer's step


def _fsdp_case(rank, world):
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    for kind in PRUNINGS:
        for keep in (True, False):
            model = _llama()
            pruned = _prune(model, kind)
            if keep:
                th.keep_zeros_(model)  # before sharding; same seed, so the same mask per rank
            for layer in model.model.layers:
                fully_shard(layer)
            fully_shard(model)
            q = model.model.layers[0].self_attn.q_proj.weight
            assert isinstance(q, DTensor) and q.to_local().shape[0] == q.shape[0] // world
            start = _snapshot(model)
            counts = _train(model, [_adamw(model.parameters())], pruned, seed=1 + rank)
            _check(model, pruned, start, counts, keep)


def test_fsdp2_fully_shard_two_gloo_ranks():
    run_ranks(_fsdp_case, timeout=120.0)


def _kept_bytes(model):
    """Bytes of the tensors torch-hollow keeps on ``model`` besides its parameters and grads.

    Everything reachable from each module's state (rules, patterns, cached plans) and from the
    hooks on its parameters, counted once per storage; a parameter's or gradient's own storage
    (a plan's view of the weight) is not counted, nor the device mesh.
    """
    from torch.distributed.tensor import DTensor

    def local(t):
        return t._local_tensor if isinstance(t, DTensor) else t

    own = {
        local(t).untyped_storage().data_ptr()
        for p in model.parameters()
        for t in (p, p.grad)
        if t is not None
    }
    storages, seen = {}, set()

    def walk(obj):
        if id(obj) in seen or isinstance(obj, (nn.Module, weakref.ref, type, str, int, float)):
            return
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storage = local(obj).untyped_storage()
            if storage.data_ptr() not in own:
                storages[storage.data_ptr()] = storage.nbytes()
        elif type(obj).__module__.startswith("torch.distributed"):
            return  # the device mesh and its process groups
        elif isinstance(obj, dict):
            for value in obj.values():
                walk(value)
        elif isinstance(obj, (list, tuple, set)):
            for item in obj:
                walk(item)
        elif isinstance(obj, functools.partial):
            walk(obj.args)
            walk(obj.keywords)
        elif hasattr(obj, "__dict__"):
            walk(vars(obj))

    for module in model.modules():
        walk(module.__dict__.get("_hollow"))
        for p in module.parameters(recurse=False):
            walk(getattr(p, "_post_accumulate_grad_hooks", None))
    return sum(storages.values())


def _fsdp_bits_case(rank, world, opt_name):
    from torch.distributed.fsdp import fully_shard

    from torch_hollow import patterns

    patterns.LARGE = 1  # every Mask keeps its packed bits alone, as a language model's do
    for kind in PRUNINGS:
        model = _llama()
        pruned = _prune(model, kind)
        th.keep_zeros_(model)
        held = {n: m for n, m in model.named_modules() if th.is_hollow(m)}
        whole = [weakref.ref(th.rules_of(m)["weight"].pattern) for m in held.values()]
        unsharded = _kept_bytes(model)
        assert unsharded >= sum(m.weight.numel() // 8 for m in held.values())
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        shards = sum(-(-m.weight.to_local().numel() // 8) for m in held.values())
        matrices = [p for p in model.parameters() if p.dim() == 2]
        rest = [p for p in model.parameters() if p.dim() != 2]
        opts = [make_matrix_optimizer(opt_name, matrices, lr=0.02), _adamw(rest)]
        if opt_name == "AdamW":
            opts = [_adamw(model.parameters())]
        start = _snapshot(model)
        for ids in _batches(3, seed=1 + rank):
            model(input_ids=ids, labels=ids).loss.backward()
            grads = {n: p.grad for n, p in model.named_parameters() if n in pruned}
            assert _not_zero(grads, pruned) == 0, "a held entry of a sharded gradient"
            for opt in opts:
                opt.step()
                assert _not_zero(dict(model.named_parameters()), pruned) == 0
            for opt in opts:
                opt.zero_grad()
            kept = _kept_bytes(model)  # every plan made: after forward, backward and step
            assert kept <= shards + 256, (kind, opt_name, kept, shards, unsharded)
        _check(model, pruned, start, [0], keep=True)
        gc.collect()
        assert not any(ref() is not None for ref in whole), "the whole Mask is still alive"


@pytest.mark.parametrize("opt_name", ["AdamW", *MATRIX_OPTIMIZERS])
def test_fsdp2_each_rank_keeps_its_shards_bits(opt_name):
    # Each rank's rules and caches hold its shard's packed bits (a byte per 8 entries of its
    # shard), not the whole weight's; the held entries stay +0.0 in the stored shards after
    # every step, and 0.0 in the sharded gradients after every backward.
    run_ranks(_fsdp_bits_case, opt_name, timeout=120.0)


HELD_BY = [
    pytest.param("model.layers.1.mlp.down_proj", id="HollowLinear"),
    pytest.param("lm_head", id="hollow_-offset-1"),
]


def _every_linear(name, module):
    return isinstance(module, nn.Linear)  # HollowLinear included


@pytest.mark.parametrize("where", [None, _every_linear], ids=["default", "where"])
@pytest.mark.parametrize("path", HELD_BY)
def test_refuses_a_weight_held_by_another_rule(path, where):
    model = _llama()
    _prune(model, "2:4")
    if path == "lm_head":
        th.hollow_(model.lm_head, offset=1)
    else:
        old = model.get_submodule(path)
        new = th.HollowLinear(old.in_features, old.out_features, bias=False)
        with torch.no_grad():
            new.weight.copy_(old.weight)
        model.model.layers[1].mlp.down_proj = new
    types = {name: type(m) for name, m in model.named_modules()}
    rules = {name: th.rules_of(m) for name, m in model.named_modules()}
    before = _snapshot(model)

    with pytest.raises(th.HollowError, match=path.replace(".", r"\.")):
        th.keep_zeros_(model, where=where)  # the default chooses HollowLinear too

    assert {name: type(m) for name, m in model.named_modules()} == types
    assert {name: th.rules_of(m) for name, m in model.named_modules()} == rules
    for name, p in model.named_parameters():
        assert torch.equal(p.detach().view(torch.int32), before[name].view(torch.int32)), name


def test_a_weight_with_no_zero_is_left_alone_and_named():
    model = _llama()
    pruned = _prune(model, "unstructured", chosen=lambda n, m: _linear(n, m) and n != "lm_head")
    with pytest.warns(th.HollowWarning, match=r"lm_head\.weight") as seen:
        th.keep_zeros_(model)
    assert len(seen) == 1 and "proj" not in str(seen[0].message)
    assert type(model.lm_head) is nn.Linear and th.rules_of(model.lm_head) == {}
    for name in pruned:
        assert th.is_hollow(model.get_submodule(name.rpartition(".")[0])), name
    start = _snapshot(model)
    counts = _train(model, [_adamw(model.parameters())], pruned)
    _check(model, pruned, start, counts, keep=True)
    assert (model.lm_head.weight.detach() != start["lm_head.weight"]).all()  # free to train


def test_where_chooses_modules_by_qualified_name():
    model = _llama()
    pruned = _prune(model, "2:4")
    seen = []

    def layer0(name, module):
        seen.append(name)
        return name.startswith("model.layers.0.") and isinstance(module, nn.Linear)

    th.keep_zeros_(model, where=layer0)
    assert seen == [name for name, _ in model.named_modules()]
    chosen = {n for n in pruned if n.startswith("model.layers.0.")}
    assert len(chosen) == 7
    for name, module in model.named_modules():
        assert th.is_hollow(module) == (f"{name}.weight" in chosen), name
    kept = {n: m for n, m in pruned.items() if n in chosen}
    others = {n: m for n, m in pruned.items() if n not in chosen}
    start = _snapshot(model)
    counts = _train(model, [_adamw(model.parameters())], kept)
    _check(model, kept, start, counts, keep=True)
    _check(model, others, start, [_not_zero(dict(model.named_parameters()), others)], keep=False)


def test_negative_zeros_from_pruning_by_multiplication_are_held_as_plus_zero():
    model = _llama()
    pruned = _prune(model, "unstructured")
    params = dict(model.named_parameters())
    with torch.no_grad():  # ``w * mask`` gives -0.0 where w < 0; here at every pruned position
        for name, mask in pruned.items():
            params[name].masked_fill_(mask, -0.0)
    assert _not_zero(params, pruned) == sum(int(m.sum()) for m in pruned.values())
    th.keep_zeros_(model)
    assert _not_zero(dict(model.named_parameters()), pruned) == 0  # +0.0 at once
    start = _snapshot(model)
    counts = _train(model, [_adamw(model.parameters())], pruned)
    _check(model, pruned, start, counts, keep=True)
