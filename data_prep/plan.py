"""The deterministic plan of a prep run: which bases go to which shard, decided before any shard is written.

Every job of a run computes (or reads) the same plan, so the samples and their shards are the
same whatever the number of jobs. The plan cuts each contig at long N runs (segments), holds
out whole blocks of ``val_block_bases`` for validation, and packs the resulting pieces into
shards of about ``shard_size_mb``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from data_prep.corpus import GenomeSettings
from dnalm import genome as genome_io
from dnalm import tokenizers as tokenizer_registry
from dnalm.data.kmers import read_sequences
from dnalm.data.manifest import DataError, GenomeEntry, TokenizerEntry
from dnalm.data.shards import token_dtype
from dnalm.tokenizers import KmerTokenizer, Tokenizer
from dnalm.utils.errors import validated
from dnalm.utils.files import fsync_path, fsync_tree, rename_durably, write_atomic

PLAN_FILE = "plan.json"
LOCK_FILE = ".plan.lock"  # created atomically by the one job that builds the plan
TOKENIZER_DIR = "tokenizers"
SPLITS = ("train", "val")


class PrepConfig(BaseModel):
    """Everything that decides the samples of a prep run (validated; saved in the plan and manifest)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    genomes: list[str] = Field(min_length=1)
    tokenizers: list[str] = Field(min_length=1, description="tokenizer specs: nucleotide, kmer:6, bpe:PATH")
    seq_len: int = Field(
        ge=8, le=1 << 20, description="tokens per sample (with --views: the whole [CLS] v0 [SEP] … input)"
    )
    views: bool = Field(False, description="one sample holds every tokenizer's view of the same bases")
    val_fraction: float = Field(0.02, ge=0, lt=1, description="fraction of blocks held out for validation")
    val_block_bases: int = Field(
        100_000, ge=1_000, description="size of the genomic blocks the validation split is drawn in"
    )
    reverse_complement: bool = Field(False, description="also write every window's reverse complement")
    shard_size_mb: float = Field(64.0, gt=0, description="target shard size")
    min_n_run: int = Field(100, ge=1, description="N runs at least this long split contigs; windows never cross them")
    seed: int = Field(0, description="seed of the validation block choice")
    pack_fragments: bool = Field(
        False,
        description="pack pieces shorter than a window into shared windows, separated "
        "by [SEP] (fragmented assemblies); default: windows never cross a contig, short pieces are left over",
    )
    corpus: list[GenomeSettings] = Field(
        default_factory=list,
        description="per genome: name, weight, tags, contig "
        "filters (from a corpus YAML); empty: every contig, weight 1, named by file",
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="CSV (a sequence column) or FASTA files: windows sharing a k-mer with any of their sequences, "
        "on either strand, are left out (evaluation sets kept out of pretraining; the manifest records it)",
    )
    exclude_k: int = Field(
        32, ge=8, le=32, description="k of --exclude: the length of a shared k-mer that drops a window"
    )

    @field_validator("genomes", "exclude")
    @classmethod
    def _absolute(cls, paths: list[str]) -> list[str]:
        return [str(Path(p).resolve()) for p in paths]

    @model_validator(mode="after")
    def _one_setting_per_genome(self) -> PrepConfig:
        if self.corpus and len(self.corpus) != len(self.genomes):
            raise ValueError(f"corpus has {len(self.corpus)} genome settings for {len(self.genomes)} genomes")
        if self.pack_fragments and (self.views or self.reverse_complement):
            raise ValueError(
                "pack_fragments packs one tokenizer's forward strand: it cannot be combined with --views or "
                "--reverse-complement"
            )
        return self

    def genome_settings(self, index: int) -> GenomeSettings:
        if self.corpus:
            return self.corpus[index]
        name = Path(self.genomes[index]).name
        for suffix in (".gz", ".bgz", *genome_io.FASTA_SUFFIXES):
            name = name.removesuffix(suffix)
        return GenomeSettings(name=name)

    @classmethod
    def checked(cls, **values) -> PrepConfig:
        return validated(cls, values, DataError, "prep")


@dataclass(frozen=True)
class Piece:
    genome: int
    contig: str
    start: int
    end: int


@dataclass
class ShardPlan:
    index: int
    split: str
    path: str
    pieces: list[Piece]

    @property
    def bases(self) -> int:
        return sum(p.end - p.start for p in self.pieces)


