"""The protocol every tokenizer follows: ids with base spans, decode, specials, save/load, fingerprint.

Ids 0–4 are the specials in every tokenizer, so padding and masking code never asks which
tokenizer it holds. Tokenizers work on uppercase A, C, G, T, N (lowercase is accepted and
read as uppercase: the soft-mask lives beside the bases, in ``dnalm.genome.Contig``).
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from dnalm.utils.errors import TokenizerError
from dnalm.utils.files import staged_folder

SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]")
PAD_ID, CLS_ID, SEP_ID, MASK_ID, UNK_ID = range(len(SPECIAL_TOKENS))
NUM_SPECIAL = len(SPECIAL_TOKENS)
BASES = "ACGTN"
CONFIG_FILE = "tokenizer.json"
FORMAT_VERSION = 1

# Byte → base code: A0 C1 G2 T3 N4, 255 for anything that is not a base letter.
BASE_CODE = np.full(256, 255, np.uint8)
for _code, _letter in enumerate(BASES):
    BASE_CODE[ord(_letter)] = BASE_CODE[ord(_letter.lower())] = _code
N_CODE = 4


@dataclass(frozen=True)
class Encoding:
    """Token ids and, for every token, the [start, end) span of bases it stands for."""

    ids: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def base_codes(bases: str | bytes | np.ndarray) -> np.ndarray:
    """Validate bases (A C G T N, either case) and return their codes 0–4."""
    if isinstance(bases, str):
        bases = bases.encode("ascii", errors="replace")
    raw = (
        np.frombuffer(bases, np.uint8)
        if isinstance(bases, (bytes, bytearray, memoryview))
        else np.asarray(bases, np.uint8)
    )
    codes = BASE_CODE[raw]
    bad = codes == 255
    if bad.any():
        at = int(np.argmax(bad))
        raise TokenizerError(
            f"base {at}: {chr(raw[at])!r} is not one of A, C, G, T, N (read genomes with dnalm.genome)"
        )
    return codes


class Tokenizer(ABC):
    """Bases → ids. Subclasses define ``kind``, the vocabulary and encode/decode."""

    kind: ClassVar[str]

    def __init__(self, vocab: Sequence[str]):
        self.vocab = list(vocab)
        self.token_to_id = {token: i for i, token in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    @abstractmethod
    def name(self) -> str:
        """A short spec that ``dnalm.tokenizers.load`` understands (or the saved folder's kind)."""

    @abstractmethod
    def encode(self, bases: str | bytes | np.ndarray) -> Encoding: ...

    @abstractmethod
    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Bases the ids stand for; special tokens are dropped."""

    def spans_of(self, ids) -> np.ndarray:
        """The [start, end) base span of every token of ``ids`` as ``encode`` laid them out, from the ids alone."""
        ids = check_ids(ids, self.vocab_size)
        if not hasattr(self, "_widths"):
            self._widths = np.array([0] * NUM_SPECIAL + [len(t) for t in self.vocab[NUM_SPECIAL:]], np.int64)
        width = self._widths[ids]
        ends = np.cumsum(width)
        return np.stack([ends - width, ends], axis=1)

    @abstractmethod
    def config(self) -> dict:
        """Everything besides the vocabulary that decides the ids (saved, fingerprinted)."""

    def _files(self) -> dict[str, bytes]:
        """Files saved beside ``tokenizer.json`` that decide ids (a sentencepiece model): fingerprinted."""
        return {}

    def _side_files(self) -> dict[str, bytes]:
        """Files saved beside ``tokenizer.json`` for people (a training report): not fingerprinted."""
        return {}

    @classmethod
    @abstractmethod
    def from_saved(cls, folder: Path, meta: dict) -> Tokenizer: ...

    @property
    def fingerprint(self) -> str:
        """Changes whenever the ids for some input would change."""
        digest = hashlib.sha256()
        digest.update(
            json.dumps({"kind": self.kind, "config": self.config(), "vocab": self.vocab}, sort_keys=True).encode()
        )
        for name, data in sorted(self._files().items()):
            digest.update(name.encode())
            digest.update(data)
        return digest.hexdigest()[:16]

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` (and any extra files) into ``folder`` atomically."""
        with staged_folder(folder, TokenizerError) as staging:
            meta = {
                "format_version": FORMAT_VERSION,
                "kind": self.kind,
                "name": self.name,
                "fingerprint": self.fingerprint,
                "config": self.config(),
                "vocab": self.vocab,
            }
            (staging / CONFIG_FILE).write_text(json.dumps(meta, indent=1))
            for name, data in (self._files() | self._side_files()).items():
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                (staging / name).write_bytes(data)
        return Path(folder)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, vocab_size={self.vocab_size}, fingerprint={self.fingerprint})"


def check_ids(ids: Sequence[int] | np.ndarray, vocab_size: int) -> np.ndarray:
    ids = np.asarray(ids, np.int64).reshape(-1)
    if len(ids) and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = ids[(ids < 0) | (ids >= vocab_size)][0]
        raise TokenizerError(f"token id {bad} is outside the vocabulary (size {vocab_size})")
    return ids


def spans(starts: np.ndarray, widths: np.ndarray | int) -> np.ndarray:
    starts = np.asarray(starts, np.int64)
    return np.stack([starts, starts + widths], axis=1)
