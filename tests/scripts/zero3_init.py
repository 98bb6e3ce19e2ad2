"""Build each named model twice from the same seed, plainly and under ``deepspeed.zero.Init`` (ZeRO-3, a group of one),
and print as JSON the largest difference of any parameter. ZeRO-3 partitions each submodule as soon as it is built, so
an
initialisation written after a layer's constructor would silently do nothing there.

    python tests/scripts/zero3_init.py NAME [NAME ...]
"""

import json
import sys

import torch

from dnalm.models import build_model, get_config
from dnalm.train.config import REPO_CONFIGS
from dnalm.train.distributed import init_distributed


def largest_difference(name: str) -> float:
    import deepspeed

    torch.manual_seed(0)
    plain = build_model(get_config(name))
    ds_config = json.loads((REPO_CONFIGS / "deepspeed" / "zero3.json").read_text()) | {
        "train_micro_batch_size_per_gpu": 1
    }
    torch.manual_seed(0)
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        partitioned = build_model(get_config(name))
    with deepspeed.zero.GatheredParameters(list(partitioned.parameters())):
        gathered = {key: p.detach().clone() for key, p in partitioned.named_parameters()}
    expected = dict(plain.named_parameters())
    assert gathered.keys() == expected.keys(), sorted(gathered.keys() ^ expected.keys())
    return max(float((gathered[key] - expected[key]).abs().max()) for key in expected)


if __name__ == "__main__":
    init_distributed()
    print(json.dumps({name: largest_difference(name) for name in sys.argv[1:]}))
