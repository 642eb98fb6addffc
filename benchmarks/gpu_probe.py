"""Peak CUDA memory of one training step: plain nn.Linear vs HollowLinear, and why.

Run: python benchmarks/gpu_probe.py  (needs a GPU)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torch_hollow import HollowLinear


def peak(module: nn.Module, x: torch.Tensor) -> float:
    def step():
        module.zero_grad(set_to_none=True)
        module(x).float().square().mean().backward()

    step()
    module.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


class TransposedAddmm(nn.Linear):
    """The eager path of HollowLinear without its hook: addmm on weight.t()."""

    def forward(self, x):
        return torch.addmm(self.bias, x, self.weight.t())


def main() -> None:
    for n, batch in [(1024, 8), (4096, 8), (4096, 512)]:
        x = torch.randn(batch, n, device="cuda", dtype=torch.bfloat16)
        row = []
        for cls in (nn.Linear, TransposedAddmm, HollowLinear, nn.Linear):
            torch.manual_seed(0)
            m = cls(n, n, device="cuda", dtype=torch.bfloat16)
            row.append(f"{cls.__name__}={peak(m, x):.2f}")
        print(f"n={n} batch={batch} weight={n * n * 2 / 2**20:.1f} MiB peak MiB:", *row)
    layer = HollowLinear(8, 8, device="cuda")
    x = torch.randn(3, 8, device="cuda")
    print("F.linear equal:", torch.equal(layer(x), F.linear(x, layer.weight, layer.bias)))


if __name__ == "__main__":
    main()
