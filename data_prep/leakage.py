"""``dnalm data leakage``: which evaluation sequences a prep's training split already holds.

For each evaluation file (a GUE task folder's train/dev/test CSV, any CSV with a ``sequence`` column, a
FASTA) and each of its sequences: does it share an exact k-mer with a training window (on either strand:
a model trains on both), and does one training window hold it whole (forward or reverse-complemented)?

How it scales (``docs/benchmarks/data.md``, "Leakage"): only the evaluation side is held in memory, as
canonical 2-bit k-mers (`dnalm.data.kmers.KmerSet`) with an index from each to its sequences. The training
side streams: the plan says which contigs each training shard covers, each shard's sample metadata gives
its windows' coordinates, and the genome FASTA (checked against the manifest's sha256) gives their bases,
one contig at a time, scanned a few million bases at a time with numpy. A window's k-mers never span two
windows, as the model never saw them together. "Contained whole" is checked directly: where a training
k-mer equals a sequence's first k-mer (either strand), the window's bases are compared with the sequence's.
"""

from __future__ import annotations

import json
import mmap
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.leakage_index import (  # noqa: F401 (the evaluation side; re-exported)
    GUE_SPLITS,
    EvalFile,
    EvalIndex,
    Hits,
    LeakageError,
    eval_files,
)
from data_prep.plan import Plan
from dnalm import genome as genome_io
from dnalm.data.kmers import (
    CHUNK,
    DEFAULT_K,
    check_k,
)
from dnalm.data.manifest import DataError, Manifest, ShardEntry
from dnalm.data.shards import IndexedShard, ShardError, index_path, walk_tar

_SEP = np.frombuffer(b"N", np.uint8)  # between windows: no k-mer spans two


def shard_metadata(folder: Path, entry: ShardEntry) -> list[dict]:
    """Every sample's metadata in a shard, through its index: one tar header and the JSON after it, never the token
    arrays (parsed as one JSON list a shard). Presence, index and size are checked against the manifest first."""
    path = Path(folder) / entry.path
    IndexedShard(path, entry.num_samples, entry.bytes).close()
    if not entry.num_samples:
        return []
    entries = np.fromfile(index_path(path), "<u8").reshape(-1, 3)
    texts = []
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        for i, (offset, length, _crc) in enumerate(entries.tolist()):
            header = data[offset : offset + 512]
            name, size = header[:100].rstrip(b"\0"), int(header[124:136].strip(b"\0 ") or b"0", 8)
            if header[156:157] in (b"0", b"\0") and name.endswith(b".json"):  # the usual layout: the JSON first
                texts.append(data[offset + 512 : offset + 512 + size])
                continue
            part = data[offset : offset + length]  # a pax header first (a long contig name): walk the members
            found = next(((s, n) for member, s, n in walk_tar(part, path) if member.endswith(".json")), None)
            if found is None:
                raise ShardError(f"{path}: sample {i} has no metadata")
            texts.append(part[found[0] : found[0] + found[1]])
    try:
        return json.loads(b"[" + b",".join(texts) + b"]")
    except ValueError:
        raise ShardError(f"{path}: a sample's metadata is damaged (not JSON)") from None


def _genome_paths(manifest: Manifest, overrides: Sequence[str | os.PathLike]) -> list[Path]:
    """The FASTA of every genome of the prep: where the manifest says, or one of ``overrides`` with its sha256."""
    given = {genome_io.file_sha256(genome_io.check_path(p)): Path(p) for p in overrides}
    wanted = {g.sha256 for g in manifest.genomes}
    for sha, path in given.items():
        if sha not in wanted:
            raise DataError(f"--genome {path}: matches no genome of the prep (its sha256 differs from all of them)")
    out = []
    for g in manifest.genomes:
        if g.sha256 in given:
            out.append(given[g.sha256])
            continue
        path = Path(g.path)
        if not path.is_file():
            raise DataError(f"{path}: the prep's genome is not there; give its FASTA with --genome")
        if genome_io.file_sha256(path) != g.sha256:
            raise DataError(
                f"{path}: changed since the prep (sha256 differs from the manifest); give the original with --genome"
            )
        out.append(path)
    return out


@dataclass
class TrainingSide:
    """What the scan reads: the split's shards, which of them cover each contig, and the genomes' FASTA files."""

    folder: Path
    entries: list[ShardEntry]
    paths: list[Path]
    by_contig: dict[tuple[int, str], list[int]]  # (genome, contig) -> the shards that hold some of it
    bases: dict[tuple[int, str], int]  # the bases the plan gave those shards of it (for progress and jobs)

    @property
    def contigs(self) -> list[tuple[int, str]]:
        return list(self.by_contig)


