"""Run logging on rank 0: ``metrics.jsonl`` always, wandb (offline by default), a progress bar; loss plots."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

METRICS = "metrics.jsonl"


class MetricsLog:
    def __init__(self, run_dir: Path, config, total_steps: int, start_step: int, enabled: bool):
        from dnalm.train.console import Progress

        self.enabled, self.path = enabled, Path(run_dir) / METRICS
        self.wandb = self.bar = None
        self.progress = Progress(total_steps, start_step, enabled)  # lines where there is no terminal for a bar
        if not enabled:
            return
        _drop_after(self.path, start_step)  # a resumed run rewrites the steps after its checkpoint
        if config.logging.wandb != "disabled":
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            self.wandb = wandb.init(
                project=config.logging.project,
                name=config.logging.run_name or Path(run_dir).name,
                dir=str(run_dir),
                mode=config.logging.wandb,
                config=json.loads(config.model_dump_json()),
                resume="allow",
                id=_run_id(run_dir),
            )
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", desc="train", dynamic_ncols=True)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["step"])
        if self.bar is not None and "loss" in record:
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
        self.progress.show(record)

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.wandb is not None:
            self.wandb.finish()


def _run_id(run_dir: Path) -> str:
    marker = Path(run_dir) / ".wandb_id"
    if not marker.exists():
        import uuid

        marker.write_text(uuid.uuid4().hex[:12])
    return marker.read_text().strip()


def _drop_after(path: Path, step: int) -> None:
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if (r := _record(line)) and r.get("step", 0) <= step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def _record(line: str) -> dict | None:
    """One line's record; None for a blank line or one a killed run cut off (a resume drops it)."""
    try:
        return json.loads(line) if line.strip() else None
    except json.JSONDecodeError:
        return None


def read(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        from dnalm.utils.errors import DnalmError

        raise DnalmError(f"{run_dir}: no {METRICS} (not a dnalm run folder, or no step logged yet)")
    lines = [(number, line) for number, line in enumerate(path.read_text().splitlines(), start=1) if line.strip()]
    records = []
    for number, line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number != lines[-1][0]:
                from dnalm.utils.errors import DnalmError

                raise DnalmError(f"{path}: line {number} is not JSON (a damaged file)") from None
            import warnings

            warnings.warn(f"{path}: line {number} is cut off (a run killed while writing it): skipped", stacklevel=2)
    return records


def _curves(records: list[dict]) -> list[tuple[str, str, str]]:
    """(key, label, line style) of the other losses a run logged: each genome's training loss, the held-out loss on
    repeats and the rest."""
    keys = dict.fromkeys(k for r in records for k in r)
    genomes = [(k, f"train loss, {k.split('/', 1)[1].rsplit('/', 1)[0]}", "--") for k in keys if _genome_loss(k)]
    split = [(k, f"validation loss, {k.rsplit('_', 1)[1]}", "s:") for k in ("val_loss_repeat", "val_loss_nonrepeat")]
    return genomes + [c for c in split if c[0] in keys]


def _genome_loss(key: str) -> bool:
    return key.startswith("genome/") and key.endswith("/loss")


def plot(run_dir: Path, out: Path | None = None) -> Path:
    """Training and validation loss against step (per genome, and on repeats and the rest, where the run logged them),
    to ``RUN/loss.png``."""
    from dnalm.utils.plots import pyplot, save

    plt = pyplot()

    records = read(run_dir)
    if not records:
        from dnalm.utils.errors import DnalmError

        raise DnalmError(f"no steps logged yet in {Path(run_dir) / METRICS}; nothing to draw")
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    for key, label, style in _curves(records):
        points = [(r["step"], r[key]) for r in records if key in r]
        ax.plot(*zip(*points), style, label=label, linewidth=1, markersize=3, alpha=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title(Path(run_dir).name)
    ax.grid(alpha=0.3)
    ax.legend()
    _draw_probes(ax, records)
    return save(fig, Path(out) if out else Path(run_dir) / "loss.png")


def _draw_probes(ax, records: list[dict]) -> None:
    """Each linear probe's dev MCC (``eval.probes``) against step, on a right-hand axis."""
    tasks = dict.fromkeys(k.split("/")[1] for r in records for k in r if k.startswith("probe/") and k.endswith("/mcc"))
    if not tasks:
        return
    right = ax.twinx()
    for i, task in enumerate(tasks):
        points = [(r["step"], r[f"probe/{task}/mcc"]) for r in records if f"probe/{task}/mcc" in r]
        right.plot(*zip(*points), "D-", color=f"C{6 + i}", label=f"probe: {task} dev MCC", markersize=4, linewidth=1)
    right.set_ylabel("linear probe dev MCC")
    right.legend(loc="lower left", fontsize=8)
