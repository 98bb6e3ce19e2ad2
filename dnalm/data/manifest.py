"""``manifest.json``: what a prepared data folder holds, written last and atomically by data_prep.

Its size depends on the shards and genomes, not on the contigs: every contig's name and length is in
``contigs.tsv`` beside it (read on demand), so a training worker that loads the manifest holds the
same few kilobytes for a 10⁶-scaffold corpus as for one chromosome.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dnalm.utils.errors import DnalmError
from dnalm.utils.files import binary_kind, write_atomic

MANIFEST_FILE = "manifest.json"
CONTIGS_FILE = "contigs.tsv"
MANIFEST_VERSION = 3  # 1 listed every contig inside manifest.json; 3: samples may carry repeat flags


class DataError(DnalmError):
    """A prepared data folder that is incomplete, inconsistent or made for another tokenizer."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContigEntry(_Model):
    name: str
    length: int


class GenomeEntry(_Model):
    """A genome as the plan knows it: every contig with its length."""

    path: str
    sha256: str
    contigs: list[ContigEntry]


class ManifestGenome(_Model):
    """A genome as the manifest records it; its contigs are in contigs.tsv."""

    path: str
    sha256: str
    num_contigs: int
    bases: int
    softmasked: int = 0  # lowercase bases of the kept contigs
    softmask: str = Field(
        "none",
        description='"repeats": its samples carry repeat flags; "none"; or "not soft-masked" (lowercase throughout '
        "or nearly, read as unmasked). Manifests before version 3: none",
    )


class TokenizerEntry(_Model):
    name: str
    kind: str
    fingerprint: str
    vocab_size: int
    folder: str  # relative to the data folder: the saved tokenizer
    files: list[str] = Field(default_factory=list, description="the files in `folder` (what a remote reader fetches)")


class ShardEntry(_Model):
    path: str  # relative to the data folder
    num_samples: int
    num_tokens: int
    sha256: str
    bytes: int
    index_sha256: str | None = None  # of shard-N.tar.idx (absent in folders prepared before remote sources)


class SplitEntry(_Model):
    num_samples: int
    num_tokens: int
    shards: list[ShardEntry]
    genome_samples: list[int] = Field(
        default_factory=list,
        description="samples of each genome, in genome order (a genome's samples are consecutive across the shards)",
    )


class Accounting(_Model):
    """Every base of every contig: in samples, dropped as long N runs, or left over."""

    genome_bases: int
    in_samples: int
    dropped_n: int
    left_over: int
    excluded: int = 0  # contigs a corpus's include/exclude patterns left out
    dropped_overlap: int = 0  # in windows prep --exclude left out (sharing a k-mer with an excluded sequence) only


class GenomeMix(_Model):
    """One genome of the corpus: its sampling weight, tags, and where its bases went."""

    name: str
    path: str
    weight: float
    tags: list[str]
    bases: int
    excluded: int
    dropped_n: int
    in_samples: int
    left_over: int
    samples: dict[str, int]
    dropped_overlap: int = 0


class ExcludedFile(_Model):
    path: str
    bytes: int
    sha256: str
    sequences: int


class Exclusion(_Model):
    """What ``prep --exclude`` kept out: windows sharing a k-mer (either strand) with the sequences of these files."""

    k: int
    files: list[ExcludedFile]
    windows_dropped: dict[str, int] = Field(description="per split: windows (and packed fragments) left out")
    bases_dropped: int = Field(description="bases that only dropped windows covered (accounting.dropped_overlap)")


class Manifest(_Model):
    version: int = MANIFEST_VERSION
    plan_fingerprint: str
    genomes: list[ManifestGenome]
    tokenizers: list[TokenizerEntry]
    views: bool
    seq_len: int
    reverse_complement: bool
    num_samples: int
    num_tokens: int
    padding_tokens: int
    padding_fraction: float
    splits: dict[str, SplitEntry]
    accounting: Accounting
    settings: dict
    mix: list[GenomeMix] = Field(default_factory=list)
    exclusion: Exclusion | None = None

    @property
    def repeats(self) -> bool:
        """Whether any sample may carry repeat flags (some genome's soft-masking marks repeats)."""
        return any(g.softmask == "repeats" for g in self.genomes)

    def save(self, folder: Path) -> Path:
        return write_atomic(Path(folder) / MANIFEST_FILE, self.model_dump_json(indent=1))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Manifest:
        folder = Path(folder)
        path = folder / MANIFEST_FILE if folder.is_dir() else folder
        if not path.is_file():
            raise DataError(
                f"{path}: no manifest (prep not run, or not finished: run `dnalm prep` again to complete it)"
            )
        try:
            raw = json.loads(path.read_text())
            if raw.get("version") == 1:  # contigs inline: keep their count and bases, drop the list
                raw["genomes"] = [
                    {
                        "path": g["path"],
                        "sha256": g["sha256"],
                        "num_contigs": len(g["contigs"]),
                        "bases": sum(c["length"] for c in g["contigs"]),
                    }
                    for g in raw["genomes"]
                ]
            return cls.model_validate(raw)
        except UnicodeDecodeError:
            raise DataError(
                f"{path}: {binary_kind(path)}, not a dnalm manifest: give the folder `dnalm prep` wrote (a genome is "
                "prepared first: dnalm prep GENOME --out DATA --seq-len N)"
            ) from None
        except (json.JSONDecodeError, ValidationError, KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"{path}: not a dnalm manifest ({str(exc).splitlines()[0]})") from None

    @staticmethod
    def contigs(folder: str | os.PathLike) -> list[list[ContigEntry]]:
        """Every genome's contigs, in order, from ``contigs.tsv`` (genome index, name, length per line)."""
        path = Path(folder) / CONTIGS_FILE
        if not path.is_file():
            raise DataError(f"{path}: missing (prepared by an older dnalm: its manifest.json lists the contigs)")
        out: list[list[ContigEntry]] = []
        for line in path.read_text().splitlines():
            genome, name, length = line.split("\t")
            while len(out) <= int(genome):
                out.append([])
            out[int(genome)].append(ContigEntry(name=name, length=int(length)))
        return out


def write_contigs(folder: Path, genomes: list[GenomeEntry]) -> None:
    """``contigs.tsv``, atomically: one line per contig (genome index, name, length)."""
    lines = (f"{g}\t{c.name}\t{c.length}\n" for g, genome in enumerate(genomes) for c in genome.contigs)
    write_atomic(Path(folder) / CONTIGS_FILE, "".join(lines))
