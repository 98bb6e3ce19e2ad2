"""Exact shared k-mers on both strands: 2-bit-packed canonical k-mers (k ≤ 32) in numpy, no loop per base.

A k-mer is packed two bits a base (A=0, C=1, G=2, T=3, its first base in the high bits) into a uint64;
its canonical form is the smaller of itself and its reverse complement, so one lookup answers for both
strands. Sequences are packed by doubling (k-mers of 2w bases from two of w bases: log₂ k array operations),
the reverse complement by reversing the 2-bit groups of the complement (a few masks and a byte swap).

`KmerSet` holds distinct canonical k-mers sorted, behind a hashed bitmap (about 32 bits a k-mer) that
turns most lookups away with one array gather; the rest go through a binary search of the sorted keys.
`dnalm data leakage` (``data_prep/leakage.py``) and ``dnalm prep --exclude`` (`Exclusion`) both use it.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dnalm import genome as genome_io
from dnalm.utils.errors import DnalmError

K_MIN, K_MAX, DEFAULT_K = 8, 32, 32
CHUNK = 1 << 22  # bases per vectorised step: arrays of 32 MB each
BITS_PER_KEY = 32  # bitmap bits per distinct k-mer: about 3% of misses reach the binary search
NOT_A_KMER = np.uint64(2**64 - 1)  # never canonical: for k = 32 it is TTT…T, whose reverse complement AAA…A is smaller
_HASH = np.uint64(0x9E3779B97F4A7C15)
_CODES = np.full(256, 4, np.uint8)
for _i, _base in enumerate(b"ACGT"):
    _CODES[_base] = _CODES[_base + 32] = _i
_COMPLEMENT = bytes.maketrans(b"ACGTN", b"TGCAN")
_UINT = {1: np.uint8, 2: np.uint8, 4: np.uint8, 8: np.uint16, 16: np.uint32, 32: np.uint64}  # bases -> type
_M2, _M4 = np.uint64(0x3333333333333333), np.uint64(0x0F0F0F0F0F0F0F0F)
SEQUENCE_SUFFIXES = (".csv", ".tsv", *genome_io.FASTA_SUFFIXES)


class SequenceFileError(DnalmError):
    """A file of sequences (CSV with a ``sequence`` column, or FASTA) that cannot be read; names file and line."""


def check_k(k: int, flag: str = "--k") -> int:
    if not K_MIN <= k <= K_MAX:
        raise DnalmError(f"{flag} {k}: k must be in {K_MIN}..{K_MAX} (k-mers are packed into 64 bits)")
    return k


# --- packing ----------------------------------------------------------------------------------
def kmers(bases: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(forward, canonical)`` for every start p in 0..n-k of ``bases`` (ASCII, uint8): the packed k-mer
    ``bases[p:p+k]`` and the smaller of it and its reverse complement; ``canonical`` is `NOT_A_KMER` where the
    k-mer holds anything but A, C, G, T (N, a separator)."""
    n = len(bases) - k + 1
    if n <= 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    codes = _CODES[bases]
    bad = np.flatnonzero(codes == 4)
    codes[bad] = 0
    forward = _packed(codes, k)
    canonical = np.minimum(forward, reverse_complement(forward, k))
    if len(bad) * k <= n:  # few Ns (window separators): mark the k-mers over each
        spans = (bad[:, None] - np.arange(k)).ravel()
        canonical[spans[(spans >= 0) & (spans < n)]] = NOT_A_KMER
    elif len(bad):  # many: count them
        count = np.zeros(len(bases) + 1, np.int64)
        count[bad + 1] = 1
        np.cumsum(count, out=count)
        canonical[count[k:] != count[:n]] = NOT_A_KMER
    return forward, canonical


def _packed(codes: np.ndarray, k: int) -> np.ndarray:
    """Rolling 2-bit packing by doubling: blocks of 1, 2, 4, … bases (each in the narrowest unsigned type that holds
    it), then the binary digits of k added on."""
    blocks, width = {1: codes}, 1
    while 2 * width <= k:
        block = blocks[width]
        wider = block[:-width].astype(_UINT[min(2 * width, 32)])
        wider <<= wider.dtype.type(2 * width)
        wider |= block[width:]
        blocks[2 * width] = wider
        width *= 2
    packed, step = blocks[width].astype(np.uint64), width
    while width < k:
        step //= 2
        if width + step <= k:
            m = len(packed) - step
            grown = packed[:m] << np.uint64(2 * step)
            grown |= blocks[step][width : width + m]
            packed, width = grown, width + step
    return packed


