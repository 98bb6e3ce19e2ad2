#!/usr/bin/env bash
# One node of a torchrun launch (run the same command on every node with its own NODE_RANK; under
# srun, SLURM_NNODES and SLURM_NODEID are used).
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node001 launch/torchrun.sh configs/train/X.yaml [key=value ...]
# On one machine, two invocations with NODE_RANK=0 and 1 and MASTER_ADDR=127.0.0.1 simulate two nodes.
# SIGUSR1 (what slurm_train.sbatch asks the scheduler for ahead of the time limit) is passed to the ranks,
# which save at the next step and exit with checkpoint.on_signal=SIGUSR1; torchrun itself would die of it.
set -euo pipefail
config="$1"; shift
torchrun --nnodes "${NNODES:-${SLURM_NNODES:-1}}" --node_rank "${NODE_RANK:-${SLURM_NODEID:-0}}" \
    --nproc_per_node "${GPUS_PER_NODE:-$(nvidia-smi -L 2>/dev/null | wc -l | awk '{print ($1 > 0 ? $1 : 1)}')}" \
    --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
    "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/train.py" --config "$config" "$@" &
torchrun_pid=$!
trap 'pkill -USR1 -P "$torchrun_pid" || true' USR1
trap 'kill -TERM "$torchrun_pid" 2>/dev/null || true' TERM INT
status=0
while true; do  # a trapped signal ends `wait` early: wait again until torchrun itself has ended
    if wait "$torchrun_pid"; then status=0; break; else status=$?; fi
    kill -0 "$torchrun_pid" 2>/dev/null || break
done
exit "$status"