@dataclass
class Plan:
    fingerprint: str
    config: PrepConfig
    genomes: list[GenomeEntry]
    tokenizers: list[TokenizerEntry]
    segment_bases: int  # bases left once long N runs are cut out (and excluded contigs left out)
    shards: list[ShardPlan]
    per_genome: list[dict]  # each genome's bases, excluded (contig filters), segment bases and soft-masking

    @property
    def excluded_bases(self) -> int:
        return sum(g["excluded"] for g in self.per_genome)

    @property
    def genome_bases(self) -> int:
        return sum(c.length for g in self.genomes for c in g.contigs)

    def to_json(self) -> str:
        return json.dumps(
            {
                "fingerprint": self.fingerprint,
                "config": self.config.model_dump(),
                "genomes": [g.model_dump() for g in self.genomes],
                "tokenizers": [t.model_dump() for t in self.tokenizers],
                "segment_bases": self.segment_bases,
                "per_genome": self.per_genome,
                "shards": [
                    {"index": s.index, "split": s.split, "path": s.path, "pieces": [asdict(p) for p in s.pieces]}
                    for s in self.shards
                ],
            }
        )

    @classmethod
    def load(cls, folder: Path) -> Plan:
        path = Path(folder) / PLAN_FILE
        if not path.is_file():
            raise DataError(f"{folder}: no {PLAN_FILE}; not a dnalm prep folder (or prep never started)")
        raw = json.loads(path.read_text())
        return cls(
            raw["fingerprint"],
            PrepConfig(**raw["config"]),
            [GenomeEntry(**g) for g in raw["genomes"]],
            [TokenizerEntry(**t) for t in raw["tokenizers"]],
            raw["segment_bases"],
            [ShardPlan(s["index"], s["split"], s["path"], [Piece(**p) for p in s["pieces"]]) for s in raw["shards"]],
            raw.get("per_genome")
            or [
                {"bases": sum(c["length"] for c in g["contigs"]), "excluded": 0, "segment_bases": raw["segment_bases"]}
                for g in raw["genomes"]
            ],
        )

    def load_tokenizers(self, folder: Path) -> list[Tokenizer]:
        loaded = [tokenizer_registry.load_folder(Path(folder) / t.folder) for t in self.tokenizers]
        for entry, tok in zip(self.tokenizers, loaded):
            if tok.fingerprint != entry.fingerprint:
                raise DataError(f"{folder}/{entry.folder}: tokenizer changed since the plan was made")
        return loaded


def check_tokenizers(config: PrepConfig) -> list[Tokenizer]:
    tokenizers = [tokenizer_registry.load(spec) for spec in config.tokenizers]
    if any(isinstance(t, tokenizer_registry.ViewTokenizer) for t in tokenizers):
        raise DataError("prep: name views as --tokenizers A,B with --views, not A+B")
    if len(tokenizers) > 1 and not config.views:
        raise DataError(
            f"prep: {len(tokenizers)} tokenizers need --views (one sample holds every view of the same "
            "bases); to get separate datasets, run prep once per tokenizer"
        )
    if config.views:
        overlapping = [t.name for t in tokenizers if isinstance(t, KmerTokenizer) and t.overlapping]
        if overlapping:
            raise DataError(
                f"prep: overlapping k-mers ({', '.join(overlapping)}) cannot be a view: their tokens "
                "straddle window edges; use kmer:K (non-overlapping) or prep them alone"
            )
        if config.seq_len < 2 * (len(tokenizers) + 1) + 8:
            raise DataError(f"prep: --seq-len {config.seq_len} leaves almost no room next to [CLS] and the [SEP]s")
    return tokenizers


