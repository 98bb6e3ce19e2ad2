"""Several training runs one after another in one launch (one process group): tests that compare runs share a
launch's start-up (DeepSpeed's import, gloo) instead of paying it per run.

    torchrun --nproc_per_node N tests/scripts/train_runs.py RUNS.json

RUNS.json: a list of {"config": PATH, "overrides": [...], "resume": "auto" | "none" | FOLDER}.
"""

import json
import sys

import torch.distributed as dist


def main(path: str) -> int:
    from deepspeed.utils import groups

    from dnalm.train.config import load_config
    from dnalm.train.run import train

    for run in json.loads(open(path).read()):
        train(load_config(run["config"], run["overrides"]), resume=run.get("resume", "auto"))
        groups._release_process_group_references()  # the next run makes its own (sequence-parallel) groups
        dist.barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
