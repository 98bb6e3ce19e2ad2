"""k-mer tokens (k = 1…8), derived not trained: every one of the 4^k k-mers has an id.

Two layouts:
- stride k (non-overlapping, as Nucleotide Transformer): each run of A/C/G/T is cut into
  k-mers from its start; its leftover (< k bases) and every N become single-base tokens.
- stride 1 (overlapping, as DNABERT): one k-mer starts at every position whose k bases hold
  no N; bases that no such k-mer covers (N, and runs shorter than k) become single-base
  tokens, so nothing is lost and decode(encode(x)) == x.

Encoding is vectorised: k shifted passes build every k-mer index at once.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from dnalm.tokenizers.base import BASES, N_CODE, NUM_SPECIAL, SPECIAL_TOKENS, Encoding, Tokenizer, base_codes, check_ids
from dnalm.utils.errors import TokenizerError

MAX_K = 8


class KmerTokenizer(Tokenizer):
    kind = "kmer"

    def __init__(self, k: int, stride: int | None = None):
        stride = k if stride is None else stride
        if not 1 <= k <= MAX_K:
            raise TokenizerError(f"kmer: k must be between 1 and {MAX_K}, got {k}")
        if stride not in (1, k):
            raise TokenizerError(f"kmer: stride must be 1 (overlapping) or k={k} (non-overlapping), got {stride}")
        self.k, self.stride = k, stride
        self.single_offset = NUM_SPECIAL
        kmers = [] if k == 1 else ["".join(p) for p in itertools.product("ACGT", repeat=k)]
        self.kmer_offset = NUM_SPECIAL if k == 1 else NUM_SPECIAL + len(BASES)
        super().__init__(list(SPECIAL_TOKENS) + list(BASES) + kmers)

    @property
    def overlapping(self) -> bool:
        return self.stride == 1 and self.k > 1

    @property
    def name(self) -> str:
        return f"kmer:{self.k}" if self.stride == self.k else f"kmer:{self.k}:{self.stride}"

    def config(self) -> dict:
        return {"k": self.k, "stride": self.stride}

    def encode(self, bases) -> Encoding:
        codes = base_codes(bases)
        n, k = len(codes), self.k
        is_n = codes == N_CODE
        positions = np.arange(n, dtype=np.int64 if n >= 2**31 - 8 else np.int32)
        next_n = np.minimum.accumulate(np.where(is_n, positions, n)[::-1])[::-1]
        if self.overlapping:
            kmer_at = next_n - positions >= k
            last_kmer: np.ndarray = np.maximum.accumulate(np.where(kmer_at, positions, -k))
            single_at = positions - last_kmer >= k
        else:
            kmer_at, single_at = _non_overlapping(is_n, next_n, positions, k)
        starts = np.flatnonzero(kmer_at | single_at)
        is_kmer = kmer_at[starts]
        ids = self.single_offset + codes[starts].astype(np.int32)
        ids[is_kmer] = self.kmer_offset + _kmer_index(codes, k)[starts[is_kmer]]
        offsets = np.stack([starts, starts + np.where(is_kmer, k, 1)], axis=1)
        return Encoding(ids, offsets)

    def decode(self, ids) -> str:
        ids = check_ids(ids, self.vocab_size)
        pieces, previous_kmer = [], False
        for i in ids[ids >= NUM_SPECIAL].tolist():
            token = self.vocab[i]
            is_kmer = len(token) == self.k and self.k > 1
            pieces.append(token[-1] if self.overlapping and is_kmer and previous_kmer else token)
            previous_kmer = is_kmer
        return "".join(pieces)

    def spans_of(self, ids) -> np.ndarray:
        if not self.overlapping:
            return super().spans_of(ids)
        ids = check_ids(ids, self.vocab_size)
        is_kmer = ids >= self.kmer_offset
        width = np.where(ids < NUM_SPECIAL, 0, np.where(is_kmer, self.k, 1))
        # a k-mer after a k-mer starts one base on; anything else starts where the token before it ended
        step = np.where(is_kmer[1:] & is_kmer[:-1], 1, width[:-1])
        starts = np.concatenate(([0], np.cumsum(step))).astype(np.int64)
        return np.stack([starts, starts + width], axis=1)

    @classmethod
    def from_saved(cls, folder: Path, meta: dict) -> KmerTokenizer:
        return cls(**meta["config"])


def _kmer_index(codes: np.ndarray, k: int) -> np.ndarray:
    """Base-4 index of the k-mer starting at each position 0…n-k (N read as A; masked out later)."""
    n = len(codes) - k + 1
    if n <= 0:
        return np.zeros(0, np.int32)
    digits = np.where(codes == N_CODE, 0, codes).astype(np.int32)
    index = digits[:n].copy()
    for j in range(1, k):
        index <<= 2
        index |= digits[j : j + n]
    return index


def _non_overlapping(is_n, next_n, positions, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k-mer starts at offsets 0, k, 2k… of each A/C/G/T run; leftovers and N as single bases."""
    run_starts = np.concatenate(([True], is_n[:-1])) & ~is_n
    run_start = np.maximum.accumulate(np.where(run_starts, positions, 0))
    block_start = positions - (positions - run_start) % k
    block_fits = next_n - block_start >= k
    return (block_start == positions) & block_fits & ~is_n, is_n | ~block_fits
