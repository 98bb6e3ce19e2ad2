"""Linear probes: how much a model's pooled hidden states already tell about a labelled task, while it pretrains.

A probe task is a folder in GUE's layout (``train.csv`` and ``dev.csv``, columns ``sequence,label``). A fixed
subsample of its rows (seeded, so the same rows every time, in training and in ``dnalm eval probe``) is tokenized
once with the run's tokenizer, as ``dnalm.embed`` does (every view of a multi-view input, laid out
``[CLS] v0 [SEP] v1 [SEP] …``). Each probe embeds those rows with the current weights, no masking and no dropout,
mean-pools the final (normalised) hidden states over the real tokens (every view's; no special or padding token;
a decoder's causal states as they are), standardises the features with the training rows' mean and spread, and fits
an L2-regularised logistic regression (scikit-learn's default C = 1) by a fixed L-BFGS solve in float64 on the
model's device. It reports the dev split's Matthews correlation and accuracy.

Distributed: the task's forwards (``rows_per_forward`` rows each, in row order) are dealt round-robin over the
data-parallel ranks; every rank runs the same number of forwards of the same shape (ZeRO-3 gathers parameters in every
forward, so every rank must take part), and the pooled sums are gathered with one ``all_gather`` of fixed-size tensors.
Under sequence parallelism each rank of a group embeds its slice of the group's forwards and the group's partial sums
are added. Rank 0 fits and broadcasts the scores.

Exact: every forward of a task has the same shape (``rows_per_forward`` rows padded to the task's longest row, a key
mask or none decided once per task) and holds the same rows whatever the number of ranks, so the same weights give the
same features to the bit, and the same MCC, in training on any data-parallel world size, after a resume and offline
from a bundle (sequence parallelism slices the forwards: the same to float rounding).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from dnalm.data.labelled import LabelledDataError, read_labelled
from dnalm.tokenizers import PAD_ID, Tokenizer, ViewTokenizer
from dnalm.tokenizers.views import concatenate_views
from dnalm.utils.errors import DnalmError

SEED = 0  # the rows' subsample: the same for every run, so probes compare across runs
DEFAULT_ROWS = (2000, 1000)  # train, dev
TOKENS_PER_FORWARD = 8192  # rows per forward: this many tokens, at least one row
ITERATIONS = 100  # L-BFGS iterations at most (scikit-learn's default max_iter)
TOLERANCE = 1e-6  # ... or until the largest gradient entry of the mean loss falls below this
SPLITS = ("train", "dev")
BUDGET = 0.05  # the share of training time a probe should stay under (the trainer warns once past it)

Hidden = Callable[..., torch.Tensor]  # (ids, segment_ids, positions, attention_mask) -> (B, T, d) final states


class ProbeError(DnalmError):
    """A probe folder, file or setting that cannot be used, with the file or field named."""


@dataclass
class Split:
    path: Path
    rows: np.ndarray  # the file's data rows chosen (0-based, in file order)
    labels: np.ndarray  # class indices (the training split's classes; -1 for a dev label training lacks)
    inputs: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]  # ids, segments, positions, pooled (bool)


@dataclass
class ProbeTask:
    name: str
    folder: Path
    classes: list[str]
    train: Split
    dev: Split
    length: int  # tokens of the longest row: every forward is padded to it
    padded: bool  # some row is shorter: forwards carry a key mask

    @property
    def rows(self) -> int:
        return len(self.train.rows) + len(self.dev.rows)


def check_rows(rows: Sequence[int], error: type[DnalmError] = ProbeError, name: str = "--rows") -> tuple[int, int]:
    """(train rows, dev rows), both at least 1."""
    if len(rows) != 2 or any(int(r) < 1 for r in rows):
        raise error(f"{name}: give the train and dev rows a probe reads, both at least 1 (e.g. 2000,1000), got {rows}")
    return int(rows[0]), int(rows[1])


def subsample(total: int, wanted: int) -> np.ndarray:
    """``wanted`` of ``total`` rows (all when fewer), drawn with the fixed SEED, in file order."""
    if wanted >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(SEED).choice(total, size=wanted, replace=False))


def encode_row(tokenizer: Tokenizer, sequence: str):
    """ids, segment ids, positions and the pooled tokens of one sequence, laid out as ``dnalm.embed`` lays it out."""
    if isinstance(tokenizer, ViewTokenizer):
        encodings = [view.encode(sequence) for view in tokenizer.tokenizers]
        ids, segments, positions = concatenate_views(
            [e.ids for e in encodings], [e.offsets for e in encodings], tokenizer.id_offsets
        )
        pooled = np.zeros(len(ids), bool)
        at = 1  # past [CLS]; each view's tokens, not its [SEP]
        for e in encodings:
            pooled[at : at + len(e)] = True
            at += len(e) + 1
        return ids.astype(np.int64), segments.astype(np.int64), positions.astype(np.int64), pooled
    ids = np.asarray(tokenizer.encode(sequence).ids, np.int64)
    return ids, np.zeros_like(ids), np.arange(len(ids), dtype=np.int64), np.ones(len(ids), bool)


def load_task(
    folder: str | Path,
    tokenizer: Tokenizer,
    rows: Sequence[int] = DEFAULT_ROWS,
    max_tokens: int | None = None,
    error: type[DnalmError] = ProbeError,
    where: str = "",
) -> ProbeTask:
    """A task folder's subsampled, tokenized rows; ``error`` names the file or the field (``where``) on bad input."""
    folder = Path(folder)
    prefix = f"{where}: " if where else ""
    wanted = check_rows(rows, error, where or "--rows")
    if not folder.is_dir():
        raise error(f"{prefix}{folder}: no such folder (a probe task is a folder holding train.csv and dev.csv)")
    for split in SPLITS:
        if not (folder / f"{split}.csv").is_file():
            raise error(f"{prefix}{folder / f'{split}.csv'}: no such file (a probe task holds train.csv and dev.csv)")
    try:
        train = read_labelled(folder / "train.csv")
        dev = read_labelled(folder / "dev.csv", train.classes)
    except LabelledDataError as exc:
        raise error(f"{prefix}{exc}") from None
    splits = {}
    for split, data, count in (("train", train, wanted[0]), ("dev", dev, wanted[1])):
        chosen = subsample(len(data.sequences), count)
        labels = data.labels[chosen]
        if len(np.unique(labels)) < 2:
            raise error(
                f"{prefix}{data.path}: the {len(chosen):,} rows a probe reads all have label "
                f"{train.classes[int(labels[0])]!r}; a probe needs at least two classes"
            )
        inputs = [encode_row(tokenizer, data.sequences[i]) for i in chosen]
        longest = max(range(len(inputs)), key=lambda i: len(inputs[i][0]))
        if max_tokens is not None and len(inputs[longest][0]) > max_tokens:
            raise error(
                f"{prefix}{data.path}: line {int(chosen[longest]) + 2}: {len(inputs[longest][0]):,} tokens, longer "
                f"than the model's max_seq_len {max_tokens:,}"
            )
        splits[split] = Split(data.path, chosen, labels, inputs)
    lengths = [len(x[0]) for s in splits.values() for x in s.inputs]
    return ProbeTask(
        folder.name, folder, train.classes, splits["train"], splits["dev"], max(lengths), min(lengths) < max(lengths)
    )


