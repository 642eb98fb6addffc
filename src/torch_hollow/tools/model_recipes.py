"""Whole models two ways: as their users write them (the peer) and with torch-hollow.

Each `Model` builds a module whose ``forward(x)`` returns the training loss, from a seed, so
the peer and the torch-hollow build start from the same free values and compute the same
function (except ``mlp``, whose peer is plain ``nn.Linear``: the cost limit, diagonal free).
``sparse-llm`` imports transformers when it is built, never before. ``held_entries`` names,
per constrained weight, what is stored, what the forward uses and which entries are held, so a
benchmark can check both.
"""

from __future__ import annotations

__all__ = ["MODELS", "Model", "held_entries"]

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from torch_hollow import HollowLinear, convert, hollow_, keep_zeros_, rules_of
from torch_hollow.patterns import Mask

from .recipes import MaskedLinear, used_weight

Linear = Callable[[Tensor], nn.Module]  # allowed (out, in) -> a linear layer holding ~allowed
Data = Callable[[int, dict[str, int], torch.Generator], Tensor]  # (batch, size, generator)


def _w_times_mask(allowed: Tensor) -> nn.Module:
    return MaskedLinear(nn.Linear(allowed.shape[1], allowed.shape[0]), ~allowed)


def _hollow_mask(allowed: Tensor) -> nn.Module:
    return HollowLinear(allowed.shape[1], allowed.shape[0], pattern=Mask(allowed))


# ----------------------------------------------------------------------------- MAF / MADE


class MAF(nn.Module):
    """A masked autoregressive flow (MADE transforms, orders reversed in turn); loss: NLL."""

    def __init__(self, d: int, hidden: int, transforms: int, linear: Linear) -> None:
        super().__init__()
        self.made = nn.ModuleList()
        for k in range(transforms):
            order = torch.arange(d) if k % 2 == 0 else torch.arange(d).flip(0)
            deg_in, deg_h = order + 1, torch.arange(hidden) % max(d - 1, 1) + 1
            deg_out = (order + 1).repeat(2)  # shift and log-scale of each feature
            self.made.append(
                nn.Sequential(
                    linear(deg_h[:, None] >= deg_in[None, :]),
                    nn.ReLU(),
                    linear(deg_h[:, None] >= deg_h[None, :]),
                    nn.ReLU(),
                    linear(deg_out[:, None] > deg_h[None, :]),
                )
            )

    def forward(self, x: Tensor) -> Tensor:
        log_det = x.new_zeros(x.shape[0])
        for made in self.made:
            shift, log_scale = made(x).chunk(2, dim=-1)
            log_scale = log_scale.tanh() * 3
            x = (x - shift) * torch.exp(-log_scale)
            log_det = log_det - log_scale.sum(-1)
        log_prob = -0.5 * (x.square() + math.log(2 * math.pi)).sum(-1) + log_det
        return -log_prob.mean()


# ----------------------------------------------------------------------------- GOLEM


class GolemSEM(nn.Module):
    """A linear SEM X = X W + E with GOLEM-EV's likelihood loss, L1 and NOTEARS' h(W).

    ``W`` starts at zero, as in GOLEM. This class reads ``W`` as stored (hold it with
    ``hollow_(sem, "W")``); `MaskedSEM` is what GOLEM's code writes: ``W * (1 - I)``.
    """

    def __init__(self, d: int, lam1: float = 2e-2, lam2: float = 5.0) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.zeros(d, d))
        self.register_buffer("eye", torch.eye(d))
        self.lam1, self.lam2 = lam1, lam2

    def weight(self) -> Tensor:
        """The W the loss uses."""
        return self.W

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight()
        n, d = x.shape
        likelihood = 0.5 * d * torch.log((x - x @ w).square().sum() / n)
        likelihood = likelihood - torch.linalg.slogdet(self.eye - w)[1]
        h = torch.linalg.matrix_exp(w * w).diagonal().sum() - d
        return likelihood + self.lam1 * w.abs().sum() + self.lam2 * h


class MaskedSEM(GolemSEM):
    """GOLEM as its code writes it: every forward uses ``W * (1 - I)``."""

    def weight(self) -> Tensor:
        return self.W * (1 - self.eye)


def _golem_hollow(d: int) -> nn.Module:
    return hollow_(GolemSEM(d), "W")


# ----------------------------------------------------------------------------- NOTEARS-MLP


