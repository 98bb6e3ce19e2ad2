#!/usr/bin/env bash
# The GPU sessions behind docs/benchmarks/gpu/ (docs/benchmarks/gpu-h200-2026-11.md), run from the repository root on a
# machine with one CUDA GPU: [SECTIONS="a b ..."] bash scripts/gpu/run.sh (default: every section, in the
# order below). Results go to $OUT/results.tar.gz, rebuilt after every section so that a session cut short keeps
# what finished. Packages the machine lacks travel as wheels in
# .whl/ (DeepSpeed built with DS_BUILD_OPS=0: pip wheel --no-deps --no-build-isolation deepspeed==0.19.8).
set -u
OUT=${OUT:-gpu-out}
W=/tmp/dnalm-gpu
R=$W/results
mkdir -p "$OUT" "$R"
if [ -d .whl ] && [ -z "${NO_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
START=$(date +%s)
BUDGET=${BUDGET:-570}   # seconds for the whole script: a section gets what is left of it at most

pack() { tar -czf "$OUT/results.tar.gz.tmp" -C "$W" results && mv "$OUT/results.tar.gz.tmp" "$OUT/results.tar.gz"; }
# section NAME LIMIT COMMAND...: runs under `timeout` (its own process group, which a DNALM_FAULTS kill takes down
# without this script), logs to results/NAME.log, records the exit status and seconds.
section() {
  local name=$1 limit=$2; shift 2
  [[ -n "${SECTIONS:-}" && " $SECTIONS " != *" $name "* ]] && return
  local now=$(( $(date +%s) - START ))
  (( limit > BUDGET - now )) && limit=$(( BUDGET - now ))
  if (( limit < 20 )); then echo "$name skipped at ${now}s" | tee -a "$R/status.txt"; return; fi
  local t0=$(date +%s)
  timeout -k 5 "$limit" "$@" > "$R/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc seconds=$(( $(date +%s) - t0 )) at=$(( $(date +%s) - START ))s" | tee -a "$R/status.txt"
  tail -n 2 "$R/$name.log"
  pack
}
train() {  # train RUN_NAME DATA CONFIG [key=value ...]: one GPU under the deepspeed launcher
  local run=$1 data=$2 config=$3; shift 3
  python3 -m deepspeed.launcher.runner --num_gpus 1 launch/train.py --config "configs/train/$config" \
    run_dir=$W/runs/$run data.path=$W/$data logging.wandb=disabled logging.interval=1 "$@"
}
export -f train  # `timeout` runs commands, not shell functions: sections call it through bash -c
export W
keep() {  # keep RUN: its metrics and checkpoint names among the results
  [[ -d "$W/runs/$1" ]] || return 0
  mkdir -p "$R/$1" && cp "$W/runs/$1/metrics.jsonl" "$R/$1/" 2>/dev/null
  ls "$W/runs/$1/checkpoints" > "$R/$1/checkpoints.txt" 2>/dev/null
  pack
}

{ nvidia-smi; python3 -c "import torch, deepspeed, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'deepspeed', deepspeed.__version__)"; nproc; free -g; } > "$R/env.txt" 2>&1
cat "$R/env.txt" | tail -n 8

SECTIONS=${SECTIONS:+$SECTIONS prep}  # every selection needs the data
section prep 120 bash -c "python3 -m dnalm prep --out $W/ecoli1024 --seq-len 1024 --jobs 4 & python3 -m dnalm prep --out $W/ecoli2048 --seq-len 2048 --jobs 4; wait"

# the GPU-only tests (FlexAttention's ALiBi against eager, with gradients)
section cuda-tests 120 python3 -m pytest -q -p no:cacheprovider tests/test_attention.py -k cuda

SMALL=(budget.steps=50 checkpoint.interval=20 eval.interval=25 eval.batches=4 optim.warmup_steps=10)
section decoder-small 150 bash -c 'train "$@"' _ decoder-small ecoli1024 decoder-small-ecoli.yaml "${SMALL[@]}"; keep decoder-small

# decoder-1.5b, activation checkpointing, 2,048 tokens; each run is killed as its final checkpoint begins (a 21 GB
# save is not what is measured here; its metrics are written before it)
BIG=(model.name=decoder-1.5b activation_checkpointing=true budget.steps=10 optim.warmup_steps=2 optim.lr=2e-4
     eval.interval=1000000 eval.batches=2 checkpoint.interval=1000000)
big() {  # big NAME STAGE MICRO_BATCH [key=value ...]
  local name=$1 stage=$2 micro=$3; shift 3
  section "$name" 240 env DNALM_FAULTS=kill@save.begun:10 bash -c 'train "$@"' _ "$name" ecoli2048 decoder-small-ecoli.yaml \
    "${BIG[@]}" deepspeed="$stage" batch.micro_batch="$micro" batch.global_batch="$micro" "$@"
  keep "$name"
}
big decoder-1.5b zero3 16

# SIGKILL inside step 45 (checkpoints at 20 and 40), then --resume auto: losses against the uninterrupted run
section decoder-small-killed 150 env DNALM_FAULTS=kill@train.step:45 bash -c 'train "$@"' _ decoder-small-resumed ecoli1024 decoder-small-ecoli.yaml "${SMALL[@]}"
section decoder-small-resumed 150 bash -c 'train "$@"' _ decoder-small-resumed ecoli1024 decoder-small-ecoli.yaml "${SMALL[@]}"; keep decoder-small-resumed

section encoder-small 150 bash -c 'train "$@"' _ encoder-small ecoli1024 encoder-small-ecoli.yaml "${SMALL[@]}"; keep encoder-small

# on a GPU of this size decoder-1.5b's activations at 2,048 tokens fit without recomputation
big decoder-1.5b-zero2-mb8-no-recompute zero2 8 activation_checkpointing=false
big decoder-1.5b-zero3-mb32 zero3 32
section bench-alibi 150 python3 -m dnalm bench alibi --device cuda --lengths 8192,32768 --rounds 1 --out "$R/bench"
section profile 120 python3 scripts/gpu/profile_step.py decoder-1.5b 4 2048 "$R/profile-decoder-1.5b.json"
section bench-train 240 python3 -m dnalm bench train --device cuda --out "$R/bench"
section bench-attention 200 python3 -m dnalm bench attention --device cuda --lengths 2048,8192,32768 --out "$R/bench"
cat "$R/status.txt"

# long context (issue 27): the longest window decoder-1.5b's lean step trains on this GPU, by bisection, and its
# tokens/s at 8k, 32k and 128k; encoder-base with ALiBi at 32k and 128k; the context bench up to 1M tokens
section longest-window 240 bash -c "python3 scripts/gpu/longest_window.py decoder-1.5b 65536 1048576 --speed 8192,32768,131072 > $R/longest-window-decoder-1.5b.json"
section encoder-base-long 90 bash -c "python3 scripts/gpu/longest_window.py encoder-base 131072 131072 --speed 32768,131072 > $R/long-encoder-base.json"
section bench-context 200 python3 -m dnalm bench context --device cuda --lengths 8192,32768,131072 --long-lengths 262144,1048576 --sizes "" --out "$R/bench"

# the fused step (issue 28): decoder-1.5b at 2,048 tokens compiled as a whole (DeepSpeed's engine.compile) and block by
# block (each block's forward; under ZeRO-3 each block a ZeRO-3 leaf), against the eager runs above; then fp8 (torchao's
# float8 linears, carried as a wheel matching the image's torch) against bf16, on decoder-1.5b and on decoder-small's
# loss over 200 steps. Not yet run on a GPU: compile=blocks is tested on CPU (tests/test_train.py), fp8 only refused there.
big decoder-1.5b-zero2-mb8-compile-model zero2 8 activation_checkpointing=false compile=model
big decoder-1.5b-zero2-mb8-compile-blocks zero2 8 activation_checkpointing=false compile=blocks
big decoder-1.5b-zero3-mb32-compile-blocks zero3 32 compile=blocks
big decoder-1.5b-zero2-mb8-fp8 zero2 8 activation_checkpointing=false compile=blocks precision=fp8
LOSS=(budget.steps=200 checkpoint.interval=1000 eval.interval=100 eval.batches=4 optim.warmup_steps=20 compile=blocks)
section decoder-small-bf16-200 200 bash -c 'train "$@"' _ decoder-small-bf16-200 ecoli1024 decoder-small-ecoli.yaml "${LOSS[@]}"; keep decoder-small-bf16-200
section decoder-small-fp8-200 200 bash -c 'train "$@"' _ decoder-small-fp8-200 ecoli1024 decoder-small-ecoli.yaml "${LOSS[@]}" precision=fp8; keep decoder-small-fp8-200
