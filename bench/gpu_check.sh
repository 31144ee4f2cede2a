#!/usr/bin/env bash
# GPU acceptance in one call (about 7 minutes on one H200), or every stage on the CPU (--cpu,
# under 5 minutes, run in CI):
#   0. install the wheels in .whl/ (GPU machine without network; `make gpu-wheels` fetched
#      them beforehand), cut a slice of the bundled quick-start frames, convert it to a cache;
#   a. captured + CUDA-graph training, torch engine, 2 epochs: one graph, no recompile, no
#      CUDA-graph skip, steady state under torch.cuda.set_sync_debug_mode("error");
#   b. eager training, 1 epoch;
#   c. `deepspeed --num_gpus 1` (NCCL on a GPU) through validation, then --resume for a second
#      epoch (checkpoint files read, outcome agreed over the ranks);
#   d. `fastchgnet profile` (CUDA kernels per step side by side);
#   e. eager training in bf16 mixed precision (run.precision=bf16: autocast on the device), 1 epoch;
#   f. the drop-in API (fastchgnet.compat: predict, relax, NVT MD) against the reference
#      package on the same device: predictions agree, MD ms/step of both;
#   g. MD force calls, eager and compiled (CUDA graphs on a GPU): equal results, ms per call;
#      run_md with its defaults;
#   then the reference chgnet's training rate on the same device and a table of structures/s,
#   peak memory and the checks (bench/gpu_check.py).
#
#   bench/gpu_check.sh          on a GPU machine (python3 with torch + CUDA)
#   bench/gpu_check.sh --cpu    on the CPU: aot_eager backend, a smaller model and slice
# Environment: PYTHON (default python3, or .venv/bin/python with --cpu when it exists),
# GPU_CHECK_DIR (work folder; default a new one under /tmp), STAGES (default
# "a b c d e f g reference"), KEEP_GOING=1 (a failed stage is reported and the next one runs).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=gpu
[[ "${1:-}" == "--cpu" ]] && MODE=cpu
if [[ $MODE == cpu && -x .venv/bin/python ]]; then PY=${PYTHON:-$ROOT/.venv/bin/python}; else PY=${PYTHON:-python3}; fi
WORK=${GPU_CHECK_DIR:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
mkdir -p "$WORK"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$WORK/inductor}
T0=$(date +%s)
stamp() { echo "[gpu_check $(( $(date +%s) - T0 )) s] $*"; }

