#!/usr/bin/env bash
# Everything that needs a GPU, in one run (sized for a lent H100/H200 and under 10 minutes):
# the CUDA test suite, the distributed tests on one GPU (NCCL, world size 1), the torchrun example,
# and the benchmarks: the float32 core table, the per-layer bf16 timing with CUDA events
# (benchmarks/gpu_timing.py: n 1024/4096, batch 8/4096, the reduce-overhead check) and the
# model-level table on CUDA. Uses the machine's own torch; torch_hollow runs from src/ (no
# install needed). Results go to $OUT (default gpu-results/).
set -u
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
LOG="$OUT/log.txt"
step() { echo "=== $* ($(date +%T))" | tee -a "$LOG"; }

step environment
{ $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; } >>"$LOG" 2>&1

step "CUDA tests (eager, patterns, generic, compile, export)"
timeout 150 $PY -m pytest -q -p no:cacheprovider -n 8 --device cuda -k "not onnx" \
  tests/test_nn.py tests/test_functional.py tests/test_constrain.py tests/test_patterns.py \
  tests/test_hooks.py tests/test_compile.py 2>&1 | tail -25 >>"$LOG"

step "distributed tests on one GPU (NCCL, world size 1)"
timeout 90 $PY -m pytest -q -p no:cacheprovider -n 4 --device cuda tests/test_distributed.py \
  2>&1 | tail -25 >>"$LOG"

step "torchrun example, FSDP2 on one GPU"
timeout 45 $PY -m torch.distributed.run --standalone --nproc-per-node 1 examples/ddp_fsdp.py \
  --wrap fsdp --steps 20 2>&1 | grep -v -i warn | tail -8 >>"$LOG"

step "core benchmark, float32, eager and compiled"
timeout 90 $PY benchmarks/bench_core.py --device cuda --rounds 9 --json "$OUT/core-cuda.json" \
  >"$OUT/core-cuda.md" 2>>"$LOG"

step "per-layer timing, bfloat16, CUDA events (target: <= 1.03x at n=4096, batch=4096)"
timeout 100 $PY benchmarks/gpu_timing.py --json "$OUT/timing-cuda-bf16.json" \
  >"$OUT/timing-cuda-bf16.md" 2>>"$LOG"

step "model-level benchmark on CUDA, eager and compiled"
timeout 110 $PY -m torch_hollow bench --models --compile --device cuda --rounds 9 \
  --json "$OUT/models-cuda.json" >"$OUT/models-cuda.md" 2>>"$LOG"
step done
