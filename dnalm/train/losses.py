"""What a step's loss counts, and the tallies beside it: repeat-weighted token losses, per-genome and per-repeat sums.

A token is a repeat when most of its bases are soft-masked in the reference (the shards carry the flags). With
``objective.repeat_weight`` w, a target's cross-entropy counts w when it is a repeat and 1 otherwise, and the loss is
the weighted mean Σ wᵢℓᵢ / Σ wᵢ over the targets of whole windows: under sequence parallelism each rank's slice adds
its share, so S changes no loss. Evo 2 uses w = 0.1.

The tallies stay on the device and are read (one all-reduce) when a record is written: per genome, the token loss,
targets and real tokens; per evaluation, the loss, targets and correct predictions on repeat and other tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from dnalm.data.manifest import Manifest
from dnalm.data.masking import IGNORE
from dnalm.tokenizers import PAD_ID


def prepare(inputs: dict, batch: dict, causal: bool, repeat_weight: float) -> dict:
    """``inputs`` (host tensors of whole windows, labels aligned) with what the loss and the tallies need: each
    sample's ``genome``; where the data marks repeats, ``repeats`` aligned with the labels (a decoder's position i
    predicts token i + 1, so it takes that token's flag); with a weight other than 1, ``loss_weights`` and
    ``weight_total`` (the weighted number of targets, counted over whole windows)."""
    inputs["genome"] = batch["genome"]
    if "repeats" not in batch:
        return inputs
    repeats = batch["repeats"]
    if causal:
        repeats = torch.cat([repeats[:, 1:], repeats.new_zeros(len(repeats), 1)], dim=1)
    inputs["repeats"] = repeats
    if repeat_weight != 1:
        weights = torch.where(repeats, repeat_weight, 1.0)
        inputs["loss_weights"] = weights
        inputs["weight_total"] = float((per_position(inputs["labels"] != IGNORE) * weights).sum())
    return inputs


def per_position(values: torch.Tensor) -> torch.Tensor:
    """(B, T, K) per-base targets summed to their token's position; (B, T) as it is."""
    return values.sum(-1) if values.dim() == 3 else values


def step_loss(out, inputs: dict) -> torch.Tensor:
    """This rank's share of the micro-batch's mean token loss (repeat-weighted when the inputs carry weights)."""
    if "loss_weights" in inputs:
        weighted = per_position(out.token_loss) * inputs["loss_weights"]
        return weighted.sum() / max(inputs["weight_total"], 1e-12)
    return out.loss_sum / max(inputs["targets"], 1)


def genome_names(manifest: Manifest) -> list[str]:
    """The corpus's names for its genomes, else their file names."""
    if manifest.mix:
        return [m.name for m in manifest.mix]
    return [Path(g.path).name for g in manifest.genomes]


class GenomeTally:
    """Per genome, on the device: the token-loss sum, targets and real tokens of the samples seen since the last
    record. Counted on this rank's slice of each window, so sequence-parallel ranks add up to whole windows."""

    def __init__(self, names: list[str], device: torch.device, tokens: list[int] | None = None):
        self.names = names
        self.pending = torch.zeros(3, len(names), dtype=torch.float64, device=device)
        self.loss, self.targets = [0.0] * len(names), [0.0] * len(names)
        self.tokens = list(tokens) if tokens else [0] * len(names)  # since the run began (kept in checkpoints)

    def add(self, out, inputs: dict) -> None:
        genome = inputs["genome"]
        sums = [
            per_position(out.token_loss.detach()).flatten(1).sum(1),
            per_position(inputs["labels"] != IGNORE).flatten(1).sum(1),
            (inputs["input_ids"] != PAD_ID).sum(1),
        ]
        for row, values in zip(self.pending, sums):
            row.index_add_(0, genome, values.to(torch.float64))

    def flush(self) -> None:
        """Add every rank's pending sums to the totals (a collective: every rank calls it at the same step)."""
        dist.all_reduce(self.pending)
        loss, targets, tokens = self.pending.tolist()
        self.pending.zero_()
        for i in range(len(self.names)):
            self.loss[i] += loss[i]
            self.targets[i] += targets[i]
            self.tokens[i] += round(tokens[i])

    def record(self, prefix: str) -> dict:
        """``{prefix}/NAME/loss`` (mean token loss since the last record) and ``{prefix}/NAME/tokens`` (since the
        run began), for every genome; then the loss sums start again."""
        self.flush()
        out: dict[str, float | int] = {}
        for name, loss, targets, tokens in zip(self.names, self.loss, self.targets, self.tokens):
            if targets:
                out[f"{prefix}/{name}/loss"] = loss / targets
            out[f"{prefix}/{name}/tokens"] = tokens
        self.loss, self.targets = [0.0] * len(self.names), [0.0] * len(self.names)
        return out


class RepeatTally:
    """Held-out loss and accuracy on repeat tokens and on the others, summed on the device."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # repeats: loss sum, targets, correct

    def add(self, out, inputs: dict) -> None:
        repeats = inputs["repeats"].to(out.token_loss.dtype)
        targets = per_position(inputs["labels"] != IGNORE).to(repeats.dtype)
        parts = (per_position(out.token_loss), targets, per_position(out.token_correct))
        self.sums += torch.stack([(part * repeats).sum() for part in parts]).to(torch.float64)

    def record(self, loss_total: float, targets: float, correct: float, causal: bool) -> dict:
        """Split the evaluation's totals (already all-reduced) into repeat and non-repeat metrics (a collective)."""
        dist.all_reduce(self.sums)
        loss, hits, right = self.sums.tolist()
        out = {"val_repeat_fraction": hits / targets if targets else 0.0}
        for name, (part_loss, part_targets, part_correct) in (
            ("repeat", (loss, hits, right)),
            ("nonrepeat", (loss_total - loss, targets - hits, correct - right)),
        ):
            if part_targets:
                out[f"val_loss_{name}"] = part_loss / part_targets
                if not causal:
                    out[f"val_masked_accuracy_{name}"] = part_correct / part_targets
        return out
