# Shared by benchmarks/gpu_check.sh, gpu_overlap_check.sh and gpu_ddp_check.sh (sourced, not run): the
# setting they measure, the environment record and the throughput bench of one configuration.
# Expects OUT (the output folder) to be set; SRC picks the package tree a bench runs (default: src/).
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
C=configs/cifar10_lt/consistent_n500_m4000_g100.yaml  # the paper's batch: WRN-28-2, 64 + 64 x 3 views
SEMI="train.epoch_length=1 algorithm.warmup_epochs=0"  # SeMi with every term active on every step

record_environment() {
    PYTHONPATH="$PWD/src" $PY -c "import torch, platform; print('torch', torch.__version__, 'cuda', torch.version.cuda, '|', torch.cuda.get_device_name(), '| python', platform.python_version())" | tee "$OUT/env.txt"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee -a "$OUT/env.txt"
}

bench() {  # name, limit in seconds, overrides...: OUT/bench_NAME.json and a one-line summary
    # LAUNCH runs the module (default "$PY -m"; e.g. "$PY -m torch.distributed.run --nproc_per_node 1 -m")
    local name=$1 limit=$2; shift 2
    echo "== bench $name${LAUNCH:+ ($LAUNCH)}"
    PYTHONPATH="${SRC:-$PWD/src}" timeout "$limit" ${LAUNCH:-$PY -m} cissl bench throughput --config $C --synthetic \
        --device cuda --steps "${STEPS:-60}" --warmup 10 --rounds 3 --json "$@" \
        > "$OUT/bench_$name.json" 2> "$OUT/bench_$name.err" || echo "FAILED ($?): $(tail -n 3 "$OUT/bench_$name.err")"
    $PY -c "import json,sys; r=json.load(open(sys.argv[1])); print(f\"  {r['it_per_s']:.1f} it/s, step {1e3*r['step_s']:.2f} ms, floor {1e3*r['floor_s']:.2f} ms, ratio {r['ratio']:.3f}\")" "$OUT/bench_$name.json" 2>/dev/null
}
