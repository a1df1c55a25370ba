#!/usr/bin/env bash
# Issue 17's GPU measurements in one call (one H200, 16 cores): model-step matrix, data path, and a
# 1-GPU Ray Train run. Writes to $OUT: suite.log, model_step.json, data_pipeline.json (with the
# Ray Train run's metrics when Ray is there) and summary.md; about 8 minutes in all.
#
# Prepare on the dev machine, once per checkout (nothing here is committed; .gpu/ is git-ignored
# through .git/info/exclude):
#   bash bench/gpu_suite.sh --prepare        # .gpu/shards: synthetic FER shards (~17 MB, 840 rows)
# Then, with the device tool (the repo root is the working directory there):
#   run(command="bash bench/gpu_suite.sh", carry=[".gpu"], timeout_s=570)
#
# What the GPU machine has (/work/.library/device/KINDS.md): python3 3.12 with torch 2.11,
# torchvision, numpy, pyarrow, pandas, pillow, pyyaml, opencv: enough for bench/model_step.py and
# the Ray-free data-path figures. It has NO ray and NO mlflow: the Ray Data pipeline and the Ray
# Train + MLflow run run only when `import ray, mlflow` works there, else they are recorded as skipped.
# Carrying them is not simple: the ray 2.60.0 cp312 wheel alone is 79 MB (the carry limit is 64 MiB
# for the whole tree), plus ray[default,data,train] and mlflow's dependencies (pydantic, fastapi,
# sqlalchemy, alembic, opentelemetry, ... not on the image). One way, untested: here,
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d /tmp/w ray==2.60.0
#   unzip the wheel, drop ray/jars and ray/rllib, tar + xz it into .gpu/ray-site.tar.xz (size it
#   first), add the other missing wheels to .gpu/whl (README of the device tool, "--no-deps"), and
#   set RAY_SITE=1 below: the script then unpacks both into /tmp/site before stage 2.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

if [[ "${1:-}" == "--prepare" ]]; then
    EXCLUDE=$(git rev-parse --git-path info/exclude)
    grep -qx '/.gpu/' "$EXCLUDE" 2>/dev/null || echo '/.gpu/' >> "$EXCLUDE"
    PYTHONPATH=$REPO .venv/bin/python -m pipeline.ingest --source synthetic --out .gpu/shards \
        --per-class 120 --seed 0 --overwrite
    du -sh .gpu
    exit
fi

OUT=${OUT:-/tmp/gpu_suite_out}
mkdir -p "$OUT"
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PY:-python3}
LOG=$OUT/suite.log
T0=$(date +%s)
stage() { echo "=== $(($(date +%s) - T0)) s: $*" | tee -a "$LOG"; }

stage "environment"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv; nproc
  $PY -c "import torch, torchvision; print('torch', torch.__version__, 'tv', torchvision.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee -a "$LOG"
if [[ "${RAY_SITE:-0}" == 1 ]]; then  # see the header: carried ray + wheels
    mkdir -p /tmp/site && tar -xJf .gpu/ray-site.tar.xz -C /tmp/site \
        && $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl
    export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
HAVE_RAY=0
$PY -c "import ray, mlflow" 2>/dev/null && HAVE_RAY=1
echo "ray+mlflow importable: $HAVE_RAY" | tee -a "$LOG"

PARTS=/tmp/gpu_suite_parts  # $OUT returns at most 8 files: parts are merged by bench/gpu_summary.py
rm -rf "$PARTS"; mkdir -p "$PARTS"
END=$((HAVE_RAY ? 330 : 430))  # seconds into the suite by which the model-step stages must end
MS="$PY bench/model_step.py --device cuda --models poster --variant large --optimizers fused --iters 6 --warmup 2"
# 1a. eager: precision x batch, plain and SAM steps (rows in priority order; budgets cap each part)
stage "model_step eager"
timeout 100 $MS --precisions bf16,tf32,fp32 --channels-last off --batches 64,256 --steps plain,sam \
    --budget-s 75 --json "$PARTS/ms_eager.json" 2>&1 | tee -a "$LOG"
timeout 60 $MS --models poster,resnet50 --precisions bf16 --channels-last on --batches 256,512 \
    --steps plain,sam --optimizers fused,foreach --budget-s 40 --json "$PARTS/ms_eager_cl.json" 2>&1 | tee -a "$LOG"
# 1b. compiled (bf16 + channels_last, batch 256): reduce-overhead is CUDA graphs over the compiled
# forward and backward; one compile serves the plain and the SAM step. Each mode compiles afresh.
stage "model_step compiled"
for mode in reduce-overhead default max-autotune-no-cudagraphs; do
    left=$((END - ($(date +%s) - T0)))
    if ((left < 60)); then echo "skipped compile=$mode: suite budget" | tee -a "$LOG"; continue; fi
    timeout $left $MS --precisions bf16 --channels-last on --batches 256 --steps sam,plain \
        --compile $mode --json "$PARTS/ms_compile_$mode.json" 2>&1 | tee -a "$LOG"
done

# 2. data path on 16 cores: the bare decode+augment loop in 1 process (2 files) and in 16 processes
# (32 files, 21.5k rows; no Ray); with Ray also the Ray Data pipeline into a 1-CPU consumer and
# 3. a 1-GPU Ray Train run on the same shards (POSTER-large, SAM, bf16, batch 256): its MLflow
# metrics img_per_s and data_wait_fraction per epoch
stage "data pipeline (+ Ray Train run when Ray is there)"
DATA_ARGS=(--shards .gpu/shards --repeat 32 --epochs 2 --bare-files 2 --processes 16
           --target-img-s 1500 --json "$OUT/data_pipeline.json")
if ((HAVE_RAY)); then
    DATA_ARGS+=(--cpus 16 --consumer-cpus 1 --smoke-run data.decode_cpus=1 data.decode_concurrency=0
                data.batch_size=256 model.variant=large optim.name=adam optim.lr=4e-5 optim.sam=true
                schedule.epochs=3 schedule.warmup_epochs=0 scaling.num_workers=1 scaling.gpus_per_worker=1
                scaling.cpus_per_worker=4 scaling.torch_threads=4 scaling.precision=bf16
                scaling.optimizer_impl=fused "scaling.compile=${TRAIN_COMPILE:-off}")
else
    DATA_ARGS+=(--no-ray)
    echo "Ray Train run skipped: ray/mlflow not importable on this machine (see the header)" | tee -a "$LOG"
fi
timeout $((HAVE_RAY ? 200 : 60)) $PY bench/data_pipeline.py "${DATA_ARGS[@]}" 2>&1 | tee -a "$LOG"

stage "summary"
$PY bench/gpu_summary.py "$PARTS" "$OUT" 2>&1 | tee "$OUT/summary.md"
stage "done"
