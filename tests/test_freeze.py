"""torch_hollow.freeze: entries held bitwise at their own values, on any parameter.

The frozen positions come from index arithmetic in this file and the frozen values from a
snapshot the test takes itself; values are compared through integer views (bitwise: NaN and
-0.0 included), never through the library's rule, pattern or audit. A twin run without
`freeze_` shows that the same training moves the same entries.
"""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from _optim import HAS_MUON, MATRIX, MUON_MISSING, OPTIMIZERS
from distributed_utils import run_ranks
from torch import Tensor, nn

from torch_hollow import (
    HollowError,
    HollowLinear,
    HollowWarning,
    freeze_,
    hollow_,
    is_hollow,
    rules_of,
    unfreeze,
)
from torch_hollow.freeze import Frozen
from torch_hollow.patterns import Cols, Diagonal, Mask, Rows

INTS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
STEPS = 3


def bits(t: Tensor) -> Tensor:
    return t.detach().reshape(-1).view(INTS[t.element_size()])


class Couplings(nn.Module):
    """A custom module that reads its 2-D parameter itself (a pseudo-likelihood model)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.J = nn.Parameter(torch.randn(n, n) * 0.3)

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.J


def _linear():
    return nn.Linear(6, 5, bias=False), "weight", Rows([0, 3]), (lambda: torch.randn(4, 6))


def _embedding():
    return nn.Embedding(10, 4), "weight", Rows(range(7)), (lambda: torch.tensor([0, 2, 8, 9]))


def _custom():
    return Couplings(5), "J", Cols([1, 4]), (lambda: torch.randn(3, 5))


def _conv():
    conv = nn.Conv2d(2, 3, 3, bias=False)
    allowed = torch.rand(conv.weight.shape, generator=torch.Generator().manual_seed(3)) > 0.4
    return conv, "weight", Mask(allowed), (lambda: torch.randn(2, 2, 5, 5))


MODULES = {"Linear": _linear, "Embedding": _embedding, "custom": _custom, "Conv2d": _conv}


def frozen_mask(name: str, shape: torch.Size, pattern: object) -> Tensor:
    """The frozen positions, by index arithmetic (the Mask case: from the test's own draw)."""
    mask = torch.zeros(shape, dtype=torch.bool)
    if name == "Linear":
        mask[[0, 3]] = True
    elif name == "Embedding":
        mask[:7] = True
    elif name == "custom":
        mask[:, [1, 4]] = True
    else:
        mask = torch.rand(shape, generator=torch.Generator().manual_seed(3)) <= 0.4
    assert mask.any() and not mask.all(), "the test must freeze some entries, not all"
    return mask


def _loss(module: nn.Module, x: Tensor) -> Tensor:
    out = module(x)
    return (out - 0.5).square().mean()


def _train(module, param_name, make_input, opt_name, check) -> None:
    param = getattr(module, param_name)
    opt = OPTIMIZERS[opt_name]([param])
    for _ in range(STEPS):
        x = make_input()
        if opt_name == "LBFGS":

            def closure(x=x):
                opt.zero_grad()
                loss = _loss(module, x)
                loss.backward()
                return loss

            opt.step(closure)
        else:
            opt.zero_grad()
            _loss(module, x).backward()
            opt.step()
        check()


_SKIP_MUON = pytest.mark.skipif(not HAS_MUON, reason=MUON_MISSING)
CASES = [
    pytest.param(m, o, id=f"{m}-{o}", marks=[_SKIP_MUON] if o == "Muon" else [])
    for m in MODULES
    for o in OPTIMIZERS
    if not (m == "Conv2d" and o in MATRIX)  # matrix optimizers: 2-D parameters only
]


@pytest.mark.parametrize("module_name,opt_name", CASES)
def test_frozen_entries_hold_their_values_bitwise_after_every_step(module_name, opt_name):
    torch.manual_seed(0)
    module, param_name, pattern, make_input = MODULES[module_name]()
    param = getattr(module, param_name)
    mask = frozen_mask(module_name, param.shape, pattern)
    snapshot = bits(param[mask]).clone()
    free_before = param.detach()[~mask].clone()
    assert freeze_(module, param_name, pattern=pattern) is module
    assert getattr(module, param_name) is param  # the optimizer's Parameter stays

    def check():
        assert torch.equal(bits(param[mask]), snapshot)

    _train(module, param_name, make_input, opt_name, check)
    if param.grad is not None:  # LBFGS's closure zeroes it last
        assert (bits(param.grad[mask]) == 0).all()  # +0.0, every bit
    assert not torch.equal(param.detach()[~mask], free_before)  # the rest trained


@pytest.mark.parametrize("opt_name", ["AdamW-foreach", "SGD-nesterov-wd", "NewtonSchulz"])
@pytest.mark.parametrize("module_name", ["Linear", "Embedding", "custom"])
def test_twin_without_freeze_moves_the_same_entries(module_name, opt_name):
    # The gradient mask users write, and what the steps above would do without freeze_.
    torch.manual_seed(0)
    module, param_name, pattern, make_input = MODULES[module_name]()
    param = getattr(module, param_name)
    mask = frozen_mask(module_name, param.shape, pattern)
    snapshot = param.detach()[mask].clone()
    param.register_hook(lambda g: g.masked_fill(mask, 0.0))
    _train(module, param_name, make_input, opt_name, lambda: None)
    assert not torch.equal(param.detach()[mask], snapshot)


def _frozen_embedding(dtype=torch.float32):
    torch.manual_seed(1)
    emb = nn.Embedding(12, 3, dtype=dtype)
    with torch.no_grad():  # the values a gradient mask or a clamp loses: NaN, -0.0, inf
        emb.weight[0] = torch.tensor([float("nan"), -0.0, float("inf")], dtype=dtype)
    snapshot = bits(emb.weight[:5]).clone()
    return freeze_(emb, pattern=Rows(range(5))), snapshot


def _step(emb, opt_cls=torch.optim.AdamW):
    opt = opt_cls(emb.parameters(), lr=0.1, weight_decay=0.1)
    emb(torch.tensor([1, 6, 11])).square().sum().backward()
    opt.step()


def _torch_save(m):
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


COPIES = {
    "deepcopy": copy.deepcopy,
    "pickle": lambda m: pickle.loads(pickle.dumps(m)),
    "torch.save": _torch_save,
}


@pytest.mark.parametrize("how", list(COPIES))
def test_copies_keep_the_frozen_values_and_train_on_their_own(how):
    emb, snapshot = _frozen_embedding()
    twin = COPIES[how](emb)
    assert isinstance(rules_of(twin)["weight"], Frozen)
    assert torch.equal(bits(twin.weight[:5]), snapshot)
    _step(twin)
    assert torch.equal(bits(twin.weight[:5]), snapshot)
    assert twin.weight.grad[:5].abs().sum() == 0
    assert not torch.equal(twin.weight.detach()[5:], emb.weight.detach()[5:])


def test_a_raw_write_before_a_copy_is_undone_at_the_copy_s_first_forward():
    emb, snapshot = _frozen_embedding()
    emb.weight.data[:5] = 7.0  # a raw write, then a copy before any forward
    twin = copy.deepcopy(emb)
    twin(torch.tensor([0]))
    assert torch.equal(bits(twin.weight[:5]), snapshot)
    lin = freeze_(nn.Linear(3, 3), pattern=Rows([1]))  # a HollowLinear's copy: at once
    frozen = bits(lin.weight[1]).clone()
    lin.weight.data[1] = 7.0
    assert torch.equal(bits(copy.deepcopy(lin).weight[1]), frozen)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dtype_moves_convert_the_frozen_values_as_the_weight(dtype):
    emb, _ = _frozen_embedding()
    moved = emb.weight.detach()[:5].to(dtype)  # what .to() makes of the frozen rows
    emb.to(dtype)
    _step(emb, torch.optim.SGD)
    assert emb.weight.dtype == dtype
    assert torch.equal(bits(emb.weight[:5]), bits(moved))
    assert rules_of(emb)["weight"].values.dtype == dtype  # one copy, where the weight went


def test_load_of_other_values_warns_and_they_become_the_frozen_ones():
    emb, _ = _frozen_embedding()
    state = {"weight": emb.weight.detach().clone()}
    state["weight"][2] = torch.tensor([1.0, 2.0, 3.5])
    with pytest.warns(HollowWarning, match=r"'weight' brought 3 new value\(s\).*largest change"):
        emb.load_state_dict(state)
    loaded = bits(state["weight"][:5]).clone()
    assert torch.equal(bits(emb.weight[:5]), loaded)
    _step(emb)
    assert torch.equal(bits(emb.weight[:5]), loaded)


def test_load_of_the_same_values_is_silent():
    emb, snapshot = _frozen_embedding()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        emb.load_state_dict(copy.deepcopy(emb.state_dict()))
    assert torch.equal(bits(emb.weight[:5]), snapshot)


def test_load_into_a_frozen_linear_through_its_parent():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    freeze_(model[0], pattern=Rows([1]))
    state = copy.deepcopy(model.state_dict())
    state["0.weight"][1, 2] += 1.0
    with pytest.warns(HollowWarning, match=r"'0.weight' brought 1 new value"):
        model.load_state_dict(state)
    assert torch.equal(model[0].weight.detach(), state["0.weight"])
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


READS = {
    "Linear": lambda x, w: F.linear(x, w),
    "Embedding": lambda x, w: F.embedding(x, w),
    "custom": lambda x, w: x @ w,
}


@pytest.mark.parametrize("module_name", list(READS))
@pytest.mark.parametrize("write", ["nn.init", ".data"])
def test_init_and_raw_writes_are_undone_before_the_next_forward(module_name, write):
    torch.manual_seed(0)
    module, param_name, pattern, make_input = MODULES[module_name]()
    param = getattr(module, param_name)
    mask = frozen_mask(module_name, param.shape, pattern)
    frozen = param.detach()[mask].clone()
    freeze_(module, param_name, pattern=pattern)
    if write == "nn.init":
        nn.init.normal_(param)
    else:
        param.data = torch.randn_like(param)
    expected = param.detach().clone()
    expected[mask] = frozen  # the written weight with the frozen values back
    x = make_input()
    out = module(x)
    assert torch.equal(bits(param[mask]), bits(frozen))
    assert torch.equal(out, READS[module_name](x, expected))


def test_reset_parameters_of_a_frozen_linear_is_undone_at_once():
    torch.manual_seed(0)
    lin = nn.Linear(4, 4)
    snapshot = bits(lin.weight[2]).clone()
    freeze_(lin, pattern=Rows([2]))
    lin.reset_parameters()
    assert torch.equal(bits(lin.weight[2]), snapshot)


def test_autograd_grad_of_a_frozen_linear_weight_is_zero_on_frozen_entries():
    lin = freeze_(nn.Linear(5, 4), pattern=Cols([0, 2]))
    (grad,) = torch.autograd.grad(lin(torch.randn(3, 5)).sum(), [lin.weight])
    assert (bits(grad[:, [0, 2]]) == 0).all()
    assert (grad[:, [1, 3, 4]] != 0).all()


@pytest.mark.parametrize("fullgraph", [False, True])
def test_torch_compile_forward_and_compiled_step(fullgraph):
    torch.manual_seed(0)
    lin = nn.Linear(6, 6, bias=False)
    snapshot = bits(lin.weight[:, 1]).clone()
    freeze_(lin, pattern=Cols([1]))
    model = torch.compile(nn.Sequential(lin, nn.Tanh()), fullgraph=fullgraph)
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1, weight_decay=0.1)
    step = torch.compile(opt.step)
    for _ in range(STEPS):
        opt.zero_grad()
        model(torch.randn(4, 6)).square().sum().backward()
        assert (bits(lin.weight.grad[:, 1]) == 0).all()
        step()
        assert torch.equal(bits(lin.weight[:, 1]), snapshot)