class NotearsMLP(nn.Module):
    """NOTEARS-MLP: node j = fc2_j(sigmoid(fc1(X)_j)); fc1 must not let node j read input j.

    Loss: least squares + L1 and L2 on fc1's weight + the augmented-Lagrangian terms of
    h(A) = tr(exp(A)) - d, A[i, j] = sum_k fc1.weight[j*m + k, i]^2.
    """

    def __init__(self, d: int, m: int, linear: Linear) -> None:
        super().__init__()
        self.d, self.m = d, m
        # Hidden unit j*m + k belongs to node j and must not read input j.
        self.fc1 = linear(torch.arange(d * m)[:, None] // m != torch.arange(d)[None, :])
        bound = 1 / math.sqrt(m)
        self.fc2_weight = nn.Parameter(torch.empty(d, m).uniform_(-bound, bound))
        self.fc2_bias = nn.Parameter(torch.empty(d).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        hidden = torch.sigmoid(self.fc1(x).view(-1, self.d, self.m))
        out = torch.einsum("ndm,dm->nd", hidden, self.fc2_weight) + self.fc2_bias
        w = used_weight(self.fc1)
        a = w.view(self.d, self.m, self.d).square().sum(1).T
        h = torch.linalg.matrix_exp(a).diagonal().sum() - self.d
        fit = 0.5 * (out - x).square().sum() / x.shape[0]
        return fit + 0.01 * w.abs().sum() + 0.005 * w.square().sum() + 0.5 * h * h + h


# ----------------------------------------------------------------------------- MLP


class Autoencoder(nn.Module):
    """``depth`` square linear layers with ReLU between; loss: reconstruction error."""

    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(width, width), nn.ReLU()]
        self.net = nn.Sequential(*layers[:-1])

    def forward(self, x: Tensor) -> Tensor:
        return (self.net(x) - x).square().mean()


def _mlp_hollow(width: int, depth: int) -> nn.Module:
    return convert(Autoencoder(width, depth))


# ----------------------------------------------------------------------------- sparse LLM


class CausalLM(nn.Module):
    """A pruned ``LlamaForCausalLM``; loss: next-token cross-entropy on the batch's tokens."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, x: Tensor) -> Tensor:
        return self.lm(input_ids=x, labels=x).loss


class MaskMulLM(CausalLM):
    """The authors' recipe: a stored bool mask per pruned weight, ``p.mul_(mask)`` after steps.

    ``after_step`` is what their loops call after every ``opt.step()``. The masks are the
    pruning's own (``kept`` from `_prune_rows_`), not torch-hollow's.
    """

    def __init__(self, lm: nn.Module, kept: list[tuple[str, Tensor]]) -> None:
        super().__init__(lm)
        self.pruned = [name for name, _ in kept]
        for i, (_, mask) in enumerate(kept):
            self.register_buffer(f"mask{i}", mask)

    def masks(self) -> Iterator[tuple[nn.Parameter, Tensor]]:
        """(pruned weight, its kept-entry mask), in module order."""
        for i, name in enumerate(self.pruned):
            yield self.lm.get_parameter(name), self.get_buffer(f"mask{i}")

    @torch.no_grad()
    def after_step(self) -> None:
        for p, mask in self.masks():
            p.mul_(mask)


def _in_decoder(name: str, module: nn.Module) -> bool:
    # The decoder layers' projections; embeddings and lm_head stay dense, as SparseGPT/Wanda.
    return type(module) is nn.Linear and "layers." in name


def _pruned_llama(
    hidden: int, layers: int, vocab: int, seq: int
) -> tuple[nn.Module, list[tuple[str, Tensor]]]:
    """A random-init Llama from a config, its decoder linears pruned; (model, [(name, kept)])."""
    import transformers  # here, so that import torch_hollow and the other models never need it

    config = transformers.LlamaConfig(
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(hidden // 64, 2),
        num_key_value_heads=max(hidden // 64, 2),
        vocab_size=vocab,
        max_position_embeddings=seq,
    )
    lm = transformers.LlamaForCausalLM(config)
    return lm, _prune_rows_(lm)


def _prune_rows_(model: nn.Module) -> list[tuple[str, Tensor]]:
    """Zero the half of each row with the smallest |w| of every decoder linear weight.

    Magnitude pruning is a function of the weights, so two builds from one seed prune alike.
    Returns ``(parameter name, kept-entry mask)`` per pruned weight, in module order.
    """
    kept = []
    with torch.no_grad():
        for name, module in model.named_modules():
            if _in_decoder(name, module):
                w = module.weight
                smallest = w.abs().argsort(dim=1)[:, : w.shape[1] // 2]
                mask = torch.ones_like(w, dtype=torch.bool).scatter_(1, smallest, False)
                w.masked_fill_(~mask, 0.0)
                kept.append((f"{name}.weight", mask))
    return kept


def _llm_mask_mul(**size: int) -> nn.Module:
    return MaskMulLM(*_pruned_llama(**size))


def _llm_hollow(**size: int) -> nn.Module:
    lm, _ = _pruned_llama(**size)
    return keep_zeros_(CausalLM(lm), where=_in_decoder)


def _adamw(params: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1)


# ----------------------------------------------------------------------------- registry


def _gaussian(key: str) -> Data:
    def draw(batch: int, size: dict[str, int], gen: torch.Generator) -> Tensor:
        return torch.randn(batch, size[key], generator=gen)

    return draw


def _tokens(batch: int, size: dict[str, int], gen: torch.Generator) -> Tensor:
    return torch.randint(0, size["vocab"], (batch, size["seq"]), generator=gen)


def _adam(params: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3)


def _sem_data(batch: int, size: dict[str, int], gen: torch.Generator) -> Tensor:
    d = size["d"]
    # A random linear SEM on a DAG: X = E (I - W)^-1, W strictly upper, ~2 edges per node.
    w = torch.randn(d, d, generator=gen).triu(1)
    w = w * (torch.rand(d, d, generator=gen) < 4 / d)
    x = torch.randn(batch, d, generator=gen) @ torch.linalg.inv(torch.eye(d) - w)
    return (x - x.mean(0)) / x.std(0)


@dataclass(frozen=True)
class Model:
    """A model two ways, at a full and a tiny size.

    ``peer(**size)`` and ``hollow(**size)`` return modules whose ``forward(x)`` is the loss;
    ``data(batch, size, generator)`` draws a batch; ``optimizer(parameters)`` is what the
    model's users train with. A build with an ``after_step()`` method has it called after
    every ``opt.step()``, as its users' loop does.
    """

    peer_name: str  # what the peer writes, for the table
    peer: Callable[..., nn.Module]
    hollow: Callable[..., nn.Module]
    data: Data
    batch: int
    size: dict[str, int]
    tiny: dict[str, int]
    same_function: bool = True
    optimizer: Callable[[Iterator[nn.Parameter]], torch.optim.Optimizer] = _adam

    def sized(self, tiny: bool = False) -> tuple[dict[str, int], int]:
        """The builders' keyword arguments and the batch size."""
        return (self.tiny, min(self.batch, 16)) if tiny else (self.size, self.batch)

    def describe(self, tiny: bool = False) -> str:
        """The size, e.g. ``d=16 hidden=256 transforms=3 batch=256``."""
        size, batch = self.sized(tiny)
        return " ".join(f"{k}={v}" for k, v in size.items()) + f" batch={batch}"


MODELS: dict[str, Model] = {
    "maf": Model(
        "W*mask",
        lambda **s: MAF(linear=_w_times_mask, **s),
        lambda **s: MAF(linear=_hollow_mask, **s),
        _gaussian("d"),
        256,
        {"d": 16, "hidden": 256, "transforms": 3},
        {"d": 4, "hidden": 8, "transforms": 2},
    ),
    "golem": Model(
        "W*(1-I)",
        MaskedSEM,
        _golem_hollow,
        _sem_data,
        1000,
        {"d": 100},
        {"d": 6},
    ),
    "notears-mlp": Model(
        "fc1 W*mask",
        lambda **s: NotearsMLP(linear=_w_times_mask, **s),
        lambda **s: NotearsMLP(linear=_hollow_mask, **s),
        _gaussian("d"),
        1000,
        {"d": 20, "m": 10},
        {"d": 4, "m": 3},
    ),
    "mlp": Model(
        "plain",
        Autoencoder,
        _mlp_hollow,
        _gaussian("width"),
        64,
        {"width": 1024, "depth": 4},
        {"width": 8, "depth": 4},
        same_function=False,
    ),
    "sparse-llm": Model(
        "p.mul_(mask)",
        _llm_mask_mul,
        _llm_hollow,
        _tokens,
        4,
        {"hidden": 256, "layers": 2, "vocab": 256, "seq": 64},
        {"hidden": 32, "layers": 2, "vocab": 64, "seq": 8},
        optimizer=_adamw,
    ),
}


def held_entries(model: nn.Module) -> list[tuple[Tensor, Tensor, Tensor]]:
    """(stored weight, weight the forward uses, held mask) of each constrained weight.

    The peers' layers: a `MaskedLinear` (stored ``inner.weight``, used ``weight * mask``),
    `MaskedSEM` (``W``, ``W * (1 - I)``), plain ``nn.Linear`` (its diagonal, which only the
    torch-hollow build holds) and `MaskMulLM` (each pruned weight, the entries its pruning
    zeroed). Their masks come from the model's own arithmetic (degrees, an identity, the
    pruning), never from torch-hollow, so they are the reference a torch-hollow build is read
    against. torch-hollow's: every held parameter (mask from its rule), stored = used.
    """
    out = []
    for module in model.modules():
        rules = rules_of(module)
        if rules:
            for name, rule in rules.items():
                w = module.get_parameter(name)
                out.append((w, w, rule.pattern.held_mask(w.shape, w.device)))
        elif isinstance(module, MaskedLinear):
            out.append((module.inner.weight, used_weight(module), module.mask == 0))
        elif isinstance(module, MaskMulLM):
            out.extend((p, p, ~mask) for p, mask in module.masks())
        elif isinstance(module, MaskedSEM):
            out.append((module.W, module.weight(), module.eye.bool()))
        elif type(module) is nn.Linear and isinstance(model, Autoencoder):
            w = module.weight
            out.append((w, w, torch.eye(*w.shape, dtype=torch.bool, device=w.device)))
    return out
