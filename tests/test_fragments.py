"""Fragmented assemblies: pieces shorter than a window packed end to end with [SEP], on a 10⁵-scaffold assembly
cut from the real E. coli sequence."""

import json

import numpy as np
import pytest

from dnalm import genome, tokenizers
from dnalm.data.manifest import Manifest
from dnalm.data.shards import IndexedShard
from tests.conftest import prep_folder, run_cli


@pytest.fixture(scope="module")
def scaffolds(tmp_path_factory):
    """E. coli cut into ~100,000 scaffolds of 20–72 bases (names scaffold_N)."""
    sequence = genome.read(genome.DEFAULT_GENOME).contigs[0].sequence
    cuts = np.cumsum(np.random.default_rng(0).integers(20, 73, 110_000))
    bounds = np.concatenate(([0], cuts[cuts < len(sequence)], [len(sequence)]))
    path = tmp_path_factory.mktemp("fragmented") / "scaffolds.fa"
    path.write_text(
        "".join(f">scaffold_{i}\n{sequence[a:b]}\n" for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])))
    )
    return path, {f"scaffold_{i}": sequence[a:b] for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))}


@pytest.fixture(scope="module")
def packed(scaffolds, tmp_path_factory):
    return prep_folder(
        tmp_path_factory.mktemp("packed") / "data", [scaffolds[0]], seq_len=256, val_fraction=0.02, pack_fragments=True
    )


def test_packing_brings_95_percent_of_a_fragmented_assembly_into_samples(scaffolds, packed):
    assert len(scaffolds[1]) > 100_000
    acc = Manifest.load(packed).accounting
    assert acc.in_samples >= 0.95 * acc.genome_bases
    assert acc.in_samples + acc.dropped_n + acc.left_over == acc.genome_bases
    assert Manifest.load(packed).padding_fraction < 0.01


def test_without_packing_windows_never_cross_a_contig(scaffolds, tmp_path):
    folder = prep_folder(tmp_path / "plain", [scaffolds[0]], seq_len=256, val_fraction=0.02)
    acc = Manifest.load(folder).accounting
    assert acc.in_samples == 0 and acc.left_over == acc.genome_bases


def test_a_packed_window_is_its_fragments_separated_by_sep(scaffolds, packed):
    sequences = scaffolds[1]
    nucleotide = tokenizers.load("nucleotide")
    shard = Manifest.load(packed).splits["train"].shards[0]
    reader = IndexedShard(packed / shard.path, shard.num_samples, shard.bytes)
    for index in range(0, shard.num_samples, max(1, shard.num_samples // 50)):
        key, meta, (ids,) = reader.read(index)
        assert len(ids) == 256
        pieces = np.split(ids, np.flatnonzero(ids == tokenizers.SEP_ID) + 1)
        parts = meta["parts"]
        assert len(parts) == sum(1 for p in pieces if len(p) and p[-1] == tokenizers.SEP_ID)
        for (contig, start, end), piece in zip(parts, pieces):
            assert nucleotide.decode(piece[:-1]) == sequences[contig][start:end]
        assert key.startswith(f"g0-{parts[0][0]}-{parts[0][1]}-")


def test_packing_refuses_views_and_reverse_complement(tmp_path):
    for extra in (["--tokenizers", "nucleotide,kmer:3", "--views"], ["--reverse-complement"]):
        done = run_cli("prep", "--out", tmp_path / "out", "--seq-len", "256", "--pack-fragments", *extra)
        assert done.returncode == 1 and "pack_fragments packs one tokenizer's forward strand" in done.stderr, (
            done.stderr
        )
        assert not (tmp_path / "out").exists()


def test_the_manifest_stays_small_however_many_contigs(scaffolds, packed):
    """10⁵ scaffolds: their names and lengths go to contigs.tsv, read on demand; manifest.json stays a few kB."""
    assert (packed / "manifest.json").stat().st_size < 64_000
    (contigs,) = Manifest.contigs(packed)
    assert len(contigs) == len(scaffolds[1]) and contigs[0].name == "scaffold_0"
    assert Manifest.load(packed).genomes[0].num_contigs == len(scaffolds[1])


def test_a_version_1_manifest_with_inline_contigs_still_loads(packed, tmp_path):
    raw = json.loads((packed / "manifest.json").read_text())
    raw["version"] = 1
    raw["genomes"] = [
        {"path": g["path"], "sha256": g["sha256"], "contigs": [{"name": "a", "length": 10}, {"name": "b", "length": 5}]}
        for g in raw["genomes"]
    ]
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    loaded = Manifest.load(tmp_path)
    assert (loaded.genomes[0].num_contigs, loaded.genomes[0].bases) == (2, 15)