def load_tasks(folders: Sequence[str | Path], tokenizer: Tokenizer, rows=DEFAULT_ROWS, **options) -> list[ProbeTask]:
    tasks = [load_task(f, tokenizer, rows, **options) for f in folders]
    names = [t.name for t in tasks]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        error = options.get("error", ProbeError)
        where = options.get("where", "")
        raise error(f"{where + ': ' if where else ''}two probe folders are named {duplicate!r}; the metrics need one")
    return tasks


def model_hidden(model) -> Hidden:
    """The final hidden states of a dnalm model (or a DeepSpeed engine around one), without the LM head."""

    def hidden(ids, segment_ids, positions, attention_mask):
        return model(
            ids, segment_ids=segment_ids, positions=positions, attention_mask=attention_mask, logits=False
        ).hidden

    return hidden


# --- embedding -----------------------------------------------------------------------------------------------------
def rows_per_forward(length: int) -> int:
    return max(1, TOKENS_PER_FORWARD // max(length, 1))


def pooled_features(
    hidden: Hidden,
    task: ProbeTask,
    split: Split,
    device: torch.device,
    multi_view: bool,
    shard: tuple[int, int] = (0, 1),
    sequence: tuple[int, int] = (0, 1),
) -> torch.Tensor:
    """(rows, d) float64 mean-pooled final hidden states of ``split``, the same on every rank: this rank's sums
    (``pooled_sums``), every rank's gathered by one ``all_gather`` and put back in row order."""
    local = pooled_sums(hidden, task, split, device, multi_view, shard, sequence)
    (dp_size, sp_size), n = (shard[1], sequence[1]), len(split.inputs)
    if dp_size * sp_size > 1:
        parts = [torch.empty_like(local) for _ in range(dp_size * sp_size)]
        dist.all_gather(parts, local.contiguous())
        # consecutive ranks form a sequence group (as in the trainer): rank = dp_rank * S + sp_rank; a group's slices
        # add up to its rows' sums. Forward k of data-parallel rank g was the task's forward k * dp_size + g.
        groups = [torch.stack(parts[g * sp_size : (g + 1) * sp_size]).sum(0) for g in range(dp_size)]
        per_forward = rows_per_forward(padded_length(task, sp_size))
        local = torch.stack([x.view(-1, per_forward, x.shape[-1]) for x in groups], 1).reshape(-1, local.shape[-1])
    gathered = local[:n]
    return gathered[:, :-1] / gathered[:, -1:].clamp(min=1)


def padded_length(task: ProbeTask, sequence_size: int = 1) -> int:
    """The length every forward of the task has: its longest row, rounded up to a multiple of S."""
    return math.ceil(task.length / sequence_size) * sequence_size


def pooled_sums(
    hidden: Hidden,
    task: ProbeTask,
    split: Split,
    device: torch.device,
    multi_view: bool,
    shard: tuple[int, int] = (0, 1),
    sequence: tuple[int, int] = (0, 1),
) -> torch.Tensor:
    """This rank's float64 sums of final hidden states over each row's pooled tokens, and their counts ((forwards ×
    rows_per_forward, d + 1)); no collective but the model's own.

    The task's rows fall into forwards of ``rows_per_forward`` rows in row order, the last filled up with copies of
    the first row; ``shard`` (data-parallel rank g, size W): this rank runs forwards g, g + W, g + 2W, … and as many as
    every other rank (a filler forward where it has none left). So a row meets the same rows in the same places
    whatever W is, and comes out the same bits. ``sequence`` (rank in the sequence-parallel group, S): each rank of a
    group embeds its 1/S slice of the group's forwards, padded to a multiple of S."""
    (dp_rank, dp_size), (sp_rank, sp_size) = shard, sequence
    n = len(split.inputs)
    length = padded_length(task, sp_size)
    masked = task.padded or length != task.length
    per_forward = rows_per_forward(length)
    forwards = math.ceil(math.ceil(n / per_forward) / dp_size)  # on every rank
    piece = slice(sp_rank * length // sp_size, (sp_rank + 1) * length // sp_size)
    sums = []
    for k in range(forwards):
        first = (k * dp_size + dp_rank) * per_forward
        batch = list(range(first, min(first + per_forward, n)))
        batch += [0] * (per_forward - len(batch))  # one shape for every forward of the task
        arrays = np.zeros((3, per_forward, length), np.int64)  # ids ([PAD] = 0), segments, positions
        mask = np.zeros((2, per_forward, length), bool)  # real tokens, pooled tokens
        for row, i in enumerate(batch):
            ids, segments, positions, pooled = split.inputs[i]
            arrays[:, row, : len(ids)] = np.stack([ids, segments, positions])
            mask[0, row, : len(ids)], mask[1, row, : len(ids)] = True, pooled
        assert PAD_ID == 0
        ids_t, segments_t, positions_t = (torch.from_numpy(a[:, piece]).to(device) for a in arrays)
        states = hidden(
            ids_t,
            segments_t if multi_view else None,
            positions_t,
            torch.from_numpy(mask[0][:, piece]).to(device) if masked else None,
        )
        pooled_t = torch.from_numpy(mask[1][:, piece]).to(device)
        total = (states.double() * pooled_t[..., None]).sum(1)
        sums.append(torch.cat([total, pooled_t.sum(1, keepdim=True).double()], 1))
    return torch.cat(sums)


# --- the fit -------------------------------------------------------------------------------------------------------
def fit(train_x: torch.Tensor, train_y: torch.Tensor, classes: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Logistic regression (multinomial for more than two classes) on standardised features, L2 as scikit-learn's
    C = 1 (the summed log-loss plus half the squared weights; the bias free), solved by L-BFGS in float64; returns
    the predictor of class indices."""
    x = train_x.double()
    mean, spread = x.mean(0), x.std(0, unbiased=False)
    spread = torch.where(spread > 1e-12, spread, torch.ones_like(spread))
    x = (x - mean) / spread
    outputs = 1 if classes == 2 else classes
    weight = torch.zeros(x.shape[1], outputs, dtype=torch.float64, device=x.device, requires_grad=True)
    bias = torch.zeros(outputs, dtype=torch.float64, device=x.device, requires_grad=True)

    def logits(features: torch.Tensor) -> torch.Tensor:
        z = features @ weight + bias
        return torch.cat([torch.zeros_like(z), z], 1) if classes == 2 else z

    solver = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=ITERATIONS,
        tolerance_grad=TOLERANCE,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def objective():
        solver.zero_grad()
        loss = (F.cross_entropy(logits(x), train_y, reduction="sum") + 0.5 * weight.pow(2).sum()) / len(x)
        loss.backward()
        return loss

    threads = torch.get_num_threads()
    if x.device.type == "cpu":  # small tensors, ~100 iterations: one thread is many times faster than two that wait
        torch.set_num_threads(1)
    try:
        with torch.enable_grad():
            solver.step(objective)
    finally:
        torch.set_num_threads(threads)

    def predict(features: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return logits((features.double() - mean) / spread).argmax(1)

    return predict


def mcc(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Matthews correlation (Gorodkin's multi-class form, as scikit-learn's ``matthews_corrcoef``); 0 when undefined."""
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    labels = np.union1d(truth, predicted)
    t = np.array([(truth == c).sum() for c in labels], np.float64)
    p = np.array([(predicted == c).sum() for c in labels], np.float64)
    n, correct = float(len(truth)), float((truth == predicted).sum())
    denominator = math.sqrt((n * n - (p * p).sum()) * (n * n - (t * t).sum()))
    return float((correct * n - (t * p).sum()) / denominator) if denominator else 0.0


def score(task: ProbeTask, train_x: torch.Tensor, dev_x: torch.Tensor) -> dict:
    train_y = torch.from_numpy(task.train.labels).to(train_x.device)
    predicted = fit(train_x, train_y, len(task.classes))(dev_x).cpu().numpy()
    return {
        "mcc": mcc(task.dev.labels, predicted),
        "accuracy": float((predicted == task.dev.labels).mean()),
        "train_rows": len(task.train.rows),
        "dev_rows": len(task.dev.rows),
    }


def probe(
    tasks: Sequence[ProbeTask],
    hidden: Hidden,
    device: torch.device,
    multi_view: bool,
    shard: tuple[int, int] = (0, 1),
    sequence: tuple[int, int] = (0, 1),
) -> dict[str, dict]:
    """Every task's dev MCC and accuracy (and its seconds), the same on every rank. The caller puts the model in eval
    mode; nothing here needs a gradient but the fit's own."""
    distributed = shard[1] * sequence[1] > 1
    results = {}
    for task in tasks:
        began = time.perf_counter()
        with torch.no_grad():
            features = [
                pooled_features(hidden, task, split, device, multi_view, shard, sequence)
                for split in (task.train, task.dev)
            ]
        values = torch.zeros(2, dtype=torch.float64, device=device)
        if not distributed or dist.get_rank() == 0:
            scores = score(task, *features)
            values = torch.tensor([scores["mcc"], scores["accuracy"]], dtype=torch.float64, device=device)
        if distributed:
            dist.broadcast(values, src=0)
        mcc_value, accuracy = values.tolist()
        results[task.name] = {
            "mcc": mcc_value,
            "accuracy": accuracy,
            "train_rows": len(task.train.rows),
            "dev_rows": len(task.dev.rows),
            "seconds": time.perf_counter() - began,
        }
    return results


def line(step: int | None, results: dict[str, dict], rows: int, seconds: float, share: float | None) -> str:
    """``probe at step 200: prom_core_tata dev MCC 0.412 acc 0.706 (3,000 rows, 4.1 s, 2.3% of the time since the
    last probe)``."""
    scores = "; ".join(f"{name} dev MCC {r['mcc']:.3f} acc {r['accuracy']:.3f}" for name, r in results.items())
    cost = f"{rows:,} rows, {seconds:.1f} s"
    if share is not None:
        cost += f", {100 * share:.1f}% of the time since the last probe"
    return f"probe{f' at step {step}' if step is not None else ''}: {scores} ({cost})"


def record(results: dict[str, dict], seconds: float, share: float | None) -> dict:
    """The metrics record's keys: ``probe/<task>/mcc``, ``probe/<task>/accuracy``, ``probe/seconds``,
    ``probe/share`` (of the wall time since the last probe)."""
    out: dict = {}
    for name, r in results.items():
        out[f"probe/{name}/mcc"] = round(r["mcc"], 6)
        out[f"probe/{name}/accuracy"] = round(r["accuracy"], 6)
    out["probe/seconds"] = round(seconds, 3)
    if share is not None:
        out["probe/share"] = round(share, 5)
    return out


# --- offline: a bundle ---------------------------------------------------------------------------------------------
def probe_bundle(
    bundle: str | Path, folders: Sequence[str | Path], rows: Sequence[int] = DEFAULT_ROWS, device: str = "auto"
) -> dict:
    """The probe the trainer runs, on a bundle's weights (one process): a report with every task's dev MCC and
    accuracy, and the training step the bundle was converted from where it says."""
    from dnalm.bundle import TOKENIZER, load_pretrained, read_config
    from dnalm.tokenizers import load_folder
    from dnalm.utils.devices import resolve

    rows = check_rows(rows)
    config = read_config(bundle)  # the folders and files are checked before the weights are read
    tasks = load_tasks(folders, load_folder(Path(bundle) / TOKENIZER), rows, max_tokens=config["model"]["max_seq_len"])
    target = resolve(device)
    model, tokenizer = load_pretrained(bundle, device=target)
    began = time.perf_counter()
    results = probe(tasks, model_hidden(model), target, isinstance(tokenizer, ViewTokenizer))
    return {
        "bundle": str(bundle),
        "step": config.get("training", {}).get("step"),
        "model": model.config.name,
        "device": str(target),
        "rows": list(rows),
        "seed": SEED,
        "tasks": {name: r | {"folder": str(t.folder)} for (name, r), t in zip(results.items(), tasks)},
        "seconds": round(time.perf_counter() - began, 3),
    }


def table(report: dict) -> str:
    """The report as a plain-text table, one task a row."""
    lines = [f"{'task':<20} {'train rows':>10} {'dev rows':>9} {'dev MCC':>8} {'dev acc':>8} {'seconds':>8}"]
    for name, r in report["tasks"].items():
        lines.append(
            f"{name:<20} {r['train_rows']:>10,} {r['dev_rows']:>9,} {r['mcc']:>8.4f} {r['accuracy']:>8.4f} "
            f"{r['seconds']:>8.1f}"
        )
    return "\n".join(lines) + "\n"
