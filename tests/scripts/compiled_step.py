"""Train each case of CASES.json eagerly and compiled in this process (a DeepSpeed group of one, gloo), 3 steps each;
where a case says "resume", resume the compiled run's step-2 checkpoint without compiling. Prints, as JSON, every
run's losses, whether its engine or its blocks were compiled, and how many graphs torch.compile made.

    python tests/scripts/compiled_step.py DATA WORK_DIR CASES.json

CASES.json: a list of {"name", "model", "deepspeed", "compile", "resume": bool}.
"""

import json
import sys
from pathlib import Path

from deepspeed.utils import groups

from dnalm.train.compiled import compiled_blocks
from dnalm.train.config import load_config
from dnalm.train.metrics import read
from dnalm.train.trainer import Trainer


def train(data: str, run_dir: Path, case: dict, mode: str, resume: str = "none") -> dict:
    config = load_config(
        "configs/train/encoder-small-ecoli.yaml",
        [
            f"data.path={data}",
            f"run_dir={run_dir}",
            f"model.name={case['model']}",
            f"deepspeed={case['deepspeed']}",
            "budget.steps=3",
            "batch.micro_batch=2",
            "batch.global_batch=2",
            "logging.wandb=disabled",
            "logging.interval=1",
            "data.num_workers=0",
            "eval.interval=100",
            "checkpoint.interval=2",
            "precision=fp32",
            f"compile={mode}",
        ],
    )
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # each run's graphs counted on their own
    trainer = Trainer(config, resume=resume)
    trainer.run()
    graphs = int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    compiled = {
        "engine": bool(trainer.engine.is_compiled),
        "blocks": compiled_blocks(trainer.engine.module),
        "graphs": graphs,
    }
    groups._release_process_group_references()
    return {"losses": {r["step"]: r["loss"] for r in read(run_dir) if "loss" in r}, "compiled": compiled}


def main(data: str, work: str, cases: str) -> None:
    out = {}
    for case in json.loads(Path(cases).read_text()):
        root = Path(work) / case["name"]
        eager = train(data, root / "eager", case, "none")
        compiled = train(data, root / "compiled", case, case["compile"])
        out[case["name"]] = {"eager": eager, "compiled": compiled}
        if case.get("resume"):
            step2 = str(root / "compiled" / "checkpoints" / "step-2")
            out[case["name"]]["resumed_uncompiled"] = train(data, root / "compiled", case, "none", resume=step2)
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:])