def training_side(folder: Path, split: str, genomes: Sequence[str | os.PathLike] = ()) -> TrainingSide:
    manifest = Manifest.load(folder)
    plan = Plan.load(folder)
    if split not in manifest.splits:
        raise DataError(f"--split {split}: the prep has splits {', '.join(manifest.splits)}")
    entries = manifest.splits[split].shards
    planned = {s.path: s for s in plan.shards}
    missing = [e.path for e in entries if e.path not in planned]
    if missing:
        raise DataError(f"{folder}: shard {missing[0]} is in the manifest but not the plan; the folder is inconsistent")
    by_contig: dict[tuple[int, str], list[int]] = defaultdict(list)
    bases: dict[tuple[int, str], int] = defaultdict(int)
    for s, e in enumerate(entries):
        for p in planned[e.path].pieces:
            if s not in by_contig[(p.genome, p.contig)]:
                by_contig[(p.genome, p.contig)].append(s)
            bases[(p.genome, p.contig)] += p.end - p.start
    return TrainingSide(folder, entries, _genome_paths(manifest, genomes), dict(by_contig), dict(bases))


def check(
    prep: str | os.PathLike,
    evals: Sequence[str | os.PathLike],
    k: int = DEFAULT_K,
    *,
    split: str = "train",
    examples: int = 3,
    genomes: Sequence[str | os.PathLike] = (),
    jobs: int = 1,
    progress: bool = False,
) -> dict[str, Any]:
    """The leakage report of ``evals`` against split ``split`` of the prep in ``prep`` (see the module docstring);
    with ``jobs`` > 1, processes scan the contigs in parallel (each holds its own evaluation index)."""
    started, cpu = time.perf_counter(), time.process_time()
    check_k(k)
    folder = Path(prep)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such prep folder")
    side = training_side(folder, split, genomes)
    index = EvalIndex(eval_files(evals), k)
    indexed, index_cpu = time.perf_counter(), time.process_time()
    if jobs <= 1:
        stats = _scan(index, side, side.contigs, progress)
        scan_cpu = time.process_time() - index_cpu
    else:
        import multiprocessing

        parts = _balanced(side, jobs)
        with multiprocessing.get_context("spawn").Pool(len(parts)) as pool:
            found = pool.map(_scan_part, [(side, part, list(evals), k) for part in parts])
        stats = {key: sum(f["stats"][key] for f in found) for key in found[0]["stats"]}
        for f in found:
            index.absorb(f)
        scan_cpu = sum(f["cpu"] for f in found)
    scan_seconds = time.perf_counter() - indexed
    from dnalm.utils.memory import peak_rss_bytes

    return {
        "prep": str(folder),
        "split": split,
        "k": k,
        "strands": "both (canonical k-mers: a sequence and its reverse complement count alike)",
        "training": {
            "shards": len(side.entries),
            "samples": stats["samples"],
            "windows_scanned": stats["windows"],
            "bases_scanned": stats["bases"],
            "genomes": [str(p) for p in side.paths],
        },
        "evaluation": index.results([e.path for e in side.entries], [c for _, c in side.contigs], examples),
        "performance": {
            "jobs": max(jobs, 1),
            "seconds": round(time.perf_counter() - started, 2),
            "index_seconds": round(indexed - started, 2),
            "index_cpu_seconds": round(index_cpu - cpu, 2),
            "scan_seconds": round(scan_seconds, 2),
            "scan_cpu_seconds": round(scan_cpu, 2),  # with jobs: the workers' scans, their index builds aside
            "bases_per_second": round(stats["bases"] / scan_seconds) if scan_seconds else 0,
            "bases_per_cpu_second": round(stats["bases"] / scan_cpu) if scan_cpu else 0,
            "eval_distinct_kmers": len(index.set),
            "eval_kmer_occurrences": len(index.occ_key),
            "eval_index_mb": round(index.nbytes / 2**20, 1),
            "eval_kmer_set_mb": round(index.set.nbytes / 2**20, 1),
            "peak_rss_mb": round(peak_rss_bytes() / 2**20, 1),
        },
    }


def _balanced(side: TrainingSide, jobs: int) -> list[list[tuple[int, str]]]:
    """The contigs in ``jobs`` groups of about equal bases (largest first, each to the lightest group)."""
    groups: list[list[tuple[int, str]]] = [[] for _ in range(min(jobs, len(side.contigs)))]
    load = [0] * len(groups)
    for contig in sorted(side.contigs, key=lambda c: -side.bases[c]):
        i = load.index(min(load))
        groups[i].append(contig)
        load[i] += side.bases[contig]
    return [g for g in groups if g]


def _scan_part(args) -> dict[str, Any]:
    """One process of ``check(jobs=N)``: its own evaluation index, its share of the contigs; what it found."""
    side, contigs, evals, k = args
    index = EvalIndex(eval_files(evals), k)
    cpu = time.process_time()
    stats = _scan(index, side, contigs, progress=False)
    return {"stats": stats, "cpu": time.process_time() - cpu, **index.found()}