def plan_fingerprint(config: PrepConfig, tokenizers: list[Tokenizer], genome_sha256: list[str]) -> str:
    return hashlib.sha256(
        json.dumps(
            {
                "config": config.model_dump(
                    exclude={k for k in ("corpus", "pack_fragments", "exclude") if not getattr(config, k)}
                    | (set() if config.exclude else {"exclude_k"})
                ),
                **({"exclude_sha256": [genome_io.file_sha256(p) for p in config.exclude]} if config.exclude else {}),
                "genomes": genome_sha256,
                "tokenizers": [t.fingerprint for t in tokenizers],
                "version": 2,  # 2: samples carry repeat flags
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:16]


def scan_genome(config: PrepConfig, g: int) -> dict:
    """One genome's part of the plan: its contigs, the segments between long N runs of the kept ones, a probe of
    bases."""
    path, settings = config.genomes[g], config.genome_settings(g)
    contigs, kept, segments, probe, softmasked = [], [], [], None, 0
    for contig in genome_io.iter_contigs(path):
        contigs.append({"name": contig.name, "length": len(contig)})
        if not settings.keeps(contig.name):
            continue
        kept.append(contigs[-1])
        softmasked += int(np.count_nonzero(contig.softmask))
        segments.append((contig.name, contig.segments(config.min_n_run)))
        if probe is None and len(segments[-1][1]):
            probe = contig.bases[segments[-1][1][0, 0] :][:200_000].copy()
    return {
        "contigs": contigs,
        "kept": kept,
        "segments": segments,
        "probe": probe,
        "softmasked": softmasked,
        "sha256": genome_io.file_sha256(path),
    }


def _scan(args) -> dict:
    return scan_genome(*args)


def build_plan(config: PrepConfig, tokenizers: list[Tokenizer], processes: int = 1) -> Plan:
    """The plan; with ``processes`` > 1 the genomes are parsed in parallel (one process per genome at a time)."""
    tasks = [(config, g) for g in range(len(config.genomes))]
    if processes > 1 and len(tasks) > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(min(processes, len(tasks))) as pool:
            scans = pool.map(_scan, tasks)
    else:
        scans = [_scan(t) for t in tasks]
    genomes, per_genome = [], []
    pieces_by_split: dict[str, list[Piece]] = {s: [] for s in SPLITS}
    probe = next((s["probe"] for s in scans if s["probe"] is not None), None)
    for g, (path, scan) in enumerate(zip(config.genomes, scans)):
        contigs, kept, segments = scan["contigs"], scan["kept"], scan["segments"]
        genomes.append(GenomeEntry(path=path, sha256=scan["sha256"], contigs=contigs))
        val_blocks = _validation_blocks(GenomeEntry(path=path, sha256=scan["sha256"], contigs=kept), config)
        stats = {
            "bases": sum(c["length"] for c in contigs),
            "excluded": sum(c["length"] for c in contigs) - sum(c["length"] for c in kept),
            "segment_bases": 0,
            "softmasked": scan["softmasked"],
            # lowercase marks repeats only when some bases and not nearly all are lowercase
            "softmask": genome_io.softmask_status(scan["softmasked"] / max(1, sum(c["length"] for c in kept))),
        }
        for name, segs in segments:
            for start, end in segs.tolist():
                stats["segment_bases"] += end - start
                for split, a, b in _split_by_blocks(name, start, end, val_blocks, config.val_block_bases):
                    pieces_by_split[split].append(Piece(g, name, a, b))
        per_genome.append(stats)
    if probe is None:
        raise DataError(f"prep: {', '.join(config.genomes)}: no stretch of sequence outside long N runs")
    shard_bases = _shard_bases(config, tokenizers, probe)
    shards: list[ShardPlan] = []
    for split in SPLITS:
        for pieces in _pack(pieces_by_split[split], shard_bases):
            shards.append(ShardPlan(len(shards), split, f"{split}/shard-{len(shards):06d}.tar", pieces))
    entries = [
        TokenizerEntry(
            name=t.name,
            kind=t.kind,
            fingerprint=t.fingerprint,
            vocab_size=t.vocab_size,
            folder=f"{TOKENIZER_DIR}/tok{i}",
        )
        for i, t in enumerate(tokenizers)
    ]
    fingerprint = plan_fingerprint(config, tokenizers, [g.sha256 for g in genomes])
    return Plan(fingerprint, config, genomes, entries, sum(g["segment_bases"] for g in per_genome), shards, per_genome)


def checked_fingerprint(config: PrepConfig) -> tuple[list[Tokenizer], str]:
    """The tokenizers and the plan fingerprint of ``config``, once its genomes and tokenizers check out (no plan
    built)."""
    tokenizers = check_tokenizers(config)
    for path in config.genomes:
        genome_io.check_path(path)
    for path in config.exclude:  # a file prep --exclude cannot read is refused before any folder is made
        read_sequences(path)
    return tokenizers, plan_fingerprint(config, tokenizers, [genome_io.file_sha256(p) for p in config.genomes])


def prepare_folder(
    folder: Path, config: PrepConfig, wait_seconds: float = 3 * 3600, poll_seconds: float = 0.5, processes: int = 1
) -> Plan:
    """Write (or find) the plan of ``config`` in ``folder``; refuse a folder made from other inputs.

    Any number of jobs may call this at the same instant (a SLURM array on an empty folder): the one
    that creates the lock file builds the plan, the others wait for ``plan.json`` and reuse it.
    """
    folder = Path(folder)
    tokenizers, fingerprint = checked_fingerprint(config)
    created = not folder.exists()
    deadline = time.monotonic() + wait_seconds
    while True:
        if (folder / PLAN_FILE).is_file():
            return _existing_plan(folder, fingerprint)
        if _take_lock(folder):
            break
        if time.monotonic() > deadline:
            raise DataError(
                f"{folder}: waited {wait_seconds:.0f} s for the plan another job is building "
                f"({folder / LOCK_FILE}: {_lock_owner(folder)}); if that job died, remove the lock and re-run"
            )
        time.sleep(poll_seconds)
    try:
        if (folder / PLAN_FILE).is_file():  # finished between our look and our lock
            return _existing_plan(folder, fingerprint)
        if any(p for p in folder.iterdir() if not p.name.startswith(".")):
            raise DataError(f"{folder}: exists, is not empty and is not a dnalm prep folder; choose another --out")
        plan = build_plan(config, tokenizers, processes)
        _write_plan(folder, plan, tokenizers)
    except BaseException:
        (folder / LOCK_FILE).unlink(missing_ok=True)
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    (folder / LOCK_FILE).unlink(missing_ok=True)
    return plan


def _existing_plan(folder: Path, fingerprint: str) -> Plan:
    old = Plan.load(folder)
    if old.fingerprint != fingerprint:
        raise DataError(
            f"{folder}: holds a prep of different inputs (plan {old.fingerprint}, this run {fingerprint}); "
            "choose another --out or remove it"
        )
    old.load_tokenizers(folder)
    return old


def _take_lock(folder: Path) -> bool:
    """Create the lock atomically (O_EXCL); a lock left by a dead process on this host is taken over."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        host, _, pid = _lock_owner(folder).partition(":")
        if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
            lock.unlink(missing_ok=True)
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{socket.gethostname()}:{os.getpid()}")
    return True


def _lock_owner(folder: Path) -> str:
    try:
        return (folder / LOCK_FILE).read_text()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_plan(folder: Path, plan: Plan, tokenizers: list[Tokenizer]) -> None:
    staging = folder / f".staging{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    for entry, tok in zip(plan.tokenizers, tokenizers):
        tok.save(staging / entry.folder)
    fsync_tree(staging / TOKENIZER_DIR)
    rename_durably(staging / TOKENIZER_DIR, folder / TOKENIZER_DIR)
    for split in SPLITS:
        (folder / split).mkdir(exist_ok=True)
        fsync_path(folder / split)
    write_atomic(folder / PLAN_FILE, plan.to_json())
    shutil.rmtree(staging, ignore_errors=True)
    plan.load_tokenizers(folder)


def _validation_blocks(genome: GenomeEntry, config: PrepConfig) -> set[tuple[str, int]]:
    """The blocks held out: a seeded ranking of every block of the genome, the first ``val_fraction`` of them."""
    blocks = [(c.name, b) for c in genome.contigs for b in range(-(-c.length // config.val_block_bases))]
    if config.val_fraction == 0 or len(blocks) < 2:
        return set()
    wanted = min(len(blocks) - 1, max(1, round(config.val_fraction * len(blocks))))
    rank = sorted(
        blocks, key=lambda blk: hashlib.sha256(f"{config.seed}|{genome.sha256}|{blk[0]}|{blk[1]}".encode()).digest()
    )
    return set(rank[:wanted])


def _split_by_blocks(contig: str, start: int, end: int, val_blocks, block: int):
    """(split, start, end) stretches of one segment, cut where the split changes."""
    out, a = [], start
    while a < end:
        split = "val" if (contig, a // block) in val_blocks else "train"
        b = min(end, (a // block + 1) * block)
        while b < end and ((contig, b // block) in val_blocks) == (split == "val"):
            b = min(end, (b // block + 1) * block)
        out.append((split, a, b))
        a = b
    return out


def _shard_bases(config: PrepConfig, tokenizers: list[Tokenizer], probe: np.ndarray) -> int:
    """Bases per shard for ``shard_size_mb``, from token densities measured on the first bases of the genome."""
    density = [max(len(t.encode(probe)), 1) / max(len(probe), 1) for t in tokenizers]
    used = density if config.views else density[:1]
    token_bytes = sum(d * token_dtype(t.vocab_size).itemsize for d, t in zip(used, tokenizers))
    bases_per_sample = (config.seq_len - (len(used) + 1 if config.views else 0)) / sum(used)
    overhead = (len(used) + 1) * (1024 + 128) / bases_per_sample  # tar headers and block padding, npy headers
    per_base = (token_bytes + overhead) * (2 if config.reverse_complement else 1)
    return max(int(bases_per_sample) * 4, int(config.shard_size_mb * (1 << 20) / per_base))


def _pack(pieces: list[Piece], capacity: int) -> list[list[Piece]]:
    """Consecutive pieces into shards of about ``capacity`` bases, cutting pieces that overflow."""
    shards, current, room = [], [], capacity
    for piece in pieces:
        start = piece.start
        while start < piece.end:
            take = min(piece.end - start, room)
            current.append(Piece(piece.genome, piece.contig, start, start + take))
            start += take
            room -= take
            if room == 0:
                shards.append(current)
                current, room = [], capacity
    if current:
        shards.append(current)
    return shards
