"""audit() and `torch-hollow check`: patterns found, violations reported, exit codes."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from torch_hollow import HollowError, HollowLinear, audit, hollow_
from torch_hollow.audit import format_audit
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