def test_rows_and_cols_hold_zeros_too():
    emb = hollow_(nn.Embedding(6, 3), pattern=Rows([0]))  # a padding row that stays 0.0
    torch.optim.SGD(emb.parameters(), lr=1.0, momentum=0.9, weight_decay=0.1)
    assert (bits(emb.weight[0]) == 0).all()
    lin = hollow_(nn.Linear(5, 3), pattern=Cols(range(1, 3)))
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1, weight_decay=0.1)
    lin(torch.randn(2, 5)).sum().backward()
    opt.step()
    assert (bits(lin.weight[:, 1:3]) == 0).all() and (lin.weight[:, [0, 3, 4]] != 0).all()


def test_many_scattered_rows_take_the_indexed_path():
    torch.manual_seed(0)
    emb = nn.Embedding(400, 3)
    rows = list(range(0, 400, 3))  # 134 runs: more than one view each
    snapshot = bits(emb.weight[rows]).clone()
    freeze_(emb, pattern=Rows(rows))
    opt = torch.optim.AdamW(emb.parameters(), lr=0.1, weight_decay=0.1)
    emb(torch.arange(400)).square().sum().backward()
    assert (bits(emb.weight.grad[rows]) == 0).all()
    opt.step()
    assert torch.equal(bits(emb.weight[rows]), snapshot)