def _scan(index: EvalIndex, side: TrainingSide, contigs: list[tuple[int, str]], progress: bool) -> dict[str, int]:
    """Scan the training windows of ``contigs``, one contig at a time in each genome's file order; a shard's
    metadata is read when one of its contigs comes up and dropped once all of them are done."""
    ids = {c: i for i, c in enumerate(side.contigs)}  # contig ids the hits table holds
    loaded: dict[int, dict[tuple[int, str], list[tuple[int, int, int, int]]]] = {}
    stats = {"windows": 0, "bases": 0, "samples": 0}
    bar = _bar(sum(side.bases[c] for c in contigs), progress)
    try:
        for g, path in enumerate(side.paths):
            wanted = {contig for genome, contig in contigs if genome == g}
            if not wanted:
                continue
            for contig in genome_io.iter_contigs(path, only=set(wanted)):
                wanted.discard(contig.name)
                spans = []
                for s in side.by_contig[(g, contig.name)]:
                    if s not in loaded:
                        loaded[s] = _windows_by_contig(side.folder, side.entries[s], s, stats)
                    spans += loaded[s].pop((g, contig.name), [])
                    if not loaded[s]:
                        del loaded[s]
                _scan_contig(index, contig.bases, g, ids[(g, contig.name)], spans, stats, bar)
                if not wanted:
                    break
    finally:
        if bar is not None:
            bar.close()
    return stats


def _windows_by_contig(folder: Path, entry: ShardEntry, shard: int, stats: dict) -> dict:
    """A shard's windows as ``(start, end, shard, sample)`` by ``(genome, contig)``; a packed sample's parts are
    windows of their own (they are separated by [SEP] in it)."""
    out: dict[tuple[int, str], list[tuple[int, int, int, int]]] = defaultdict(list)
    for i, meta in enumerate(shard_metadata(folder, entry)):
        stats["samples"] += 1
        parts = meta.get("parts") or [(meta["contig"], meta["start"], meta["end"])]
        for contig, start, end in parts:
            out[(meta["genome"], contig)].append((start, end, shard, i))
    return dict(out)


def _scan_contig(index: EvalIndex, bases: np.ndarray, genome: int, contig: int, spans, stats: dict, bar) -> None:
    if not spans:
        return
    table = np.array(spans, np.int64).reshape(-1, 4)
    table = table[np.lexsort((table[:, 1], table[:, 0]))]
    distinct = np.ones(len(table), bool)  # a reverse-complement sample covers its forward twin's bases
    distinct[1:] = (table[1:, 0] != table[:-1, 0]) | (table[1:, 1] != table[:-1, 1])
    table = table[distinct]
    lengths = table[:, 1] - table[:, 0]
    ends = np.cumsum(lengths + 1)
    a = 0
    while a < len(table):
        b = max(a + 1, int(np.searchsorted(ends, ends[a] - lengths[a] - 1 + CHUNK, side="right")))
        rows = table[a:b]
        pieces = []
        for start, end in rows[:, :2].tolist():
            pieces += [bases[start:end], _SEP]
        offsets = np.concatenate(([0], np.cumsum(rows[:, 1] - rows[:, 0] + 1)[:-1]))
        index.scan(
            np.concatenate(pieces),
            {
                "offset": offsets,
                "length": rows[:, 1] - rows[:, 0],
                "genome": np.full(len(rows), genome, np.int32),
                "contig": np.full(len(rows), contig, np.int32),
                "start": rows[:, 0],
                "shard": rows[:, 2].astype(np.int32),
                "sample": rows[:, 3].astype(np.int32),
            },
        )
        scanned = int((rows[:, 1] - rows[:, 0]).sum())
        stats["windows"] += len(rows)
        stats["bases"] += scanned
        if bar is not None:
            bar.update(scanned)
        a = b


def _bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="b", unit_scale=True, desc="leakage", smoothing=0.1)


# --- the report -------------------------------------------------------------------------------
def format_report(report: dict[str, Any]) -> str:
    t, perf = report["training"], report["performance"]
    lines = [
        f"{report['split']} split of {report['prep']}: {t['bases_scanned']:,} bases in "
        f"{t['windows_scanned']:,} windows ({t['shards']} shards); k = {report['k']}, both strands",
        "",
        f"{'evaluation set':<28} {'sequences':>10} {'share a k-mer':>20} {'contained whole':>20} {'k-mers seen':>12}",
    ]
    for e in report["evaluation"]:
        shared = f"{e['shared']:,} ({e['shared_fraction']:.2%})"
        contained = f"{e['contained']:,} ({e['contained_fraction']:.2%})"
        lines.append(f"{e['name']:<28} {e['sequences']:>10,} {shared:>20} {contained:>20} {e['kmer_fraction']:>12.2%}")
    shown = [(e["name"], x) for e in report["evaluation"] for x in e["examples"]]
    if shown:
        lines += ["", "examples (sequence index, line in its file: where a training window holds it):"]
        for name, x in shown:
            what = "whole" if x["contained"] else f"k-mer at offset {x['offset']}"
            lines.append(
                f"  {name} #{x['index']} (line {x['line']}): {what} at {x['contig']}:{x['position']:,} "
                f"({x['strand']}), {x['shard']} sample {x['sample']}"
            )
    lines += [
        "",
        f"{perf['seconds']:.1f} s ({perf['scan_seconds']:.1f} s scanning, "
        f"{perf['bases_per_second'] / 1e6:.1f} Mbases/s); {perf['eval_distinct_kmers']:,} distinct evaluation "
        f"k-mers in {perf['eval_index_mb']:.0f} MB",
    ]
    return "\n".join(lines)
