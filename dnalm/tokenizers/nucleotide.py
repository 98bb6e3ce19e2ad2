"""One token per base: A, C, G, T and an explicit N."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dnalm.tokenizers.base import BASES, NUM_SPECIAL, SPECIAL_TOKENS, Encoding, Tokenizer, base_codes, check_ids, spans


class NucleotideTokenizer(Tokenizer):
    kind = "nucleotide"

    def __init__(self):
        super().__init__(list(SPECIAL_TOKENS) + list(BASES))
        self._letters = np.frombuffer(("\0" * NUM_SPECIAL + BASES).encode(), np.uint8)

    @property
    def name(self) -> str:
        return "nucleotide"

    def config(self) -> dict:
        return {}

    def encode(self, bases) -> Encoding:
        ids = base_codes(bases).astype(np.int32) + NUM_SPECIAL
        return Encoding(ids, spans(np.arange(len(ids)), 1))

    def decode(self, ids) -> str:
        ids = check_ids(ids, self.vocab_size)
        return self._letters[ids[ids >= NUM_SPECIAL]].tobytes().decode("ascii")

    @classmethod
    def from_saved(cls, folder: Path, meta: dict) -> NucleotideTokenizer:
        return cls()
