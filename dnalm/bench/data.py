"""``dnalm bench data``: prep throughput with 1 and 2 processes, and what the input pipeline delivers.

The input pipeline is measured as training consumes it: the stream read by one DataLoader worker,
batched, then masked (MLM by bases across the views) in the training process, against the tokens/s
one encoder-small training step consumes. The bare stream (no DataLoader, no masking) is kept beside.

Shard opens: the genome prepped again into small shards (``OPENS_SHARD_MB``: chr20 gives ~970, far
more than the 64 a worker keeps open), then every rank of W = 4 reads one whole epoch in each order;
opens ÷ shards read per rank, the cost that a shared filesystem's metadata server pays per open.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from dnalm.bench import report

PREP_TARGET_SECONDS_CHR20 = 120.0
STREAM_TARGET_TOKENS_PER_S = 5e6
OPENS_SHARD_MB = 0.25
OPENS_WORLD = 4
OPENS_GOAL = 2.0  # opens ÷ shards read, per rank and epoch, in the default multi-rank order


def run(
    genome_path: Path | None,
    out_dir: Path,
    seq_len: int = 1024,
    tokenizers=("nucleotide", "kmer:6"),
    stream_samples: int = 20_000,
    device: str = "auto",
) -> dict:
    from data_prep.jobs import prep
    from data_prep.plan import PrepConfig
    from dnalm.data.stream import GenomeStream
    from dnalm.utils.devices import resolve

    target = resolve(device)
    genome_path = Path(genome_path) if genome_path else report.chr20_or_bundled()
    config = PrepConfig(
        genomes=[str(genome_path)], tokenizers=list(tokenizers), seq_len=seq_len, views=len(tokenizers) > 1
    )
    rows, scratch = [], Path(tempfile.mkdtemp(prefix="dnalm-bench-data-"))
    try:
        for jobs in (1, 2):
            folder = scratch / f"jobs{jobs}"
            result = prep(config, folder, jobs=jobs)
            manifest = result["manifest"]
            rows.append(
                {
                    "processes": jobs,
                    "seconds": round(result["seconds"], 2),
                    "mbases_per_s": round(manifest.accounting.genome_bases / result["seconds"] / 1e6, 2),
                    "samples": manifest.num_samples,
                    "tokens": manifest.num_tokens,
                    "padding_fraction": round(manifest.padding_fraction, 5),
                    "bytes": sum(s.bytes for split in manifest.splits.values() for s in split.shards),
                }
            )
        stream = GenomeStream(scratch / "jobs1", batch_size=32, epochs=None)
        tokens, start = 0, time.perf_counter()
        for i, sample in enumerate(stream):
            tokens += sample["input_ids"].numel()
            if i + 1 == stream_samples:
                break
        stream_seconds = time.perf_counter() - start
        pipeline_rate = _pipeline_tokens_per_s(scratch / "jobs1", stream_samples)
        step_rate = _encoder_small_step(stream.manifest, seq_len, target)
        small = PrepConfig(
            genomes=[str(genome_path)],
            tokenizers=["nucleotide"],
            seq_len=seq_len,
            val_fraction=0.0,
            shard_size_mb=OPENS_SHARD_MB,
        )
        opens = shard_opens(prep(small, scratch / "small", jobs=2)["manifest"], scratch / "small")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    stream_rate = tokens / stream_seconds
    result = report.header("data", "dnalm bench data", target) | {
        "genome": {"path": str(genome_path), "bases": manifest.accounting.genome_bases},
        "prep": {
            "tokenizers": list(tokenizers),
            "views": config.views,
            "seq_len": seq_len,
            "runs": rows,
            "target": f"whole chr20 in under {PREP_TARGET_SECONDS_CHR20:.0f} s with 2 processes",
            "meets_target": rows[1]["seconds"] < PREP_TARGET_SECONDS_CHR20
            if genome_path == report.data_file(report.CHR20)
            else None,
        },
        "pipeline": {
            "what": "StreamLoader with 1 DataLoader worker, batches of 8, MLM masking (mlm_batch) in the "
            "training process: what the trainer's input path delivers",
            "tokens_per_s": round(pipeline_rate),
            "ratio_to_encoder_small_step": round(pipeline_rate / step_rate, 1),
        },
        "shard_opens": opens,
        "stream": {
            "worker": "one, in-process (no DataLoader workers, no masking)",
            "samples": stream_samples,
            "seconds": round(stream_seconds, 3),
            "tokens_per_s": round(stream_rate),
            "target_tokens_per_s": STREAM_TARGET_TOKENS_PER_S,
            "meets_target": stream_rate >= STREAM_TARGET_TOKENS_PER_S,
            "encoder_small_step_tokens_per_s": round(step_rate),
            "ratio_to_encoder_small_step": round(stream_rate / step_rate, 1),
            "ratio_note": "stream tokens/s of one worker ÷ tokens/s that one forward+backward step of encoder-small "
            "(batch 8, same views and seq_len, on the device named above) consumes; > 1 means the stream "
            "keeps up with that step",
        },
    }
    report.write(result, out_dir, "data")
    _plot(result, out_dir)
    return result


def shard_opens(manifest, folder: Path, world: int = OPENS_WORLD, batch_size: int = 8) -> dict:
    """Each rank of ``world`` reads one whole epoch, in-process (one worker, ``max_open_shards`` at its default), in
    each order: the shard opens it makes, ÷ the shards it reads from."""
    from dnalm.data.shards import token_dtype
    from dnalm.data.stream import GenomeStream

    token_bytes = manifest.num_tokens / manifest.num_samples * token_dtype(manifest.tokenizers[0].vocab_size).itemsize
    orders = []
    for order in ("global", "blocks"):
        ranks = []
        for rank in range(world):
            stream = GenomeStream(
                folder, batch_size=batch_size, rank=rank, world_size=world, seed=0, epochs=1, order=order
            )
            start = time.perf_counter()
            samples = sum(1 for _ in stream)
            opens, read = sum(stream.shard_opens.values()), len(stream.shard_opens)
            ranks.append(
                {
                    "rank": rank,
                    "samples": samples,
                    "shards_read": read,
                    "opens": opens,
                    "opens_per_shard_read": round(opens / read, 3),
                    "most_opens_of_a_shard": max(stream.shard_opens.values()),
                    "opens_per_1000_samples": round(1000 * opens / samples, 1),
                    "most_samples_held_read_early": stream.held_most,
                    "held_tokens_mb": round(stream.held_most * token_bytes / 1e6, 1),
                    "seconds": round(time.perf_counter() - start, 2),
                }
            )
        orders.append(
            {
                "order": order,
                "default": "several ranks" if order == "blocks" else "one process",
                "partitions": stream.state.partitions,
                "block_size": stream.state.block_size,
                "ranks": ranks,
                "max_opens_per_shard_read": max(r["opens_per_shard_read"] for r in ranks),
            }
        )
    return {
        "what": f"each of {world} ranks reads one whole epoch (batches of {batch_size}, one worker, in-process) of the "
        f"genome prepped into {OPENS_SHARD_MB} MB shards; opens of a shard's files ÷ the shards it read",
        "shards": len(stream.shards),
        "samples": stream.total,
        "shard_size_mb": OPENS_SHARD_MB,
        "world_size": world,
        "max_open_shards": stream.max_open_shards,
        "orders": orders,
        "goal": f"≤ {OPENS_GOAL:g} opens a shard read in the blocks order (the default with several ranks)",
        "meets_goal": orders[1]["max_opens_per_shard_read"] <= OPENS_GOAL,
    }


def _pipeline_tokens_per_s(folder, samples: int, batch_size: int = 8, **stream_settings) -> float:
    """Tokens/s of masked batches out of a one-worker StreamLoader (after its first batch, which starts the worker)."""
    import numpy as np

    from dnalm.data.masking import mlm_batch, view_ranges
    from dnalm.data.stream import GenomeStream, StreamLoader

    stream = GenomeStream(folder, batch_size=batch_size, epochs=None, **stream_settings)
    ranges = view_ranges([t.vocab_size for t in stream.manifest.tokenizers])
    loader = iter(StreamLoader(stream, num_workers=1))
    mlm_batch(next(loader), ranges, np.random.default_rng(0))
    tokens, start = 0, time.perf_counter()
    for step in range(samples // batch_size):
        inputs = mlm_batch(next(loader), ranges, np.random.default_rng(step))
        tokens += inputs["input_ids"].numel()
    return tokens / (time.perf_counter() - start)


def _encoder_small_step(manifest, seq_len: int, device) -> float:
    """Tokens/s one encoder-small training step consumes on this data (its vocabulary and views) on ``device``."""
    import torch

    from dnalm.bench.train import step_tokens_per_s
    from dnalm.models import build_model, get_config
    from dnalm.tokenizers import NUM_SPECIAL
    from dnalm.utils.devices import training_dtype

    vocab = NUM_SPECIAL + sum(t.vocab_size - NUM_SPECIAL for t in manifest.tokenizers)
    config = get_config(
        "encoder-small", vocab_size=vocab, num_segments=len(manifest.tokenizers) if manifest.views else 1
    )
    torch.manual_seed(0)
    model = build_model(config).to(device, training_dtype(device))
    return step_tokens_per_s(model, 8, seq_len, vocab, device=device)


def _plot(result: dict, out_dir: Path) -> None:
    from dnalm.utils.plots import pyplot

    plt = pyplot()

    runs = result["prep"]["runs"]
    fig, (left, right, opens) = plt.subplots(1, 3, figsize=(15, 3.8))
    left.bar([f"{r['processes']} proc" for r in runs], [r["seconds"] for r in runs], color="#3b7dd8")
    left.axhline(PREP_TARGET_SECONDS_CHR20, color="#d83b3b", linestyle="--", label="target (chr20, 2 proc)")
    left.set_ylabel("seconds for the whole genome")
    left.set_title(f"prep {'+'.join(result['prep']['tokenizers'])}, seq_len {result['prep']['seq_len']}", fontsize=9)
    left.legend(fontsize=8)
    right.bar(
        ["bare stream", "loader +\nmasking", "encoder-small\nstep"],
        [
            result["stream"]["tokens_per_s"] / 1e6,
            result["pipeline"]["tokens_per_s"] / 1e6,
            result["stream"]["encoder_small_step_tokens_per_s"] / 1e6,
        ],
        color=["#8ab4e8", "#3b7dd8", "#8a8a8a"],
    )
    right.set_yscale("log")
    right.axhline(STREAM_TARGET_TOKENS_PER_S / 1e6, color="#d83b3b", linestyle="--", label="target")
    right.set_ylabel("M tokens / s")
    right.legend(fontsize=8)
    shard_opens = result["shard_opens"]
    labels = [f"{o['order']}\n(default: {o['default']})" for o in shard_opens["orders"]]
    opens.bar(labels, [o["max_opens_per_shard_read"] for o in shard_opens["orders"]], color=["#8ab4e8", "#3b7dd8"])
    opens.axhline(OPENS_GOAL, color="#d83b3b", linestyle="--", label=f"goal (blocks) ≤ {OPENS_GOAL:g}")
    opens.set_ylabel("opens ÷ shards read (largest rank)")
    opens.tick_params(axis="x", labelsize=8)
    opens.set_title(
        f"W = {shard_opens['world_size']}, one epoch, {shard_opens['shards']} shards, "
        f"{shard_opens['max_open_shards']} open at most",
        fontsize=9,
    )
    opens.legend(fontsize=8)
    fig.suptitle(
        f"dnalm bench data — {Path(result['genome']['path']).name}; prep and stream on {result['machine']['cpu']}, "
        f"model step on {report.device_label(result)}",
        fontsize=9,
    )
    report.save_plot(fig, out_dir, "data")
