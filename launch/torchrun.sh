#!/usr/bin/env bash
# One node of a torchrun launch (run the same command on every node with its own NODE_RANK; under
# srun, SLURM_NNODES and SLURM_NODEID are used).
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node001 launch/torchrun.sh configs/train/X.yaml [key=value ...]
# On one machine, two invocations with NODE_RANK=0 and 1 and MASTER_ADDR=127.0.0.1 simulate two nodes.
set -euo pipefail
config="$1"; shift
exec torchrun --nnodes "${NNODES:-${SLURM_NNODES:-1}}" --node_rank "${NODE_RANK:-${SLURM_NODEID:-0}}" \
    --nproc_per_node "${GPUS_PER_NODE:-$(nvidia-smi -L 2>/dev/null | wc -l | awk '{print ($1 > 0 ? $1 : 1)}')}" \
    --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
    launch/train.py --config "$config" "$@"
