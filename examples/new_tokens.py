"""Add tokens to a language model and train only their rows, four ways; and an unlearning case.

    pip install transformers peft             # the model is built from a config: no download
    python examples/new_tokens.py [--steps N] [--seed S] [--json out.json] [--quick]
                                  [--threads 2]

1. **Pretrain** a small ``LlamaForCausalLM(LlamaConfig(...))`` (hidden 128, 4 layers,
   intermediate 352, one token per byte: vocabulary 256) on the CPython standard library's own
   top-level ``.py`` files, which ship with every Python: sorted by name, every 10th file held
   out. Twice: with ``tie_word_embeddings`` off (``lm_head`` its own weight) and on.
2. **Add 8 tokens** for frequent byte strings of Python source (``NEW_TOKENS``: four spaces,
   ``self.``, ``return``, ...) with ``model.resize_token_embeddings(264)`` (transformers'
   mean-resizing init), and re-encode the text with them (longest match first).
3. **Train only the new tokens' rows** of ``embed_tokens`` and ``lm_head`` (one weight when
   tied), every other parameter ``requires_grad_(False)``, AdamW (lr 1e-2, weight decay 0.1),
   from the same resized model, same batches, one step each in turn:

   - ``torch-hollow``: ``freeze_(model.model.embed_tokens, pattern=Rows(range(256)))`` and the
     same on ``lm_head`` when it has its own weight;
   - ``grad-hook``: the recipe users write, ``weight.register_hook(lambda g: g * mask)`` with a
     ``(vocab, 1)`` mask that is 0 on the old rows; AdamW's decoupled weight decay still
     shrinks the old rows at every step;
   - ``peft``: ``peft.TrainableTokensConfig(token_indices=[256, ..., 263])`` on
     ``embed_tokens`` (and ``lm_head`` when untied; peft ties the adapter itself when the
     weights are tied): a separate parameter of the new rows, copied into the weight at
     every forward; ``merge_and_unload()`` gives a plain model back;
   - ``none``: the whole of both weights trained (the reference for step time and loss).
4. **Unlearning** (``--quick`` included): SalUn-style (Fan et al. 2024). From the untied
   pretrained model, the saliency of every decoder-layer ``nn.Linear`` weight is |gradient of
   the loss on a forget set| (every 10th training file, from the 5th); the top 10 % of each
   weight are free, the other 90 % must stay at theta_0. A few AdamW steps (weight decay 0.1)
   of gradient ascent on the forget set plus descent on the rest, two ways:
   ``freeze_(linear, pattern=Mask(salient))`` (``Mask`` takes True = free) and the hook
   ``weight.register_hook(lambda g: g * salient)``.
5. **Report** markdown tables on stdout and, with ``--json PATH``, ``{"conditions": {...},
   "records": [...], "unlearning": [...]}``: one record per (tie, method) with the keys of
   ``RECORD_KEYS`` and one per unlearning method with ``UNLEARN_KEYS``. Frozen entries are
   compared bit for bit with a snapshot of the resized model: how many changed, the largest
   |change|. Losses are cross-entropy on the held-out files: at the positions whose target is
   a new token (``loss_new``) and at all positions. Bytes are counted from tensors: what the
   method keeps beyond the plain model (torch-hollow's rule's tensors: ``Frozen.values`` and
   the pattern's; the hook's mask; peft's new-row parameter and its copy of the originals),
   and the gradients plus AdamW state of what the optimizer steps. State dicts are loaded with
   ``strict=True`` into a plain ``LlamaForCausalLM`` of the new vocabulary, whose logits are
   compared with the trained model's.

Time on the 2-core machine this was written on (2 threads): the default run took 141 s, other
jobs sharing the cores for part of it (13 minutes while they took the cores throughout); a step
of the new rows takes about 40 ms. ``--quick`` takes about 6 seconds, most of it importing
transformers and peft.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import statistics
import sysconfig
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sparse_finetune import _cpu_name, windows  # examples/sparse_finetune.py: the same
from torch import Tensor, nn

import torch_hollow as th
from torch_hollow.patterns import Mask, Rows

BYTES = 256  # the pretrained vocabulary: one token per byte
NEW_TOKENS = (b"    ", b"self.", b"return ", b"def ", b" = ", b"None", b"if ", b"for ")
METHODS = ("torch-hollow", "grad-hook", "peft", "none")
UNLEARN_METHODS = ("torch-hollow", "grad-hook")
RECORD_KEYS = (
    "tied",
    "method",
    "frozen_entries",
    "frozen_changed",
    "max_frozen_change",
    "max_new_change",
    "loss_new_before",
    "loss_new",
    "loss_all",
    "extra_bytes",
    "train_state_bytes",
    "state_dict_keys",
    "keys_not_in_plain",
    "loads_into_plain",
    "plain_same_logits",
    "step_ms",
    "step_ms_min",
    "losses",
)
UNLEARN_KEYS = (
    "method",
    "weights",
    "entries",
    "frozen_entries",
    "frozen_changed",
    "max_frozen_change",
    "free_changed",
    "forget_loss_before",
    "forget_loss",
    "retain_loss_before",
    "retain_loss",
    "extra_bytes",
    "step_ms",
    "step_ms_min",
)


@dataclass(frozen=True)
class Config:
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    intermediate: int = 352
    seq: int = 128
    batch: int = 8
    pretrain_steps: int = 300
    pretrain_lr: float = 3e-3
    steps: int = 50  # fine-tuning steps of the new rows
    lr: float = 1e-2
    weight_decay: float = 0.1
    eval_windows: int = 64
    files: int | None = None  # None: every top-level .py file of the standard library
    unlearn_steps: int = 20
    unlearn_lr: float = 1e-3
    salient: float = 0.1  # the share of each weight free to move in the unlearning case


QUICK = Config(
    hidden=32,
    layers=2,
    heads=2,
    intermediate=88,
    seq=32,
    batch=4,
    pretrain_steps=20,
    steps=6,
    eval_windows=8,
    files=30,
    unlearn_steps=4,
)


# ---------------------------------------------------------------------------- data


def stdlib_files(files: int | None = None) -> list[bytes]:
    """The standard library's top-level ``.py`` files, sorted by name."""
    paths = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:files]
    return [path.read_bytes() for path in paths]


