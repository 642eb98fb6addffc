"""Run a function on 2 gloo ranks on CPU (or NCCL with --device cuda), bounded in time."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(
    rank: int, fn: Callable, world: int, port: int, backend: str, args: tuple, done: str
) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank)
        fn(rank, world, *args)
        dist.barrier()
        open(os.path.join(done, f"rank{rank}.ok"), "w").close()  # every check passed
    finally:
        dist.destroy_process_group()


def run_ranks(
    fn: Callable, *args: object, world: int = 2, backend: str = "gloo", timeout: float = 180.0
) -> None:
    """Run ``fn(rank, world, *args)`` on ``world`` processes; raise if any fails or hangs.

    gloo's threads sometimes abort a process at exit ("terminate called without an active
    exception", SIGABRT) after everything ran: a rank that got that far has written its marker,
    and an abort after every rank's marker is not a failure of ``fn``.
    """
    with tempfile.TemporaryDirectory() as done:
        ctx = mp.start_processes(
            _entry,
            args=(fn, world, free_port(), backend, args, done),
            nprocs=world,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout
        try:
            while not ctx.join(timeout=1.0):
                if time.monotonic() > deadline:
                    for p in ctx.processes:
                        p.kill()
                    raise TimeoutError(
                        f"{fn.__name__} did not finish on {world} ranks in {timeout} s"
                    )
        except mp.ProcessExitedException as err:
            finished = all(os.path.exists(os.path.join(done, f"rank{r}.ok")) for r in range(world))
            if not (finished and err.signal_name == "SIGABRT"):
                raise
            for p in ctx.processes:
                p.join(timeout=30)
