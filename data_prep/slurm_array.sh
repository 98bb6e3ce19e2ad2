#!/usr/bin/env bash
# Shard genomes across a SLURM array: the first task to start builds the deterministic plan (under
# an atomic lock; the others wait for it), then every task writes one contiguous slice of its shards,
# and the last task to finish writes manifest.json. Re-submitting after a failure redoes only
# the shards that did not finish.
#
#   sbatch --array=0-15 data_prep/slurm_array.sh OUT_DIR GENOME.fa.gz [GENOME ...]
#
# Settings come from the environment (defaults shown):
#   TOKENIZERS=nucleotide SEQ_LEN=1024 PREP_ARGS=""   e.g. PREP_ARGS="--views --val-fraction 0.02"
#SBATCH --job-name=dnalm-prep
#SBATCH --cpus-per-task=1
#SBATCH --mem=8G
#SBATCH --time=02:00:00
#SBATCH --output=logs/prep-%A_%a.out
set -euo pipefail
out="$1"; shift
: "${SLURM_ARRAY_TASK_ID:?submit with sbatch --array=0-(K-1)}"
num_jobs="${SLURM_ARRAY_TASK_COUNT:-$(( SLURM_ARRAY_TASK_MAX - SLURM_ARRAY_TASK_MIN + 1 ))}"
# shellcheck disable=SC2086
dnalm prep "$@" --out "$out" --tokenizers "${TOKENIZERS:-nucleotide}" --seq-len "${SEQ_LEN:-1024}" \
    --job-index "$SLURM_ARRAY_TASK_ID" --num-jobs "$num_jobs" ${PREP_ARGS:-}