def test_unfreeze_keeps_the_values_and_the_parameter_and_trains_again():
    emb, snapshot = _frozen_embedding()
    weight = emb.weight
    emb.weight.data[:5] = 3.0
    assert unfreeze(emb) is emb and not is_hollow(emb) and emb.weight is weight
    assert torch.equal(bits(emb.weight[:5]), snapshot)
    _step(emb)
    assert not torch.equal(bits(emb.weight[1:5]), snapshot[3:])


def test_unfreeze_a_linear_gives_back_nn_linear():
    lin = freeze_(nn.Linear(3, 3), pattern=Rows([0]))
    assert type(lin) is HollowLinear
    assert type(unfreeze(lin)) is nn.Linear


def test_unfreeze_leaves_held_zeros_alone():
    lin = hollow_(nn.Linear(3, 3))
    with pytest.raises(HollowError, match="nothing frozen"):
        unfreeze(lin)
    assert is_hollow(lin)


REFUSALS = {
    "already hollow": (lambda: HollowLinear(3, 3), "weight", Rows([0]), "already held by Zeros"),
    "not a pattern": (lambda: nn.Linear(3, 3), "weight", [0, 1], "pattern must be"),
    "out of range": (lambda: nn.Embedding(4, 2), "weight", Rows([4]), "row 4 is out of range"),
    "sparse": (lambda: nn.Embedding(4, 2, sparse=True), "weight", Rows([0]), "sparse=True"),
    "missing": (lambda: nn.Linear(3, 3), "wieght", Rows([0]), "has no parameter 'wieght'"),
    "a bias": (lambda: nn.Linear(3, 3), "bias", Rows([0]), "needs a matrix"),
    "no rows": (lambda: nn.Linear(3, 3), "weight", Rows([]), "holds no rows"),
    "meta": (lambda: nn.Linear(3, 3, device="meta"), "weight", Rows([0]), "meta device"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_name_module_parameter_and_fix_and_change_nothing(case):
    make, name, pattern, what = REFUSALS[case]
    module = make()
    before = copy.deepcopy(module.state_dict())
    kind = type(module)
    with pytest.raises(HollowError, match=what) as err:
        freeze_(module, name, pattern=pattern)
    assert type(module).__name__ in str(err.value) and "Fix:" in str(err.value)
    assert type(module) is kind
    for key, value in module.state_dict().items():
        assert value.is_meta or torch.equal(value, before[key])


def test_hollow_after_freeze_is_refused():
    emb = freeze_(nn.Embedding(4, 4), pattern=Rows([0]))
    with pytest.raises(HollowError, match="already held by Frozen"):
        hollow_(emb)


def test_bad_indices_are_refused_when_the_pattern_is_made():
    with pytest.raises(HollowError, match="negative index"):
        Rows([-1])
    with pytest.raises(HollowError, match="integer indices"):
        Cols([0.5])


def test_frozen_values_cost_one_element_per_frozen_entry():
    emb = freeze_(nn.Embedding(1000, 16, dtype=torch.bfloat16), pattern=Rows(range(900)))
    rule = rules_of(emb)["weight"]
    held = [rule.values, *rule.pattern.tensors()]
    assert sum(t.untyped_storage().nbytes() for t in held) == 900 * 16 * 2


# --- distributed: 2 gloo ranks on CPU ----------------------------------------------------


def _model():
    torch.manual_seed(0)  # the same init on every rank
    return nn.Sequential(nn.Embedding(16, 8), nn.Linear(8, 8, bias=False))


def _check_frozen(model, snap_emb, snap_lin):
    assert torch.equal(bits(model[0].weight[:10]), snap_emb)
    assert torch.equal(bits(model[1].weight[:, :3]), snap_lin)


def _ddp_case(rank, world):
    model = _model()
    snap_emb, snap_lin = bits(model[0].weight[:10]).clone(), bits(model[1].weight[:, :3]).clone()
    freeze_(model[0], pattern=Rows(range(10)))
    freeze_(model[1], pattern=Cols([0, 1, 2]))
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(ddp.parameters(), lr=0.1, weight_decay=0.1)
    for step in range(STEPS):
        opt.zero_grad()
        x = torch.randint(0, 16, (4,), generator=torch.Generator().manual_seed(rank * 10 + step))
        ddp(x).square().sum().backward()
        assert (model[0].weight.grad[:10] == 0).all() and (model[1].weight.grad[:, :3] == 0).all()
        opt.step()
        _check_frozen(model, snap_emb, snap_lin)
    gathered = [torch.empty_like(model[0].weight) for _ in range(world)]
    torch.distributed.all_gather(gathered, model[0].weight.detach())
    assert torch.equal(gathered[0], gathered[1])  # the ranks agree on every entry


def _fsdp_case(rank, world):
    from torch.distributed.fsdp import fully_shard

    model = _model()
    snap_emb, snap_lin = bits(model[0].weight[:10]).clone(), bits(model[1].weight[:, :3]).clone()
    freeze_(model[0], pattern=Rows(range(10)))
    freeze_(model[1], pattern=Cols([0, 1, 2]))
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    for step in range(STEPS):
        opt.zero_grad()
        x = torch.randint(0, 16, (4,), generator=torch.Generator().manual_seed(rank * 10 + step))
        model(x).square().sum().backward()
        opt.step()
        full_emb = model[0].weight.full_tensor()
        full_lin = model[1].weight.full_tensor()
        assert torch.equal(bits(full_emb[:10]), snap_emb)
        assert torch.equal(bits(full_lin[:, :3]), snap_lin)
        assert not torch.equal(bits(full_emb[10:]), bits(_model()[0].weight[10:]))


def _ddp_order_case(rank, world):
    # Ranks that start from different values: freeze_ after wrapping freezes rank 0's values
    # (DDP broadcast them); before wrapping, each rank's guard restores its own (the limit the
    # docs state).
    for freeze_first in (False, True):
        torch.manual_seed(rank)
        emb = nn.Embedding(6, 2)
        if freeze_first:
            freeze_(emb, pattern=Rows([0, 1]))
        ddp = nn.parallel.DistributedDataParallel(emb)
        if not freeze_first:
            freeze_(emb, pattern=Rows([0, 1]))
        ddp(torch.tensor([0, 1, 2])).sum().backward()
        torch.optim.SGD(ddp.parameters(), lr=0.1, weight_decay=0.1).step()
        gathered = [torch.empty_like(emb.weight) for _ in range(world)]
        torch.distributed.all_gather(gathered, emb.weight.detach())
        agree = torch.equal(gathered[0][:2], gathered[1][:2])
        assert agree != freeze_first, f"freeze_first={freeze_first}: ranks agree={agree}"


def test_ddp_two_gloo_ranks():
    run_ranks(_ddp_case, timeout=120.0)


def test_ddp_freeze_after_wrapping_when_ranks_start_apart():
    run_ranks(_ddp_order_case, timeout=120.0)


def test_fsdp2_two_gloo_ranks():
    pytest.importorskip("torch.distributed.fsdp")
    run_ranks(_fsdp_case, timeout=120.0)


def test_functional_call_reads_a_copy_with_the_frozen_values():
    lin = freeze_(nn.Linear(3, 3, bias=False), pattern=Diagonal())
    frozen = lin.weight.detach().diagonal().clone()
    mine = torch.zeros(3, 3)
    out = torch.func.functional_call(lin, {"weight": mine}, (torch.eye(3),))
    assert torch.equal(out.diagonal(), frozen) and torch.equal(mine, torch.zeros(3, 3))
    assert torch.equal(F.linear(torch.eye(3), lin.weight).diagonal(), frozen)


def test_compiled_fullgraph_model_with_an_embedding_and_a_masked_linear():
    # The Mask's first zeroing of a gradient happens inside the compiled backward. (A fresh
    # dynamo: the next test shows what an earlier compile of another pattern does on 2.8.)
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4))
    allowed = torch.rand(4, 4, generator=torch.Generator().manual_seed(5)) > 0.5
    snap_emb, snap_lin = bits(model[0].weight[:6]).clone(), bits(model[1].weight[~allowed])
    freeze_(model[0], pattern=Rows(range(6)))
    freeze_(model[1], pattern=Mask(allowed))
    compiled = torch.compile(model, fullgraph=True)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(STEPS):
        opt.zero_grad()
        compiled(torch.tensor([1, 7, 9])).square().sum().backward()
        assert (bits(model[1].weight.grad[~allowed]) == 0).all()
        opt.step()
        assert torch.equal(bits(model[0].weight[:6]), snap_emb)
        assert torch.equal(bits(model[1].weight[~allowed]), snap_lin)


