"""The held-out evaluation a run makes every ``eval.interval`` steps."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from dnalm.data.masking import IGNORE
from dnalm.data.stream import GenomeStream, StreamLoader
from dnalm.train.losses import GenomeTally, RepeatTally


@torch.no_grad()
def evaluate(trainer) -> dict:
    """Held-out loss, perplexity and masked accuracy of ``trainer`` (the run's ``Trainer``) over ``eval.batches``
    micro-batches per rank, drawn across the split (the same windows at every evaluation); on data with repeats the
    same on repeat tokens and the rest, on several genomes each genome's. Every rank takes part (one all-reduce, and
    one per tally)."""
    config = trainer.config
    if (
        config.data.val_split not in trainer.manifest.splits
        or trainer.manifest.splits[config.data.val_split].num_samples < trainer.dp_world * config.batch.micro_batch
    ):
        return {}
    settings = config.data.stream_settings() | {"shuffle": True}  # the same windows each time, drawn across the split
    stream = GenomeStream(
        config.data.path,
        config.data.val_split,
        batch_size=config.batch.micro_batch,
        rank=trainer.dp_rank,
        world_size=trainer.dp_world,
        seed=config.seed,
        epochs=1,
        **settings,
    )
    trainer.engine.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=trainer.device)  # (loss × targets, targets, correct, windows)
    repeats = RepeatTally(trainer.device) if trainer.manifest.repeats else None
    genomes = GenomeTally(trainer.genome_tally.names, trainer.device) if trainer.genome_tally is not None else None
    for i, batch in enumerate(StreamLoader(stream)):
        if i == config.eval.batches:
            break
        inputs = trainer._inputs(batch, i, salt=1)
        out = trainer._forward(inputs)
        targets = (inputs["labels"] != IGNORE).sum()  # this rank's slice
        windows = torch.tensor(len(batch["input_ids"]) / trainer.sp_size, device=trainer.device)
        sums += torch.stack([out.loss_sum, targets, out.correct, windows]).to(torch.float64)
        for tally in (repeats, genomes):
            if tally is not None:
                tally.add(out, inputs)
    trainer.engine.train()
    dist.all_reduce(sums)
    loss_total, targets, correct, windows = sums.tolist()
    if targets == 0:
        return {}
    val_loss = loss_total / targets
    out = {"val_loss": val_loss, "val_perplexity": math.exp(min(val_loss, 50)), "val_windows": round(windows)}
    if not trainer.causal:
        out["val_masked_accuracy"] = correct / targets
    if repeats is not None:
        out |= repeats.record(loss_total, targets, correct, trainer.causal)
    if genomes is not None:
        out |= genomes.record("val_genome")
    return out
