"""Write the files saved by torch-hollow 0.1.0 that tests/test_compat.py loads.

Run once at 0.1.0 (commit ece4675): ``python tests/data/v0_1_0/make.py``. The files it wrote are
committed; later versions must load them, compute the same outputs bitwise and hold the zeros.
tests/test_compat.py imports `build` and `run` from here.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import torch_hollow
from torch_hollow import HollowLinear, hollow_, hollow_masks_
from torch_hollow.patterns import BlockDiagonal, Diagonal, Mask

HERE = Path(__file__).parent


def build() -> nn.ModuleDict:
    # Only torch.nn and torch-hollow classes: the pickle names nothing of this script's.
    g = torch.Generator().manual_seed(0)
    model = nn.ModuleDict(
        {
            "diag": HollowLinear(4, 4),
            "mask": HollowLinear(4, 3, pattern=Mask(torch.rand(3, 4, generator=g) > 0.5)),
            "union": hollow_(nn.Linear(3, 6), pattern=BlockDiagonal(2, 1) | Diagonal(1)),
            "lstm": hollow_(nn.LSTM(6, 3, batch_first=True), "weight_hh_l0"),
            "mha": hollow_(nn.MultiheadAttention(3, 1, batch_first=True), "out_proj.weight"),
            "conv": nn.Conv1d(3, 2, 2),
        }
    )
    return hollow_masks_(model, {"conv.weight": torch.rand(2, 3, 2, generator=g) > 0.5})


def run(model: nn.ModuleDict, x: torch.Tensor) -> torch.Tensor:
    h = model["union"](model["mask"](model["diag"](x)))  # (B, T, 6)
    h, _ = model["lstm"](h)  # (B, T, 3)
    h, _ = model["mha"](h, h, h)
    return model["conv"](h.transpose(1, 2))


if __name__ == "__main__":
    assert torch_hollow.__version__ == "0.1.0"
    torch.manual_seed(0)
    model = build()
    x = torch.randn(2, 5, 4)
    with torch.no_grad():
        y = run(model, x)
    torch.save(model, HERE / "model.pt")
    torch.save(model.state_dict(), HERE / "state_dict.pt")
    torch.save({"input": x, "output": y}, HERE / "io.pt")
    print("wrote", sorted(p.name for p in HERE.glob("*.pt")))
