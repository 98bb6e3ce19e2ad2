"""``dnalm eval context``: how well a model predicts the same bases given more context.

For each window length L (tokens), windows of L tokens end at the same genome positions, chosen
evenly along the genome's longest contigs where the longest window holds no N. The last
``target`` tokens of each window are scored, so every length scores the same bases and only the
context before them (decoders) or around them (encoders, whose target ends the window) grows:

- decoder: perplexity per base, exp(Σ token NLL / bases those tokens cover);
- encoder: masked accuracy, ~15% of the target tokens replaced by [MASK] (the same tokens at
  every length, drawn per window), each predicted from the rest.

A model with learned positions is refused past its ``max_seq_len``; RoPE and ALiBi models are
scored past their training length, which is what the curve shows (extrapolation). The head runs
on the target rows only, and attention gets no key mask, so long windows cost no (T, T) tensor.
Writes context.json, context.md and context.png.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from dnalm.utils.errors import DnalmError
from dnalm.utils.files import write_atomic


class ContextEvalError(DnalmError):
    """A model, genome or length list that cannot be evaluated, with the reason."""


def _bases_per_token(tokenizer) -> int | None:
    """Bases per token of a tokenizer with a fixed stride (nucleotide 1, k-mer its stride); None for BPE."""
    from dnalm.tokenizers.kmer import KmerTokenizer
    from dnalm.tokenizers.nucleotide import NucleotideTokenizer

    if isinstance(tokenizer, NucleotideTokenizer):
        return 1
    if isinstance(tokenizer, KmerTokenizer):
        return tokenizer.stride
    return None


def window_ends(genome, bases: int, count: int) -> list[tuple[str, int]]:
    """(contig, end) of ``count`` windows of ``bases`` bases without N, spread evenly over the longest contigs."""
    contigs = sorted(genome.lengths.items(), key=lambda item: -item[1])
    candidates = []
    for name, length in contigs:
        if length >= bases:
            spots = max(1, count * 4 * length // sum(n for _, n in contigs if n >= bases))
            candidates += [(name, int(end)) for end in np.linspace(bases, length, spots + 2)[1:-1]]
    chosen = []
    for name, end in candidates:
        if "N" not in genome.fetch(name, end - bases, end).sequence:
            chosen.append((name, end))
        if len(chosen) == count:
            return chosen
    if not chosen:
        raise ContextEvalError(f"no window of {bases:,} bases without N in the genome: give shorter --lengths")
    return chosen


def _window_ids(
    tokenizer, genome, contig: str, end: int, length: int, stride: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, token spans) of the last ``length`` tokens before ``end``."""
    bases = length * stride if stride else length * 12  # BPE: generous, then the last tokens
    encoding = tokenizer.encode(genome.fetch(contig, max(0, end - bases), end).sequence)
    if len(encoding) < length:
        raise ContextEvalError(f"{contig}:{end}: fewer than {length} tokens in the {bases:,} bases before it")
    return encoding.ids[-length:].astype(np.int64), encoding.offsets[-length:]


