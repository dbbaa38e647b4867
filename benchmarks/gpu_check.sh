#!/usr/bin/env bash
# GPU checks of issue 5, in one go: the CUDA tests, the throughput benchmark of SeMi and FixMatch at
# the paper's batch (WRN-28-2, 64 labeled + 64 unlabeled x 3 views, 32x32x3) in fp32 / bf16, with
# and without torch.compile, with the views replayed from CUDA graphs (default) and eager, and a
# profile of the SeMi step.
#
#   bash benchmarks/gpu_check.sh OUT_DIR      # from the repository root, on a machine with a CUDA GPU
#
# Needs torch with CUDA, numpy, pytest, scipy, pillow, scikit-learn; the package is used from src/
# (no install). Each part has its own time limit so that one hang does not cost the rest.
set -u -o pipefail
OUT=${1:-gpu_out}
mkdir -p "$OUT"
source "$(dirname "$0")/gpu_common.sh"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
record_environment

echo "== CUDA tests"
timeout 200 $PY -m pytest -q -s -p no:cacheprovider -p no:warnings tests/test_cuda.py tests/test_augment.py 2>&1 | tee "$OUT/tests.log" | tail -n 15

bench semi_fp32 120 $SEMI train.precision=fp32
bench semi_bf16 120 $SEMI train.precision=bf16
bench semi_fp32_eager_views 120 $SEMI train.precision=fp32 train.cuda_graphs=false
bench semi_fp32_no_cudnn_benchmark 120 $SEMI train.precision=fp32 train.cudnn_benchmark=false
bench semi_bf16_no_cudnn_benchmark 120 $SEMI train.precision=bf16 train.cudnn_benchmark=false
bench fixmatch_fp32 120 --algorithm fixmatch train.precision=fp32
bench fixmatch_bf16 120 --algorithm fixmatch train.precision=bf16
bench semi_bf16_compile 200 $SEMI train.precision=bf16 train.compile=true
bench semi_fp32_compile 200 $SEMI train.precision=fp32 train.compile=true

echo "== profile of the SeMi fp32 step"
timeout 120 $PY benchmarks/profile_step.py --config $C --device cuda --steps 5 --rows 40 $SEMI train.precision=fp32 \
    > "$OUT/profile_semi_fp32.txt" 2>&1 || echo "profile FAILED"
grep -A3 "^semi," "$OUT/profile_semi_fp32.txt"
