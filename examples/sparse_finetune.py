"""Fine-tune a Wanda-pruned Llama-style model three ways, and see which keeps it sparse.

    pip install transformers                  # the model is built from a config: no download
    python examples/sparse_finetune.py [--steps N] [--seed S] [--json out.json] [--big]
                                       [--tiny] [--clip 1.0] [--threads 2]

1. **Pretrain** a small ``LlamaForCausalLM(LlamaConfig(...))`` (hidden 128, 4 layers,
   intermediate 352, vocabulary 256: one token per byte) on the CPython standard library's own
   top-level ``.py`` files, which ship with every Python: sorted by name, every 10th file held
   out for perplexity, the rest cut into random windows of a seeded generator.
2. **Prune** every ``nn.Linear`` of the decoder layers (not the embeddings, not ``lm_head``) with
   Wanda (Sun et al. 2024): score = |W| * ||X||_2 of each input column over calibration batches
   (forward hooks), the lowest scores of each output row zeroed, layer after layer as the
   reference code does (each layer's calibration inputs come through the layers pruned before
   it). Both 50 % unstructured (half of each row) and 2:4 (the 2 lowest of every 4 consecutive
   inputs of a row). Wanda is written here (``wanda_`` and ``prune_rows_``, about 30 lines):
   the maintained package that has it, llm-compressor, runs it inside its ``oneshot`` pipeline
   over a ``datasets`` data set, a heavy dependency for a few lines of arithmetic.
3. **Fine-tune three ways** from the same pruned checkpoint, same batches, same steps, AdamW
   with weight decay (and a fourth, ``none``, plain AdamW, to show what leaks):

   - ``torch-hollow``: ``torch_hollow.keep_zeros_(model, where=...)``, one line;
   - ``mask-mul``: the pruning authors' recipe, a stored ``bool`` mask per weight and
     ``p.mul_(mask)`` after every ``opt.step()``;
   - ``prune``: ``torch.nn.utils.prune.custom_from_mask`` on each pruned weight.

   The models step in turn, one step each (the order rotating), so the step times meet the
   same machine load. No gradient clipping by default: ``--clip 1.0`` (Trainer's default) sets
   mask-mul apart, since its gradient norm also counts the pruned entries' gradients.
4. **Report** a markdown table on stdout and, with ``--json PATH``, ``{"conditions": {...},
   "records": [...], "big": [...]}``. One record per (sparsity, method) with the keys of
   ``RECORD_KEYS``: held-out perplexity of the dense, the pruned and the fine-tuned model, and
   of the dense model fine-tuned the same way (``ppl_dense_finetuned``: how much is just more
   training); the largest |value| stored on a pruned entry (``max_pruned_stored``: the
   parameter the optimizer writes, prune's ``weight_orig``; ``max_pruned_computed``: the weight
   the forward reads, prune's computed ``weight``), how many pruned entries are non-zero and
   how many are -0.0; the bytes of tensors each method keeps beyond the dense model (prune's
   ``weight_mask`` and computed ``weight``, mask-mul's bool masks, torch-hollow's
   ``rules_of(m)["weight"].pattern.tensors()``) in all and per pruned-weight entry; the saved
   state dict's bytes, key count and keys the dense model does not have; what
   ``torch_hollow.audit`` reads from the saved state dict; the median and the fastest step
   time; the loss of every step. ``big`` has one record per method at the shapes of one
   Llama-7B decoder layer (hidden 4096, intermediate 11008, bf16, random init, 50 %
   unstructured by magnitude per row, a batch of 1 x 16 tokens): extra bytes, per entry, the
   median and fastest step time, and the pruned entries left non-zero (``BIG_KEYS``).

Time on the 2-core machine this was written on (2 threads, shared with other jobs): a training
step of the small model takes 55-70 ms, so the default run (pretraining 300 steps, 1 + 2 x 4
fine-tunes of 50 steps) takes about 1 minute at a load average of 2, and up to 5 minutes when
other jobs take the cores; ``--big`` adds about 1 minute and peaks at 9 GB resident (the four
0.4 GB bf16 layers with their gradients and AdamW states alive together for the interleaved
steps), so it is not part of the default run; ``--tiny`` takes a few seconds.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import platform
import statistics
import sysconfig
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import prune

import torch_hollow as th

METHODS = ("torch-hollow", "mask-mul", "prune", "none")
SPARSITIES = ("50%", "2:4")
RECORD_KEYS = (
    "sparsity",
    "method",
    "ppl_dense",
    "ppl_pruned",
    "ppl_finetuned",
    "ppl_dense_finetuned",
    "max_pruned_stored",
    "max_pruned_computed",
    "pruned_nonzero",
    "pruned_negative_zero",
    "pruned_entries",
    "extra_bytes",
    "extra_bytes_per_entry",
    "state_dict_bytes",
    "state_dict_keys",
    "keys_not_in_dense",
    "audit_held",
    "audit_violated",
    "step_ms",
    "step_ms_min",
    "losses",
)
BIG_KEYS = (
    "method",
    "shape",
    "dtype",
    "extra_bytes",
    "extra_bytes_per_entry",
    "step_ms",
    "step_ms_min",
    "pruned_nonzero",
    "entries",
    "losses",
)


@dataclass(frozen=True)
class Config:
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    intermediate: int = 352  # 2.75 x hidden, a multiple of 4 for 2:4
    seq: int = 128
    batch: int = 8
    pretrain_steps: int = 300
    pretrain_lr: float = 3e-3
    steps: int = 50  # fine-tuning steps
    lr: float = 1e-3
    weight_decay: float = 0.1
    clip: float | None = None  # fine-tuning's clip_grad_norm_ (Trainer's default is 1.0)
    calib_batches: int = 8
    eval_windows: int = 96
    files: int | None = None  # None: every top-level .py file of the standard library


TINY = Config(
    hidden=32,
    layers=2,
    heads=2,
    intermediate=88,
    seq=32,
    batch=4,
    pretrain_steps=20,
    steps=6,
    calib_batches=2,
    eval_windows=8,
    files=30,
)


# ---------------------------------------------------------------------------- data


def stdlib_text(files: int | None = None) -> tuple[Tensor, Tensor]:
    """The standard library's top-level ``.py`` files as bytes (tokens 0..255): train and
    held-out streams, every 10th file (by sorted name) held out."""
    paths = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:files]
    train, held = bytearray(), bytearray()
    for i, path in enumerate(paths):
        (held if i % 10 == 9 else train).extend(path.read_bytes())
    return tuple(torch.frombuffer(b, dtype=torch.uint8).long() for b in (train, held))


def windows(stream: Tensor, count: int, seq: int, gen: torch.Generator | None = None) -> Tensor:
    """``count`` windows of ``seq + 1`` tokens: random starts from ``gen``, else consecutive."""
    if gen is None:
        return stream[: count * (seq + 1)].view(count, seq + 1)
    starts = torch.randint(0, len(stream) - seq - 1, (count,), generator=gen)
    return torch.stack([stream[s : s + seq + 1] for s in starts.tolist()])


# ---------------------------------------------------------------------------- model


def build_model(cfg: Config, seed: int = 0) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=cfg.seq,
    )
    return LlamaForCausalLM(config)


def loss_of(model: nn.Module, batch: Tensor) -> Tensor:
    logits = model(input_ids=batch[:, :-1]).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


def perplexity(model: nn.Module, held: Tensor, batch: int = 16) -> float:
    with torch.no_grad():
        losses = [
            loss_of(model, held[i : i + batch]) * len(held[i : i + batch])
            for i in range(0, len(held), batch)
        ]
    return float(torch.stack(losses).sum().div(len(held)).exp())


def pretrain(model: nn.Module, train: Tensor, cfg: Config, seed: int) -> list[float]:
    gen = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain_lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.pretrain_lr, cfg.pretrain_steps)
    losses = []
    for _ in range(cfg.pretrain_steps):
        opt.zero_grad()
        loss = loss_of(model, windows(train, cfg.batch, cfg.seq, gen))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def decoder_linears(model: nn.Module) -> list[str]:
    """Qualified names of the ``nn.Linear`` modules inside the decoder layers (what is pruned)."""
    return [
        name
        for name, m in model.named_modules()
        if type(m) is nn.Linear and ".layers." in f".{name}"
    ]


# ---------------------------------------------------------------------------- pruning


def prune_rows_(weight: Tensor, score: Tensor, sparsity: str) -> None:
    """Zero, in each row, the lowest scores: half of the row ("50%"), or 2 of every 4
    consecutive entries ("2:4")."""
    rows, cols = weight.shape
    if sparsity == "2:4":
        low = score.reshape(rows, cols // 4, 4).topk(2, dim=-1, largest=False).indices
        pruned = torch.zeros(rows, cols // 4, 4, dtype=torch.bool).scatter_(-1, low, True)
    elif sparsity == "50%":
        low = score.argsort(dim=1, stable=True)[:, : cols // 2]
        pruned = torch.zeros(rows, cols, dtype=torch.bool).scatter_(1, low, True)
    else:
        raise ValueError(f"sparsity {sparsity!r}: use '50%' or '2:4'")
    with torch.no_grad():
        weight.masked_fill_(pruned.view(rows, cols), 0.0)


def wanda_(model: nn.Module, calib: Tensor, sparsity: str) -> nn.Module:
    """Wanda on every decoder-layer ``nn.Linear``, layer after layer, in place."""
    layers = model.model.layers
    for layer in layers:
        linears = [m for m in layer.modules() if type(m) is nn.Linear]
        sq = {m: torch.zeros(m.in_features, dtype=torch.float64) for m in linears}

        def hook(m, args, out, sq=sq):
            sq[m].add_(args[0].detach().reshape(-1, m.in_features).double().square().sum(0))

        handles = [m.register_forward_hook(hook) for m in linears]
        with torch.no_grad():
            model(input_ids=calib[:, :-1])
        for h in handles:
            h.remove()
        for m in linears:
            score = m.weight.detach().abs().double() * sq[m].sqrt()
            prune_rows_(m.weight, score, sparsity)
    return model


# ---------------------------------------------------------------------------- holding


def hold(method: str, model: nn.Module, names: list[str]) -> tuple[Callable | None, list[Tensor]]:
    """Make ``model`` keep the zeros of the weights ``names`` by ``method``.

    Returns what to call after every ``opt.step()`` (or None) and the tensors the method keeps
    outside the model (mask-mul's masks).
    """
    chosen = set(names)
    modules = [model.get_submodule(n) for n in names]
    if method == "torch-hollow":
        th.keep_zeros_(model, where=lambda name, m: name in chosen)
        return None, []
    if method == "mask-mul":
        masks = [(m.weight, m.weight.detach() != 0) for m in modules]

        def after_step() -> None:
            with torch.no_grad():
                for p, mask in masks:
                    p.mul_(mask)

        return after_step, [mask for _, mask in masks]
    if method == "prune":
        for m in modules:
            prune.custom_from_mask(m, "weight", m.weight.detach() != 0)
        return None, []
    if method == "none":
        return None, []
    raise ValueError(f"method {method!r}: use one of {METHODS}")


def stored_weight(module: nn.Module) -> Tensor:
    """The tensor the optimizer writes: prune's ``weight_orig``, else ``weight``."""
    return module._parameters.get("weight_orig", module._parameters.get("weight")).detach()


def tensor_bytes(model: nn.Module, outside: list[Tensor] = ()) -> int:
    """Bytes of every storage the model keeps (parameters, buffers, tensor attributes such as
    prune's computed weight, torch-hollow's pattern tensors) and of ``outside``, each once."""
    seen: dict[int, int] = {}
    tensors = list(outside)
    for module in model.modules():
        tensors += [*module._parameters.values(), *module._buffers.values()]
        tensors += [v for v in vars(module).values() if isinstance(v, Tensor)]
        for rule in th.rules_of(module).values():
            tensors += rule.pattern.tensors()
    for t in tensors:
        if t is not None:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


# ---------------------------------------------------------------------------- fine-tuning


@dataclass
class Run:
    method: str
    model: nn.Module
    opt: torch.optim.Optimizer
    after_step: Callable | None
    outside: list[Tensor]
    losses: list[float]
    times: list[float]


def start(method: str, pruned: nn.Module, names: list[str], cfg: Config) -> Run:
    model = copy.deepcopy(pruned)
    after_step, outside = hold(method, model, names)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return Run(method, model, opt, after_step, outside, [], [])


def step(run: Run, batch: Tensor, clip: float | None = None) -> None:
    begin = time.perf_counter()
    run.opt.zero_grad()
    loss = loss_of(run.model, batch)
    loss.backward()
    if clip is not None:  # mask-mul's norm also counts the pruned entries' gradients
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), clip)
    run.opt.step()
    if run.after_step is not None:
        run.after_step()
    run.times.append(time.perf_counter() - begin)
    run.losses.append(loss.item())