def test_check_reads_a_whole_frozen_model_file_without_trust_pickle(tmp_path):
    from torch_hollow import audit

    model = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 3))
    freeze_(model[0], pattern=Rows([0, 1]))
    freeze_(model[1], pattern=Cols([2]))
    torch.save(model, tmp_path / "model.pt")
    rows = audit(tmp_path / "model.pt")
    assert [(r.name, r.pattern, r.violated) for r in rows] == [
        ("0.weight", "Frozen(Rows([0, 1]))", False),
        ("1.weight", "Frozen(Cols([2]))", False),
    ]


@pytest.mark.xfail(
    torch.__version__ < "2.9",
    strict=True,
    reason="torch 2.8: after a compiled layer with another pattern ran in the process, the "
    "compiled backward of a Mask layer leaves denormal residues (bits 1-3) on held gradient "
    "entries; stored weights are still restored after each step (docs/guarantees.md)",
)
@pytest.mark.parametrize("verb", ["hollow_", "freeze_"])
def test_two_patterns_compiled_in_one_process_mask_the_second_gradient(verb):
    hold = {"hollow_": hollow_, "freeze_": freeze_}[verb]
    torch._dynamo.reset()
    torch.manual_seed(0)
    lin = hold(nn.Linear(6, 6, bias=False), pattern=Cols([1]))
    first = torch.compile(nn.Sequential(lin, nn.Tanh()), fullgraph=True)
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(STEPS):
        opt.zero_grad()
        first(torch.randn(4, 6)).square().sum().backward()
        opt.step()
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4))
    allowed = torch.rand(4, 4, generator=torch.Generator().manual_seed(5)) > 0.5
    hold(model[1], pattern=Mask(allowed))
    second = torch.compile(model, fullgraph=True)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(STEPS):
        opt.zero_grad()
        second(torch.tensor([1, 7, 9])).square().sum().backward()
        assert (bits(model[1].weight.grad[~allowed]) == 0).all()
        opt.step()
