"""The stream at scale, scaled down: batches as diverse as random draws, each rank reads its share of the
bytes, per-worker state independent of the corpus size, open files bounded."""

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from math import lgamma
from pathlib import Path

import numpy as np
import pytest

from dnalm import genome
from dnalm.data.manifest import Manifest
from dnalm.data.order import EpochOrder, Permutation
from dnalm.data.shards import index_path, parse_key
from dnalm.data.stream import GenomeStream
from tests.conftest import CHR20, REPO, needs_shared, prep_folder

REGION = 1_000_000


def region(key: str) -> tuple:
    k = parse_key(key)
    return k["genome"], k["contig"], k["start"] // REGION


def expected_distinct(region_sizes: list[int], batch: int) -> float:
    """E[distinct regions] in ``batch`` windows drawn at random without replacement from all windows."""
    total = sum(region_sizes)

    def log_choose(n, k):
        return lgamma(n + 1) - lgamma(k + 1) - lgamma(n - k + 1)

    return sum(
        1 - np.exp(log_choose(total - n, batch) - log_choose(total, batch)) if total - n >= batch else 1.0
        for n in region_sizes
    )


def batch_diversity(
    folder: Path, batch: int = 64, batches: int = 40, order: str = "global", world: int = 1
) -> tuple[float, float]:
    """Distinct regions per global batch of ``batch`` windows, taken by ``world`` ranks; and by random draws."""
    ranks = [
        iter(GenomeStream(folder, batch_size=batch // world, rank=r, world_size=world, seed=0, order=order))
        for r in range(world)
    ]
    keys = [next(rank)["key"] for _ in range(batches) for rank in ranks for _ in range(batch // world)]
    measured = np.mean([len({region(k) for k in keys[i : i + batch]}) for i in range(0, len(keys), batch)])
    every = [s["key"] for s in GenomeStream(folder, batch_size=1, shuffle=False, epochs=1)]
    return float(measured), expected_distinct(list(Counter(region(k) for k in every).values()), batch)


@pytest.fixture(scope="module")
def chr20_data(tmp_path_factory):
    if not CHR20.exists():
        pytest.skip(f"{CHR20} is absent (the team's shared data folder)")
    return prep_folder(
        tmp_path_factory.mktemp("chr20") / "data", [CHR20], seq_len=2048, shard_size_mb=8.0, val_fraction=0
    )


@needs_shared(CHR20)
@pytest.mark.parametrize("order, world", [("global", 1), ("blocks", 4)])
def test_global_batches_of_chr20_are_as_diverse_as_random_draws(chr20_data, order, world):
    measured, random = batch_diversity(chr20_data, order=order, world=world)
    assert measured >= 0.9 * random, (measured, random)


@needs_shared(CHR20)
def test_global_batches_of_a_two_genome_corpus_are_as_diverse_as_random_draws(tmp_path):
    head = tmp_path / "chr20_head.fa"
    contig = genome.IndexedGenome(CHR20).fetch("20", 20_000_000, 32_000_000)
    head.write_text(f">20_part\n{contig.sequence}\n")
    folder = prep_folder(
        tmp_path / "corpus", [genome.DEFAULT_GENOME, head], seq_len=1024, shard_size_mb=2.0, val_fraction=0
    )
    measured, random = batch_diversity(folder)
    assert measured >= 0.9 * random, (measured, random)
    keys = [s["key"] for _, s in zip(range(64 * 20), GenomeStream(folder, batch_size=64, seed=0, epochs=1))]
    assert {parse_key(k)["genome"] for k in keys[:64]} == {0, 1}, "one batch mixes the genomes"


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_each_rank_reads_its_share_and_the_ranks_read_every_sample_once(ecoli_prepared, world):
    manifest = Manifest.load(ecoli_prepared)
    shards = manifest.splits["train"].shards
    total_bytes = sum(s.bytes for s in shards) + sum(index_path(ecoli_prepared / s.path).stat().st_size for s in shards)
    biggest = max(s.bytes for s in shards)
    seen = []
    for rank in range(world):
        stream = GenomeStream(
            ecoli_prepared, batch_size=4, rank=rank, world_size=world, seed=5, epochs=1, order="global"
        )
        keys = [sample["key"] for sample in stream]
        assert stream.bytes_read <= 1.2 * total_bytes / world + biggest, (rank, stream.bytes_read, total_bytes)
        seen += keys
    assert len(seen) == len(set(seen)), "no sample read twice"
    assert manifest.splits["train"].num_samples - len(seen) < world * 4, "only the last partial global batch is left"


def test_open_shard_files_stay_bounded(ecoli_prepared):
    def open_files() -> int:
        return len(os.listdir("/proc/self/fd"))

    baseline = open_files()
    stream = GenomeStream(ecoli_prepared, batch_size=4, seed=0, epochs=1, max_open_shards=2)
    most = 0
    for _i, _ in enumerate(stream):
        most = max(most, open_files() - baseline)
    assert len(stream.shards) > 2 and most <= 2 * 2
    assert open_files() == baseline, "every shard file is closed when the stream ends"


def test_the_order_is_a_permutation_of_every_sample():
    for n in (1, 2, 3, 1000, 4097):
        assert sorted(Permutation(n, [0, n])(np.arange(n)).tolist()) == list(range(n))
    order = EpochOrder([5, 3, 7], seed=2)
    shards, samples = order(0, np.arange(15))
    assert sorted(zip(shards.tolist(), samples.tolist())) == [(s, i) for s, n in enumerate((5, 3, 7)) for i in range(n)]
    assert order(0, np.arange(15))[0].tolist() != order(1, np.arange(15))[0].tolist()


def test_the_blocks_order_is_a_permutation_and_draws_genomes_by_weight():
    from dnalm.data.blocks import BlockOrder

    counts = [316] * 29 + [100]
    for partitions, block, shuffle in ((1, 1, True), (3, 5, True), (64, 700, True), (4, 100, False)):
        order = BlockOrder(counts, 1, partitions, block, shuffle=shuffle)
        shards, samples = order(0, np.arange(order.total))
        assert sorted(zip(shards.tolist(), samples.tolist())) == [
            (s, i) for s, n in enumerate(counts) for i in range(n)
        ]
    genome_samples, weights = [4000, 3000, 2264], [1, 2, 3]  # genome boundaries fall inside shards
    order = BlockOrder(counts, 2, 8, 500, genome_samples=genome_samples, weights=weights)
    drawn = order.samples(0, np.arange(order.total))
    per_genome = np.bincount(np.searchsorted(np.cumsum(genome_samples), drawn, side="right"), minlength=3)
    assert per_genome.tolist() == order.drawn.tolist() and abs(per_genome[2] / per_genome[0] - 3) < 0.01
    assert (
        len(set(drawn[np.searchsorted(np.cumsum(genome_samples), drawn, side="right") == 0].tolist())) == per_genome[0]
    ), "an under-drawn genome gives distinct samples"


def test_order_of_30m_samples_in_10k_shards_adds_under_100_mb(ecoli_prepared, tmp_path):
    folder = tmp_path / "big"
    shutil.copytree(ecoli_prepared, folder)
    done = subprocess.run(
        [sys.executable, str(REPO / "tests" / "scripts" / "order_memory.py"), str(folder), "30000000", "10000"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["total"] == 30_000_000 and result["added_peak_mb"] < 100, result
    shards_seen = {s for shards, _ in result["positions"]["global"] for s in shards}
    assert len(shards_seen) > 40, "one batch's windows come from many shards"


def test_a_rank_opens_each_shard_it_reads_at_most_about_twice_an_epoch(tmp_path, ecoli):
    """Several ranks of a local folder read in the blocks order; its blocks span more tiny shards than a worker keeps
    open, so a shard closed early has read ahead what its block still needs (before, 8 opens a shard read here)."""
    path = tmp_path / "slice.fa"
    path.write_text(f">slice\n{ecoli.sequence[:300_000]}\n")
    folder = prep_folder(tmp_path / "tiny", [path], seq_len=128, shard_size_mb=0.02, val_fraction=0)
    assert len(Manifest.load(folder).splits["train"].shards) > 250
    for block_size in (None, 10):  # the default (one block a partition here), and blocks of about a shard each
        stream = GenomeStream(
            folder, batch_size=4, rank=1, world_size=4, seed=0, epochs=1, max_open_shards=4, block_size=block_size
        )
        assert stream.state.order == "blocks" and sum(1 for _ in stream) == 161 * 4
        opens = stream.shard_opens
        assert len(opens) > 10 * stream.max_open_shards and sum(opens.values()) <= 2 * len(opens), (block_size, opens)
