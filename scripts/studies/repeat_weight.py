"""Repeat weight 1.0 against 0.1 at the same budget, over seeds: the held-out loss on non-repeat tokens and the
probe MCC on GUE's prom_core_tata (the recipe configs/train/encoder-repeats-chr20.yaml at a CPU budget).

    python scripts/studies/repeat_weight.py --data "$DNALM_DATA" --work runs/repeat-study \
        --out docs/benchmarks/repeats [--tokens 1500000] [--seeds 0,1,2]

Preps configs/data/chr20-softmasked-ecoli.yaml once (into WORK/data), trains one run a weight a seed, and writes
OUT/repeats.json (every run's last held-out metrics and probe curve, the machine) and OUT/repeats.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "configs" / "train" / "encoder-repeats-chr20.yaml"
CORPUS = REPO / "configs" / "data" / "chr20-softmasked-ecoli.yaml"
WEIGHTS = (1.0, 0.1)
LAST_KEYS = ("val_loss", "val_loss_nonrepeat", "val_loss_repeat", "val_masked_accuracy_nonrepeat", "tokens_seen")


def dnalm(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "dnalm", *args], check=True)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def summary(run_dir: Path, task: str) -> dict:
    rows = records(run_dir)
    last_val = [r for r in rows if "val_loss" in r][-1]
    probes = [(r["step"], r[f"probe/{task}/mcc"]) for r in rows if f"probe/{task}/mcc" in r]
    seconds = sum(r.get("probe/seconds", 0.0) for r in rows)
    return {k: last_val.get(k) for k in LAST_KEYS} | {
        "step": last_val["step"],
        "probe_mcc": probes[-1][1] if probes else None,
        "probe_curve": probes,
        "probe_seconds": seconds,
        "genomes": {k: v for k, v in last_val.items() if k.startswith("val_genome/")},
    }


def machine() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return f"{names[0] if names else platform.machine()}, {len(names) or '?'} cores, no GPU"


def mean_sd(values: list[float]) -> list[float]:
    return [statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0]


def plot(result: dict, out: Path) -> None:
    from dnalm.utils.plots import pyplot, save

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for weight, runs in result["runs"].items():
        for seed, run in runs.items():
            if run["probe_curve"]:
                right.plot(*zip(*run["probe_curve"]), "o-", label=f"weight {weight}, seed {seed}", alpha=0.7)
        left.bar(
            [f"{weight}\nnon-repeat", f"{weight}\nrepeat"],
            [result["summary"][weight]["val_loss_nonrepeat"][0], result["summary"][weight]["val_loss_repeat"][0]],
            yerr=[result["summary"][weight]["val_loss_nonrepeat"][1], result["summary"][weight]["val_loss_repeat"][1]],
        )
    left.set_ylabel("held-out loss (nats), mean ± sd")
    left.set_ylim(bottom=1.0)
    right.set_xlabel("step")
    right.set_ylabel(f"probe dev MCC, {result['task']}")
    right.legend(fontsize=7)
    fig.suptitle(f"repeat weight 1.0 against 0.1, {result['settings']['tokens']:,} tokens a run")
    save(fig, out / "repeats.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the team's data folder (genomes/, gue/)")
    parser.add_argument("--work", type=Path, default=Path("runs/repeat-study"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench/repeats"))
    parser.add_argument("--tokens", type=int, default=1_500_000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--task", default="prom_core_tata")
    parser.add_argument("--probe-interval", type=int, default=60)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    data = args.work / "data"
    if not (data / "manifest.json").exists():
        dnalm("prep", str(CORPUS), "--out", str(data), "--seq-len", "512", "--jobs", "2")
    started = time.time()
    runs: dict[str, dict[str, dict]] = {}
    for weight in WEIGHTS:
        for seed in seeds:
            run_dir = args.work / f"w{weight}-seed{seed}"
            if not list(run_dir.glob("checkpoints/step-*")):  # saved only at its end (checkpoint.interval)
                dnalm(
                    "train",
                    "--config",
                    str(RECIPE),
                    f"run_dir={run_dir}",
                    f"data.path={data}",
                    f"seed={seed}",
                    f"objective.repeat_weight={weight}",
                    f"budget.tokens={args.tokens}",
                    f"eval.probes=[{args.data / 'gue' / args.task}]",
                    f"eval.probe_interval={args.probe_interval}",
                    "checkpoint.interval=100000",
                )
            runs.setdefault(str(weight), {})[str(seed)] = summary(run_dir, args.task)
    result = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "seconds": round(time.time() - started),
        "task": args.task,
        "settings": {"recipe": str(RECIPE.relative_to(REPO)), "tokens": args.tokens, "seeds": seeds},
        "runs": runs,
        "summary": {
            weight: {
                key: mean_sd([run[key] for run in by_seed.values()])
                for key in ("val_loss_nonrepeat", "val_loss_repeat", "val_loss", "probe_mcc")
            }
            for weight, by_seed in runs.items()
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "repeats.json").write_text(json.dumps(result, indent=1))
    plot(result, args.out)
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {args.out / 'repeats.json'} and {args.out / 'repeats.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
