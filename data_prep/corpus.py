"""A corpus file: several genomes, each with a name, a sampling weight, tags and contig filters.

    # corpus.yaml — paths are relative to this file
    genomes:
      - name: human
        path: GRCh38.fa.gz
        weight: 2.0                 # drawn twice as often per sample as a weight-1 genome
        tags: [mammal, reference]
        exclude: ["chrM", "*_alt", "*_random", "chrUn*", "*decoy*"]
      - name: ecoli
        path: ecoli.fa.gz
        include: ["*"]              # fnmatch patterns on contig names (default: every contig)

``dnalm prep corpus.yaml --out DIR`` shards it; the manifest records each genome's weight, tags
and bases (in samples, dropped as N runs, left over, excluded), and the training stream draws
the genomes of every epoch in proportion to their weights.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dnalm.data.manifest import DataError
from dnalm.utils.errors import validated

CORPUS_SUFFIXES = (".yaml", ".yml")


class GenomeSettings(BaseModel):
    """How one genome of a corpus enters the data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="the genome's name in the manifest, samples' keys and metrics")
    weight: float = Field(1.0, gt=0, description="relative share of an epoch's samples (per genome, not per base)")
    tags: list[str] = Field(default_factory=list, description="labels a training config can select genomes by")
    include: list[str] = Field(default_factory=lambda: ["*"], description="fnmatch patterns: contigs kept")
    exclude: list[str] = Field(
        default_factory=list, description="fnmatch patterns: contigs dropped (wins over include)"
    )

    def keeps(self, contig: str) -> bool:
        return any(fnmatchcase(contig, p) for p in self.include) and not any(
            fnmatchcase(contig, p) for p in self.exclude
        )


class CorpusGenome(GenomeSettings):
    path: str


class Corpus(BaseModel):
    model_config = ConfigDict(extra="forbid")

    genomes: list[CorpusGenome] = Field(min_length=1, description="the genomes, each with its own settings")

    @model_validator(mode="after")
    def _unique(self) -> Corpus:
        names = [g.name for g in self.genomes]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"genome names must be unique: {', '.join(twice)} appear more than once")
        return self


def is_corpus(path: str | Path) -> bool:
    return str(path).endswith(CORPUS_SUFFIXES)


def load_corpus(path: str | Path) -> tuple[list[str], list[GenomeSettings]]:
    """(genome paths made absolute, their settings) from a corpus YAML."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such corpus file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: not YAML ({exc})") from None
    corpus = validated(Corpus, raw if isinstance(raw, dict) else {"genomes": raw}, DataError, str(path))
    paths = [str((path.parent / g.path).resolve()) for g in corpus.genomes]
    return paths, [GenomeSettings(**g.model_dump(exclude={"path"})) for g in corpus.genomes]