def encode(data: bytes, new: tuple[bytes, ...] = ()) -> Tensor:
    """Token ids: ``new[k]`` becomes ``256 + k`` (the longest match first), any other byte its
    value."""
    if not new:
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    ids = {token: BYTES + k for k, token in enumerate(new)}
    found = re.compile(b"|".join(map(re.escape, sorted(new, key=len, reverse=True))))
    parts, pos = [], 0
    for match in found.finditer(data):
        parts.append(np.frombuffer(data, np.uint8, match.start() - pos, pos).astype(np.int64))
        parts.append(np.array([ids[match.group()]], np.int64))
        pos = match.end()
    parts.append(np.frombuffer(data, np.uint8, len(data) - pos, pos).astype(np.int64))
    return torch.from_numpy(np.concatenate(parts))


# ---------------------------------------------------------------------------- model


def build_model(cfg: Config, tied: bool, seed: int = 0) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=BYTES,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=cfg.seq,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(config)


def plain_like(model: nn.Module) -> nn.Module:
    """A fresh plain ``LlamaForCausalLM`` of the model's config (its vocabulary included)."""
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(copy.deepcopy(model.config))


def token_losses(model: nn.Module, batch: Tensor) -> Tensor:
    """Cross-entropy at every position, ``(batch, seq)``."""
    logits = model(input_ids=batch[:, :-1]).logits
    return F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")


def loss_of(model: nn.Module, batch: Tensor) -> Tensor:
    return token_losses(model, batch).mean()