def finetune(
    pruned: nn.Module, names: list[str], train: Tensor, cfg: Config, seed: int, methods=METHODS
) -> dict[str, Run]:
    """Each method from a copy of ``pruned``, on the same batches, one step each in turn."""
    runs = {m: start(m, pruned, names, cfg) for m in methods}
    gen = torch.Generator().manual_seed(seed + 2)
    for s in range(cfg.steps):
        batch = windows(train, cfg.batch, cfg.seq, gen)
        order = list(runs.values())
        for run in order[s % len(order) :] + order[: s % len(order)]:
            torch.manual_seed(seed + 3 + s)  # no dropout here; the same seed all the same
            step(run, batch, cfg.clip)
    return runs


def _max_abs(t: Tensor) -> float:
    return float(t.abs().max()) if t.numel() else 0.0


def measure(run: Run, pruned_at: dict[str, Tensor], dense_keys: set[str], dense_bytes: int):
    """The record fields of one fine-tuned run, read from its model's own tensors at the
    positions ``pruned_at`` (computed from the pruned checkpoint, not from any method)."""
    stored, computed = [], []
    for name, where in pruned_at.items():
        module = run.model.get_submodule(name)
        stored.append(stored_weight(module)[where])
        computed.append(module.weight.detach()[where])
    stored_all, computed_all = torch.cat(stored), torch.cat(computed)
    buffer = io.BytesIO()
    state = run.model.state_dict()
    torch.save(state, buffer)
    buffer.seek(0)
    rows = th.audit(torch.load(buffer, weights_only=True))
    entries = sum(run.model.get_submodule(n).weight.numel() for n in pruned_at)
    extra = tensor_bytes(run.model, run.outside) - dense_bytes
    return {
        "max_pruned_stored": _max_abs(stored_all),
        "max_pruned_computed": _max_abs(computed_all),
        "pruned_nonzero": int((stored_all != 0).sum()),
        "pruned_negative_zero": int(((stored_all == 0) & stored_all.signbit()).sum()),
        "pruned_entries": len(stored_all),
        "extra_bytes": extra,
        "extra_bytes_per_entry": extra / entries,
        "state_dict_bytes": buffer.getbuffer().nbytes,
        "state_dict_keys": len(state),
        "keys_not_in_dense": sorted(set(state) - dense_keys),
        "audit_held": sum(r.pattern is not None for r in rows),
        "audit_violated": sum(r.violated for r in rows),
        "step_ms": 1000 * statistics.median(run.times),
        "step_ms_min": 1000 * min(run.times),
        "losses": run.losses,
    }