@torch.no_grad()
def score(
    model,
    tokenizer,
    genome,
    lengths: list[int],
    windows: int = 8,
    target: int = 1024,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    from tqdm import tqdm

    from dnalm.data.masking import base_targets
    from dnalm.tokenizers import MASK_ID, NUM_SPECIAL, ViewTokenizer

    config = model.config
    if isinstance(tokenizer, ViewTokenizer) or config.num_segments > 1:
        raise ContextEvalError("eval context scores one view; a multi-view bundle has no single window of tokens")
    if config.arch == "cnn":
        raise ContextEvalError("eval context measures attention's use of context; the CNN's is fixed by its kernels")
    if min(lengths) < target or any(n <= 0 for n in lengths):
        raise ContextEvalError(f"--lengths must all be at least --target {target}, got {lengths}")
    if config.positions == "learned" and max(lengths) > config.max_seq_len:
        raise ContextEvalError(f"--lengths {max(lengths)}: learned positions stop at max_seq_len {config.max_seq_len}")
    if config.causal:  # a decoder's first token has nothing before it: every length scores the same target tokens
        target = min(target, min(lengths) - 1)
    stride = _bases_per_token(tokenizer)
    ends = window_ends(genome, max(lengths) * (stride or 12), windows)
    device = next(model.parameters()).device
    table = torch.from_numpy(base_targets(tokenizer.vocab)) if config.mlm_target == "bases" else None
    results = {}
    for length in tqdm(sorted(lengths), disable=not progress, desc="lengths"):
        total, count, correct = 0.0, 0, 0
        for index, (contig, end) in enumerate(ends):
            ids, spans = _window_ids(tokenizer, genome, contig, end, length, stride)
            inputs = torch.from_numpy(ids)[None].to(device)
            if config.causal:
                hidden = model(inputs, logits=False).hidden
                logits = model.head_logits(hidden[0, length - target - 1 : length - 1]).float()
                nll = torch.nn.functional.cross_entropy(logits, inputs[0, length - target :], reduction="sum")
                total += float(nll)
                count += int(spans[-target:, 1].max() - spans[-target:, 0].min())
                continue
            rng = np.random.default_rng([seed, index])  # the same masked tokens at every length
            masked = np.sort(rng.choice(target, max(1, round(0.15 * target)), replace=False)) + length - target
            corrupted = inputs.clone()
            corrupted[0, masked] = MASK_ID
            hidden = model(corrupted, logits=False).hidden
            logits = model.head_logits(hidden[0, masked]).float()
            truth = inputs[0, masked]
            if table is not None:  # per-base head: every base of each masked token
                labels = table[truth.cpu()].to(device)
                real = labels >= 0
                correct += int(((logits.argmax(-1) == labels) & real).sum())
                count += int(real.sum())
            else:
                logits[:, :NUM_SPECIAL] = float("-inf")
                correct += int((logits.argmax(-1) == truth).sum())
                count += len(masked)
        if config.causal:
            results[str(length)] = {
                "perplexity_per_base": math.exp(total / count),
                "bits_per_base": total / count / math.log(2),
                "bases_scored": count,
            }
        else:
            results[str(length)] = {"masked_accuracy": correct / count, "targets_scored": count}
    return {
        "windows": [f"{c}:{e}" for c, e in ends],
        "target_tokens": target,
        "lengths": results,
        "metric": "perplexity_per_base" if config.causal else "masked_accuracy",
    }


def run(
    bundle: str | Path,
    genome_path: str | Path,
    lengths: list[int],
    out: str | Path,
    *,
    windows: int = 8,
    target: int = 1024,
    device: str = "auto",
    progress: bool = False,
) -> dict:
    from dnalm.bundle import load_pretrained, read_config
    from dnalm.genome import IndexedGenome
    from dnalm.utils.devices import resolve

    target_device = resolve(device)
    model, tokenizer = load_pretrained(bundle, device=target_device)
    config = read_config(bundle)
    genome = IndexedGenome(genome_path)
    result = {
        "bundle": Path(bundle).name,
        "genome": Path(genome_path).name,
        "model": config["model"].get("name"),
        "positions": model.config.positions,
        "trained_length": config.get("training", {}).get("seq_len"),
        "rope_theta": model.config.rope_theta,
        "rope_scale": model.config.rope_scale,
        "device": str(target_device),
    }
    result |= score(model, tokenizer, genome, lengths, windows=windows, target=target, progress=progress)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "context.json", json.dumps(result, indent=2) + "\n")
    write_atomic(out / "context.md", table([result]))
    plot([result], out / "context.png")
    return result


def table(results: list[dict]) -> str:
    """A markdown table: one row per result, one column per length."""
    lengths = sorted({int(n) for r in results for n in r["lengths"]})
    metric = results[0]["metric"]
    lines = [
        f"| model | positions | {' | '.join(f'{n:,}' for n in lengths)} |",
        "| --- | --- |" + " ---: |" * len(lengths),
    ]
    for r in results:
        cells = [f"{r['lengths'][str(n)][metric]:.4f}" if str(n) in r["lengths"] else "" for n in lengths]
        lines.append(f"| {r['bundle']} | {r['positions']} | {' | '.join(cells)} |")
    return (
        f"{metric.replace('_', ' ')} by context length (tokens), last {results[0]['target_tokens']} tokens of "
        f"{len(results[0]['windows'])} windows of {results[0]['genome']}\n\n" + "\n".join(lines) + "\n"
    )


def plot(results: list[dict], path: Path) -> Path:
    from dnalm.utils.plots import pyplot

    plt = pyplot()

    from dnalm.utils.plots import save

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for r in results:
        lengths = sorted(int(n) for n in r["lengths"])
        axis.plot(
            lengths,
            [r["lengths"][str(n)][r["metric"]] for n in lengths],
            marker="o",
            label=f"{r['bundle']} ({r['positions']})",
        )
        if r.get("trained_length"):
            axis.axvline(r["trained_length"], color="grey", alpha=0.3, linestyle="--")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("context (tokens)")
    axis.set_ylabel(results[0]["metric"].replace("_", " "))
    axis.set_title(f"{results[0]['genome']}: the same bases scored with more context")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return save(figure, path)