if [[ $MODE == gpu ]]; then
    if ls .whl/*.whl >/dev/null 2>&1; then
        stamp "installing $(ls .whl/*.whl | wc -l) wheels from .whl/"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$WORK/site" .whl/*.whl
        # nvidia-ml-py3 (for chgnet's `import nvidia_smi`) brings a 2017 pynvml.py; the
        # machine's nvidia-ml-py has a current one, which torch and DeepSpeed may import
        rm -f "$WORK/site/pynvml.py"
        export PATH="$WORK/site/bin:$PATH"
    fi
    export PYTHONPATH="$ROOT:$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
    DEVICE=cuda N=640 BATCH=16
    # the reference's weights and size (412,525 parameters), for the comparison with it
    EXTRA=(--set model.init=reference:0.3.0 --set "model.architecture={}")
    PROFILE=(--device cuda --batch-size 16)
    DS_COMPILE=on   # inductor's cache from stage a makes this compile quick
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
else
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    export CUDA_VISIBLE_DEVICES=""
    DEVICE=cpu N=96 BATCH=8
    EXTRA=(--set run.compile_backend=aot_eager --set run.threads=1)
    # the captured counts on a CPU need inductor's C++ build (minutes): eager and reference only
    PROFILE=(--device cpu --batch-size 4 --no-compile)
    DS_COMPILE=off  # a second aot_eager trace would cost another minute or more here
fi
# the launcher beside this python (a venv), else the one installed from .whl/ (on PATH)
DEEPSPEED="$(dirname "$PY")/deepspeed"
[[ -x $DEEPSPEED ]] || DEEPSPEED=$(command -v deepspeed)
CHECK=("$PY" bench/gpu_check.py)
CPU_FLAG=(); [[ $MODE == cpu ]] && CPU_FLAG=(--cpu)

stamp "mode $MODE, work folder $WORK"
"${CHECK[@]}" slice "$N" "$WORK/frames.extxyz"
"$PY" -m fastchgnet data convert "$WORK/frames.extxyz" -o "$WORK/cache" --workers 2
COMMON=(--set "data.source=$WORK/cache" --set "data.batch_size=$BATCH" --set run.progress=lines
        --set run.plots=false --set run.log_every=10 "${EXTRA[@]}")

train() {  # stage, then launcher and overrides; the log goes to <out>/run.log
    local stage=$1; shift
    mkdir -p "$WORK/$stage"
    stamp "stage $stage: $*"
    "$@" "${COMMON[@]}" --set "run.out_dir=$WORK/$stage" 2>&1 | tee "$WORK/$stage/run.log"
}

stage_a() {
    train a "$PY" launcher/train.py --set run.engine=torch --set run.compile=on --set optim.epochs=2 --set run.sync_debug=true
    "${CHECK[@]}" verify "$WORK/a" --stage a --compiled "${CPU_FLAG[@]}"
}
stage_b() {
    train b "$PY" launcher/train.py --set run.engine=torch --set run.compile=off --set optim.epochs=1
    "${CHECK[@]}" verify "$WORK/b" --stage b "${CPU_FLAG[@]}"
}
stage_c() {
    local port
    port=$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
    train c "$DEEPSPEED" --num_gpus 1 --master_port "$port" launcher/train.py \
        --set run.engine=deepspeed --set run.compile=$DS_COMPILE --set optim.epochs=1 \
        --set run.sync_debug=true
    local compiled=(); [[ $DS_COMPILE == on ]] && compiled=(--compiled)
    # a CPU rank leaves no DeepSpeed all-reduce buffer (66 MB of RAM each) in /dev/shm behind
    if compgen -G "/dev/shm/deepspeed_allreduce_buffer_*_${port}_*" > /dev/null; then
        echo "FAIL stage c left a DeepSpeed shared-memory buffer: $(ls /dev/shm/*_"${port}"_*)"
        return 1
    fi
    "${CHECK[@]}" verify "$WORK/c" --stage c "${compiled[@]}" "${CPU_FLAG[@]}"
    # --resume for a second epoch under the same launcher: the rank reads rank 0's checkpoint
    # file and its own, and the ranks agree on the outcome (an all_gather_object under NCCL)
    port=$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
    stamp "stage c: --resume for a second epoch"
    "$DEEPSPEED" --num_gpus 1 --master_port "$port" launcher/train.py --resume \
        --set optim.epochs=2 --set "run.out_dir=$WORK/c" 2>&1 | tee "$WORK/c/resume.log"
    grep -q "resumed from" "$WORK/c/resume.log" || { echo "FAIL stage c: the run did not resume"; return 1; }
    "${CHECK[@]}" verify "$WORK/c" --stage c "${compiled[@]}" "${CPU_FLAG[@]}"
}
stage_d() {
    stamp "stage d: fastchgnet profile ${PROFILE[*]}"
    if ! "$PY" -m fastchgnet profile --help | grep -q -- "--device"; then
        [[ $MODE == gpu ]] && { echo "FAIL fastchgnet profile has no --device"; return 1; }
        echo "fastchgnet profile has no --device option in this version: profiling on the CPU"
        PROFILE=(--batch-size 4 --no-compile)
    fi
    "$PY" -m fastchgnet profile "${PROFILE[@]}" 2>&1 | tee "$WORK/profile.log"
}
stage_e() {
    train e "$PY" launcher/train.py --set run.engine=torch --set run.compile=off --set optim.epochs=1 --set run.precision=bf16
    "${CHECK[@]}" verify "$WORK/e" --stage e "${CPU_FLAG[@]}"
}
stage_f() {
    stamp "stage f: the drop-in API (fastchgnet.compat) against the reference on $DEVICE"
    "${CHECK[@]}" dropin "$WORK/frames.extxyz" --device "$DEVICE" \
        --md-steps "$([[ $MODE == gpu ]] && echo 50 || echo 5)"
}
stage_g() {
    stamp "stage g: MD force calls on $DEVICE, eager and compiled, and run_md's defaults"
    if [[ $MODE == gpu ]]; then
        "${CHECK[@]}" md "$WORK/frames.extxyz" --device cuda
    else
        "${CHECK[@]}" md "$WORK/frames.extxyz" --device cpu --calls 3 --md-steps 10 --backend aot_eager
    fi
}
stage_reference() {
    stamp "reference chgnet training rate on $DEVICE"
    "${CHECK[@]}" reference "$WORK/frames.extxyz" "$WORK/reference.json" --device "$DEVICE" \
        --batch-size "$BATCH" --steps "$([[ $MODE == gpu ]] && echo 20 || echo 2)"
}

# each stage in a subshell with errexit; a failure stops the script, or with KEEP_GOING=1 is
# recorded and the next stage runs (one GPU call then reports every stage)
FAILED=()
for name in ${STAGES:-a b c d e f g reference}; do
    set +e
    ( set -e; "stage_$name" )
    rc=$?
    set -e
    if (( rc != 0 )); then
        stamp "FAIL stage $name (exit $rc)"
        FAILED+=("$name")
        [[ ${KEEP_GOING:-0} == 1 ]] || exit "$rc"
    fi
done
"${CHECK[@]}" report "$WORK" "${CPU_FLAG[@]}" || true
if (( ${#FAILED[@]} )); then
    stamp "FAIL stages: ${FAILED[*]}"
    exit 1
fi
stamp "all stages passed ($MODE)"
