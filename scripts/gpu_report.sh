#!/usr/bin/env bash
# The GPU measurements of docs/BENCHMARKS.md ("On a GPU"), in one command on a CUDA machine:
#
#   scripts/gpu_report.sh OUT [FER2013_ROOT]           both parts (more than the 9 minutes one H200 gave it)
#   PART=bench scripts/gpu_report.sh OUT               speed only: hsbs bench, the demo's two runs, torch.compile
#   PART=runs  scripts/gpu_report.sh OUT FER2013_ROOT  the training runs, several at a time on the one GPU
#   PART=compile scripts/gpu_report.sh OUT             operator calls per step, and every method's step eager,
#                                                      compiled and as CUDA graphs (COMPILE_SIZES x COMPILE_BATCHES)
#
# Everything is written under OUT (logs/, runs/, *.md); nothing goes into the repository. FER2013_ROOT is a
# folder with fer2013.csv (docs/DATASETS.md); without it the FER2013 runs are skipped. The runs part stops
# every run still going after DEADLINE seconds (default 420) and then tabulates what finished.
# HST_SEEDS (default 0 1 2 3 4) and FER_SEEDS (default 0 1 2) choose the seeds of the two comparisons;
# MAX_LANES (6) trainings run at once in the runs part, LANE_THREADS (2) CPU threads each.
# DEVICE and EXTRA (key=value overrides for every training) allow a quick dry run on a CPU.
# HSBS names the command (default: hsbs, else python3 -m hsbs_lib.cli from the repository root).
set -u
OUT=${1:?usage: scripts/gpu_report.sh OUT [FER2013_ROOT]}
FER_ROOT=${2:-}
PART=${PART:-all}
DEADLINE=${DEADLINE:-420}
DEVICE=${DEVICE:-cuda}      # cpu runs the same steps as a dry run
EXTRA=${EXTRA:-}            # overrides for every training, e.g. a tiny dry run: EXTRA="train.epochs=1 data.n_train=128"
BENCH_STEPS=${BENCH_STEPS:-12}
MAX_LANES=${MAX_LANES:-6}          # trainings at once in the runs part
LANE_THREADS=${LANE_THREADS:-2}    # CPU threads of each
METHODS=${METHODS-baseline hsbs clcl phanet mfer}   # the compiled 224 px epochs (empty: none)
COMPILE_SIZES=${COMPILE_SIZES:-48 65 224}                    # input sizes of the compile part
COMPILE_BATCHES=${COMPILE_BATCHES:-64 256}                    # batch sizes of the compile part
COMPILE_MODES=${COMPILE_MODES:-false true reduce-overhead}    # train.compile settings timed
COMPILE_METHODS=${COMPILE_METHODS:-baseline hsbs clcl phanet mfer}   # the methods timed in the compile part
HST_SEEDS=${HST_SEEDS:-0 1 2 3 4}
FER_SEEDS=${FER_SEEDS:-0 1 2}
case "$PART" in bench|runs|compile|all) ;; *) echo "gpu_report.sh: PART must be bench, runs, compile or all, not '$PART'" >&2; exit 2 ;; esac
cd "$(dirname "$0")/.."
if [ -z "${HSBS:-}" ]; then
    if command -v hsbs >/dev/null; then HSBS=hsbs; else HSBS="python3 -m hsbs_lib.cli"; export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}; fi
fi
mkdir -p "$OUT/logs" "$OUT/runs"
OUT=$(cd "$OUT" && pwd)
export HSBS_NO_PROGRESS=1 PYTHONUNBUFFERED=1
started=$(date +%s)
say() { echo "[gpu_report $(( $(date +%s) - started ))s] $*"; }

# One step of the report: its command, its log, its wall time; a failing step is reported, not fatal.
step() {
    local name=$1; shift
    local t0=$(date +%s)
    "$@" >"$OUT/logs/$name.log" 2>&1
    local rc=$?
    echo "| $name | $rc | $(( $(date +%s) - t0 )) |" >>"$OUT/steps.md"
    say "$name: exit $rc after $(( $(date +%s) - t0 )) s"
    return $rc
}

# The 224 px paper scale: the standard ResNet-18 stem at full width (layer4 7x7).
PAPER_SCALE="model.stem=standard model.backbone_width=64"
# 225 = 32 * 7 + 1: the odd size keeps every stride-2 grid symmetric (as 65 does at the demo scale): layer4 8x8.
HST_SCALE="data.input_size=225 $PAPER_SCALE"

bench_part() {
    {
        echo "# Machine"; nvidia-smi -L; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
        python3 -c "import torch, torchvision, os; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'CUDA', torch.version.cuda, '|', torch.cuda.get_device_name(0), '|', os.cpu_count(), 'CPU cores')"
    } >"$OUT/machine.md" 2>&1
    # Speed of each method at the paper scale and at the demo scale, the input pipelines on the device.
    step bench_224 $HSBS bench --device $DEVICE --sections pipeline models --pipeline-epochs $(( BENCH_STEPS < 4 ? BENCH_STEPS : 4 )) \
        --config configs/papers/baseline_rafdb.yaml --input-size 224 --batch-size 64 --steps $BENCH_STEPS
    step bench_demo $HSBS bench --device $DEVICE --sections models --batch-size 64 --steps $BENCH_STEPS
    step bench_fer48 $HSBS bench --device $DEVICE --sections models --models baseline hsbs \
        --config configs/papers/baseline_rafdb.yaml --input-size 48 --batch-size 64 --steps $BENCH_STEPS
    # make demo's two trainings, one after the other on the idle GPU (the figures need no GPU).
    for method in baseline hsbs; do
        step "demo_$method" $HSBS train --config "configs/synthfer_$method.yaml" --device $DEVICE --out "$OUT/runs/demo/$method" $EXTRA
    done
    # torch.compile on the training step (bf16 autocast is on by default on CUDA).
    step compile_smoke $HSBS train --config configs/synthfer_baseline.yaml --device $DEVICE --out "$OUT/runs/compile_smoke" \
        train.compile=true train.epochs=1 data.n_train=1024 data.n_val=128 data.n_test=128 $EXTRA
    for f in "$OUT"/logs/bench_*.log; do cat "$f"; echo; done >"$OUT/bench.md"
}

