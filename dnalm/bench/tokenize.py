"""``dnalm bench tokenize``: whole-genome reading and per-tokenizer encode throughput on one core."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dnalm import genome as genome_io
from dnalm.bench import report
from dnalm.tokenizers import BpeTokenizer, KmerTokenizer, NucleotideTokenizer, load_folder
from dnalm.utils.errors import DnalmError

TARGETS_MBASES_PER_S = {"read": 40.0, "nucleotide": 20.0, "kmer": 20.0, "bpe": 1.0}
CHUNK = 1_000_000  # encode in 1 Mb pieces, as a sharding job would per window group


def _best_of(repeats: int, fn) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run(genome_path: Path | None, bases: int, out_dir: Path) -> dict:
    genome_path = Path(genome_path) if genome_path else report.chr20_or_bundled()

    read_seconds = _best_of(2, lambda: genome_io.read(genome_path))
    contigs = genome_io.read(genome_path).contigs
    genome_bases = sum(len(c) for c in contigs)
    longest = max(contigs, key=len)
    start, end = max(longest.segments().tolist(), key=lambda seg: seg[1] - seg[0])
    sample = longest.bases[start : min(end, start + bases)]  # the longest stretch free of N runs

    with tempfile.TemporaryDirectory(prefix="dnalm-bench-bpe-") as tmp:
        bpe_training = _train_bpe_as_a_user_would(genome_path, Path(tmp) / "bpe")
        bpe = load_folder(Path(tmp) / "bpe")
        assert isinstance(bpe, BpeTokenizer) and bpe.training_report is not None  # trained just above, with its report

    tokenizers = [NucleotideTokenizer(), KmerTokenizer(3), KmerTokenizer(6), KmerTokenizer(6, 1), KmerTokenizer(8), bpe]
    rows = []
    for tok in tokenizers:
        measured = sample if tok.kind != "bpe" else sample[: min(len(sample), 4_000_000)]
        pieces = [measured[i : i + CHUNK] for i in range(0, len(measured), CHUNK)]
        seconds = _best_of(2, lambda: [tok.encode(p) for p in pieces])
        tokens = sum(len(tok.encode(p)) for p in pieces)
        rate = len(measured) / seconds / 1e6
        rows.append(
            {
                "tokenizer": tok.name,
                "bases": len(measured),
                "tokens": tokens,
                "bases_per_token": round(len(measured) / tokens, 3),
                "seconds": round(seconds, 4),
                "mbases_per_s": round(rate, 2),
                "target_mbases_per_s": TARGETS_MBASES_PER_S[tok.kind],
                "meets_target": rate >= TARGETS_MBASES_PER_S[tok.kind],
            }
        )

    read_rate = genome_bases / read_seconds / 1e6
    result = {
        "benchmark": "tokenize",
        "command": "dnalm bench tokenize",
        "machine": report.machine(),
        "threads": "one core (numpy and sentencepiece encode are single-threaded here)",
        "genome": {"path": str(genome_path), "bases": genome_bases, "contigs": len(contigs)},
        "read": {
            "seconds": round(read_seconds, 3),
            "mbases_per_s": round(read_rate, 2),
            "target_mbases_per_s": TARGETS_MBASES_PER_S["read"],
            "meets_target": read_rate >= TARGETS_MBASES_PER_S["read"],
        },
        "bpe_training": {
            "vocab_size": bpe.vocab_size,
            **bpe_training,
            "sampled_bases": bpe.training_report["sampled_bases"],
        },
        "encode": rows,
    }
    report.write(result, out_dir, "tokenize")
    _plot(result, out_dir)
    return result


def _train_bpe_as_a_user_would(genome_path: Path, out: Path, max_memory_gb: float = 1.0) -> dict:
    """``dnalm tokenizer train-bpe`` in a fresh process, whose whole peak memory is what the budget bounds."""
    script = (
        "import sys; from dnalm.cli import main; from dnalm.utils.memory import peak_rss_bytes; "
        f"rc = main(['tokenizer', 'train-bpe', {str(genome_path)!r}, '--vocab-size', '4096', "
        f"'--max-memory-gb', '{max_memory_gb}', '--out', {str(out)!r}]); "
        "print('PEAK_BYTES', peak_rss_bytes()); sys.exit(rc)"
    )
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise DnalmError(f"bench tokenize: train-bpe failed: {done.stderr.strip()[-2000:]}")
    peak = int(done.stdout.split("PEAK_BYTES")[1].split()[0])
    return {
        "command": f"dnalm tokenizer train-bpe {genome_path} --vocab-size 4096 --max-memory-gb {max_memory_gb}",
        "max_memory_gb": max_memory_gb,
        "seconds_with_startup": round(seconds, 2),
        "process_peak_rss_mb": round(peak / 2**20, 1),
    }


def _plot(result: dict, out_dir: Path) -> None:
    from dnalm.utils.plots import pyplot

    plt = pyplot()

    names = ["read genome"] + [r["tokenizer"] for r in result["encode"]]
    rates = [result["read"]["mbases_per_s"]] + [r["mbases_per_s"] for r in result["encode"]]
    targets = [result["read"]["target_mbases_per_s"]] + [r["target_mbases_per_s"] for r in result["encode"]]
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(names))
    ax.bar(x, rates, color="#3b7dd8")
    ax.scatter(x, targets, marker="_", s=600, color="#d83b3b", label="target", zorder=3)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("Mbases / s (one core)")
    ax.set_yscale("log")
    ax.set_title(
        f"dnalm bench tokenize — {Path(result['genome']['path']).name}, {result['machine']['cpu']}", fontsize=9
    )
    ax.legend()
    report.save_plot(fig, out_dir, "tokenize")
