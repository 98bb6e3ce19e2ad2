"""The evaluation side of ``dnalm data leakage`` (``leakage.py``): the files (GUE task folders, CSVs, FASTA), their
sequences' canonical k-mers held in memory, and the hits a training scan records against them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dnalm.data.kmers import (
    CHUNK,
    NOT_A_KMER,
    KmerSet,
    SequenceFile,
    concatenated,
    distinct,
    kmers,
    read_sequences,
    reverse_complement,
    reverse_complement_bases,
)
from dnalm.utils.errors import DnalmError

GUE_SPLITS = ("train", "dev", "test")


class LeakageError(DnalmError):
    """An evaluation path that holds no sequences to check."""


# --- the evaluation side ----------------------------------------------------------------------
@dataclass
class EvalFile:
    name: str  # task/split, e.g. prom_core_all/dev
    sequences: SequenceFile


def eval_files(paths: Sequence[str | os.PathLike]) -> list[EvalFile]:
    """Each path: a CSV or FASTA file; a task folder of CSVs (GUE: train.csv, dev.csv, test.csv); or a folder of
    task folders (all of GUE)."""
    out = []
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise LeakageError(f"{path}: no such file or folder")
        if path.is_file():
            out.append(EvalFile(f"{path.parent.name}/{path.name}", read_sequences(path)))
            continue
        tasks = [path] if _csvs(path) else sorted(p for p in path.iterdir() if p.is_dir() and _csvs(p))
        if not tasks:
            raise LeakageError(
                f"{path}: no CSV files in it or its subfolders (a GUE task folder holds train.csv, dev.csv, test.csv)"
            )
        out += [EvalFile(f"{task.name}/{csv.stem}", read_sequences(csv)) for task in tasks for csv in _csvs(task)]
    return out


def _csvs(folder: Path) -> list[Path]:
    found = [p for p in folder.iterdir() if p.suffix in (".csv", ".tsv") and p.is_file()]
    rank = {name: i for i, name in enumerate(GUE_SPLITS)}
    return sorted(found, key=lambda p: (rank.get(p.stem, len(rank)), p.name))


@dataclass
class Hits:
    """Where in the training data a match was seen: one row per first hit of a k-mer, or per containment."""

    columns: dict[str, list[np.ndarray]] = field(
        default_factory=lambda: {n: [] for n in ("genome", "contig", "position", "forward", "shard", "sample")}
    )
    count: int = 0

    def add(self, **values: np.ndarray) -> np.ndarray:
        n = len(values["position"])
        for name, value in values.items():
            self.columns[name].append(np.asarray(value))
        self.count += n
        return np.arange(self.count - n, self.count)

    def table(self) -> dict[str, np.ndarray]:
        return {n: np.concatenate(v) if v else np.zeros(0, np.int64) for n, v in self.columns.items()}


class EvalIndex:
    """Every distinct evaluation sequence's canonical k-mers, and what the scan has found of them."""

    def __init__(self, files: list[EvalFile], k: int):
        self.k, self.files = k, files
        seen: dict[bytes, int] = {}  # each distinct sequence once
        self.rows = [np.array([seen.setdefault(s, len(seen)) for s in f.sequences.sequences]) for f in files]
        sequences = list(seen)
        del seen
        self.lengths = np.array([len(s) for s in sequences], np.int64)
        self.bases, self.starts = concatenated(sequences)
        # reverse complements in one array, each at the mirror of its sequence's slot: one gather serves both
        self.both = np.concatenate(
            (self.bases, np.frombuffer(reverse_complement_bases(self.bases.tobytes()), np.uint8))
        )
        self.rc_starts = len(self.bases) + len(self.bases) - self.starts - self.lengths
        del sequences
        positions, canonical, forward = [], [], []
        for a in range(0, max(len(self.bases) - k + 1, 0), CHUNK):
            fwd, can = kmers(self.bases[a : a + CHUNK + k - 1], k)
            valid = np.flatnonzero(can != NOT_A_KMER)
            positions.append(a + valid)
            canonical.append(can[valid])
            forward.append(fwd[valid])
        position = np.concatenate(positions) if positions else np.zeros(0, np.int64)
        can = np.concatenate(canonical) if canonical else np.zeros(0, np.uint64)
        fwd = np.concatenate(forward) if forward else np.zeros(0, np.uint64)
        keys, occ_key = distinct(can, inverse=True)
        self.set = KmerSet(keys, is_distinct=True)
        self.occ_key = occ_key.astype(np.int32)
        self.occ_seq = (np.searchsorted(self.starts, position, side="right") - 1).astype(np.int32)
        self.occ_offset = (position - self.starts[self.occ_seq]).astype(np.int32)
        self.occ_forward = fwd == can  # the sequence's k-mer is the canonical one (else its reverse complement is)
        # anchors: each sequence's first whole k-mer; a window holding the sequence holds it (or its complement)
        first = np.flatnonzero(np.diff(self.occ_seq, prepend=-1) != 0)  # occurrences run in sequence order
        seqs = self.occ_seq[first]
        order = np.argsort(self.occ_key[first], kind="stable")
        self.anchor_seq, self.anchor_key = seqs[order], self.occ_key[first][order]
        self.anchor_offset = self.occ_offset[first][order].astype(np.int64)
        self.anchor_fwd = fwd[first][order]
        self.anchor_rc = reverse_complement(self.anchor_fwd, k)
        self.is_anchor = np.zeros(len(self.set), bool)
        self.is_anchor[self.anchor_key] = True
        # what the scan finds
        self.hit = np.zeros(len(self.set), bool)
        self.first_hit = np.full(len(self.set), -1, np.int64)  # row of `hits` where each k-mer was first seen
        self.contained = np.full(len(self.lengths), -1, np.int64)  # row of `hits` where each sequence lies whole
        self.hits = Hits()

    @property
    def nbytes(self) -> int:
        arrays = [v for v in vars(self).values() if isinstance(v, np.ndarray)]
        return self.set.nbytes + sum(a.nbytes for a in arrays)

    def scan(self, buffer: np.ndarray, windows: dict[str, np.ndarray]) -> None:
        """One stretch of training windows laid end to end, an N between each two; ``windows``: their ``offset`` in
        ``buffer``, ``length``, ``genome``, ``contig`` (an id), ``start`` (in the contig), ``shard``, ``sample``."""
        fwd, can = kmers(buffer, self.k)
        where, keys = self.set.find(can)
        if not len(where):
            return
        self.hit[keys] = True
        new = np.flatnonzero(self.first_hit[keys] < 0)
        if len(new):
            fresh, first = np.unique(keys[new], return_index=True)
            at = where[new][first]
            self.first_hit[fresh] = self._record(at, windows, forward=fwd[at] == can[at])
        anchored = self.is_anchor[keys]
        if anchored.any():
            self._containment(buffer, fwd, where[anchored], keys[anchored], windows)

    def _record(self, at: np.ndarray, windows: dict[str, np.ndarray], forward: np.ndarray) -> np.ndarray:
        w = np.searchsorted(windows["offset"], at, side="right") - 1
        return self.hits.add(
            genome=windows["genome"][w],
            contig=windows["contig"][w],
            position=windows["start"][w] + at - windows["offset"][w],
            forward=forward,
            shard=windows["shard"][w],
            sample=windows["sample"][w],
        )

    def _containment(self, buffer, fwd, at, keys, windows, budget: int = 1 << 23) -> None:
        lo = np.searchsorted(self.anchor_key, keys, side="left")
        n = np.searchsorted(self.anchor_key, keys, side="right") - lo
        entry = np.repeat(lo - np.cumsum(n) + n, n) + np.arange(n.sum())
        at = np.repeat(at, n)
        seq = self.anchor_seq[entry]
        open_ = self.contained[seq] < 0
        entry, at, seq = entry[open_], at[open_], seq[open_]
        length, offset = self.lengths[seq], self.anchor_offset[entry]
        same, other = fwd[at] == self.anchor_fwd[entry], fwd[at] == self.anchor_rc[entry]
        start = np.concatenate((at[same] - offset[same], at[other] - (length[other] - offset[other] - self.k)))
        seq = np.concatenate((seq[same], seq[other]))
        reverse = np.concatenate((np.zeros(same.sum(), bool), np.ones(other.sum(), bool)))
        w = np.searchsorted(windows["offset"], start, side="right") - 1
        inside = (start >= 0) & (start + self.lengths[seq] <= windows["offset"][w] + windows["length"][w])
        start, seq, reverse = start[inside], seq[inside], reverse[inside]
        step = max(1, budget // int(self.lengths.max(initial=1)))  # bases compared at once stay under the budget
        for a in range(0, len(start), step):
            self._compare(buffer, start[a : a + step], seq[a : a + step], reverse[a : a + step], windows)

    def _compare(self, buffer, start, seq, reverse, windows) -> None:
        if not len(start):
            return
        length = self.lengths[seq]
        first = np.cumsum(length) - length
        r = np.arange(length.sum()) - np.repeat(first, length)
        eval_start = np.where(reverse, self.rc_starts[seq], self.starts[seq])
        differ = buffer[np.repeat(start, length) + r] != self.both[np.repeat(eval_start, length) + r]
        whole = np.add.reduceat(differ, first) == 0
        if not whole.any():
            return
        seqs, one = np.unique(seq[whole], return_index=True)
        pick = np.flatnonzero(whole)[one]
        fresh = self.contained[seqs] < 0
        self.contained[seqs[fresh]] = self._record(start[pick][fresh], windows, forward=~reverse[pick][fresh])

    def found(self) -> dict[str, Any]:
        """What the scan found, to hand from a worker process to the main one (`absorb`)."""
        return {"hit": self.hit, "first_hit": self.first_hit, "contained": self.contained, "hits": self.hits.table()}

    def absorb(self, found: dict[str, Any]) -> None:
        """Add what another process's index `found` (built from the same files, scanning other contigs)."""
        rows = self.hits.add(**found["hits"])
        self.hit |= found["hit"]
        for mine, theirs in ((self.first_hit, found["first_hit"]), (self.contained, found["contained"])):
            new = (mine < 0) & (theirs >= 0)
            mine[new] = rows[theirs[new]] if len(rows) else -1

    # --- results ---
    def results(self, shards: list[str], contigs: list[str], examples: int) -> list[dict[str, Any]]:
        hits = self.hits.table()
        seq_hit = np.zeros(len(self.lengths), bool)
        seq_hit[self.occ_seq[self.hit[self.occ_key]]] = True
        kmers_per_seq = np.bincount(self.occ_seq, minlength=len(self.lengths))
        hit_per_seq = np.bincount(self.occ_seq, weights=self.hit[self.occ_key], minlength=len(self.lengths))
        hit_occ = np.flatnonzero(self.hit[self.occ_key])
        seqs_hit, first_occ = np.unique(self.occ_seq[hit_occ], return_index=True)
        first_hit_occ = np.full(len(self.lengths), -1, np.int64)
        first_hit_occ[seqs_hit] = hit_occ[first_occ]

        def where(row: int) -> dict[str, Any]:
            g, c, pos = int(hits["genome"][row]), int(hits["contig"][row]), int(hits["position"][row])
            shard, sample = shards[int(hits["shard"][row])], int(hits["sample"][row])
            return {"genome": g, "contig": contigs[c], "position": pos, "shard": shard, "sample": sample}

        out = []
        for f, rows in zip(self.files, self.rows):
            shared, contained = seq_hit[rows], self.contained[rows] >= 0
            n = len(rows)
            picked = [*np.flatnonzero(contained)[:examples], *np.flatnonzero(shared & ~contained)]
            shown = []
            for i in picked[:examples]:
                s = int(rows[i])
                if self.contained[s] >= 0:  # where the window holds it whole
                    row, offset, occ = int(self.contained[s]), 0, -1
                    strand = "+" if hits["forward"][row] else "-"
                else:  # where its first shared k-mer was first seen
                    occ = int(first_hit_occ[s])
                    row, offset = int(self.first_hit[self.occ_key[occ]]), int(self.occ_offset[occ])
                    strand = "+" if bool(hits["forward"][row]) == bool(self.occ_forward[occ]) else "-"
                line = f.sequences.lines[i]
                shown.append(
                    {
                        "index": int(i),
                        "line": line,
                        "contained": occ < 0,
                        "offset": offset,
                        **where(row),
                        "strand": strand,
                    }
                )
            total_kmers = int(kmers_per_seq[rows].sum())
            out.append(
                {
                    "name": f.name,
                    "path": str(f.sequences.path),
                    "sequences": n,
                    "distinct": len(distinct(rows)),
                    "without_kmer": int((kmers_per_seq[rows] == 0).sum()),
                    "shared": int(shared.sum()),
                    "shared_fraction": float(shared.mean()) if n else 0.0,
                    "contained": int(contained.sum()),
                    "contained_fraction": float(contained.mean()) if n else 0.0,
                    "kmers": total_kmers,
                    "kmer_fraction": float(hit_per_seq[rows].sum() / total_kmers) if total_kmers else 0.0,
                    "examples": shown,
                }
            )
        return out


# --- the training side ------------------------------------------------------------------------
