"""Training frameworks and adapters: Lightning, Accelerate, GradScaler, peft LoRA.

Each loop uses AdamW, gradient clipping and bf16 autocast on the CPU, and checks after every
step that the stored held entries are +0.0 and that the gradients clipping sees are hollow.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_bitwise_zero, diag_mask
from torch import nn
from torch.func import jacrev

import torch_hollow as th

HELD = diag_mask(8, 8)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(th.HollowLinear(8, 8), nn.Tanh(), th.HollowLinear(8, 8))


def _data(n=64):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=g)
    return x, torch.roll(x, 1, dims=1) + 0.1 * torch.randn(n, 8, generator=g)


def _assert_grads_hollow(model):
    for layer in (model[0], model[2]):
        assert_bitwise_zero(layer.weight.grad, HELD)


def _assert_stored_hollow(model):
    for layer in (model[0], model[2]):
        assert_bitwise_zero(layer.weight, HELD)


def test_lightning_trainer_fit_bf16_clipping(tmp_path):
    lightning = pytest.importorskip("lightning")

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = _model()
            self.clipped = self.stepped = 0

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.mse_loss(self.model(x), y)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=0.05, weight_decay=0.1)

        def configure_gradient_clipping(
            self, optimizer, gradient_clip_val, gradient_clip_algorithm
        ):
            _assert_grads_hollow(self.model)  # what clipping sees
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            self.clipped += 1

        def on_train_batch_end(self, outputs, batch, batch_idx):
            _assert_stored_hollow(self.model)
            self.stepped += 1

    module = Module()
    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    trainer = lightning.Trainer(
        accelerator="cpu",
        precision="bf16-mixed",
        gradient_clip_val=0.5,
        max_steps=8,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, loader)
    assert module.clipped == module.stepped == 8
    _assert_stored_hollow(module.model)


def test_accelerate_loop_bf16_clipping():
    accelerate = pytest.importorskip("accelerate")
    accelerator = accelerate.Accelerator(cpu=True, mixed_precision="bf16")
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    run, opt, loader = accelerator.prepare(model, opt, loader)
    steps = 0
    for _ in range(2):
        for xb, yb in loader:
            opt.zero_grad()
            with accelerator.autocast():
                loss = F.mse_loss(run(xb), yb)
            accelerator.backward(loss)
            _assert_grads_hollow(model)
            accelerator.clip_grad_norm_(model.parameters(), 0.5)
            opt.step()
            _assert_stored_hollow(model)
            steps += 1
    assert steps == 8


def test_grad_scaler_fp16_autocast_steps():
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    x, y = _data()
    for _ in range(6):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        _assert_grads_hollow(model)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        scaler.step(opt)
        scaler.update()
        _assert_stored_hollow(model)


# --- peft LoRA ----------------------------------------------------------------------------


def test_peft_lora_effective_weight_is_hollow_and_merges_hollow():
    peft = pytest.importorskip("peft")
    from torch_hollow.peft import HollowLoraLinear, lora_config

    model = _model()
    adapted = peft.get_peft_model(model, lora_config(target_modules=["0", "2"], r=2))
    layers = [adapted.base_model.model[i] for i in (0, 2)]
    assert all(isinstance(layer, HollowLoraLinear) for layer in layers)
    trainable = [p for p in adapted.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=0.05)
    x, y = _data()
    for _ in range(5):
        opt.zero_grad()
        F.mse_loss(adapted(x), y).backward()
        opt.step()
    for layer in layers:
        delta = layer.get_delta_weight("default")
        assert delta.abs().amax() > 0  # the adapter trained
        assert_bitwise_zero(layer.effective_weight(), HELD)
        jac = jacrev(layer)(x[0])  # what the adapted layer computes, entry by entry
        assert_bitwise_zero(jac, HELD)
        torch.testing.assert_close(jac, layer.effective_weight())
    out = adapted(x)
    merged = adapted.merge_and_unload()
    assert type(merged[0]) is th.HollowLinear and type(merged[2]) is th.HollowLinear
    _assert_stored_hollow(merged)
    torch.testing.assert_close(merged(x), out)


def test_peft_plain_lora_on_a_hollow_layer_is_refused_when_built():
    peft = pytest.importorskip("peft")
    with pytest.raises(
        th.HollowError, match=r"peft\.tuners\.lora.*torch_hollow\.peft\.lora_config"
    ):
        peft.get_peft_model(_model(), peft.LoraConfig(target_modules=["0"], r=2))


def test_peft_wrapping_seen_before_hollow_is_refused_by_hollow():
    peft = pytest.importorskip("peft")
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))
    adapted = peft.get_peft_model(model, peft.LoraConfig(target_modules=["0"], r=2))
    base = adapted.base_model.model[0].base_layer
    weight = base.weight.detach().clone()
    with pytest.raises(th.HollowError, match=r"'Linear\.weight'.*peft's.*Fix: hold the layer"):
        th.hollow_(base)
    assert not th.is_hollow(base) and torch.equal(base.weight, weight)  # nothing changed
    with pytest.raises(th.HollowError, match=r"peft's"):
        th.convert(adapted)


def test_a_hollow_forward_reads_no_caller_frames(monkeypatch):
    # peft is recognised where it wraps the layer, not by reading the stack at each forward
    pytest.importorskip("peft")
    layer = th.HollowLinear(4, 4)

    def refuse(*args):
        raise AssertionError("sys._getframe called by a forward")

    monkeypatch.setattr(sys, "_getframe", refuse)
    layer(torch.randn(2, 4))


def test_peft_dora_on_a_hollow_layer_is_refused():
    peft = pytest.importorskip("peft")
    from torch_hollow.peft import lora_config

    with pytest.raises(th.HollowError, match="use_dora=False"):
        peft.get_peft_model(_model(), lora_config(target_modules=["0"], r=2, use_dora=True))