def held_losses(model: nn.Module, held: Tensor, batch: int = 16) -> tuple[float, float]:
    """Mean held-out cross-entropy at the positions whose target is a new token, and at all."""
    with torch.no_grad():
        losses = torch.cat(
            [token_losses(model, held[i : i + batch]) for i in range(0, len(held), batch)]
        )
    new = held[:, 1:] >= BYTES
    return float(losses[new].mean()) if new.any() else float("nan"), float(losses.mean())


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


def add_tokens(model: nn.Module, count: int) -> nn.Module:
    """The model with ``count`` more tokens (transformers' mean-resizing init), in place."""
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the init's notice, once per weight
    try:
        model.resize_token_embeddings(BYTES + count)
    finally:
        logging.set_verbosity(verbosity)
    return model


def inner(model: nn.Module) -> nn.Module:
    """The ``LlamaForCausalLM`` inside a peft model (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def token_weights(model: nn.Module) -> dict[str, Tensor]:
    """``embed_tokens`` and ``lm_head`` weights as the forward reads them (one when tied):
    peft's new rows copied in, as ``merge_and_unload`` would."""
    out, seen = {}, set()
    for name in ("model.embed_tokens", "lm_head"):
        module = inner(model).get_submodule(name)
        base = getattr(module, "base_layer", module)
        if id(base.weight) in seen:
            continue
        seen.add(id(base.weight))
        if hasattr(module, "get_merged_weights"):  # peft's TrainableTokensLayer
            out[name] = module.get_merged_weights(module.active_adapters).detach()
        else:
            out[name] = base.weight.detach()
    return out


# ---------------------------------------------------------------------------- the four ways


@dataclass
class Run:
    method: str
    model: nn.Module
    opt: torch.optim.Optimizer
    outside: list[Tensor]  # tensors the method keeps outside the model (the hook's masks)
    losses: list[float]
    times: list[float]


