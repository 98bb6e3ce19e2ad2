"""A linear probe on a frozen, freshly initialised CNN (the forward-strand reference bundle's architecture) on GUE
``prom_300_tata``, seed 0, ``--pooling mean-max``, 5 epochs: the baseline for the probe of the pretrained features
(``dnalm finetune --freeze-backbone``, which refuses ``--from-scratch``, so this calls ``train_one`` itself).

The study: how much of what ``prom_300_tata`` asks do the pretrained CNN's features carry? docs/benchmarks/quality.md
gives the answer (a probe reaches 0.244 dev MCC on the pretrained features, 0.212 on random ones); this run's output is
docs/benchmarks/quality/tata-seed0-trials/random-probe.json, beside the pretrained probe's probe.json.

    python scripts/studies/prom_300_tata_random_cnn_probe.py GUE OUT.json \
        [--model runs/reference-cnn-human-forward.bundle]

GUE is a GUE-layout folder (``prom_300_tata/train.csv``, ``dev.csv``).
"""

import argparse
import json
import time
from pathlib import Path

from dnalm.eval.finetune import encode_strands, read_labelled, train_one
from dnalm.tokenizers import load_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("gue", type=Path, help="a GUE-layout folder holding prom_300_tata/")
    parser.add_argument("out", type=Path, help="where the run's JSON goes")
    parser.add_argument("--model", type=Path, default=Path("runs/reference-cnn-human-forward.bundle"))
    args = parser.parse_args()
    task = args.gue / "prom_300_tata"
    tokenizer = load_folder(args.model / "tokenizer")
    train = read_labelled(task / "train.csv")
    sets = {
        "train": encode_strands(train, tokenizer, reverse=False),
        "dev": encode_strands(read_labelled(task / "dev.csv", train.classes), tokenizer, reverse=False),
    }
    started = time.perf_counter()
    result = train_one(
        0,
        sets,
        train.classes,
        args.model,
        None,
        tokenizer.vocab_size,
        5,
        1e-3,
        64,
        0.01,
        lambda n: None,
        scratch=True,
        recipe={"freeze_backbone": True, "pooling": "mean-max"},
    )
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(result, indent=1))
    print(result["seconds"], [round(h["dev_mcc"], 3) for h in result["history"]])


if __name__ == "__main__":
    main()
