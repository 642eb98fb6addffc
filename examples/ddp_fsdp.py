"""Train a small model with torch-hollow layers under DDP or FSDP2, then audit it.

    torchrun --nproc-per-node 2 examples/ddp_fsdp.py --wrap fsdp   # gloo on CPU, nccl on GPUs
    torchrun --nproc-per-node 2 examples/ddp_fsdp.py --wrap ddp --optimizer adamw

Every rank prints its loss; rank 0 prints the audit of the (gathered) weights at the end.
"""

from __future__ import annotations

import argparse
import gc
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import torch_hollow as th
from torch_hollow.audit import format_audit


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--wrap", choices=["ddp", "fsdp"], default="fsdp")
    has_muon = hasattr(torch.optim, "Muon")  # torch >= 2.9
    parser.add_argument(
        "--optimizer", choices=["muon", "adamw"], default="muon" if has_muon else "adamw"
    )
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--dim", type=int, default=32)
    args = parser.parse_args()
    if args.optimizer == "muon" and not has_muon:
        parser.error(f"--optimizer muon needs torch >= 2.9 (this is {torch.__version__})")

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else None
    if cuda:
        torch.cuda.set_device(device)

    torch.manual_seed(0)
    d = args.dim
    # Self-prediction, as in a linear SEM or EASE: without a hollow W it would learn W = I.
    model = nn.Sequential(
        th.HollowLinear(d, d, bias=False), nn.Tanh(), th.HollowLinear(d, d, bias=False)
    ).to(device)
    if args.wrap == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        run = DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        run = fully_shard(model)
    params = list(model.parameters())
    opt = (
        torch.optim.Muon(params, lr=0.02)
        if args.optimizer == "muon"
        else torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    )
    mixing = torch.randn(d // 2, d, generator=torch.Generator().manual_seed(1)) / (d // 2) ** 0.5
    gen = torch.Generator().manual_seed(100 + rank)  # each rank its own data
    for step in range(1, args.steps + 1):
        x = (torch.randn(64, d // 2, generator=gen) @ mixing).to(device)
        opt.zero_grad()
        loss = F.mse_loss(run(x), x)
        loss.backward()
        opt.step()
        if step % max(1, args.steps // 5) == 0 or step == args.steps:
            print(f"rank {rank} step {step:4d} loss {loss.item():.4f}", flush=True)
    rows = th.audit(model)  # a collective under FSDP2: every rank takes part
    if rank == 0:
        print(format_audit(rows))
    violated = any(r.violated for r in rows)
    # End cleanly: wait until every rank is done with the process group, and drop what holds
    # it (DDP's reducer, FSDP's state) before destroying it. Left to interpreter shutdown,
    # gloo's threads can be torn down mid-flight and a rank aborts with "terminate called
    # without an active exception" after all the work is done.
    dist.barrier()
    del run, model, opt
    gc.collect()
    dist.destroy_process_group()
    return 1 if violated else 0


if __name__ == "__main__":
    raise SystemExit(main())
