#!/usr/bin/env bash
# The GPU session behind docs/benchmarks/gpu/ (docs/benchmarks.md, "GPU"), run from the repository root on a
# machine with one CUDA GPU: bash docs/benchmarks/gpu/run.sh. Results go to $OUT/results.tar.gz, rebuilt after
# every section so that a session cut short keeps what finished. Packages the machine lacks travel as wheels in
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
keep() { mkdir -p "$R/$1" && cp "$W/runs/$1/metrics.jsonl" "$R/$1/" 2>/dev/null; ls "$W/runs/$1/checkpoints" > "$R/$1/checkpoints.txt" 2>/dev/null; }

{ nvidia-smi; python3 -c "import torch, deepspeed, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'deepspeed', deepspeed.__version__)"; nproc; free -g; } > "$R/env.txt" 2>&1
cat "$R/env.txt" | tail -n 8
git log -1 --format='%H %s' > "$R/commit.txt" 2>/dev/null

section prep 120 bash -c "python3 -m dnalm prep --out $W/ecoli1024 --seq-len 1024 && python3 -m dnalm prep --out $W/ecoli2048 --seq-len 2048"

SMALL=(budget.steps=50 checkpoint.interval=20 eval.interval=25 eval.batches=4 optim.warmup_steps=10)
section decoder-small 150 bash -c 'train "$@"' _ decoder-small ecoli1024 decoder-small-ecoli.yaml "${SMALL[@]}"; keep decoder-small

# decoder-1.5b, ZeRO-3, activation checkpointing, 2,048 tokens; the run is killed as its final checkpoint begins
# (a 21 GB save is not what is measured here; its metrics are written before it)
BIG=(model.name=decoder-1.5b deepspeed=zero3 activation_checkpointing=true budget.steps=10 batch.micro_batch=16
     batch.global_batch=16 optim.warmup_steps=2 optim.lr=2e-4 eval.interval=1000000 eval.batches=2 checkpoint.interval=1000000)
section decoder-1.5b 240 env DNALM_FAULTS=kill@save.begun:10 bash -c 'train "$@"' _ decoder-1.5b ecoli2048 decoder-small-ecoli.yaml "${BIG[@]}"; keep decoder-1.5b

# SIGKILL inside step 45 (checkpoints at 20 and 40), then --resume auto: losses against the uninterrupted run
section decoder-small-killed 150 env DNALM_FAULTS=kill@train.step:45 bash -c 'train "$@"' _ decoder-small-resumed ecoli1024 decoder-small-ecoli.yaml "${SMALL[@]}"
section decoder-small-resumed 150 bash -c 'train "$@"' _ decoder-small-resumed ecoli1024 decoder-small-ecoli.yaml "${SMALL[@]}"; keep decoder-small-resumed

section encoder-small 150 bash -c 'train "$@"' _ encoder-small ecoli1024 encoder-small-ecoli.yaml "${SMALL[@]}"; keep encoder-small

section bench-train 240 python3 -m dnalm bench train --device cuda --out "$R/bench"
section bench-attention 200 python3 -m dnalm bench attention --device cuda --lengths 2048,8192,32768 --out "$R/bench"
cat "$R/status.txt"
