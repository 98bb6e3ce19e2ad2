"""Run the real trainer's step and evaluation against an engine whose parameters live on another device.

The trainer is built as usual (DeepSpeed on CPU, a group of one); then its engine is replaced by one
whose model sits on the ``meta`` device, which checks that every tensor handed to it is on that device,
and ``torch.distributed.all_reduce`` is replaced by one that records the device of what it is given and
stops the run there (a meta tensor holds no values to reduce). Prints JSON: what each boundary saw.

    python tests/scripts/device_boundary.py DATA RUN_DIR
"""

import json
import sys

import torch
import torch.distributed as dist

from dnalm.models import build_model
from dnalm.train import held_out
from dnalm.train.config import load_config
from dnalm.train.trainer import Trainer


class ReachedCollective(Exception):
    pass


class OtherDeviceEngine:
    """The engine boundary: the model's parameters on ``device``; inputs elsewhere are recorded as wrong."""

    def __init__(self, model_config, device: torch.device):
        with device:
            self.module = build_model(model_config)
        self.device = device
        self.inputs: list[dict] = []

    def __call__(self, input_ids, **inputs):
        tensors = {"input_ids": input_ids} | {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        self.inputs.append({k: str(v.device) for k, v in tensors.items()})
        return self.module(input_ids, **inputs)

    def backward(self, loss):  # the step's statistics are reduced after the optimizer step: nothing to do here
        pass

    def step(self):
        pass

    def eval(self):
        self.module.eval()

    def train(self):
        self.module.train()


def main(data: str, run_dir: str) -> None:
    config = load_config(
        "configs/train/encoder-small-ecoli.yaml",
        [
            f"data.path={data}",
            f"run_dir={run_dir}",
            "model.name=encoder-tiny",
            "budget.steps=2",
            "batch.micro_batch=2",
            "batch.global_batch=4",
            "logging.wandb=disabled",
            "data.num_workers=0",
            "eval.batches=2",
        ],
    )
    trainer = Trainer(config, resume="none")
    device = torch.device("meta")
    trainer.engine = OtherDeviceEngine(trainer.model_config, device)
    collectives = []
    real_all_reduce = dist.all_reduce

    def recording_all_reduce(tensor, *args, **kwargs):
        collectives.append(str(tensor.device))
        if tensor.device.type == "meta":
            raise ReachedCollective
        return real_all_reduce(tensor, *args, **kwargs)

    dist.all_reduce = recording_all_reduce
    reached = {}
    for name, call in (
        ("train_step", lambda: trainer.train_step(iter(trainer.loader))),
        ("evaluate", lambda: held_out.evaluate(trainer)),
    ):
        try:
            call()
            reached[name] = "returned"
        except ReachedCollective:
            reached[name] = "collective"
        except Exception as exc:  # the old trainer: a device mismatch, or a collective on CPU values
            reached[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    dist.all_reduce = real_all_reduce
    print(
        json.dumps(
            {
                "trainer_device": str(getattr(trainer, "device", "not set")),
                "engine_inputs": trainer.engine.inputs,
                "collectives": collectives,
                "reached": reached,
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:3])
