"""Batches for the two objectives: masked LM by bases (encoders), causal LM (decoders).

MLM masks bases, not tokens: spans of bases (geometric lengths, ``mean_span`` on average) until
about ``mask_fraction`` of a sample's bases are chosen, and every token whose span touches a
chosen base (in every view of a concatenated input) becomes a prediction target. Each masked
span draws one action, so all views agree: [MASK] (80%), a random token of the same view (10%),
or unchanged (10%); a token touching a [MASK] span is always [MASK], so no view can show a base
that another view hides. Masks are drawn from a generator the caller seeds (by step and rank),
which makes a resumed run draw the same masks.

With a model whose ``mlm_target`` is ``bases`` the labels name bases, not tokens: every target
token's label becomes the letters it spells (``base_targets``), so a 6-mer is predicted as six
5-way choices (A C G T N) instead of one 4,101-way choice.
"""

from __future__ import annotations

import numpy as np
import torch

from dnalm.tokenizers import MASK_ID, NUM_SPECIAL, PAD_ID
from dnalm.tokenizers.base import BASES

IGNORE = -100
MASKED, RANDOM, KEPT = 0, 1, 2


def view_ranges(vocab_sizes: list[int]) -> list[tuple[int, int]]:
    """[low, high) of each view's own (non-special) ids in the concatenated vocabulary."""
    ranges, low = [], NUM_SPECIAL
    for size in vocab_sizes:
        ranges.append((low, low + size - NUM_SPECIAL))
        low += size - NUM_SPECIAL
    return ranges


def mask_sample(
    ids: np.ndarray,
    spans: np.ndarray,
    segments: np.ndarray,
    ranges,
    rng: np.random.Generator,
    mask_fraction: float = 0.15,
    mean_span: float = 3.0,
    replace=(0.8, 0.1, 0.1),
):
    """(input ids with masking applied, labels) for one sample."""
    n_bases = int(spans[:, 1].max()) if len(spans) else 0
    ids, labels = ids.copy(), np.full(len(ids), IGNORE, np.int64)
    if n_bases == 0:
        return ids, labels
    n_spans = max(1, round(mask_fraction * n_bases / mean_span))
    starts = rng.integers(0, n_bases, n_spans)
    lengths = rng.geometric(1 / mean_span, n_spans)
    actions = rng.choice(3, size=n_spans, p=list(replace))
    base_action = _paint(n_bases, starts, lengths, actions)
    counts = {}
    for action in (MASKED, RANDOM, KEPT):
        before = np.concatenate(([0], np.cumsum(base_action == action)))
        counts[action] = before[spans[:, 1]] - before[spans[:, 0]]
    touched = (counts[MASKED] + counts[RANDOM] + counts[KEPT]) > 0
    labels[touched] = ids[touched]
    to_mask = counts[MASKED] > 0
    to_random = touched & ~to_mask & (counts[RANDOM] > 0)
    ids[to_mask] = MASK_ID
    if to_random.any():
        low, high = np.asarray(ranges, np.int64)[segments[to_random]].T
        ids[to_random] = low + (rng.random(len(low)) * (high - low)).astype(np.int64)
    return ids, labels


_RANK = np.array([2, 1, 0])  # where spans overlap [MASK] wins, then random, then unchanged (indexed by action)


def _paint(n_bases: int, starts: np.ndarray, lengths: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Each base's action (-1 where no span falls), every span at once: a base covered by several spans takes the
    highest-ranked action among them."""
    covered = np.repeat(starts, lengths) + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))
    rank = np.repeat(_RANK[actions], lengths)
    inside = covered < n_bases
    best = np.full(n_bases, -1, np.int64)
    np.maximum.at(best, covered[inside], rank[inside])
    return np.where(best >= 0, 2 - best, -1)  # rank back to action (the ranking reverses the action order)


def base_targets(vocab: list[str]) -> np.ndarray:
    """(len(vocab) + 1, K): the bases (indices into ``BASES``) each token spells, IGNORE past its end, for special
    tokens and in the last row (which IGNORE labels index); K is the longest token. Views' ``v:`` prefixes are
    dropped."""
    letters = [token.rpartition(":")[2] if i >= NUM_SPECIAL else "" for i, token in enumerate(vocab)]
    bad = next((t for t in letters if t.strip(BASES)), None)
    if bad is not None:
        raise ValueError(f"token {bad!r} does not spell bases: mlm_target bases needs a tokenizer of base strings")
    table = np.full((len(vocab) + 1, max(map(len, letters))), IGNORE, np.int64)
    for i, token in enumerate(letters):
        table[i, : len(token)] = [BASES.index(b) for b in token]
    return table


def sized_head(config, vocab: list[str]):
    """A model config with ``bases_per_token`` set from ``vocab`` when its ``mlm_target`` is bases."""
    return config.replace(bases_per_token=base_targets(vocab).shape[1]) if config.mlm_target == "bases" else config


def mlm_batch(batch: dict, ranges, rng: np.random.Generator, base_table: np.ndarray | None = None, **objective) -> dict:
    """``base_table`` (from ``base_targets``): labels become the bases of each target token, shape (B, T, K)."""
    ids, spans = batch["input_ids"].numpy(), batch["spans"].numpy()
    segments = batch["segment_ids"].numpy() if "segment_ids" in batch else np.zeros_like(ids)
    masked, label_rows = zip(*(mask_sample(i, s, g, ranges, rng, **objective) for i, s, g in zip(ids, spans, segments)))
    labels = np.stack(label_rows)
    rates = target_rates(ids, labels, segments, ranges)
    if base_table is not None:
        labels = base_table[np.where(labels == IGNORE, len(base_table) - 1, labels)]
    inputs = _model_inputs(batch, torch.from_numpy(np.stack(masked)), torch.from_numpy(labels))
    return inputs | {"target_rate": rates}


def target_rates(ids: np.ndarray, labels: np.ndarray, segments: np.ndarray, ranges) -> list[float]:
    """Per view, the share of its own tokens (not special ones) that are prediction targets. Masking by bases
    makes a k-mer view's share larger than the nucleotide view's: a k-mer touching any chosen base is a target."""
    rates = []
    for view, (low, high) in enumerate(ranges):
        own = (segments == view) & (ids >= low) & (ids < high)
        rates.append(float((labels[own] != IGNORE).mean()) if own.any() else 0.0)
    return rates


def clm_batch(batch: dict) -> dict:
    """Next-token prediction on one view: labels are the inputs (shifted by the loss), padding ignored."""
    ids = batch["input_ids"]
    return _model_inputs(batch, ids, ids.masked_fill(ids == PAD_ID, IGNORE))


def next_token_labels(labels: torch.Tensor) -> torch.Tensor:
    """A decoder's labels aligned with its logits: position i predicts token i + 1, the last position nothing. Shifted
    on the whole window, so that a slice of it (sequence parallelism) keeps the target across its right edge."""
    return torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), IGNORE)], dim=1)


def _model_inputs(batch: dict, ids: torch.Tensor, labels: torch.Tensor) -> dict:
    """The model's inputs; ``attention_mask`` is None when nothing is padded, so attention needs no mask
    (SDPA's ``is_causal`` and fused kernels, flash-attn's dense path). ``tokens``: real tokens, counted here on the
    host."""
    real = batch["input_ids"] != PAD_ID
    tokens = int(real.sum())
    out = {
        "input_ids": ids,
        "labels": labels,
        "attention_mask": None if tokens == real.numel() else real,
        "tokens": tokens,
    }
    for key in ("segment_ids", "positions"):
        if key in batch:
            out[key] = batch[key]
    return out
