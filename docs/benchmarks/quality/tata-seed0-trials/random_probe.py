"""A linear probe on a frozen, freshly initialised CNN (the reference bundle's architecture), prom_300_tata, seed 0:
the baseline for the pretrained probe (dnalm finetune --freeze-backbone refuses --from-scratch, so train_one is
called)."""

import json
import sys
import time
from pathlib import Path

from dnalm.eval.finetune import encode_strands, read_labelled, train_one
from dnalm.tokenizers import load_folder

bundle = Path("runs/reference-cnn-human-forward.bundle")
task = Path("../shared/data/gue/prom_300_tata")
tokenizer = load_folder(bundle / "tokenizer")
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
    bundle,
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
Path(sys.argv[1]).write_text(json.dumps(result, indent=1))
print(result["seconds"], [round(h["dev_mcc"], 3) for h in result["history"]])
