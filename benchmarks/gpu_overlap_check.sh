#!/usr/bin/env bash
# GPU checks of the sync-free step (issue 5): the CUDA tests of the new switches and of "a step never
# waits for the device", a profile of the SeMi step with the source line of every host<->device
# synchronisation, and the SeMi throughput at the paper's batch (WRN-28-2, 64 labeled + 64 unlabeled
# x 3 views) of this tree against a baseline tree, interleaved in one process tree on one machine,
# plus fused SGD and torch.compile(mode="reduce-overhead").
#
#   bash benchmarks/gpu_overlap_check.sh OUT_DIR [BASELINE_SRC]
#
# BASELINE_SRC: a src/ directory of another commit (e.g. `git archive d5c5702 src | tar -x -C base`,
# then base/src); its rows are named base_*. Needs torch with CUDA, numpy, pytest, scipy, pillow,
# scikit-learn, pyyaml; the package is used from src/ (no install).
set -u -o pipefail
OUT=${1:-gpu_out}
BASE=${2:-}
mkdir -p "$OUT"
source "$(dirname "$0")/gpu_common.sh"
record_environment

echo "== CUDA tests (sync-free step, fused SGD, reduce-overhead compile)"
PYTHONPATH="$PWD/src" timeout 240 $PY -m pytest -q -s -p no:cacheprovider -p no:warnings tests/test_cuda.py \
    -k "never_waits or fused or reduce-overhead" 2>&1 | tee "$OUT/tests.log" | tail -n 8

echo "== profile of the SeMi fp32 step (sync sources)"
PYTHONPATH="$PWD/src" timeout 120 $PY benchmarks/profile_step.py --config $C --device cuda --steps 5 --rows 30 \
    $SEMI train.precision=fp32 > "$OUT/profile_semi_fp32.txt" 2>&1 || echo "profile FAILED"
grep -A3 "^semi," "$OUT/profile_semi_fp32.txt"

for round in 1 2; do
    for precision in fp32 bf16; do
        [ -n "$BASE" ] && SRC=$BASE bench base_semi_${precision}_r$round 120 $SEMI train.precision=$precision
        bench semi_${precision}_r$round 120 $SEMI train.precision=$precision
    done
done
bench semi_fp32_fused 120 $SEMI train.precision=fp32 optim.fused=true
bench semi_bf16_fused 120 $SEMI train.precision=bf16 optim.fused=true
bench fixmatch_fp32 120 --algorithm fixmatch train.precision=fp32
bench semi_bf16_reduce_overhead 240 $SEMI train.precision=bf16 train.compile=true train.compile_mode=reduce-overhead
