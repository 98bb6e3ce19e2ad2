"""Train the same config twice in this process, eager and with ``compile=true`` (a DeepSpeed group of one): print
both runs' losses, and whether each engine was compiled, as JSON.

    python tests/scripts/compiled_step.py DATA WORK_DIR
"""

import json
import sys
from pathlib import Path

from dnalm.train.config import load_config
from dnalm.train.metrics import read
from dnalm.train.trainer import Trainer


def losses(data: str, run_dir: Path, compiled: bool) -> tuple[list[float], bool]:
    config = load_config("configs/train/encoder-small-ecoli.yaml", [
        f"data.path={data}", f"run_dir={run_dir}", "model.name=encoder-tiny", "budget.steps=3", "batch.micro_batch=2",
        "batch.global_batch=2", "logging.wandb=disabled", "logging.interval=1", "data.num_workers=0",
        "eval.interval=100", "checkpoint.interval=100", f"compile={str(compiled).lower()}"])
    trainer = Trainer(config, resume="none")
    trainer.run()
    return [record["loss"] for record in read(run_dir) if "loss" in record], bool(trainer.engine.is_compiled)


def main(data: str, work: str) -> None:
    (eager, eager_compiled), (compiled, was_compiled) = (losses(data, Path(work) / name, name == "compiled")
                                                          for name in ("eager", "compiled"))
    print(json.dumps({"eager": eager, "compiled": compiled, "engine_compiled": [eager_compiled, was_compiled]}))


if __name__ == "__main__":
    main(*sys.argv[1:])
