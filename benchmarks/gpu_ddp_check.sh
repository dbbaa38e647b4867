#!/usr/bin/env bash
# GPU checks of the DDP issue, in one go (about 5 minutes): the NCCL test of tests/test_cuda.py
# (torchrun, world size 1: training, CUDA-graph views, rank 0 writing, resume), then the throughput
# of SeMi and FixMatch at the paper's batch, plain and as the one rank of a torchrun DDP launch, each
# ratio step / floor measured in its own process (the floor is the bare network, never wrapped).
#
#   bash benchmarks/gpu_ddp_check.sh OUT_DIR      # from the repository root, on a machine with a CUDA GPU
#
# Compare OUT/bench_*_plain.json with OUT/bench_*_ddp1.json: the DDP overhead is ratio_ddp1 / ratio_plain.
set -u -o pipefail
OUT=${1:-gpu_ddp_out}
mkdir -p "$OUT"
source "$(dirname "$0")/gpu_common.sh"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
record_environment

echo "== NCCL test (torchrun, one rank)"
timeout 300 $PY -m pytest -q -s -p no:cacheprovider -p no:warnings tests/test_cuda.py -k torchrun 2>&1 \
    | tee "$OUT/tests.log" | tail -n 5

TORCHRUN="$PY -m torch.distributed.run --standalone --nproc_per_node 1 -m"  # the same bench, one torchrun rank

for A in semi fixmatch; do
    X=""; [ "$A" = semi ] && X="$SEMI"
    bench "${A}_plain" 150 --algorithm $A $X
    LAUNCH="$TORCHRUN" bench "${A}_ddp1" 150 --algorithm $A $X
done
