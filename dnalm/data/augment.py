"""Reverse-complement augmentation in the stream: a token-wise flip that keeps every window's length and grid.

A window's ids are reversed and each token replaced by the token of its reverse complement
(ACG → CGT), so the flipped window covers the same bases on the other strand with the same token
boundaries; padding stays at the end. That needs every token's reverse complement in the
vocabulary: true of the nucleotide and k-mer tokenizers, not of BPE (refused). Whether a
position of an epoch is flipped is a hash of (seed, epoch, position): a resumed stream flips the
same windows, and there is no state to save.
"""

from __future__ import annotations

import numpy as np

from dnalm.data.manifest import DataError
from dnalm.data.order import mix64
from dnalm.tokenizers import NUM_SPECIAL, PAD_ID, Tokenizer

_COMPLEMENT = str.maketrans("ACGTN", "TGCAN")


def reverse_complement_table(tokenizer: Tokenizer) -> np.ndarray:
    """id → id of the token's reverse complement (specials map to themselves)."""
    table = np.arange(tokenizer.vocab_size, dtype=np.int64)
    for i, token in enumerate(tokenizer.vocab[NUM_SPECIAL:], start=NUM_SPECIAL):
        flipped = token.translate(_COMPLEMENT)[::-1]
        if flipped not in tokenizer.token_to_id:
            raise DataError(
                f"data.reverse_complement: {tokenizer.name} has no token for the reverse complement of "
                f"{token!r}; flip in prep instead (--reverse-complement), or use a nucleotide or k-mer tokenizer"
            )
        table[i] = tokenizer.token_to_id[flipped]
    return table


def flip(ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    """The window on the other strand: real tokens reversed and complemented, padding left at the end."""
    real = int(np.count_nonzero(ids != PAD_ID))
    out = ids.copy()
    out[:real] = table[ids[:real][::-1]]
    return out


def flip_flags(flags: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per-token flags of ``ids`` (before its flip) reordered as ``flip`` reorders the tokens."""
    real = int(np.count_nonzero(ids != PAD_ID))
    out = flags.copy()
    out[:real] = flags[:real][::-1]
    return out


def flipped(seed: int, epoch: int, positions: np.ndarray) -> np.ndarray:
    """Which positions of ``epoch`` are read on the reverse strand (half of them, by a keyed hash)."""
    key = np.uint64((seed * 1_000_003 + epoch) & (2**63 - 1)) ^ np.uint64(0xA5A5_0000_C0DE)
    return (mix64(np.asarray(positions, np.uint64), key) >> np.uint64(63)).astype(bool)
