"""Seeds 1 and 2 of the forward-strand reference CNN fine-tuned on all of GUE ``prom_core_all`` (``--pooling mean-max``,
strand options off, 5 epochs), through the Python API, so that seed 0's result (``dnalm eval gue --seeds 1``) was in
hand before these two started.

The study: does the CNN pretrained on the forward strand only (``configs/train/reference-cnn-human-forward.yaml``)
reach dev MCC >= 0.70 over 3 seeds? docs/benchmarks/quality.md gives the answer (0.7015 ± 0.0034, over this run and
seed 0's); this run's output is docs/benchmarks/quality/core-forward-meanmax/seeds1-2/prom_core_all/metrics.json,
seed 0's is in docs/benchmarks/quality/core-forward-meanmax/seed0/.

The command line does the same today:
``dnalm eval gue GUE --tasks prom_core_all --model BUNDLE --pooling mean-max --first-seed 1 --seeds 2 --out OUT``.

    python scripts/studies/prom_core_all_forward_bundle_seeds_1_2.py GUE \
        [--model runs/reference-cnn-human-forward.bundle] [--out runs/gue-ref/core-forward-seeds12]

GUE is a GUE-layout folder (``prom_core_all/train.csv``, ``dev.csv``).
"""

import argparse
import json
from pathlib import Path

from dnalm.eval.finetune import finetune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("gue", type=Path, help="a GUE-layout folder holding prom_core_all/")
    parser.add_argument("--model", default="runs/reference-cnn-human-forward.bundle", help="the bundle to fine-tune")
    parser.add_argument("--out", type=Path, default=Path("runs/gue-ref/core-forward-seeds12"))
    args = parser.parse_args()
    task = args.gue / "prom_core_all"
    result = finetune(
        task / "train.csv",
        task / "dev.csv",
        args.out / "prom_core_all",
        model=args.model,
        seeds=2,
        first_seed=1,
        pooling="mean-max",
        device="cpu",
    )
    print(json.dumps(result["summary"]))


if __name__ == "__main__":
    main()