def only_token_rows(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter ``requires_grad_(False)`` but the embedding and head weights (one when
    tied), which are returned."""
    model.requires_grad_(False)
    weights = {id(w): w for w in (model.get_input_embeddings().weight, model.lm_head.weight)}
    for w in weights.values():
        w.requires_grad_(True)
    return list(weights.values())


def start(method: str, resized: nn.Module, old: int, cfg: Config) -> Run:
    """``method`` set up on a copy of ``resized``: rows ``old:`` trainable, the rest not."""
    model = copy.deepcopy(resized)
    tied = model.config.tie_word_embeddings
    outside: list[Tensor] = []
    if method == "torch-hollow":
        params = only_token_rows(model)
        th.freeze_(model.model.embed_tokens, pattern=Rows(range(old)))
        if not tied:
            th.freeze_(model.lm_head, pattern=Rows(range(old)))
    elif method == "grad-hook":
        params = only_token_rows(model)
        for p in params:
            mask = torch.zeros(p.shape[0], 1, dtype=p.dtype)
            mask[old:] = 1
            p.register_hook(lambda g, mask=mask: g * mask)
            outside.append(mask)
    elif method == "peft":
        from peft import TrainableTokensConfig, get_peft_model

        targets = ["embed_tokens"] if tied else ["embed_tokens", "lm_head"]
        config = TrainableTokensConfig(
            token_indices=list(range(old, model.config.vocab_size)), target_modules=targets
        )
        model = get_peft_model(model, config)
        params = [p for p in model.parameters() if p.requires_grad]
    elif method == "none":
        params = only_token_rows(model)
    else:
        raise ValueError(f"method {method!r}: use one of {METHODS}")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return Run(method, model, opt, outside, [], [])


def step(run: Run, batch: Tensor, loss_fn: Callable[[nn.Module, Tensor], Tensor]) -> None:
    begin = time.perf_counter()
    run.opt.zero_grad()
    loss = loss_fn(run.model, batch)
    loss.backward()
    run.opt.step()
    run.times.append(time.perf_counter() - begin)
    run.losses.append(loss.item())


def interleave(runs: dict[str, Run], batches: list, loss_fn=loss_of, seed: int = 0) -> None:
    """One step of each run per batch, the order rotating (the step times meet the same
    machine load)."""
    for s, batch in enumerate(batches):
        order = list(runs.values())
        for run in order[s % len(order) :] + order[: s % len(order)]:
            torch.manual_seed(seed + s)  # no dropout here; the same seed all the same
            step(run, batch, loss_fn)


# ---------------------------------------------------------------------------- measuring


def bits(t: Tensor) -> Tensor:
    """The raw bits of a floating tensor, as integers (comparisons bit for bit)."""
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}
    return t.detach().contiguous().view(ints[t.element_size()])


def tensor_bytes(model: nn.Module, outside: list[Tensor] = ()) -> int:
    """Bytes of every storage the model keeps (parameters, buffers, tensor attributes, the
    tensors of torch-hollow's rules: a `Frozen` rule's values and its pattern's) and of
    ``outside``, each storage once."""
    tensors = list(outside)
    for module in model.modules():
        tensors += [*module._parameters.values(), *module._buffers.values()]
        tensors += [v for v in vars(module).values() if isinstance(v, Tensor)]
        for rule in th.rules_of(module).values():
            tensors += rule.pattern.tensors()
            tensors += [v for v in vars(rule).values() if isinstance(v, Tensor)]
    seen = {}
    for t in tensors:
        if t is not None:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def train_state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of the gradients and AdamW state of what ``opt`` steps."""
    total = 0
    for group in opt.param_groups:
        for p in group["params"]:
            total += 0 if p.grad is None else p.grad.nbytes
            total += sum(v.nbytes for v in opt.state[p].values() if isinstance(v, Tensor))
    return total


def export_to_plain(run: Run, probe: Tensor) -> tuple[nn.Module, str, bool]:
    """The trained model's state dict loaded (``strict=True``) into a plain model: the plain
    model, how it loaded, and whether its logits on ``probe`` equal the trained model's
    bitwise. peft's state dict does not load; its ``merge_and_unload()`` (of a copy) does."""
    plain = plain_like(inner(run.model))
    how = "yes"
    try:
        plain.load_state_dict(run.model.state_dict(), strict=True)
    except RuntimeError:
        if run.method != "peft":
            raise
        plain.load_state_dict(copy.deepcopy(run.model).merge_and_unload().state_dict())
        how = "after merge_and_unload()"
    with torch.no_grad():
        same = torch.equal(plain(input_ids=probe).logits, run.model(input_ids=probe).logits)
    return plain, how, same


def measure(run: Run, resized: nn.Module, old: int, held: Tensor, plain_bytes: int) -> dict:
    """The record fields of one trained run, read from its model's own tensors and compared
    with the resized model it started from (``resized``)."""
    before = token_weights(resized)
    after = token_weights(run.model)
    changed, largest, new_change = 0, 0.0, 0.0
    for name, w0 in before.items():
        w = after[name]
        changed += int((bits(w[:old]) != bits(w0[:old])).sum())
        largest = max(largest, float((w[:old].double() - w0[:old].double()).abs().max()))
        new_change = max(new_change, float((w[old:] - w0[old:]).abs().max()))
    plain, loads, same = export_to_plain(run, held[:2, :-1])
    state = run.model.state_dict()
    loss_new, loss_all = held_losses(run.model, held)
    return {
        "frozen_entries": sum(w[:old].numel() for w in before.values()),
        "frozen_changed": changed,
        "max_frozen_change": largest,
        "max_new_change": new_change,
        "loss_new": loss_new,
        "loss_all": loss_all,
        "extra_bytes": tensor_bytes(run.model, run.outside) - plain_bytes,
        "train_state_bytes": train_state_bytes(run.opt),
        "state_dict_keys": len(state),
        "keys_not_in_plain": sorted(set(state) - set(plain.state_dict())),
        "loads_into_plain": loads,
        "plain_same_logits": same,
        "step_ms": 1000 * statistics.median(run.times),
        "step_ms_min": 1000 * min(run.times),
        "losses": run.losses,
    }


# ---------------------------------------------------------------------------- the experiment


def split(cfg: Config) -> dict[str, bytes]:
    """Train (every file but every 10th), held out (every 10th), and the unlearning case's
    forget set (every 10th training file, from the 5th) and the rest of train (retain)."""
    files = stdlib_files(cfg.files)
    pick = {
        "train": [f for i, f in enumerate(files) if i % 10 != 9],
        "held": [f for i, f in enumerate(files) if i % 10 == 9],
        "forget": [f for i, f in enumerate(files) if i % 10 == 4],
        "retain": [f for i, f in enumerate(files) if i % 10 not in (4, 9)],
    }
    return {k: b"".join(v) for k, v in pick.items()}


def new_tokens(
    pretrained: nn.Module, text: dict[str, bytes], cfg: Config, seed: int, methods=METHODS
) -> tuple[list[dict], dict, nn.Module]:
    """Resize ``pretrained`` and train the new rows each way: records, models, the resized
    model (the common start)."""
    train, held = (encode(text[k], NEW_TOKENS) for k in ("train", "held"))
    held = windows(held, cfg.eval_windows, cfg.seq)
    resized = add_tokens(copy.deepcopy(pretrained), len(NEW_TOKENS))
    plain_bytes = tensor_bytes(resized)
    loss_new_before, _ = held_losses(resized, held)
    runs = {m: start(m, resized, BYTES, cfg) for m in methods}
    gen = torch.Generator().manual_seed(seed + 2)
    batches = [windows(train, cfg.batch, cfg.seq, gen) for _ in range(cfg.steps)]
    interleave(runs, batches, seed=seed + 3)
    tied = resized.config.tie_word_embeddings
    records = [
        {
            "tied": tied,
            "method": run.method,
            "loss_new_before": loss_new_before,
            **measure(run, resized, BYTES, held, plain_bytes),
        }
        for run in runs.values()
    ]
    records = [{k: r[k] for k in RECORD_KEYS} for r in records]
    return records, {(tied, m): r.model for m, r in runs.items()}, resized


def decoder_linears(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if type(m) is nn.Linear and ".layers." in f".{n}"]


def saliency(model: nn.Module, names: list[str], forget: Tensor, share: float) -> dict:
    """{name: bool ``salient``}: the ``share`` of each weight with the largest |gradient| of
    the loss on ``forget`` (True = free to move, `Mask`'s convention)."""
    model.zero_grad()
    loss_of(model, forget).backward()
    out = {}
    for name in names:
        g = model.get_submodule(name).weight.grad.abs().flatten()
        keep = max(1, int(share * g.numel()))
        salient = torch.zeros_like(g, dtype=torch.bool)
        salient[g.topk(keep).indices] = True
        out[name] = salient.view(model.get_submodule(name).weight.shape)
    model.zero_grad()
    return out


def unlearning(
    pretrained: nn.Module, text: dict[str, bytes], cfg: Config, seed: int
) -> tuple[list[dict], dict, dict, nn.Module]:
    """The SalUn-style case: records, trained models, saliency masks, theta_0's model."""
    gen = torch.Generator().manual_seed(seed + 4)
    forget_stream, retain_stream = encode(text["forget"]), encode(text["retain"])
    forget_eval = windows(forget_stream, cfg.eval_windows, cfg.seq)
    retain_eval = windows(encode(text["held"]), cfg.eval_windows, cfg.seq)
    theta0 = pretrained
    names = decoder_linears(theta0)
    salient = saliency(copy.deepcopy(theta0), names, forget_eval, cfg.salient)
    plain_bytes = tensor_bytes(theta0)

    def objective(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        forget, retain = batch
        return loss_of(model, retain) - loss_of(model, forget)  # ascent on forget

    runs = {}
    for method in UNLEARN_METHODS:
        model = copy.deepcopy(theta0).requires_grad_(False)
        outside = []
        for name in names:
            linear = model.get_submodule(name)
            linear.weight.requires_grad_(True)
            if method == "torch-hollow":
                th.freeze_(linear, pattern=Mask(salient[name]))
            else:
                linear.weight.register_hook(lambda g, s=salient[name]: g * s)
                outside.append(salient[name])
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.unlearn_lr, weight_decay=cfg.weight_decay)
        runs[method] = Run(method, model, opt, outside, [], [])
    batches = [
        (
            windows(forget_stream, cfg.batch, cfg.seq, gen),
            windows(retain_stream, cfg.batch, cfg.seq, gen),
        )
        for _ in range(cfg.unlearn_steps)
    ]
    interleave(runs, batches, objective, seed=seed + 5)

    def losses(model: nn.Module) -> tuple[float, float]:
        with torch.no_grad():
            return loss_of(model, forget_eval).item(), loss_of(model, retain_eval).item()

    forget_before, retain_before = losses(theta0)
    records = []
    for run in runs.values():
        frozen_changed, largest, free_changed, frozen = 0, 0.0, 0, 0
        for name in names:
            w0 = theta0.get_submodule(name).weight.detach()
            w = run.model.get_submodule(name).weight.detach()
            held = ~salient[name]
            differ = bits(w) != bits(w0)
            frozen += int(held.sum())
            frozen_changed += int(differ[held].sum())
            free_changed += int(differ[~held].sum())
            largest = max(largest, float((w - w0)[held].abs().max()))
        forget, retain = losses(run.model)
        records.append(
            {
                "method": run.method,
                "weights": len(names),
                "entries": sum(s.numel() for s in salient.values()),
                "frozen_entries": frozen,
                "frozen_changed": frozen_changed,
                "max_frozen_change": largest,
                "free_changed": free_changed,
                "forget_loss_before": forget_before,
                "forget_loss": forget,
                "retain_loss_before": retain_before,
                "retain_loss": retain,
                "extra_bytes": tensor_bytes(run.model, run.outside) - plain_bytes,
                "step_ms": 1000 * statistics.median(run.times),
                "step_ms_min": 1000 * min(run.times),
            }
        )
    return records, {m: r.model for m, r in runs.items()}, salient, theta0


def experiment(cfg: Config, seed: int = 0, log=print, methods=METHODS) -> dict:
    """Pretrain (untied and tied), add tokens, train their rows each way; the unlearning case."""
    t0 = time.perf_counter()
    text = split(cfg)
    pretrain_stream = encode(text["train"])
    records, models, resized, pretrained, pretrain_losses = [], {}, {}, {}, {}
    for tied in (False, True):
        t1 = time.perf_counter()
        model = build_model(cfg, tied, seed)
        pretrain_losses[tied] = pretrain(model, pretrain_stream, cfg, seed)
        pretrained[tied] = model
        rows, trained, resized[tied] = new_tokens(model, text, cfg, seed, methods)
        records += rows
        models.update(trained)
        log(
            f"tie_word_embeddings={tied}: pretrained {cfg.pretrain_steps} steps (loss "
            f"{pretrain_losses[tied][-1]:.3f}), new rows trained {cfg.steps} steps x "
            f"{len(methods)} in {time.perf_counter() - t1:.0f} s"
        )
    t1 = time.perf_counter()
    unlearn, unlearned, salient, theta0 = unlearning(pretrained[False], text, cfg, seed)
    log(f"unlearning: {cfg.unlearn_steps} steps x 2 in {time.perf_counter() - t1:.0f} s")
    return {
        "records": records,
        "models": models,
        "resized": resized,
        "unlearning": unlearn,
        "unlearned": unlearned,
        "salient": salient,
        "theta0": theta0,
        "pretrain_losses": pretrain_losses,
        "text_bytes": {k: len(v) for k, v in text.items()},
        "seconds": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------------------- report


def _bytes(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if abs(n) >= 2**20 else f"{n / 2**10:.1f} KiB" if n else "0"


def format_table(records: list[dict]) -> str:
    head = (
        "| tied | method | frozen entries changed (max \\|change\\|) | new-token loss "
        "(before) | held-out loss | extra memory | grads + AdamW state | state-dict keys "
        "(not in plain) | loads into plain (same logits) | step ms median (min) |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = []
    for r in records:
        frozen = (
            f"{r['frozen_changed']:,} of {r['frozen_entries']:,} ({r['max_frozen_change']:.3g})"
            if r["method"] != "none"
            else f"{r['frozen_changed']:,} of {r['frozen_entries']:,} (trained)"
        )
        rows.append(
            f"| {'yes' if r['tied'] else 'no'} | {r['method']} | {frozen} | "
            f"{r['loss_new']:.3f} ({r['loss_new_before']:.3f}) | {r['loss_all']:.4f} | "
            f"{_bytes(r['extra_bytes'])} | {_bytes(r['train_state_bytes'])} | "
            f"{r['state_dict_keys']} ({len(r['keys_not_in_plain'])}) | "
            f"{r['loads_into_plain']} ({'yes' if r['plain_same_logits'] else 'no'}) | "
            f"{r['step_ms']:.1f} ({r['step_ms_min']:.1f}) |"
        )
    return "\n".join([head, *rows])


def format_unlearning(records: list[dict]) -> str:
    head = (
        "| unlearning | frozen entries changed (max \\|change\\|) | free entries changed | "
        "forget loss | held-out loss | extra memory | step ms median (min) |\n"
        "|---|---|---|---|---|---|---|"
    )
    rows = [
        f"| {r['method']} | {r['frozen_changed']:,} of {r['frozen_entries']:,} "
        f"({r['max_frozen_change']:.3g}) | {r['free_changed']:,} of "
        f"{r['entries'] - r['frozen_entries']:,} | {r['forget_loss_before']:.3f} → "
        f"{r['forget_loss']:.3f} | {r['retain_loss_before']:.3f} → {r['retain_loss']:.3f} | "
        f"{_bytes(r['extra_bytes'])} | {r['step_ms']:.1f} ({r['step_ms_min']:.1f}) |"
        for r in records
    ]
    return "\n".join([head, *rows])


def conditions(cfg: Config, seed: int, result: dict) -> dict:
    import peft
    import transformers

    return {
        "machine": f"{platform.machine()} {_cpu_name()}".strip(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "torch_hollow": th.__version__,
        "seed": seed,
        "config": asdict(cfg),
        "new_tokens": [t.decode() for t in NEW_TOKENS],
        "text_bytes": result["text_bytes"],
        "pretrain_losses": {str(k): v for k, v in result["pretrain_losses"].items()},
        "seconds": result["seconds"],
    }


def write_json(path: str | Path, result: dict, cfg: Config, seed: int) -> dict:
    """``{"conditions", "records", "unlearning"}`` as documented above, written to ``path``."""
    out = {
        "conditions": conditions(cfg, seed, result),
        "records": result["records"],
        "unlearning": result["unlearning"],
    }
    Path(path).write_text(json.dumps(out, indent=1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, help="steps of the new rows (default 50; quick 6)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the records to this file")
    parser.add_argument("--quick", action="store_true", help="a seconds-long configuration")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = QUICK if args.quick else Config()
    if args.steps is not None:
        cfg = replace(cfg, steps=args.steps)
    result = experiment(cfg, args.seed)
    print()
    print(format_table(result["records"]))
    print()
    print(format_unlearning(result["unlearning"]))
    print(f"\n{result['seconds']:.0f} s in all")
    if args.json:
        write_json(args.json, result, cfg, args.seed)


if __name__ == "__main__":
    main()
