#!/usr/bin/env bash
# Multi-node training with the deepspeed launcher (ssh to every host of the hostfile).
#   launch/deepspeed_multinode.sh HOSTFILE configs/train/X.yaml [key=value ...]
# Every node must see the repository, the data folder and the run folder at the same paths (shared
# filesystem): checkpoints are written by all ranks into RUN/checkpoints and renamed by rank 0.
set -euo pipefail
hostfile="$1"; config="$2"; shift 2
master="$(grep -v '^#' "$hostfile" | awk 'NF {print $1; exit}')"
exec deepspeed --hostfile "$hostfile" --master_addr "$master" --master_port "${MASTER_PORT:-29500}" \
    launch/train.py --config "$config" "$@"
