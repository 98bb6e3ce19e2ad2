"""Memory-lean pieces of a long training step: the MLP in sequence tiles, the LM head and its loss in chunks.

With activation checkpointing a block keeps only its input, but recomputing it still builds the
MLP's (T, hidden) activations and the head builds (T, vocab) fp32 logits. Tiles and chunks that are
themselves checkpointed bound both by the tile: each tile's activations exist only while that tile
is computed, forward or backward, so a step's memory grows with T by a small constant per token.
The results are those of the untiled computation (the same per-token arithmetic).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE = -100  # as dnalm.data.masking.IGNORE (models never import the data package)


def tiled(fn, x: torch.Tensor, tile: int) -> torch.Tensor:
    """``fn`` (per token) over (B, T, …) in tiles of ``tile`` positions, each recomputed in the backward."""
    if tile <= 0 or x.shape[1] <= tile or not torch.is_grad_enabled():
        return fn(x)
    return torch.cat([checkpoint(fn, part, use_reentrant=False) for part in x.split(tile, dim=1)], dim=1)


def _chunk_loss(project, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each target's cross-entropy and whether it was predicted (0 where ignored), as one fp32 tensor (2, *labels)."""
    logits = project(features).float()
    flat_logits, flat_labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    loss = F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE, reduction="none")
    correct = (flat_logits.argmax(-1) == flat_labels) & (flat_labels != IGNORE)
    return torch.stack([loss, correct.to(loss.dtype).detach()]).view(2, *labels.shape)


def head_loss(project, features: torch.Tensor, labels: torch.Tensor, chunk: int):
    """(token losses, token correct, logits or None): the head ``project`` and its cross-entropy over (B, T, d)
    features against labels (B, T[, K]) that are already aligned (a decoder's shifted by one), per target, shaped like
    the labels. With ``chunk`` > 0 the logits are made ``chunk`` positions at a time and recomputed in the backward:
    none are returned."""
    if chunk <= 0 or features.shape[1] <= chunk:
        logits = project(features)
        loss, correct = _chunk_loss(lambda f: logits, features, labels)
        return loss, correct, logits
    parts = [
        checkpoint(_chunk_loss, project, f, y, use_reentrant=False)
        if torch.is_grad_enabled()
        else _chunk_loss(project, f, y)
        for f, y in zip(features.split(chunk, dim=1), labels.split(chunk, dim=1))
    ]
    total = torch.cat(parts, dim=2)
    return total[0], total[1], None
