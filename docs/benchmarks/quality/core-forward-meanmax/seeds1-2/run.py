import json

from dnalm.eval.finetune import finetune

r = finetune(
    "../shared/data/gue/prom_core_all/train.csv",
    "../shared/data/gue/prom_core_all/dev.csv",
    "runs/gue-ref/core-forward-seeds12/prom_core_all",
    model="runs/reference-cnn-human-forward.bundle",
    seeds=2,
    first_seed=1,
    pooling="mean-max",
    device="cpu",
)
print(json.dumps(r["summary"]))