def reverse_complement(packed: np.ndarray, k: int) -> np.ndarray:
    """The reverse complement of packed k-mers: complement every base, reverse the order of the 2-bit groups."""
    x = ~packed
    x = ((x >> np.uint64(2)) & _M2) | ((x & _M2) << np.uint64(2))
    x = ((x >> np.uint64(4)) & _M4) | ((x & _M4) << np.uint64(4))
    return x.byteswap() >> np.uint64(64 - 2 * k)


def reverse_complement_bases(bases: bytes) -> bytes:
    return bases.translate(_COMPLEMENT)[::-1]


def distinct(values: np.ndarray, inverse: bool = False):
    """The sorted distinct values (by sorting: numpy's hashing ``unique`` is many times slower on millions of
    uint64); with ``inverse``, also where each value went, as ``np.unique(return_inverse=True)`` gives it."""
    if not inverse:
        ordered = np.sort(values)
        return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))] if len(ordered) else ordered
    order = np.argsort(values)
    ordered = values[order]
    new = np.concatenate(([True], ordered[1:] != ordered[:-1])) if len(ordered) else np.zeros(0, bool)
    where = np.empty(len(values), np.int64)
    where[order] = np.cumsum(new) - 1
    return ordered[new], where


# --- the set ----------------------------------------------------------------------------------
class KmerSet:
    """Distinct canonical k-mers, sorted, with a hashed bitmap (64-bit words) in front of the binary search."""

    def __init__(self, values: np.ndarray, is_distinct: bool = False):
        """``values``: k-mers in any order (`NOT_A_KMER` among them is left out), or sorted and distinct already."""
        self.keys = values if is_distinct else distinct(values[values != NOT_A_KMER])
        bits = max(16, int(np.ceil(np.log2(max(len(self.keys), 1) * BITS_PER_KEY))))
        self._shift = np.uint64(64 - bits)
        self.bitmap = np.zeros(1 << (bits - 6), np.uint64)
        slots = distinct(self._slots(self.keys))
        words = slots >> np.uint64(6)
        first = np.flatnonzero(np.concatenate(([True], words[1:] != words[:-1]))) if len(words) else words
        if len(slots):
            bits_set = np.left_shift(np.uint64(1), slots & np.uint64(63))
            self.bitmap[words[first].view(np.int64)] = np.bitwise_or.reduceat(bits_set, first)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.bitmap.nbytes

    def _slots(self, values: np.ndarray) -> np.ndarray:
        return (values * _HASH) >> self._shift

    def find(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(where, ids)``: the indices into ``values`` (ascending) that are in the set, and their indices into
        ``keys``."""
        slots = self._slots(values)
        words = self.bitmap[(slots >> np.uint64(6)).view(np.int64)]  # below 2**58: the view is the same number
        words >>= slots & np.uint64(63)
        maybe = np.flatnonzero(words & np.uint64(1))
        if not len(maybe) or not len(self.keys):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        candidates = values[maybe]
        order = np.argsort(candidates)  # sorted queries keep the binary search in cache
        ids = np.empty(len(maybe), np.int64)
        ids[order] = np.minimum(np.searchsorted(self.keys, candidates[order]), len(self.keys) - 1)
        hit = self.keys[ids] == candidates
        return maybe[hit], ids[hit]


# --- sequence files ---------------------------------------------------------------------------
@dataclass
class SequenceFile:
    """The sequences of one file, upper-case ASCII, in file order (``lines``: where each starts, for messages)."""

    path: Path
    sequences: list[bytes]
    lines: list[int]

    def __len__(self) -> int:
        return len(self.sequences)


def is_fasta(path: Path) -> bool:
    name = path.name.lower().removesuffix(".gz").removesuffix(".bgz")
    if name.endswith(genome_io.FASTA_SUFFIXES):
        return True
    if name.endswith((".csv", ".tsv")):
        return False
    with open(path, "rb") as fh:
        head = fh.read(2)
    if head == b"\x1f\x8b":
        return True
    return head[:1] == b">"


def read_sequences(path: str | os.PathLike) -> SequenceFile:
    """A CSV or TSV with a ``sequence`` column (GUE's ``sequence,label``), or a FASTA file (each record one
    sequence). Letters other than A, C, G, T count as N (no k-mer spans them); anything else is refused."""
    path = Path(path)
    if not path.exists():
        raise SequenceFileError(f"{path}: no such file")
    if path.is_dir():
        raise SequenceFileError(f"{path}: is a folder, not a CSV or FASTA file")
    if is_fasta(path):
        contigs = list(genome_io.iter_contigs(path))
        return SequenceFile(path, [c.bases.tobytes() for c in contigs], [c.line for c in contigs])
    with open(path, newline="", encoding="utf-8-sig") as fh:
        text = fh.read()
    first = text.split("\n", 1)[0]
    reader = csv.reader(io.StringIO(text), delimiter="\t" if "\t" in first else ",")
    header = [h.strip().lower() for h in next(reader, [])]
    if "sequence" not in header:
        raise SequenceFileError(f"{path}: line 1: no 'sequence' column (header {first.strip()[:80]!r})")
    column = header.index("sequence")
    sequences, lines = [], []
    for row in reader:
        if not row or not any(cell.strip() for cell in row):
            continue
        line = reader.line_num
        value = row[column].strip() if len(row) > column else ""
        if not value:
            raise SequenceFileError(f"{path}: line {line}: empty sequence")
        if not value.isascii() or not value.isalpha():
            bad = next(ch for ch in value if not (ch.isascii() and ch.isalpha()))
            raise SequenceFileError(f"{path}: line {line}: {bad!r} is not a DNA letter")
        sequences.append(value.upper().encode("ascii"))
        lines.append(line)
    if not sequences:
        raise SequenceFileError(f"{path}: no sequences after the header")
    return SequenceFile(path, sequences, lines)


def concatenated(sequences: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Every sequence in one array, an N between each two (no k-mer spans two); and where each starts."""
    lengths = np.array([len(s) for s in sequences], np.int64)
    starts = np.concatenate(([0], np.cumsum(lengths + 1)[:-1])).astype(np.int64)
    return np.frombuffer(b"N".join(sequences), np.uint8), starts


def file_record(path: Path, sequences: int) -> dict[str, Any]:
    """What a manifest records of an input file: its path, size and sha256."""
    return {
        "path": str(path),
        "bytes": path.stat().st_size,
        "sha256": genome_io.file_sha256(path),
        "sequences": sequences,
    }


# --- prep --exclude ---------------------------------------------------------------------------
class Exclusion:
    """The canonical k-mers of some sequence files: windows sharing one with them (either strand) are dropped."""

    def __init__(self, paths: Sequence[str | os.PathLike], k: int = DEFAULT_K):
        self.k = check_k(k, "--exclude-k")
        files = [read_sequences(p) for p in paths]
        self.files = [file_record(f.path, len(f)) for f in files]
        values = []
        for f in files:
            for i in range(0, len(f.sequences), 100_000):
                bases, _ = concatenated(f.sequences[i : i + 100_000])
                values.append(self.canonical(bases))
        self.set = KmerSet(np.concatenate(values) if values else np.zeros(0, np.uint64))

    def canonical(self, bases: np.ndarray) -> np.ndarray:
        """Canonical k-mers of ``bases``, computed in chunks (the arrays stay a few tens of MB)."""
        n = len(bases) - self.k + 1
        parts = [kmers(bases[a : a + CHUNK + self.k - 1], self.k)[1] for a in range(0, max(n, 0), CHUNK)]
        return np.concatenate(parts) if parts else np.zeros(0, np.uint64)

    def hits(self, bases: np.ndarray) -> np.ndarray:
        """Where in ``bases`` a k-mer of the excluded sequences starts, on either strand (ascending)."""
        found = [
            a + self.set.find(self.canonical(bases[a : a + CHUNK + self.k - 1]))[0]
            for a in range(0, max(len(bases) - self.k + 1, 0), CHUNK)
        ]
        return np.concatenate(found) if found else np.zeros(0, np.int64)

    def held(self, bases: np.ndarray) -> Callable[[int, int], bool]:
        """For ``bases``: whether a span ``[start, end)`` of them holds whole one of the excluded k-mers."""
        hits = self.hits(bases)
        return lambda start, end: bool(np.searchsorted(hits, start) < np.searchsorted(hits, end - self.k, "right"))