# Operator calls per training step (counted on the CPU, deterministic), then every method's training step
# eager, compiled and as CUDA graphs at each size and batch: the ratios to the baseline once launches are gone.
# 48 and 224 px at the paper scale (standard stem, full width), 65 px at the demo's (configs/synthfer_baseline.yaml).
compile_part() {
    step bench_ops $HSBS bench --device cpu --sections ops
    local size batch mode scale
    for size in $COMPILE_SIZES; do
        if [ "$size" = 65 ]; then scale=""; else scale="--config configs/papers/baseline_rafdb.yaml"; fi
        for batch in $COMPILE_BATCHES; do
            for mode in $COMPILE_MODES; do
                step "compile_${size}px_b${batch}_$mode" $HSBS bench --device $DEVICE --sections models \
                    --models $COMPILE_METHODS --compile $mode $scale --input-size $size --batch-size $batch --steps $BENCH_STEPS
            done
        done
    done
    for f in "$OUT"/logs/bench_ops.log "$OUT"/logs/compile_*.log; do [ -f "$f" ] && { cat "$f"; echo; }; done \
        >"$OUT/compile.md"
}

# A step in the background, stopped at the deadline.
lane() {
    local name=$1; shift
    # At most MAX_LANES at once: on 2026-12-04 fifteen at once on one H200 spent most of their time
    # waiting for the 16 CPU cores (rendering, evaluation), not training.
    while [ "$(jobs -rp | wc -l)" -ge "$MAX_LANES" ]; do sleep 2; done
    local left=$(( DEADLINE - ($(date +%s) - runs_started) ))
    if [ "$left" -le 30 ]; then say "$name: not started, $left s left"; return; fi
    ( export OMP_NUM_THREADS=$LANE_THREADS; step "$name" timeout --signal=TERM --kill-after=10 "$left" "$@" ) &
}

# Those of SEEDS whose eval.json exists for every row: the runs a final table can pair.
finished_seeds() {
    local folder=$1 candidates=$2; shift 2
    local seeds=() seed row
    for seed in $candidates; do
        for row in "$@"; do [ -f "$folder/$row/seed$seed/eval.json" ] || continue 2; done
        seeds+=("$seed")
    done
    echo "${seeds[@]}"
}

runs_part() {
    runs_started=$(date +%s)
    # GPU-bound work first, several runs at a time (their rendering and compiling overlap others' steps).
    # Every method for one short epoch (4096 faces) at 224 px with torch.compile and bf16 autocast.
    for method in $METHODS; do
        lane "method224_$method" $HSBS train --config "configs/synthfer_$method.yaml" --device $DEVICE \
            --out "$OUT/runs/method224/$method" data.input_size=224 $PAPER_SCALE train.compile=true \
            train.epochs=1 data.n_train=4096 data.n_val=256 data.n_test=256 $EXTRA
    done
    # HST with a finer teacher: the demo recipe at 225 px (8x8 layer4), baseline and HSBS.
    local hst=(--config configs/ablation_hsbs.yaml --no-speed --out "$OUT/runs/hst225")
    for seed in $HST_SEEDS; do
        for row in baseline hsbs; do
            lane "hst225_${row}_$seed" $HSBS compare "${hst[@]}" --rows $row --reference $row --seeds $seed $HST_SCALE $EXTRA
        done
    done
    wait
    # FER2013's whole training split at the full recipe (40 epochs): small steps bound by kernel launches, so
    # they run after the large ones, which would hold the GPU between their launches.
    local fer=(--config configs/compare_fer2013.yaml --no-speed --out "$OUT/runs/fer_gpu")
    if [ -n "$FER_ROOT" ]; then
        for seed in $FER_SEEDS; do
            for row in baseline hsbs; do
                lane "fer_${row}_$seed" $HSBS compare "${fer[@]}" --rows $row --reference $row --seeds $seed \
                    data.root="$FER_ROOT" $EXTRA
            done
        done
    fi
    wait
    # The tables, from the finished runs only (compare reuses them and trains nothing).
    local seeds
    seeds=$(finished_seeds "$OUT/runs/hst225" "$HST_SEEDS" baseline hsbs)
    if [ -n "$seeds" ]; then
        step table_hst225 $HSBS compare "${hst[@]}" --rows hsbs --seeds $seeds $HST_SCALE $EXTRA
    fi
    seeds=$(finished_seeds "$OUT/runs/fer_gpu" "$FER_SEEDS" baseline hsbs)
    if [ -n "$FER_ROOT" ] && [ -n "$seeds" ]; then
        step table_fer $HSBS compare "${fer[@]}" --rows baseline hsbs --reference baseline --seeds $seeds \
            data.root="$FER_ROOT" $EXTRA
    fi
}

echo "| step | exit | seconds |" >"$OUT/steps.md"; echo "|---|---:|---:|" >>"$OUT/steps.md"
case "$PART" in
    bench) bench_part ;;
    runs) runs_part ;;
    compile) compile_part ;;
    all) bench_part; compile_part; runs_part ;;
esac
say "done"
