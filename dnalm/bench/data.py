"""``dnalm bench data``: prep throughput with 1 and 2 processes, and what the input pipeline delivers.

The input pipeline is measured as training consumes it: the stream read by one DataLoader worker,
batched, then masked (MLM by bases across the views) in the training process, against the tokens/s
one encoder-small training step consumes. The bare stream (no DataLoader, no masking) is kept beside.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from dnalm import genome as genome_io
from dnalm.bench import report

PREP_TARGET_SECONDS_CHR20 = 120.0
STREAM_TARGET_TOKENS_PER_S = 5e6


def run(genome_path: Path | None, out_dir: Path, seq_len: int = 1024, tokenizers=("nucleotide", "kmer:6"),
        stream_samples: int = 20_000, device: str = "auto") -> dict:
    from data_prep.jobs import prep
    from data_prep.plan import PrepConfig
    from dnalm.data.stream import GenomeStream
    from dnalm.devices import resolve

    target = resolve(device)
    chr20 = report.SHARED_DATA / "genomes" / "hs37_chr20.fa.gz"
    genome_path = Path(genome_path) if genome_path else (chr20 if chr20.exists() else genome_io.DEFAULT_GENOME)
    config = PrepConfig(genomes=[str(genome_path)], tokenizers=list(tokenizers), seq_len=seq_len, views=len(tokenizers) > 1)
    rows, scratch = [], Path(tempfile.mkdtemp(prefix="dnalm-bench-data-"))
    try:
        for jobs in (1, 2):
            folder = scratch / f"jobs{jobs}"
            result = prep(config, folder, jobs=jobs)
            manifest = result["manifest"]
            rows.append({"processes": jobs, "seconds": round(result["seconds"], 2),
                         "mbases_per_s": round(manifest.accounting.genome_bases / result["seconds"] / 1e6, 2),
                         "samples": manifest.num_samples, "tokens": manifest.num_tokens,
                         "padding_fraction": round(manifest.padding_fraction, 5),
                         "bytes": sum(s.bytes for split in manifest.splits.values() for s in split.shards)})
        stream = GenomeStream(scratch / "jobs1", batch_size=32, epochs=None)
        tokens, start = 0, time.perf_counter()
        for i, sample in enumerate(stream):
            tokens += sample["input_ids"].numel()
            if i + 1 == stream_samples:
                break
        stream_seconds = time.perf_counter() - start
        pipeline_rate = _pipeline_tokens_per_s(scratch / "jobs1", stream_samples)
        step_rate = _encoder_small_step(stream.manifest, seq_len, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    stream_rate = tokens / stream_seconds
    result = report.header("data", "dnalm bench data", target) | {
        "genome": {"path": str(genome_path), "bases": manifest.accounting.genome_bases},
        "prep": {"tokenizers": list(tokenizers), "views": config.views, "seq_len": seq_len, "runs": rows,
                 "target": f"whole chr20 in under {PREP_TARGET_SECONDS_CHR20:.0f} s with 2 processes",
                 "meets_target": rows[1]["seconds"] < PREP_TARGET_SECONDS_CHR20 if genome_path == chr20 else None},
        "pipeline": {"what": "StreamLoader with 1 DataLoader worker, batches of 8, MLM masking (mlm_batch) in the "
                             "training process: what the trainer's input path delivers", "tokens_per_s": round(pipeline_rate),
                     "ratio_to_encoder_small_step": round(pipeline_rate / step_rate, 1)},
        "stream": {"worker": "one, in-process (no DataLoader workers, no masking)", "samples": stream_samples,
                   "seconds": round(stream_seconds, 3), "tokens_per_s": round(stream_rate),
                   "target_tokens_per_s": STREAM_TARGET_TOKENS_PER_S, "meets_target": stream_rate >= STREAM_TARGET_TOKENS_PER_S,
                   "encoder_small_step_tokens_per_s": round(step_rate),
                   "ratio_to_encoder_small_step": round(stream_rate / step_rate, 1),
                   "ratio_note": "stream tokens/s of one worker ÷ tokens/s that one forward+backward step of encoder-small "
                                 "(batch 8, same views and seq_len, on the device named above) consumes; > 1 means the stream "
                                 "keeps up with that step"},
    }
    report.write(result, out_dir, "data")
    _plot(result, out_dir)
    return result


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
    from dnalm.devices import training_dtype
    from dnalm.models import build_model, get_config
    from dnalm.tokenizers import NUM_SPECIAL

    vocab = NUM_SPECIAL + sum(t.vocab_size - NUM_SPECIAL for t in manifest.tokenizers)
    config = get_config("encoder-small", vocab_size=vocab, num_segments=len(manifest.tokenizers) if manifest.views else 1)
    torch.manual_seed(0)
    model = build_model(config).to(device, training_dtype(device))
    return step_tokens_per_s(model, 8, seq_len, vocab, device=device)


def _plot(result: dict, out_dir: Path) -> None:
    from dnalm.plots import pyplot

    plt = pyplot()

    runs = result["prep"]["runs"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.bar([f"{r['processes']} proc" for r in runs], [r["seconds"] for r in runs], color="#3b7dd8")
    left.axhline(PREP_TARGET_SECONDS_CHR20, color="#d83b3b", linestyle="--", label="target (chr20, 2 proc)")
    left.set_ylabel("seconds for the whole genome")
    left.set_title(f"prep {'+'.join(result['prep']['tokenizers'])}, seq_len {result['prep']['seq_len']}", fontsize=9)
    left.legend(fontsize=8)
    right.bar(["bare stream", "loader + masking", "encoder-small step"],
              [result["stream"]["tokens_per_s"] / 1e6, result["pipeline"]["tokens_per_s"] / 1e6,
               result["stream"]["encoder_small_step_tokens_per_s"] / 1e6], color=["#8ab4e8", "#3b7dd8", "#8a8a8a"])
    right.set_yscale("log")
    right.axhline(STREAM_TARGET_TOKENS_PER_S / 1e6, color="#d83b3b", linestyle="--", label="target")
    right.set_ylabel("M tokens / s")
    right.legend(fontsize=8)
    fig.suptitle(f"dnalm bench data — {Path(result['genome']['path']).name}; prep and stream on {result['machine']['cpu']}, "
                 f"model step on {report.device_label(result)}", fontsize=9)
    report.save_plot(fig, out_dir, "data")
