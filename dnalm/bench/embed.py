"""``dnalm bench embed``: sequences per second that ``dnalm.embed`` turns into pooled vectors."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from dnalm import genome as genome_io
from dnalm.bench import report


def run(
    out_dir: Path,
    model_name: str = "encoder-small",
    length: int = 1000,
    count: int = 64,
    batch_sizes=(1, 8, 32),
    device: str = "auto",
) -> dict:
    from dnalm.models import build_model, get_config
    from dnalm.tokenizers import NucleotideTokenizer
    from dnalm.use.embedding import embed
    from dnalm.utils.devices import resolve

    target = resolve(device)
    source = report.chr20_or_bundled()
    contig = genome_io.IndexedGenome(source)
    name = max(contig.lengths, key=contig.lengths.__getitem__)
    start = contig.lengths[name] // 2
    bases = contig.fetch(name, start, start + length * count).sequence
    sequences = [bases[i * length : (i + 1) * length] for i in range(count)]
    tokenizer = NucleotideTokenizer()
    torch.manual_seed(0)
    model = build_model(get_config(model_name, vocab_size=tokenizer.vocab_size)).eval().to(target)
    rows = []
    for batch_size in batch_sizes:
        embed(model, tokenizer, sequences[:batch_size], batch_size=batch_size)  # warm-up
        best = float("inf")
        for _ in range(2):
            began = time.perf_counter()
            embed(model, tokenizer, sequences, batch_size=batch_size)
            best = min(best, time.perf_counter() - began)
        rows.append({"batch_size": batch_size, "seconds": round(best, 3), "sequences_per_s": round(count / best, 1)})
    result = report.header("embed", f"dnalm bench embed --model {model_name}", target) | {
        "dtype": "fp32",
        "model": model_name,
        "attention": model.config.attention,
        "positions": model.config.positions,
        "tokenizer": tokenizer.name,
        "sequence_bases": length,
        "sequences": count,
        "source": str(source),
        "pooling": "mean",
        "rows": rows,
    }
    report.write(result, out_dir, "embed")
    _plot(result, out_dir)
    return result


def _plot(result: dict, out_dir: Path) -> None:
    from dnalm.utils.plots import pyplot

    plt = pyplot()
    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar([str(r["batch_size"]) for r in rows], [r["sequences_per_s"] for r in rows], color="tab:blue")
    ax.set_xlabel("windows per forward pass")
    ax.set_ylabel("sequences / s")
    ax.set_title(
        f"{result['model']}, {result['sequence_bases']}-base sequences, {result['device']['name']}", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(out_dir / "embed.png", dpi=120)
    plt.close(fig)
