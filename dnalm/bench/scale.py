"""``dnalm bench scale``: the data path at genome and corpus scale.

Two corpora are built from real sequence (``--source``, by default chr20 under ``$DNALM_DATA``), by the
functions below, which the JSON names:

- GRCh38-sized: chr20 re-sampled into ``copies`` contigs with distinct names (copy i is chr20
  rotated by a seeded offset), 49 copies = 3.09 Gb in one FASTA;
- 100 genomes: each a distinct 4.6 Mb stretch of chr20 cut into ~1,000 scaffolds (log-normal
  lengths), 10⁵ scaffolds in all, sampling weights 1, 2, 3 in turn, fragments packed.

Measured on each: prep throughput (Mbases/s per job; 1 against 2 jobs on the 100-genome corpus),
plan and manifest sizes, per-worker peak RSS and open files while streaming, the bytes each rank
reads at W = 1…8, and the diversity of global batches against random draws of the same windows;
for the shard-aware ``blocks`` order (remote sources), the shard bytes each rank's epoch touches at
W = 1…8 (what its node cache downloads), the diversity of a global batch taken by 8 ranks, and the
genomes' shares of an epoch against their weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from dnalm.bench import report

REGION = 1_000_000
WORLD_SIZES = (1, 2, 4, 8)


# --- the corpora ------------------------------------------------------------------------------
def grch38_sized(source: Path, out: Path, copies: int = 49, seed: int = 0) -> Path:
    """One FASTA of ``copies`` contigs ``copy_i``, each the source's first contig rotated by a seeded offset."""
    from dnalm import genome

    if out.exists():
        return out
    bases = genome.read(source).contigs[0].bases
    rng = np.random.default_rng(seed)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "wb") as fh:
        for i in range(copies):
            offset = int(rng.integers(len(bases)))
            fh.write(f">copy_{i}\n".encode())
            fh.write(bases[offset:].tobytes())
            fh.write(bases[:offset].tobytes())
            fh.write(b"\n")
    tmp.replace(out)
    return out


def hundred_genomes(
    source: Path,
    out: Path,
    genomes: int = 100,
    genome_bases: int = 4_600_000,
    mean_scaffold: int = 4_600,
    seed: int = 0,
) -> Path:
    """A corpus YAML of ``genomes`` FASTAs, each a seeded stretch of the source (all of it when the source is shorter
    than ``genome_bases``) cut into scaffolds; weights 1, 2, 3."""
    import yaml

    from dnalm import genome

    corpus = out / "corpus.yaml"
    if corpus.exists():
        return corpus
    out.mkdir(parents=True, exist_ok=True)
    bases = genome.read(source).contigs[0].bases
    genome_bases = min(genome_bases, len(bases))
    rng = np.random.default_rng(seed)
    entries = []
    for g in range(genomes):
        start = int(rng.integers(0, len(bases) - genome_bases + 1))
        stretch = bases[start : start + genome_bases]
        lengths = np.maximum(
            50, rng.lognormal(np.log(mean_scaffold) - 0.5, 1.0, 4 * genome_bases // mean_scaffold)
        ).astype(int)
        cuts = np.cumsum(lengths)
        cuts = cuts[cuts < genome_bases]
        path = out / f"genome_{g:03d}.fa"
        with open(path, "wb") as fh:
            for i, (a, b) in enumerate(zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [genome_bases])))):
                fh.write(f">g{g}_scaffold_{i}\n".encode() + stretch[a:b].tobytes() + b"\n")
        entries.append({"name": f"genome_{g:03d}", "path": path.name, "weight": 1 + g % 3, "tags": [f"batch{g % 5}"]})
    tmp = corpus.with_name(".corpus.yaml.tmp")
    tmp.write_text(yaml.safe_dump({"genomes": entries}, sort_keys=False))
    tmp.replace(corpus)
    return corpus