def experiment(cfg: Config, seed: int = 0, log=print, methods=METHODS) -> dict:
    """Pretrain, prune both ways, fine-tune each way; the records and the models."""
    t0 = time.perf_counter()
    train, held_text = stdlib_text(cfg.files)
    held = windows(held_text, cfg.eval_windows, cfg.seq)
    calib = windows(
        train, cfg.calib_batches * cfg.batch, cfg.seq, torch.Generator().manual_seed(seed)
    )
    model = build_model(cfg, seed)
    pretrain_losses = pretrain(model, train, cfg, seed)
    names = decoder_linears(model)
    ppl_dense = perplexity(model, held)
    log(
        f"pretrained {cfg.pretrain_steps} steps on {len(train)} bytes in "
        f"{time.perf_counter() - t0:.0f} s: held-out perplexity {ppl_dense:.3f} "
        f"({len(held_text)} held-out bytes)"
    )
    dense_keys = set(model.state_dict())
    dense_bytes = tensor_bytes(model)
    # the same fine-tuning from the dense model: how much of the recovery is more training
    ppl_dense_finetuned = perplexity(
        finetune(model, [], train, cfg, seed, ("none",))["none"].model, held
    )
    records, models, checkpoints = [], {}, {}
    for sparsity in SPARSITIES:
        t1 = time.perf_counter()
        pruned = wanda_(copy.deepcopy(model), calib, sparsity)
        pruned_at = {n: pruned.get_submodule(n).weight.detach() == 0 for n in names}
        ppl_pruned = perplexity(pruned, held)
        runs = finetune(pruned, names, train, cfg, seed, methods)
        for run in runs.values():
            record = {
                "sparsity": sparsity,
                "method": run.method,
                "ppl_dense": ppl_dense,
                "ppl_pruned": ppl_pruned,
                "ppl_finetuned": perplexity(run.model, held),
                "ppl_dense_finetuned": ppl_dense_finetuned,
                **measure(run, pruned_at, dense_keys, dense_bytes),
            }
            records.append(record)
            models[sparsity, run.method] = run.model
        checkpoints[sparsity] = pruned
        log(
            f"{sparsity}: pruned perplexity {ppl_pruned:.3f}; {cfg.steps} fine-tuning steps x "
            f"{len(runs)} in {time.perf_counter() - t1:.0f} s"
        )
    return {
        "records": records,
        "models": models,
        "pruned": checkpoints,
        "names": names,
        "pretrain_losses": pretrain_losses,
        "seconds": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------------------- 7B shapes


def big_rows(
    steps: int = 6,
    tokens: int = 16,
    seed: int = 0,
    hidden: int = 4096,
    intermediate: int = 11008,
    heads: int = 32,
    log=print,
) -> list[dict]:
    """One Llama-7B decoder layer (4096 / 11008, bf16, random init), 50 % unstructured by
    magnitude per row, trained ``steps`` steps each way, the methods in turn: extra bytes and
    the median step time (the first step, which allocates AdamW's state, left out)."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=tokens,
        attn_implementation="sdpa",  # a standalone layer: no model to choose it
    )
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # initialise in bf16: no float32 copy (0.8 GB)
    try:
        base = LlamaDecoderLayer(config, layer_idx=0)
        rope = LlamaRotaryEmbedding(config)
    finally:
        torch.set_default_dtype(default)
    names = [n for n, m in base.named_modules() if type(m) is nn.Linear]
    for n in names:
        w = base.get_submodule(n).weight
        prune_rows_(w, w.detach().abs(), "50%")
    pruned_at = {n: base.get_submodule(n).weight.detach() == 0 for n in names}
    entries = sum(w.numel() for w in pruned_at.values())
    dense_bytes = tensor_bytes(base)
    x = torch.randn(1, tokens, hidden, generator=torch.Generator().manual_seed(seed))
    x = x.to(torch.bfloat16)
    cos_sin = rope(x, torch.arange(tokens).unsqueeze(0))
    runs = {}
    for method in METHODS:
        layer = copy.deepcopy(base)
        after_step, outside = hold(method, layer, names)
        # lr 1e-3: AdamW's first steps (~lr) must exceed bf16's spacing at |w| ~ 0.01 (~6e-5),
        # or the stored weights never change and the steps time a no-op write
        opt = torch.optim.AdamW(layer.parameters(), lr=1e-3, weight_decay=0.1)
        runs[method] = Run(method, layer, opt, after_step, outside, [], [])
    del base
    for s in range(steps):
        order = list(runs.values())
        for run in order[s % len(order) :] + order[: s % len(order)]:
            begin = time.perf_counter()
            run.opt.zero_grad()
            loss = run.model(x, position_embeddings=cos_sin).float().square().mean()
            loss.backward()
            run.opt.step()
            if run.after_step is not None:
                run.after_step()
            run.times.append(time.perf_counter() - begin)
            run.losses.append(loss.item())
    rows = []
    for run in runs.values():
        extra = tensor_bytes(run.model, run.outside) - dense_bytes
        leaked = sum(
            int((stored_weight(run.model.get_submodule(n))[where] != 0).sum())
            for n, where in pruned_at.items()
        )
        rows.append(
            {
                "method": run.method,
                "shape": f"LlamaDecoderLayer(hidden={hidden}, intermediate={intermediate})",
                "dtype": "bfloat16",
                "extra_bytes": extra,
                "extra_bytes_per_entry": extra / entries,
                "step_ms": 1000 * statistics.median(run.times[1:] or run.times),
                "step_ms_min": 1000 * min(run.times[1:] or run.times),
                "pruned_nonzero": leaked,
                "entries": entries,
                "losses": run.losses,
            }
        )
        log(
            f"7B layer, {run.method}: extra {extra / 2**20:.1f} MiB "
            f"({extra / entries:.3f} B/entry), step {rows[-1]['step_ms']:.0f} ms"
        )
    return rows


# ---------------------------------------------------------------------------- report


def format_table(records: list[dict]) -> str:
    head = (
        "| sparsity | method | ppl dense | ppl pruned | ppl fine-tuned | max stored \\|pruned\\| "
        "(computed) | pruned non-zero / -0.0 | extra bytes (per entry) | state dict (keys, "
        "renamed) | step ms median (min) |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = []
    for r in records:
        computed = (
            f" ({r['max_pruned_computed']:.3g})"
            if r["max_pruned_computed"] != r["max_pruned_stored"] or r["method"] == "prune"
            else ""
        )
        rows.append(
            f"| {r['sparsity']} | {r['method']} | {r['ppl_dense']:.3f} | {r['ppl_pruned']:.3f} | "
            f"{r['ppl_finetuned']:.3f} | {r['max_pruned_stored']:.3g}{computed} | "
            f"{r['pruned_nonzero']} / {r['pruned_negative_zero']} | "
            f"{r['extra_bytes']:,} ({r['extra_bytes_per_entry']:.3f}) | "
            f"{r['state_dict_bytes']:,} B ({r['state_dict_keys']}, "
            f"{len(r['keys_not_in_dense'])}) | {r['step_ms']:.1f} ({r['step_ms_min']:.1f}) |"
        )
    dense = records[0]["ppl_dense_finetuned"]
    tail = f"\nthe dense model fine-tuned the same steps, the same way: perplexity {dense:.3f}"
    return "\n".join([head, *rows]) + tail


def format_big(rows: list[dict]) -> str:
    head = (
        "| 7B decoder layer, bf16, 50 % | extra memory | bytes per weight entry "
        "| step ms median (min) | pruned non-zero |\n|---|---|---|---|---|"
    )
    lines = [
        f"| {r['method']} | {r['extra_bytes'] / 2**20:.1f} MiB | "
        f"{r['extra_bytes_per_entry']:.3f} | {r['step_ms']:.0f} ({r['step_ms_min']:.0f}) | "
        f"{r['pruned_nonzero']} |"
        for r in rows
    ]
    return "\n".join([head, *lines])


def trajectories(records: list[dict]) -> str:
    """How each method's loss trajectory compares with torch-hollow's, per sparsity."""
    lines = []
    for sparsity in SPARSITIES:
        runs = {r["method"]: r["losses"] for r in records if r["sparsity"] == sparsity}
        ref = runs.get("torch-hollow")
        for method, losses in runs.items():
            if ref is None or method == "torch-hollow":
                continue
            same = losses == ref
            diff = max(abs(a - b) for a, b in zip(losses, ref, strict=True))
            lines.append(
                f"{sparsity} {method} vs torch-hollow: "
                + ("bitwise equal losses" if same else f"max |loss difference| {diff:.3g}")
            )
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def conditions(cfg: Config, seed: int, seconds: float) -> dict:
    import transformers

    return {
        "machine": f"{platform.machine()} {_cpu_name()}".strip(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_hollow": th.__version__,
        "seed": seed,
        "config": asdict(cfg),
        "seconds": seconds,
    }


def write_json(path: str | Path, result: dict, big: list[dict], cfg: Config, seed: int) -> dict:
    """``{"conditions", "records", "big"}`` as documented above, written to ``path``."""
    out = {
        "conditions": {
            **conditions(cfg, seed, result["seconds"]),
            "pretrain_losses": result["pretrain_losses"],
        },
        "records": result["records"],
        "big": big,
    }
    Path(path).write_text(json.dumps(out, indent=1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, help="fine-tuning steps (default 50; tiny 6)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the records to this file")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long configuration")
    parser.add_argument("--big", action="store_true", help="add the 7B-layer rows (~2 min)")
    parser.add_argument("--clip", type=float, help="clip_grad_norm_ while fine-tuning")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = TINY if args.tiny else Config()
    if args.steps is not None or args.clip is not None:
        steps = cfg.steps if args.steps is None else args.steps
        cfg = Config(**{**asdict(cfg), "steps": steps, "clip": args.clip})
    result = experiment(cfg, args.seed)
    t0 = time.perf_counter()
    big = big_rows(seed=args.seed) if args.big else []
    result["seconds"] += time.perf_counter() - t0
    print()
    print(format_table(result["records"]))
    print()
    print(trajectories(result["records"]))
    if big:
        print()
        print(format_big(big))
    print(f"\n{result['seconds']:.0f} s in all")
    if args.json:
        write_json(args.json, result, big, cfg, args.seed)


if __name__ == "__main__":
    main()
