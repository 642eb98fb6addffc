"""audit() and `torch-hollow check`: patterns found, violations reported, exit codes."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict

import pytest
import torch
from torch import nn

from torch_hollow import HollowError, HollowLinear, audit, hollow_
from torch_hollow.audit import AuditRow, format_audit
from torch_hollow.cli import main
from torch_hollow.patterns import BlockDiagonal, Mask


def _model():
    torch.manual_seed(0)
    model = nn.Sequential(
        HollowLinear(4, 4),
        HollowLinear(4, 8, pattern=BlockDiagonal(2, 1)),
        nn.Linear(8, 8),
        nn.Linear(8, 3),
        nn.LSTM(3, 2),
    )
    hollow_(model[4], "weight_hh_l0")
    return model


def test_audit_model_rows():
    rows = {r.name: r for r in audit(_model())}
    assert rows["0.weight"].pattern == "Diagonal(offset=0)" and rows["0.weight"].held_max == 0.0
    assert rows["1.weight"].pattern == "BlockDiagonal(rows=2, cols=1)"
    assert rows["2.weight"].pattern is None and rows["2.weight"].held_max > 0  # its diagonal
    assert rows["3.weight"].held_max is None  # unconstrained and not square
    assert rows["4.weight_hh_l0"].pattern == "StackedDiagonal(blocks=4, offset=0)"
    assert "0.bias" not in rows
    assert not any(r.violated for r in rows.values())


def test_audit_sees_a_raw_write_on_a_model():
    model = _model()
    with torch.no_grad():
        model[0].weight.fill_(3.0)
    row = next(r for r in audit(model) if r.name == "0.weight")
    assert row.violated and row.held_max == 3.0


def test_audit_state_dict_file_remembers_patterns(tmp_path):
    model = _model()
    path = tmp_path / "ckpt.pt"
    torch.save(model.state_dict(), path)
    rows = {r.name: r for r in audit(path)}
    assert rows["1.weight"].pattern == "BlockDiagonal(rows=2, cols=1)"
    assert rows["4.weight_hh_l0"].pattern == "StackedDiagonal(blocks=4, offset=0)"
    # a tampered checkpoint: a held entry made non-zero after saving
    sd = torch.load(path, weights_only=True)
    sd["1.weight"][0, 0] = -0.25
    torch.save(sd, path)
    row = next(r for r in audit(path) if r.name == "1.weight")
    assert row.violated and row.held_max == 0.25


def test_audit_checkpoint_dict_and_mask_pattern(tmp_path):
    layer = HollowLinear(3, 2, pattern=Mask(torch.tensor([[True, False, True], [False] * 3])))
    path = tmp_path / "ckpt.pt"
    torch.save({"model": layer.state_dict(), "epoch": 3}, path)
    (row,) = audit(path)
    assert row.pattern.startswith("Mask(shape=(2, 3), held=4)") and not row.violated


def test_check_cli_exit_codes_and_json(tmp_path, capsys):
    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    sd = _model().state_dict()
    torch.save(sd, good)
    sd["0.weight"][1, 1] = 1.0
    torch.save(sd, bad)
    assert main(["check", str(good)]) == 0
    assert "Diagonal(offset=0)" in capsys.readouterr().out
    assert main(["check", str(bad), "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert next(r for r in rows if r["name"] == "0.weight")["violated"] is True


def test_check_pickled_model_of_torch_nn_and_hollow_classes_needs_no_trust(tmp_path, capsys):
    path = tmp_path / "model.pt"
    torch.save(_model(), path)
    assert main(["check", str(path)]) == 0  # foreign classes: see test_interop.py
    assert "StackedDiagonal" in capsys.readouterr().out
    assert main(["check", str(path), "--trust-pickle"]) == 0


def test_audit_errors(tmp_path):
    with pytest.raises(HollowError, match="no checkpoint file"):
        audit(tmp_path / "missing.pt")
    with pytest.raises(HollowError, match="takes a module, a state dict or a path"):
        audit(42)  # type: ignore[arg-type]


def test_format_audit_table():
    text = format_audit(audit(_model()))
    assert text.splitlines()[0].split() == [
        "parameter",
        "shape",
        "pattern",
        "held",
        "max",
        "|held|",
        "status",
    ]
    assert "unconstrained" in text and "ok" in text


def test_check_safetensors_file(tmp_path, capsys):
    from safetensors.torch import save_file  # from the test extra

    sd = {k: v.contiguous() for k, v in _model().state_dict().items()}
    sd["2.weight"] = torch.eye(8)
    path = tmp_path / "model.safetensors"
    save_file(sd, str(path))
    rows = {r.name: r for r in audit(path)}
    assert rows["2.weight"].held_max == 1.0 and rows["2.weight"].pattern is None
    assert main(["check", str(path)]) == 0  # no patterns recorded in safetensors: nothing held


def test_check_reports_the_sparsity_of_each_held_parameter(tmp_path, capsys):
    model = torch.nn.Sequential(HollowLinear(4, 4), torch.nn.Linear(4, 5))
    held = torch.zeros(5, 4, dtype=torch.bool)
    held[:4] = True  # 16 of 20 entries: 80 %
    hollow_(model[1], pattern=Mask(~held))
    rows = {r.name: r for r in audit(model.state_dict())}
    assert rows["0.weight"].sparsity == 0.25 and rows["1.weight"].sparsity == 0.8
    path = tmp_path / "pruned.pt"
    torch.save(model.state_dict(), path)
    assert main(["check", str(path)]) == 0
    table = capsys.readouterr().out
    assert "80.0%" in table and "25.0%" in table


# --- checks asked for: --nm N:M and --mask FILE, on safetensors files and shard directories ---


def _nm_reference(w: torch.Tensor, n: int, m: int) -> tuple[int, float, float]:
    """(groups short of n zeros, share of zeros, largest |value| n:m would drop), by lists."""
    rows = w.double().tolist()
    bad, zeros, largest = 0, 0, 0.0
    for row in rows:
        for start in range(0, len(row), m):
            group = row[start : start + m]
            count = sum(1 for v in group if v == 0.0)
            zeros += count
            if count < n:
                bad += 1
                largest = max(largest, sorted(abs(v) for v in group)[n - 1])
    return bad, zeros / w.numel(), largest


def _prune_nm(w: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """``w`` with the n smallest |value|s of every m consecutive entries of a row set to 0.0."""
    out = w.clone()
    for row in out:
        for start in range(0, row.numel(), m):
            group = row[start : start + m]
            group[group.abs().argsort()[:n]] = 0.0
    return out


def _llama_like(seed: int = 0) -> dict[str, torch.Tensor]:
    """Names and shapes of a Llama state dict, the linear weights pruned 2:4."""
    g = torch.Generator().manual_seed(seed)
    sd = {"model.embed_tokens.weight": torch.randn(32, 8, generator=g)}
    for i in range(2):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = torch.ones(8)
        sd[p + "self_attn.q_proj.weight"] = _prune_nm(torch.randn(8, 8, generator=g))
        sd[p + "mlp.up_proj.weight"] = _prune_nm(torch.randn(16, 8, generator=g))
        sd[p + "mlp.down_proj.weight"] = _prune_nm(torch.randn(8, 16, generator=g))
    sd["model.norm.weight"] = torch.ones(8)
    sd["lm_head.weight"] = torch.randn(32, 8, generator=g)
    return sd


PRUNED = [
    f"model.layers.{i}.{name}"
    for i in range(2)
    for name in ("self_attn.q_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")
]


@pytest.mark.parametrize("chunk", [None, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("nm", [(2, 4), (1, 4), (3, 4), (4, 8), (1, 2), (4, 4)])
def test_nm_counts_match_a_reference(nm, dtype, chunk, monkeypatch):
    if chunk is not None:  # many passes over one weight
        monkeypatch.setattr(sys.modules["torch_hollow.audit"], "_CHUNK", chunk)
    n, m = nm
    g = torch.Generator().manual_seed(n * 10 + m)
    w = torch.randn(12, 16, generator=g)
    w[torch.rand(12, 16, generator=g) < 0.45] = 0.0
    w[torch.rand(12, 16, generator=g) < 0.05] = -0.0  # -0.0 is 0.0 here
    w = w.to(dtype)
    (row,) = audit({"fc.weight": w}, nm=f"{n}:{m}")
    bad, zeros, largest = _nm_reference(w, n, m)
    assert 0 < bad < 12 * 16 // m  # the data has both kinds of group
    assert (row.violations, row.zeros, row.held_max) == (bad, zeros, largest)
    assert row.violated and row.pattern == f"{n}:{m}" and row.sparsity == n / m
    (fixed,) = audit({"fc.weight": _prune_nm(w, n, m)}, nm=(n, m))
    assert (fixed.violations, fixed.held_max, fixed.violated) == (0, 0.0, False)


def test_nm_groups_run_along_the_last_dim():
    w = torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    assert audit({"fc.weight": w}, nm="2:4")[0].violations == 0
    assert audit({"fc.weight": w}, nm="2:2")[0].violations == 2  # [1, 1] twice
    assert audit({"fc.weight": w.T}, nm="2:2")[0].violations == 4  # every row is [0, 1] or [1, 0]
    # a batched weight: groups of each matrix's rows
    (row,) = audit({"w": torch.stack([w, w.flip(0)])}, nm="2:4", only="w")
    assert row.shape == (2, 2, 4) and row.violations == 0


def test_check_nm_on_a_safetensors_file(tmp_path, capsys):
    from safetensors.torch import save_file

    sd = _llama_like()
    path = tmp_path / "model.safetensors"
    save_file(sd, str(path))
    assert main(["check", str(path), "--nm", "2:4"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[-2:] == ["zeros", "violations"]
    rows = {r.name: r for r in audit(path, nm="2:4")}
    assert sorted(r.name for r in rows.values() if r.pattern == "2:4") == sorted(PRUNED)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):  # dense: not chosen
        assert rows[name].pattern is None and rows[name].zeros is None
    assert "model.norm.weight" not in rows  # 1-D
    assert all(rows[n].zeros >= 0.5 and rows[n].held_max == 0.0 for n in PRUNED)

    # one pruned entry made non-zero: that group has one zero
    w = sd["model.layers.1.mlp.down_proj.weight"]
    w[3, 4:8] = torch.tensor([0.0, 0.5, 2.0, -3.0])
    save_file(sd, str(path))
    assert main(["check", str(path), "--nm", "2:4", "--json"]) == 1
    out = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    bad = out["model.layers.1.mlp.down_proj.weight"]
    assert (bad["violated"], bad["violations"], bad["held_max"]) == (True, 1, 0.5)
    assert sum(r["violated"] for r in out.values()) == 1
    assert out["lm_head.weight"]["violations"] is None  # new fields on every JSON row
    # --only: the other weights alone pass; the dense ones fail when asked for
    assert main(["check", str(path), "--nm", "2:4", "--only", r"q_proj|up_proj"]) == 0
    assert main(["check", str(path), "--nm", "2:4", "--only", "embed"]) == 1


def _shard(tmp_path, sd, sizes=(3, 5)):
    """Write ``sd`` as safetensors shards of ``sizes`` tensors (the rest in the last one)."""
    from safetensors.torch import save_file

    names, files, start = list(sd), [], 0
    for i, size in enumerate([*sizes, len(sd)]):
        part = names[start : start + size]
        if not part:
            break
        files.append((f"model-{i + 1:05d}-of-xxxxx.safetensors", part))
        start += size
    weight_map = {}
    for file, part in files:
        save_file({k: sd[k] for k in part}, str(tmp_path / file))
        weight_map.update(dict.fromkeys(part, file))
    return weight_map


def _write_index(tmp_path, weight_map):
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("indexed", [True, False])
def test_check_nm_on_a_sharded_directory(tmp_path, capsys, indexed):
    sd = _llama_like()
    weight_map = _shard(tmp_path, sd)
    assert len(set(weight_map.values())) == 3
    if indexed:
        _write_index(tmp_path, weight_map)
    rows = audit(tmp_path, nm="2:4")
    assert {r.name for r in rows} == {n for n, t in sd.items() if t.dim() == 2}
    assert not any(r.violated for r in rows)
    assert main(["check", str(tmp_path), "--nm", "2:4"]) == 0

    # a non-zero in the last shard is found
    last = [n for n in PRUNED if weight_map[n] == weight_map["lm_head.weight"]][-1]
    sd[last][0, :4] = torch.tensor([1.0, 0.0, 2.0, 3.0])
    from safetensors.torch import save_file

    shard = weight_map[last]
    save_file({k: sd[k] for k, f in weight_map.items() if f == shard}, str(tmp_path / shard))
    capsys.readouterr()
    assert main(["check", str(tmp_path), "--nm", "2:4"]) == 1
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "VIOLATED" in x]
    assert line.split()[0] == last and line.split()[-1] == "1"


def test_sharded_directory_reads_one_tensor_at_a_time(tmp_path, monkeypatch):
    import safetensors

    sd = _llama_like()
    _write_index(tmp_path, _shard(tmp_path, sd))
    opened, reads = [], []
    real = safetensors.safe_open

    class Spy:
        def __init__(self, path, framework):
            self.inner = real(path, framework=framework)
            opened.append(path)

        def __enter__(self):
            self.handle = self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def keys(self):
            return self.handle.keys()

        def get_tensor(self, key):
            reads.append(key)
            return self.handle.get_tensor(key)

    monkeypatch.setattr(safetensors, "safe_open", Spy)
    audit(tmp_path, nm="2:4")
    assert len(opened) == 3 and sorted(reads) == sorted(sd)  # each tensor read once


def test_sharded_directory_errors(tmp_path):
    sd = _llama_like()
    weight_map = _shard(tmp_path, sd)
    with pytest.raises(HollowError, match=r"no \.safetensors file"):
        audit(_empty(tmp_path))
    _write_index(tmp_path, {**weight_map, "extra.weight": "model-00009-of-xxxxx.safetensors"})
    with pytest.raises(HollowError, match=r"names the shard 'model-00009.*Fix: copy"):
        audit(tmp_path)
    _write_index(tmp_path, {**weight_map, "lm_head.weight": "model-00001-of-xxxxx.safetensors"})
    with pytest.raises(
        HollowError, match=r"puts 'lm_head\.weight' in 'model-00001.*which does not"
    ):
        audit(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(HollowError, match="is not a safetensors index"):
        audit(tmp_path)
    (tmp_path / "model.safetensors.index.json").unlink()
    from safetensors.torch import save_file

    save_file({"lm_head.weight": torch.zeros(2, 4)}, str(tmp_path / "copy.safetensors"))
    with pytest.raises(HollowError, match=r"'lm_head\.weight' is in both"):
        audit(tmp_path)
    (tmp_path / "copy.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(HollowError, match="cannot be read as safetensors"):
        audit(tmp_path)


def _empty(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty


def test_check_a_save_pretrained_llama_pruned_2_4(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    linears = {
        f"{name}.weight": module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and ".layers." in name
    }
    assert main(["check", str(_save(model, tmp_path / "dense")), "--nm", "2:4"]) == 1
    with torch.no_grad():
        for module in linears.values():
            module.weight.copy_(_prune_nm(module.weight))
    path = _save(model, tmp_path / "pruned")
    assert len(list(path.glob("*.safetensors"))) > 1
    assert (path / "model.safetensors.index.json").is_file()
    capsys.readouterr()
    assert main(["check", str(path), "--nm", "2:4"]) == 0
    rows = {r.name: r for r in audit(path, nm="2:4")}
    assert {n for n, r in rows.items() if r.pattern == "2:4"} == set(linears)  # 7 per layer
    assert len(linears) == 14 and rows["lm_head.weight"].pattern is None


def _save(model, path):
    model.save_pretrained(path, max_shard_size="8KB")
    return path


def _masked_checkpoint(tmp_path):
    """A state dict whose pruned entries are 0.0, and the masks (True = free) it was pruned by."""
    g = torch.Generator().manual_seed(1)
    sd = {
        "0.weight": torch.randn(6, 5, generator=g),
        "0.bias": torch.randn(6, generator=g),
        "1.weight": torch.randn(3, 6, generator=g).to(torch.bfloat16),
    }
    masks = {"0.weight": torch.rand(6, 5, generator=g) > 0.6, "1.weight": torch.eye(3, 6) == 0}
    for name, allowed in masks.items():
        sd[name] = sd[name] * allowed  # held entries: 0.0 or -0.0
    return sd, masks


@pytest.mark.parametrize("mask_format", ["safetensors", "pt", "mapping"])
def test_check_mask_pass_and_violation(tmp_path, capsys, mask_format):
    from safetensors.torch import save_file

    sd, masks = _masked_checkpoint(tmp_path)
    path, mask_path = tmp_path / "model.safetensors", tmp_path / f"masks.{mask_format}"
    if mask_format == "safetensors":
        save_file(masks, str(mask_path))
    elif mask_format == "pt":
        torch.save(masks, mask_path)
    mask = masks if mask_format == "mapping" else mask_path
    save_file(sd, str(path))
    assert any(bool((t.signbit() & (t == 0)).any()) for t in sd.values())  # -0.0 is held: fine
    rows = {r.name: r for r in audit(path, mask=mask)}
    for name, allowed in masks.items():
        held = ~allowed
        assert rows[name].pattern == "mask" and rows[name].violations == 0
        assert rows[name].sparsity == held.sum().item() / held.numel()
        assert rows[name].zeros == (sd[name] == 0).sum().item() / held.numel()
        assert rows[name].held_max == 0.0 and not rows[name].violated
    if mask_format != "mapping":
        assert main(["check", str(path), "--mask", str(mask_path)]) == 0

    sd["0.weight"][~masks["0.weight"]] = 0.0
    held = (~masks["0.weight"]).nonzero()
    sd["0.weight"][tuple(held[0])] = -0.75
    sd["0.weight"][tuple(held[-1])] = 0.25
    save_file(sd, str(path))
    row = next(r for r in audit(path, mask=mask) if r.name == "0.weight")
    assert (row.violated, row.violations, row.held_max) == (True, 2, 0.75)
    if mask_format != "mapping":
        capsys.readouterr()
        assert main(["check", str(path), "--mask", str(mask_path), "--json"]) == 1
        out = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
        assert out["0.weight"]["violations"] == 2 and not out["1.weight"]["violated"]
        # --only: the weight without a violation alone passes
        assert main(["check", str(path), "--mask", str(mask_path), "--only", r"^1\."]) == 0


def test_check_mask_from_torch_prune(tmp_path):
    from torch.nn.utils import prune

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 2))
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    masks = {k: v for k, v in model.state_dict().items() if k.endswith("_mask")}
    assert masks["0.weight_mask"].dtype == torch.float32  # prune's: 1.0 = kept
    prune.remove(model[0], "weight")
    path, mask_path = tmp_path / "model.pt", tmp_path / "masks.pt"
    torch.save(model.state_dict(), path)
    torch.save(masks, mask_path)
    assert main(["check", str(path), "--mask", str(mask_path)]) == 0
    (row,) = [r for r in audit(path, mask=mask_path) if r.pattern]
    assert row.name == "0.weight" and row.sparsity == 0.5
    sd = model.state_dict()
    sd["0.weight"][masks["0.weight_mask"] == 0] = 1e-30  # tiny, but not 0.0
    torch.save(sd, path)
    assert main(["check", str(path), "--mask", str(mask_path)]) == 1
    assert audit(path, mask=mask_path)[0].violations == 12


def test_check_mask_errors(tmp_path, capsys):
    from safetensors.torch import save_file

    sd, masks = _masked_checkpoint(tmp_path)
    path, mask_path = tmp_path / "model.safetensors", tmp_path / "masks.safetensors"
    save_file(sd, str(path))
    other = masks["1.weight"].clone()
    cases = [
        ({**masks, "2.weight": other}, "has '2.weight', but the checkpoint has no tensor"),
        (
            {**masks, "0.weight": masks["0.weight"].T.contiguous()},
            r"'0.weight' \(shape \(6, 5\)\): its mask '0.weight' has shape \(5, 6\)\. Fix: "
            "save a mask of the tensor's shape",
        ),
        ({"0.weight": masks["0.weight"].float()}, "is a torch.float32 tensor, not bool"),
        ({"0.bias": torch.ones(6, dtype=torch.bool)}, "has a mask, but is a torch.float32 tensor"),
    ]
    for bad, message in cases:
        save_file(bad, str(mask_path))
        with pytest.raises(HollowError, match=message):
            audit(path, mask=mask_path)
        assert main(["check", str(path), "--mask", str(mask_path)]) == 2
        err = capsys.readouterr().err
        assert "Fix:" in err and re.search(message, err)
    save_file({"2.weight": other, **masks}, str(mask_path))
    assert main(["check", str(path), "--mask", str(mask_path), "--only", "0"]) == 0  # 2.: skipped


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nm": "2-4"}, "nm='2-4' is not an N:M sparsity"),
        ({"nm": "5:4"}, "is not an N:M sparsity.*1 <= N <= M"),
        ({"nm": "0:4"}, "is not an N:M sparsity"),
        ({"nm": "2:4", "mask": {}}, "nm or mask, not both"),
        ({"only": "proj"}, "neither is given"),
        ({"nm": "2:4", "only": "("}, r"only='\(' is not a regular expression"),
        ({"nm": "2:3"}, r"'fc.weight' \(shape \(2, 4\)\): its last dimension \(4\) is not a "),
    ],
)
def test_asked_check_errors(kwargs, message):
    with pytest.raises(HollowError, match=message) as err:
        audit({"fc.weight": torch.zeros(2, 4)}, **kwargs)
    assert "Fix:" in str(err.value)


def test_check_cli_bad_nm_exits_2(tmp_path, capsys):
    path = tmp_path / "ckpt.pt"
    torch.save({"fc.weight": torch.zeros(2, 4)}, path)
    assert main(["check", str(path), "--nm", "2:3"]) == 2
    assert "is not a multiple of 3" in capsys.readouterr().err


def test_audit_row_keeps_its_fields_and_repr():
    (row,) = audit({"w": torch.eye(2)})
    old = ["name", "shape", "pattern", "held_max", "violated", "sparsity"]
    assert list(asdict(row)) == [*old, "zeros", "violations"]
    assert AuditRow("w", (2, 2), None, 1.0, False) == row
    assert repr(row) == (
        "AuditRow(name='w', shape=(2, 2), pattern=None, held_max=1.0, violated=False, "
        "sparsity=None)"
    )
    (checked,) = audit({"w": torch.eye(2)}, nm="1:2", only="w")
    assert repr(checked).endswith("sparsity=0.5, zeros=0.5, violations=0)")