# --- measurements -----------------------------------------------------------------------------
def prep_corpus(genomes: list[str], corpus: list, folder: Path, jobs: int, seq_len: int, pack: bool) -> dict:
    from data_prep.jobs import prep
    from data_prep.plan import PrepConfig

    config = PrepConfig(
        genomes=genomes,
        corpus=corpus,
        tokenizers=["nucleotide"],
        seq_len=seq_len,
        val_fraction=0.0,
        pack_fragments=pack,
    )
    if (folder / "manifest.json").exists():
        raise RuntimeError(f"{folder}: already prepared; bench scale measures a prep from scratch (remove --work)")
    result = prep(config, folder, jobs=jobs)
    manifest = result["manifest"]
    shards = manifest.splits["train"].shards
    return {
        "jobs": jobs,
        "seconds": round(result["seconds"], 1),
        "mbases_per_s": round(manifest.accounting.genome_bases / result["seconds"] / 1e6, 2),
        "mbases_per_s_per_job": round(manifest.accounting.genome_bases / result["seconds"] / 1e6 / jobs, 2),
        "genome_bases": manifest.accounting.genome_bases,
        "bases_in_samples": manifest.accounting.in_samples,
        "samples": manifest.num_samples,
        "shards": len(shards),
        "shard_bytes": sum(s.bytes for s in shards),
        "plan_bytes": (folder / "plan.json").stat().st_size,
        "manifest_bytes": (folder / "manifest.json").stat().st_size,
        "contigs": sum(g.num_contigs for g in manifest.genomes),
        "genomes": len(manifest.genomes),
    }


def worker_footprint(folder: Path, samples: int = 20_000) -> dict:
    """Resident memory and files open while one worker (rank 0 of 8, global order) streams ``samples`` samples, in a
    fresh
    process: RSS once the libraries are imported, after the stream is built, and the most seen while streaming
    (sampled every 50 samples)."""
    code = (
        "import json, os, sys, psutil\n"
        "from dnalm.data.stream import GenomeStream\n"
        "rss = lambda: psutil.Process().memory_info().rss / 2**20\n"
        "imported, fds0 = rss(), len(os.listdir('/proc/self/fd'))\n"
        "stream = GenomeStream(sys.argv[1], batch_size=8, rank=0, world_size=8, seed=0, epochs=None, order='global')\n"
        "built, most_rss, most_files = rss(), 0.0, 0\n"
        "for i, s in enumerate(stream):\n"
        "    if i % 50 == 0:\n"
        "        most_rss, most_files = max(most_rss, rss()), max(most_files, len(os.listdir('/proc/self/fd')) - "
        "fds0)\n"
        "    if i + 1 == int(sys.argv[2]):\n"
        "        break\n"
        "print(json.dumps({'rss_after_imports_mb': imported, 'stream_build_added_mb': built - imported,"
        " 'streaming_added_mb': most_rss - imported, 'max_files_open': most_files,"
        " 'max_open_shards': stream.max_open_shards, 'samples': int(sys.argv[2])}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(folder), str(samples)],
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in json.loads(done.stdout.splitlines()[-1]).items()}


def bytes_per_rank(folder: Path, steps: int = 100, micro_batch: int = 8) -> list[dict]:
    """Global order: bytes each rank reads over ``steps`` global steps at each world size, as a share of what all ranks
    read."""
    from dnalm.data.stream import GenomeStream

    rows = []
    for world in WORLD_SIZES:
        read = []
        for rank in range(world):
            stream = GenomeStream(
                folder, batch_size=micro_batch, rank=rank, world_size=world, seed=0, epochs=None, order="global"
            )
            iterator = iter(stream)
            for _ in range(steps * micro_batch):
                next(iterator)
            iterator.close()
            read.append(stream.bytes_read)
        rows.append(
            {
                "world_size": world,
                "bytes_per_rank": read,
                "max_share": round(max(read) / sum(read), 4),
                "ideal_share": round(1 / world, 4),
                "max_share_over_ideal": round(max(read) / sum(read) * world, 3),
            }
        )
    return rows


def epoch_shard_shares(folder: Path, micro_batch: int = 8) -> list[dict]:
    """Blocks order: the shard bytes (tars and indexes) each rank's whole epoch touches, which is what a rank with a
    node cache of its own downloads, at each world size; computed from the order, without reading a sample."""
    from dnalm.data.cache import shard_bytes
    from dnalm.data.stream import GenomeStream

    rows = []
    for world in WORLD_SIZES:
        touched = []
        for rank in range(world):
            stream = GenomeStream(folder, batch_size=micro_batch, rank=rank, world_size=world, seed=0, order="blocks")
            positions = stream.positions(0, stream.steps(0)).ravel()
            shards = np.unique(
                np.concatenate([stream.order(0)(0, chunk)[0] for chunk in np.array_split(positions, 16)])
            )
            touched.append(sum(shard_bytes(stream.shards[s]) for s in shards.tolist()))
        split = sum(shard_bytes(s) for s in stream.shards)
        rows.append(
            {
                "world_size": world,
                "partitions": stream.state.partitions,
                "block_size": stream.state.block_size,
                "bytes_per_rank": touched,
                "max_share": round(max(touched) / split, 4),
                "ideal_share": round(1 / world, 4),
                "max_share_over_ideal": round(max(touched) / split * world, 3),
            }
        )
    return rows


