"""Each rank's host memory for loading a bundle into a ZeRO-3 model (``setup.load_bundle_weights``), as JSON from
rank 0: {bundle: [MB added by the load on rank 0, rank 1, ...]}. Run under torchrun with MALLOC_MMAP_THRESHOLD_ set
low, so that freed tensors leave the resident set.

    torchrun --nproc_per_node 2 tests/scripts/bundle_load_memory.py NAME=BUNDLE [NAME=BUNDLE ...]
"""

import json
import sys

import torch.distributed as dist

from dnalm.models import build_model, get_config
from dnalm.train.config import REPO_CONFIGS
from dnalm.train.distributed import init_distributed
from dnalm.train.setup import load_bundle_weights
from dnalm.utils.memory import added_peak_mb


def main(pairs: list[str]) -> int:
    import deepspeed

    init_distributed()
    ds_config = json.loads((REPO_CONFIGS / "deepspeed" / "zero3.json").read_text()) | {
        "train_micro_batch_size_per_gpu": 1
    }
    found = {}
    for pair in pairs:
        name, bundle = pair.split("=", 1)
        with deepspeed.zero.Init(config_dict_or_path=ds_config):
            model = build_model(get_config(name, vocab_size=16))
        added, _ = added_peak_mb("cpu", lambda: load_bundle_weights(model, bundle, partitioned=True))
        every = [None] * dist.get_world_size()
        dist.all_gather_object(every, round(added, 1))
        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            checksum = float(sum(p.double().sum() for p in model.parameters()))
        found[name] = {"added_mb": every, "checksum": checksum}
    if dist.get_rank() == 0:
        print(json.dumps(found))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
