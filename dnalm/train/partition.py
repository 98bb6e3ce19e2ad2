"""Build a named model under ZeRO-3 and report what each rank holds: ``deepspeed --num_gpus 2 -m dnalm.train.partition
NAME OUT``.

Shows that a large model is constructed partitioned (``deepspeed.zero.Init``): each of N ranks
holds about 1/N of the parameters and never the whole model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import psutil
import torch.distributed as dist

from dnalm.train.config import REPO_CONFIGS


def report(name: str) -> dict:
    from dnalm.train.distributed import init_distributed

    rank, world = init_distributed()
    import deepspeed

    from dnalm.models import build_model, get_config

    ds_config = json.loads((REPO_CONFIGS / "deepspeed" / "zero3.json").read_text()) | {
        "train_micro_batch_size_per_gpu": 1
    }
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        model = build_model(get_config(name))
    params = list(model.parameters())
    # ZeRO-3 gives every parameter these attributes at run time (its shard, its full size)
    held = sum(p.ds_tensor.numel() for p in params)  # type: ignore[attr-defined]
    total = sum(p.ds_numel for p in params)  # type: ignore[attr-defined]
    return {
        "rank": rank,
        "world_size": world,
        "model": name,
        "total_parameters": total,
        "held_parameters": held,
        "held_fraction": held / total,
        "rss_gb": psutil.Process().memory_info().rss / 1024**3,
        "full_fp32_gb": total * 4 / 1024**3,
    }


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    result = report(args[0])
    Path(args[1]).mkdir(parents=True, exist_ok=True)
    (Path(args[1]) / f"rank{result['rank']}.json").write_text(json.dumps(result))
    dist.barrier()
    from dnalm.train.distributed import release_shared_memory

    release_shared_memory()