def batch_diversity(folder: Path, batch: int = 64, batches: int = 40, order: str = "global", world: int = 1) -> dict:
    """Distinct 1-Mb regions (genome, contig, start // 1e6) per global batch, taken by ``world`` ranks in ``order``:
    the stream against random draws."""
    from dnalm.data.shards import IndexedShard, parse_key
    from dnalm.data.stream import GenomeStream

    def region(key: str) -> tuple:
        k = parse_key(key)
        return k["genome"], k["contig"], k["start"] // REGION

    ranks = [
        iter(
            GenomeStream(folder, batch_size=batch // world, rank=r, world_size=world, seed=0, epochs=None, order=order)
        )
        for r in range(world)
    ]
    measured = [
        len({region(next(rank)["key"]) for rank in ranks for _ in range(batch // world)}) for _ in range(batches)
    ]
    stream = GenomeStream(folder, batch_size=1, seed=0)
    rng = np.random.default_rng(1)
    readers: dict[int, IndexedShard] = {}
    random = []
    for _ in range(batches):
        shards, within = stream.order(0).locate(rng.choice(stream.total, batch, replace=False))
        regions = set()
        for s, i in zip(shards.tolist(), within.tolist()):
            if s not in readers:
                entry = stream.shards[s]
                readers[s] = IndexedShard(folder / entry.path, entry.num_samples, entry.bytes)
            regions.add(region(readers[s].key(i)))
        random.append(len(regions))
    for reader in readers.values():
        reader.close()
    return {
        "order": order,
        "ranks": world,
        "batch": batch,
        "batches": batches,
        "stream_mean_regions": round(float(np.mean(measured)), 2),
        "random_mean_regions": round(float(np.mean(random)), 2),
        "ratio": round(float(np.mean(measured)) / float(np.mean(random)), 3),
    }


def genome_shares(folder: Path, order: str = "global") -> dict:
    """Each genome's share of a whole epoch in ``order`` against its weight's share."""
    from dnalm.data.manifest import Manifest
    from dnalm.data.stream import GenomeStream

    manifest = Manifest.load(folder)
    stream = GenomeStream(folder, batch_size=8, seed=0, epochs=None, order=order)
    drawn_samples = stream.order(0).samples(0, np.arange(stream.total))
    ends = np.cumsum(manifest.splits["train"].genome_samples)
    counts = Counter(np.searchsorted(ends, drawn_samples, side="right").tolist())
    weights = np.array([g.weight for g in manifest.mix], float)
    drawn = np.array([counts.get(g, 0) for g in range(len(weights))], float)
    error = np.abs(drawn / drawn.sum() - weights / weights.sum()) / (weights / weights.sum())
    return {
        "order": order,
        "samples": int(drawn.sum()),
        "max_relative_error": round(float(error.max()), 4),
        "mean_relative_error": round(float(error.mean()), 4),
    }


def run(
    out_dir: Path,
    work: Path,
    source: Path | None = None,
    copies: int = 49,
    genomes: int = 100,
    seq_len: int = 1024,
    jobs: int = 2,
    stream_samples: int = 20_000,
    rank_steps: int = 100,
) -> dict:
    from data_prep.corpus import load_corpus

    source = report.required_data(source, report.CHR20, "--source")
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    fasta = grch38_sized(source, work / "grch38_sized.fa", copies)
    corpus_yaml = hundred_genomes(source, work / "hundred", genomes)
    paths, settings = load_corpus(corpus_yaml)
    result: dict[str, Any] = {
        "benchmark": "scale",
        "command": f"dnalm bench scale --copies {copies} --genomes {genomes} --jobs {jobs}",
        "machine": report.machine(),
        "source": str(source),
        "seq_len": seq_len,
        "corpora": {
            "grch38_sized": {
                "built_by": f"dnalm.bench.scale.grch38_sized(source, out, copies={copies})",
                "fasta_bytes": fasta.stat().st_size,
            },
            "hundred_genomes": {"built_by": f"dnalm.bench.scale.hundred_genomes(source, out, genomes={genomes})"},
        },
    }
    big = result["corpora"]["grch38_sized"]
    big["prep"] = prep_corpus([str(fasta)], [], work / "grch38_data", jobs, seq_len, pack=False)
    print(json.dumps(big["prep"]), file=sys.stderr, flush=True)
    hundred = result["corpora"]["hundred_genomes"]
    hundred["prep_1_job"] = prep_corpus(paths, settings, work / "hundred_data_1", 1, seq_len, pack=True)
    hundred["prep"] = prep_corpus(paths, settings, work / "hundred_data", jobs, seq_len, pack=True)
    hundred["speedup_jobs"] = round(hundred["prep"]["mbases_per_s"] / hundred["prep_1_job"]["mbases_per_s"], 2)
    print(json.dumps(hundred["prep"]), file=sys.stderr, flush=True)
    for corpus, folder in ((big, work / "grch38_data"), (hundred, work / "hundred_data")):
        corpus["worker"] = worker_footprint(folder, stream_samples)
        corpus["bytes_per_rank"] = bytes_per_rank(folder, rank_steps)
        corpus["diversity"] = batch_diversity(folder)
        corpus["blocks"] = {
            "shard_bytes_per_rank_per_epoch": epoch_shard_shares(folder),
            "diversity": batch_diversity(folder, order="blocks", world=8),
        }
        print(json.dumps({k: corpus[k] for k in ("worker", "diversity", "blocks")}), file=sys.stderr, flush=True)
    hundred["genome_shares"] = genome_shares(work / "hundred_data")
    hundred["blocks"]["genome_shares"] = genome_shares(work / "hundred_data", order="blocks")
    result["seconds"] = round(time.perf_counter() - started, 1)
    report.write(result, out_dir, "scale")
    _plot(result, out_dir)
    return result


def _plot(result: dict, out_dir: Path) -> None:
    from dnalm.utils.plots import pyplot

    plt = pyplot()
    names = {"grch38_sized": "GRCh38-sized (3.1 Gb)", "hundred_genomes": "100 genomes"}
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(13, 3.8))
    for key, label in names.items():
        rows = result["corpora"][key]["bytes_per_rank"]
        left.plot(
            [r["world_size"] for r in rows], [r["max_share"] for r in rows], marker="o", label=f"{label}: bytes read"
        )
        blocks = result["corpora"][key]["blocks"]["shard_bytes_per_rank_per_epoch"]
        left.plot(
            [r["world_size"] for r in blocks],
            [r["max_share"] for r in blocks],
            marker="s",
            linestyle="-.",
            label=f"{label}: shards touched, blocks order",
        )
    left.plot(WORLD_SIZES, [1 / w for w in WORLD_SIZES], linestyle="--", color="grey", label="1/W")
    left.plot(WORLD_SIZES, [1.2 / w for w in WORLD_SIZES], linestyle=":", color="#d83b3b", label="1.2/W bound")
    left.set_xscale("log", base=2)
    left.set_xlabel("ranks W")
    left.set_ylabel("largest rank's share of the split")
    left.legend(fontsize=6)
    x = np.arange(len(names))
    bars = (
        ("stream, global order", lambda c: c["diversity"]["stream_mean_regions"]),
        ("8 ranks, blocks order", lambda c: c["blocks"]["diversity"]["stream_mean_regions"]),
        ("random draws", lambda c: c["diversity"]["random_mean_regions"]),
    )
    for i, (label, value) in enumerate(bars):
        middle.bar(x + (i - 1) * 0.27, [value(result["corpora"][k]) for k in names], 0.27, label=label)
    middle.set_xticks(x, list(names.values()), fontsize=8)
    middle.set_ylabel("distinct 1-Mb regions per batch of 64")
    middle.legend(fontsize=7)
    right.bar(x, [result["corpora"][k]["worker"]["streaming_added_mb"] for k in names], color="#3b7dd8")
    right.set_xticks(x, list(names.values()), fontsize=8)
    right.set_ylabel("RSS added by the stream, beyond imports (MB)")
    fig.suptitle(
        f"dnalm bench scale — {result['machine']['cpu']}, {result['machine']['cores_available']} cores", fontsize=9
    )
    report.save_plot(fig, out_dir, "scale")
