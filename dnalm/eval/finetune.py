"""``dnalm finetune``: sequence classification (promoters, binding sites) from a bundle or from scratch.

The backbone (a bundle's encoder or decoder, the same architecture freshly initialised with
``scratch=True``, or a fresh transformer / performer / cnn / hybrid) is pooled over real tokens
(``pooling``: the mean, or mean and max side by side) into a linear head; the epoch with the best
dev MCC is kept and scored on the test set: accuracy, F1, MCC, AUROC, mean ± std over seeds, in
``metrics.json``.

The recipe: AdamW with warm-up and linear decay; a pretrained backbone learning at
``backbone_lr_scale`` of the head's rate (1 by default), or frozen for linear probing
(``freeze_backbone``); training stopped after ``patience`` epochs without a better dev MCC. For
tasks where the strand carries no meaning, each training row can be read as its reverse complement
half the time (``rc_augment``) and predictions averaged over both strands (``rc_average``); both
are off by default, since promoter rows are oriented (docs/benchmarks/quality.md).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dnalm.data.labelled import LabelledDataError, LabelledSet, read_labelled  # noqa: F401 (re-exported)
from dnalm.tokenizers import PAD_ID, Tokenizer, ViewEncoding, load
from dnalm.utils.devices import model_device, move
from dnalm.utils.errors import DnalmError

if TYPE_CHECKING:
    from dnalm.models import DnaModel

ARCHS = {
    "transformer": dict(arch="encoder", d_model=128, n_layers=4, n_heads=4, attention="flash", positions="alibi"),
    "performer": dict(
        arch="encoder",
        d_model=128,
        n_layers=4,
        n_heads=4,
        attention="performer",
        positions="rope",
        performer_features=64,
    ),
    "cnn-small": dict(arch="cnn", d_model=128, n_layers=6, cnn_kernel=9, positions="none"),  # 0.89M
    "hybrid": dict(
        arch="encoder",
        d_model=128,
        n_layers=2,
        n_heads=4,
        conv_layers=3,
        cnn_kernel=9,
        attention="flash",
        positions="rope",
        norm="layernorm",
    ),  # configs/train/reference-hybrid-human.yaml's model
}
RENAMED_ARCHS = {"cnn": "cnn-small"}  # 0.1's names, accepted for one more release


def arch_name(arch: str | None) -> str | None:
    """``--arch`` as it is called now (an old name warns once)."""
    if arch in RENAMED_ARCHS:
        import warnings

        warnings.warn(
            f"--arch {arch} is now called {RENAMED_ARCHS[arch]}; the old name goes in the next release",
            FutureWarning,
            stacklevel=2,
        )
        return RENAMED_ARCHS[arch]
    return arch


def _mean_pool(hidden, weights):
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


def _max_pool(hidden, weights):
    return hidden.masked_fill(weights == 0, torch.finfo(hidden.dtype).min).amax(1)


# How the backbone's per-token states become one vector: mean over real tokens, or beside it the max, which keeps a
# single strong motif (a TATA box) from being averaged away over 300 positions.
POOLINGS = {
    "mean": (_mean_pool, 1),
    "mean-max": (lambda hidden, weights: torch.cat([_mean_pool(hidden, weights), _max_pool(hidden, weights)], -1), 2),
}


class Classifier(nn.Module):
    def __init__(self, backbone: DnaModel, num_classes: int, dropout: float = 0.1, pooling: str = "mean"):
        from dnalm.models.transformer import Transformer

        super().__init__()
        self.backbone = backbone
        self.backbone.head = (
            nn.Identity()
        )  # the LM head's logits are never used here; with a k-mer vocabulary they cost most of a step
        self.backbone.config = backbone.config.replace(
            mlm_target="tokens"
        )  # nothing left to shape into per-base logits
        if isinstance(self.backbone, Transformer):  # the CNN has no head transform
            self.backbone.head_transform = None
        self.dropout = nn.Dropout(dropout)
        self.pool, widths = POOLINGS[pooling]
        self.head = nn.Linear(widths * backbone.config.d_model, num_classes)

    def forward(self, ids, mask, segment_ids=None, positions=None):
        hidden = self.backbone(ids, attention_mask=mask, segment_ids=segment_ids, positions=positions).hidden
        return self.head(self.dropout(self.pool(hidden, mask.unsqueeze(-1).to(hidden.dtype))))


def encode_set(data: LabelledSet, tokenizer: Tokenizer, reverse: bool = False) -> dict[str, torch.Tensor]:
    """Token tensors of a set (its reverse complements with ``reverse``), padded to the longest."""
    from dnalm.use.sequences import reverse_complement

    encodings = [tokenizer.encode(reverse_complement(s) if reverse else s) for s in data.sequences]
    length = max(len(e) for e in encodings)
    ids = torch.full((len(encodings), length), PAD_ID, dtype=torch.long)
    segments = torch.zeros_like(ids)
    positions = torch.zeros_like(ids)
    for i, enc in enumerate(encodings):
        ids[i, : len(enc)] = torch.from_numpy(enc.ids.astype(np.int64))
        if isinstance(enc, ViewEncoding):
            segments[i, : len(enc)] = torch.from_numpy(enc.segment_ids.astype(np.int64))
            positions[i, : len(enc)] = torch.from_numpy(enc.positions.astype(np.int64))
        else:
            positions[i, : len(enc)] = torch.arange(len(enc))
    return {
        "ids": ids,
        "mask": ids != PAD_ID,
        "segment_ids": segments,
        "positions": positions,
        "labels": torch.from_numpy(data.labels),
    }


def metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict:
    predicted = probabilities.argmax(1)
    k = probabilities.shape[1]
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    accuracy = float(np.trace(confusion) / confusion.sum())
    precision = np.diag(confusion) / np.maximum(confusion.sum(0), 1)
    recall = np.diag(confusion) / np.maximum(confusion.sum(1), 1)
    f1_per_class = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    f1 = float(f1_per_class[1]) if k == 2 else float(f1_per_class.mean())
    t, p, c, s = confusion.sum(1), confusion.sum(0), np.trace(confusion), confusion.sum()  # Gorodkin's multi-class MCC
    denominator = math.sqrt(max(s**2 - (p**2).sum(), 0) * max(s**2 - (t**2).sum(), 0))
    mcc = float((c * s - (t * p).sum()) / denominator) if denominator else 0.0
    aurocs = [_auroc(labels == j, probabilities[:, j]) for j in (range(k) if k > 2 else [1])]
    return {"accuracy": accuracy, "f1": f1, "mcc": mcc, "auroc": float(np.mean(aurocs))}


def _auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve by ranks (ties averaged)."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), np.float64)
    sorted_scores = score[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2
    ranks[order] = np.repeat(average, counts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def encode_strands(data: LabelledSet, tokenizer: Tokenizer, reverse: bool = True) -> dict[str, dict[str, torch.Tensor]]:
    """The forward strand's tensors and, with ``reverse``, the reverse complement's, padded to one length so that
    rows can be swapped between them."""
    strands = {"forward": encode_set(data, tokenizer)}
    if reverse:
        strands["reverse"] = encode_set(data, tokenizer, reverse=True)
    length = max(tensors["ids"].shape[1] for tensors in strands.values())
    return {
        name: {
            k: v if k == "labels" else F.pad(v, (0, length - v.shape[1]), value=PAD_ID if k == "ids" else 0)
            for k, v in tensors.items()
        }
        for name, tensors in strands.items()
    }


def predict_strands(model: Classifier, strands: dict, rc_average: bool) -> np.ndarray:
    forward = predict(model, strands["forward"])
    return (forward + predict(model, strands["reverse"])) / 2 if rc_average else forward


@torch.no_grad()
def predict(model: Classifier, data: dict, batch_size: int = 256) -> np.ndarray:
    model.eval()
    device, out = model_device(model), []
    for start in range(0, len(data["ids"]), batch_size):
        part = move({k: v[start : start + batch_size] for k, v in data.items()}, device)
        out.append(model(part["ids"], part["mask"], part["segment_ids"], part["positions"]).softmax(-1).float().cpu())
    return torch.cat(out).numpy()


def build_classifier(
    num_classes: int,
    bundle: Path | None,
    arch: str | None,
    vocab_size: int,
    seed: int,
    scratch: bool = False,
    pooling: str = "mean",
) -> Classifier:
    arch = arch_name(arch)
    from dnalm.bundle import load_pretrained, read_config
    from dnalm.models import ModelConfig, build_model

    torch.manual_seed(seed)
    if bundle is not None and not scratch:
        backbone, _ = load_pretrained(bundle)
        backbone.train()
    elif bundle is not None:
        backbone = build_model(ModelConfig(**read_config(bundle)["model"]))
    else:
        assert arch is not None  # finetune() refuses neither --model nor --arch
        backbone = build_model(ModelConfig(name=arch, vocab_size=vocab_size, **ARCHS[arch]))
    return Classifier(backbone, num_classes, pooling=pooling)


def limit(data: LabelledSet, n: int | None) -> LabelledSet:
    """A fixed random subset of ``n`` rows (the same for every model and seed), or ``data`` itself."""
    if n is None or n >= len(data.sequences):
        return data
    keep = np.sort(np.random.default_rng(0).permutation(len(data.sequences))[:n])
    return LabelledSet(data.path, [data.sequences[i] for i in keep], data.labels[keep], data.classes)


def train_one(
    seed: int,
    sets: dict,
    classes: list[str],
    bundle,
    arch,
    vocab_size,
    epochs: int,
    lr: float,
    batch_size: int,
    weight_decay: float,
    progress,
    scratch: bool = False,
    device: torch.device = torch.device("cpu"),
    recipe: dict | None = None,
    tell=None,
) -> dict:
    recipe = recipe or {}
    model = build_classifier(len(classes), bundle, arch, vocab_size, seed, scratch, recipe.get("pooling", "mean")).to(
        device
    )
    optimizer = torch.optim.AdamW(
        _parameter_groups(model, lr, pretrained=bundle is not None and not scratch, **recipe),
        lr=lr,
        weight_decay=weight_decay,
    )
    train, train_rc = sets["train"]["forward"], sets["train"].get("reverse")
    steps_per_epoch = math.ceil(len(train["ids"]) / batch_size)
    total = epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, total // 20)) * max(0.0, (total - s) / total)
    )
    generator = torch.Generator().manual_seed(seed)
    best: dict[str, Any] = {"mcc": -2.0}  # dev metrics, epoch and weights of the best epoch so far
    history, since_best = [], 0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train["ids"]), generator=generator)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = {k: v[rows] for k, v in train.items()}
            if recipe.get("rc_augment"):
                flip = torch.rand(len(rows), generator=generator) < 0.5
                batch |= {
                    k: torch.where(flip[:, None], train_rc[k][rows], batch[k])
                    for k in ("ids", "mask", "segment_ids", "positions")
                }
            batch = move(batch, device)
            logits = model(batch["ids"], batch["mask"], batch["segment_ids"], batch["positions"])
            loss = F.cross_entropy(logits, batch["labels"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            progress(1)
        dev = metrics(
            sets["dev"]["forward"]["labels"].numpy(),
            predict_strands(model, sets["dev"], recipe.get("rc_average", False)),
        )
        history.append({"epoch": epoch + 1, **{f"dev_{k}": v for k, v in dev.items()}})
        if tell is not None:
            tell(f"seed {seed} epoch {epoch + 1}/{epochs}: dev mcc {dev['mcc']:.4f}, accuracy {dev['accuracy']:.4f}")
        if dev["mcc"] > best["mcc"]:
            best, since_best = (
                {"epoch": epoch + 1, **dev, "state": {k: v.detach().clone() for k, v in model.state_dict().items()}},
                0,
            )
        else:
            since_best += 1
            if recipe.get("patience") and since_best >= recipe["patience"]:
                progress((epochs - epoch - 1) * steps_per_epoch)
                break
    model.load_state_dict(best.pop("state"))
    result = {
        "seed": seed,
        "best_epoch": best.pop("epoch"),
        "epochs_run": len(history),
        "dev": best,
        "history": history,
    }
    if "test" in sets:
        result["test"] = metrics(
            sets["test"]["forward"]["labels"].numpy(),
            predict_strands(model, sets["test"], recipe.get("rc_average", False)),
        )
    return result


def _parameter_groups(
    model: Classifier, lr: float, pretrained: bool, backbone_lr_scale: float = 1.0, freeze_backbone: bool = False, **_
) -> list[dict]:
    """The head at ``lr``; a pretrained backbone at ``lr · backbone_lr_scale``, or frozen (linear probing)."""
    head = list(model.head.parameters())
    if freeze_backbone:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        return [{"params": head, "lr": lr}]
    scale = backbone_lr_scale if pretrained else 1.0
    return [{"params": head, "lr": lr}, {"params": list(model.backbone.parameters()), "lr": lr * scale}]


def finetune(
    train_path,
    dev_path,
    out,
    *,
    model: str | Path | None = None,
    arch: str | None = None,
    test_path=None,
    scratch: bool = False,
    seeds: int = 1,
    first_seed: int = 0,
    train_limit: int | None = None,
    epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 0.01,
    show_progress: bool = False,
    report_epochs: bool = False,
    device: str = "auto",
    rc_augment: bool = False,
    rc_average: bool = False,
    patience: int | None = None,
    backbone_lr_scale: float = 1.0,
    freeze_backbone: bool = False,
    pooling: str = "mean",
) -> dict:
    """Seeds ``first_seed`` … ``first_seed + seeds - 1``; ``train_limit`` rows of the training set at most;
    ``device`` auto | cpu | cuda (auto: CUDA when present). The recipe settings are described above."""
    arch = arch_name(arch)
    if (model is None) == (arch is None):
        raise DnalmError("give exactly one of --model BUNDLE and --arch " + "|".join(ARCHS))
    if scratch and model is None:
        raise DnalmError(
            "--from-scratch takes the architecture and tokenizer of --model BUNDLE; with --arch every run is from "
            "scratch"
        )
    if train_limit is not None and train_limit < 2:
        raise DnalmError(f"--train-limit must be at least 2, got {train_limit}")
    if arch is not None and arch not in ARCHS:
        raise DnalmError(f"--arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    if patience is not None and patience < 1:
        raise DnalmError(f"--patience must be at least 1 epoch, got {patience}")
    if not 0 < backbone_lr_scale <= 1:
        raise DnalmError(f"--backbone-lr-scale must be in (0, 1], got {backbone_lr_scale}")
    if pooling not in POOLINGS:
        raise DnalmError(f"--pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if freeze_backbone and (model is None or scratch):
        raise DnalmError("--freeze-backbone probes a pretrained backbone: give --model BUNDLE without --from-scratch")
    recipe = {
        "rc_augment": rc_augment,
        "rc_average": rc_average,
        "patience": patience,
        "backbone_lr_scale": backbone_lr_scale,
        "freeze_backbone": freeze_backbone,
        "pooling": pooling,
    }
    from dnalm.utils.devices import resolve

    target = resolve(device)
    started = time.perf_counter()
    if model is not None:
        from dnalm.bundle import read_config
        from dnalm.tokenizers import load_folder

        read_config(model)
        tokenizer = load_folder(Path(model) / "tokenizer")
    else:
        tokenizer = load("nucleotide")
    train = limit(read_labelled(train_path), train_limit)
    classes = train.classes
    missing = [c for i, c in enumerate(classes) if not (train.labels == i).any()]
    if missing:
        subset = f" among the {train_limit} rows --train-limit keeps" if train_limit else ""
        raise LabelledDataError(f"{train_path}: class {missing[0]!r} has no examples{subset}")
    raw = {"train": train, "dev": read_labelled(dev_path, classes)}
    if test_path is not None:
        raw["test"] = read_labelled(test_path, classes)
    sets = {
        name: encode_strands(data, tokenizer, reverse=rc_average or (rc_augment and name == "train"))
        for name, data in raw.items()
    }
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=seeds * epochs * math.ceil(len(train.sequences) / batch_size), unit="batch", desc="finetune")
    tell = None
    if report_epochs:  # a line per epoch (through the bar on a terminal, so it is not torn)
        tell = bar.write if bar else (lambda line: print(line, file=sys.stderr, flush=True))
    runs = [
        train_one(
            seed,
            sets,
            classes,
            model,
            arch,
            tokenizer.vocab_size,
            epochs,
            lr,
            batch_size,
            weight_decay,
            bar.update if bar else (lambda n: None),
            scratch,
            target,
            recipe,
            tell,
        )
        for seed in range(first_seed, first_seed + seeds)
    ]
    if bar:
        bar.close()
    summary = {}
    for split in ("dev", "test"):
        if all(split in r for r in runs):
            summary[split] = {
                k: {
                    "mean": float(np.mean([r[split][k] for r in runs])),
                    "std": float(np.std([r[split][k] for r in runs])),
                }
                for k in ("accuracy", "f1", "mcc", "auroc")
            }
    result = {
        "model": str(model) if model else None,
        "arch": arch,
        "pretrained": model is not None and not scratch,
        "classes": classes,
        "tokenizer": tokenizer.name,
        "train": str(train_path),
        "train_rows": len(train.sequences),
        "dev": str(dev_path),
        "test": str(test_path) if test_path else None,
        "settings": {
            "seeds": list(range(first_seed, first_seed + seeds)),
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch_size,
            "weight_decay": weight_decay,
            "train_limit": train_limit,
            "device": str(target),
            **recipe,
        },
        "seconds": round(time.perf_counter() - started, 1),
        "summary": summary,
        "runs": runs,
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".metrics.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out / "metrics.json")
    return result
