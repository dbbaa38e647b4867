#!/usr/bin/env bash
# Counts 2-rank torchrun runs (gloo, CPU) that end with a rank aborting at exit ("terminate called
# without an active exception"): the failure that engine.launch.launched's garbage collection and
# release_frames prevent. Two busy loops load the cores, as the abort showed only on a busy machine.
#
#   bash benchmarks/ddp_exit_stress.sh MODE RUNS [OUT_DIR]     # from the repository root, on a CPU machine
#
# MODE resumed: train a 24-step digits-LT run once, then RUNS times resume a copy of it from its
#               checkpoint at 16 (`torchrun ... --resume`), each to its end.
# MODE stopped: RUNS times start a 400-step run and send SIGTERM to torchrun STOP_AFTER seconds later (default
#               8; torchrun forwards it to both ranks, which stop after their step and write a
#               checkpoint; a run the signal reached outside training is counted apart).
# Prints one line per run (ok / ABORT, the exit status, whether it stopped in training) and the counts;
# an abort's output is kept in OUT_DIR (default: a temporary folder).
set -u -o pipefail
MODE=${1:?MODE: resumed or stopped}
RUNS=${2:?RUNS: how many runs}
OUT=${3:-$(mktemp -d)}
mkdir -p "$OUT"
PY=${PY:-python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1
TORCHRUN="$PY -m torch.distributed.run --standalone --nproc_per_node 2 -m cissl train"
SETTINGS="model.depth=10 model.widen=1 train.batch_size=16 train.iterations=24 train.eval_every=8
          train.checkpoint_every=8 train.report_last=1 data.unlabeled_distribution=consistent"

for _ in 1 2; do $PY -c "while True: pass" & done
trap 'kill $(jobs -p) 2>/dev/null' EXIT

if [ "$MODE" = resumed ]; then
    $TORCHRUN --config configs/quickstart.yaml --out "$OUT/base" --quiet $SETTINGS > "$OUT/base.log" 2>&1 \
        || { echo "the base run failed: $OUT/base.log"; exit 1; }
fi
aborts=0 trained=0
for i in $(seq 1 "$RUNS"); do
    run="$OUT/run$i"
    if [ "$MODE" = resumed ]; then
        cp -r "$OUT/base" "$run" && rm -f "$run"/checkpoints/ckpt_00000024.pt "$run/results.json"
        timeout 300 $TORCHRUN --resume "$run" --quiet > "$run.log" 2>&1
    else
        timeout -s TERM "${STOP_AFTER:-8}" $TORCHRUN --config configs/quickstart.yaml --out "$run" --quiet $SETTINGS \
            train.iterations=400 > "$run.log" 2>&1  # long enough for the signal to come while it trains
    fi
    status=$?
    where=""
    if grep -q "stopped after iteration" "$run.log"; then trained=$((trained + 1)); where=", stopped in training"; fi
    if grep -q "terminate called" "$run.log"; then
        aborts=$((aborts + 1)); echo "run $i ABORT (exit $status$where): $run.log"
    else
        echo "run $i ok (exit $status$where)"; rm -rf "$run" "$run.log"
    fi
done
[ "$MODE" = stopped ] && echo "$trained of $RUNS runs stopped in training"
echo "$MODE: $aborts aborts in $RUNS runs ($(getconf _NPROCESSORS_ONLN) cores, torch $($PY -c 'import torch; print(torch.__version__)'))"
