"""Zero-shot variant-effect scores from a trained model: ``dnalm score-variants``.

How Evo 2 and GPN score ClinVar or BRCA1 variants without labels, in both model kinds:

- decoder: the log-likelihood of a window with the alternative allele minus that of the same
  window with the reference, ``window`` bases of genome around the variant (clipped at the
  contig's ends), the sum over every token after the first. SNVs, MNVs and short indels.
- encoder: the masked marginal, log p(alt) − log p(ref) summed over the variant's bases, all of
  them masked at once in the reference window. SNVs and MNVs, with a tokenizer of one token
  per base (nucleotide); indels are reported and not scored (an encoder has no likelihood of a
  sequence to compare across lengths).

Both strands are scored (the window and alleles reverse-complemented) and averaged. Negative
means the model finds the alternative less likely. Limits: a score reflects only what the model
learnt of sequence in ``window`` bases of context, not of genes, expression or population data;
it ranks variants, it is not a probability of pathogenicity.

Every allele of a VCF line gets a row. One that cannot be scored is reported, not dropped, with
its VCF line: ``ref_mismatch`` (REF differs from the genome), ``unknown_contig``,
``outside_contig``, ``unsupported_allele`` (symbolic or non-DNA ALT, or an indel for an encoder).
A malformed line stops the run with its file and line, before any output is written.
"""

from __future__ import annotations

import gzip
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dnalm import genome as genome_io
from dnalm.tokenizers import NucleotideTokenizer, ViewTokenizer
from dnalm.tokenizers.base import MASK_ID, NUM_SPECIAL
from dnalm.use.sequences import reverse_complement
from dnalm.utils.errors import DnalmError

DNA = set("ACGTN")
HEAD_CHUNK = 4096  # positions whose logits exist at once when a window's log-likelihood is summed
COLUMNS = ("chrom", "pos", "id", "ref", "alt", "score", "window", "status", "vcf_line")


class VariantError(DnalmError):
    """A VCF that cannot be read or a model that cannot score, with the file and line or the reason."""


@dataclass
class Variant:
    chrom: str
    pos: int  # 1-based, as in the VCF
    id: str
    ref: str
    alt: str
    line: int
    status: str = "scored"
    score: float = math.nan
    window: str = ""


def read_vcf(path: str | Path) -> list[Variant]:
    """One ``Variant`` per ALT allele of every record (plain or gzip/bgzip VCF)."""
    path = Path(path)
    if not path.is_file():
        raise VariantError(f"{path}: no such VCF file")
    with open(path, "rb") as fh:
        opener = gzip.open if fh.read(2) == b"\x1f\x8b" else open
    variants = []
    with opener(path, "rt") as fh:
        for number, line in enumerate(fh, 1):
            if line.startswith("#") or not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            where = f"{path}:{number}"
            if len(fields) < 5:
                raise VariantError(f"{where}: a VCF record needs CHROM, POS, ID, REF and ALT separated by tabs")
            chrom, pos, vid, ref, alts = fields[:5]
            if not pos.isdigit() or int(pos) < 1:
                raise VariantError(f"{where}: POS {pos!r} is not a positive integer")
            if not ref or not set(ref.upper()) <= DNA:
                raise VariantError(f"{where}: REF {ref!r} is not a DNA allele")
            for alt in alts.split(","):
                variant = Variant(chrom, int(pos), vid, ref.upper(), alt.upper(), number)
                if not alt or not set(alt.upper()) <= DNA:
                    variant.status = "unsupported_allele"
                variants.append(variant)
    return variants


def check_against(variants: list[Variant], genome: genome_io.IndexedGenome) -> None:
    """Mark the variants whose contig, position or REF does not match the genome."""
    for v in variants:
        if v.status != "scored":
            continue
        if v.chrom not in genome.lengths:
            v.status = "unknown_contig"
        elif v.pos - 1 + len(v.ref) > genome.lengths[v.chrom]:
            v.status = "outside_contig"
        elif genome.fetch(v.chrom, v.pos - 1, v.pos - 1 + len(v.ref)).sequence != v.ref:
            v.status = "ref_mismatch"


def score_variants(
    model,
    tokenizer,
    variants: list[Variant],
    genome: genome_io.IndexedGenome,
    *,
    window: int = 512,
    batch_size: int = 16,
) -> list[Variant]:
    """Fill in ``score`` and ``window`` of every variant still marked ``scored``."""
    if isinstance(tokenizer, ViewTokenizer):
        raise VariantError(
            "score-variants: a multi-view model has no single likelihood of a sequence; use a one-view bundle"
        )
    encoder = model.config.arch != "decoder"
    if encoder and not isinstance(tokenizer, NucleotideTokenizer):
        raise VariantError(
            f"score-variants: an encoder's masked marginal needs one token per base (nucleotide), "
            f"this bundle's tokenizer is {tokenizer.name}"
        )
    if window < 2:
        raise VariantError(f"--window {window}: needs at least 2 bases")
    check_against(variants, genome)
    todo = [v for v in variants if v.status == "scored"]
    if encoder:
        for v in todo:
            if len(v.ref) != len(v.alt):
                v.status = "unsupported_allele"
        todo = [v for v in todo if v.status == "scored"]
    device = next(model.parameters()).device
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        contexts = [_context(v, genome, window) for v in batch]
        scores = (_masked_marginals if encoder else _likelihood_ratios)(model, tokenizer, batch, contexts, device)
        for v, (left, right), score in zip(batch, contexts, scores):
            v.score = float(score)
            v.window = f"{v.chrom}:{v.pos - 1 - len(left)}-{v.pos - 1 + len(v.ref) + len(right)}"
    return variants


def _context(v: Variant, genome, window: int) -> tuple[str, str]:
    """Bases left and right of the REF allele, ``window`` in all (clipped at the contig's ends)."""
    begin = v.pos - 1
    end = begin + len(v.ref)
    half = window // 2
    left = genome.fetch(v.chrom, max(0, begin - half), begin).sequence
    right = genome.fetch(v.chrom, end, min(genome.lengths[v.chrom], end + window - half)).sequence
    return left, right


def _likelihood_ratios(model, tokenizer, batch, contexts, device) -> list[float]:
    """log p(alt window) − log p(ref window), averaged over the two strands."""
    sequences = []
    for v, (left, right) in zip(batch, contexts):
        ref, alt = left + v.ref + right, left + v.alt + right
        sequences += [alt, ref, reverse_complement(alt), reverse_complement(ref)]
    ll = _log_likelihoods(model, [tokenizer.encode(s).ids for s in sequences], device)
    return [((ll[i] - ll[i + 1]) + (ll[i + 2] - ll[i + 3])) / 2 for i in range(0, len(ll), 4)]


def _log_likelihoods(model, encoded: list[np.ndarray], device) -> list[float]:
    """Sum of log p(token | tokens before it) over each sequence's tokens after the first."""
    longest = max(len(ids) for ids in encoded)
    if longest > model.config.max_seq_len and model.config.positions == "learned":
        raise VariantError(
            f"--window: {longest} tokens exceed the model's {model.config.max_seq_len} learned positions"
        )
    ids = torch.zeros(len(encoded), longest, dtype=torch.long)
    mask = torch.zeros(len(encoded), longest, dtype=torch.bool)
    for row, seq in enumerate(encoded):
        ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = True
    ids, mask = ids.to(device), mask.to(device)
    with torch.no_grad():
        # right padding sits after every real token, where causal attention never looks: no key mask, so no (T, T)
        # one; the head runs in chunks, so no (T, vocab) logits
        hidden = model(ids, logits=False).hidden
        sums = torch.zeros(len(encoded), dtype=torch.float64, device=device)
        for start in range(0, longest - 1, HEAD_CHUNK):
            end = min(start + HEAD_CHUNK, longest - 1)
            log_probs = torch.log_softmax(model.head_logits(hidden[:, start:end]).float(), dim=-1)
            picked = log_probs.gather(-1, ids[:, start + 1 : end + 1, None]).squeeze(-1)
            sums += (picked * mask[:, start + 1 : end + 1]).sum(1)
    return sums.tolist()


def _masked_marginals(model, tokenizer, batch, contexts, device) -> list[float]:
    """Σ over the variant's bases of log p(alt) − log p(ref), those bases masked, averaged over the two strands."""
    inputs, targets = [], []
    for v, (left, right) in zip(batch, contexts):
        ref = left + v.ref + right
        for sequence, start, ref_allele, alt_allele in (
            (ref, len(left), v.ref, v.alt),
            (reverse_complement(ref), len(right), reverse_complement(v.ref), reverse_complement(v.alt)),
        ):
            ids = tokenizer.encode(sequence).ids.astype(np.int64)
            ids[start : start + len(ref_allele)] = MASK_ID
            inputs.append(ids)
            targets.append((start, tokenizer.encode(ref_allele).ids, tokenizer.encode(alt_allele).ids))
    longest = max(len(ids) for ids in inputs)
    ids = torch.zeros(len(inputs), longest, dtype=torch.long)
    mask = torch.zeros(len(inputs), longest, dtype=torch.bool)
    for row, seq in enumerate(inputs):
        ids[row, : len(seq)] = torch.from_numpy(seq)
        mask[row, : len(seq)] = True
    with torch.no_grad():
        hidden = model(ids.to(device), attention_mask=mask.to(device), logits=False).hidden
        marginals = []
        for row, (start, ref_ids, alt_ids) in enumerate(targets):  # the head on the masked bases only
            logits = model.head_logits(hidden[row, start : start + len(ref_ids)]).float()
            if model.config.mlm_target == "bases":  # a nucleotide token's one base: classes A C G T N in the ids' order
                logits = F.pad(logits[..., 0, :], (NUM_SPECIAL, 0), value=float("-inf"))
            log_probs = torch.log_softmax(logits, -1).cpu()
            at = torch.arange(len(ref_ids))
            marginals.append(
                float(
                    (
                        log_probs[at, torch.as_tensor(alt_ids, dtype=torch.long)]
                        - log_probs[at, torch.as_tensor(ref_ids, dtype=torch.long)]
                    ).sum()
                )
            )
    return [(marginals[i] + marginals[i + 1]) / 2 for i in range(0, len(marginals), 2)]


def write_results(variants: list[Variant], out: str | Path) -> dict:
    """The TSV (one row per allele, in VCF order) and ``OUT.summary.json``, both atomically; returns the summary."""
    from dnalm.utils.files import write_atomic

    out = Path(out)
    text = io.StringIO()
    text.write("\t".join(COLUMNS) + "\n")
    for v in variants:
        score = f"{v.score:.6g}" if v.status == "scored" else ""
        text.write("\t".join(map(str, (v.chrom, v.pos, v.id, v.ref, v.alt, score, v.window, v.status, v.line))) + "\n")
    counts: dict[str, int] = {}
    for v in variants:
        counts[v.status] = counts.get(v.status, 0) + 1
    scores = np.array([v.score for v in variants if v.status == "scored"])
    summary = {
        "alleles": len(variants),
        "by_status": counts,
        "score": {"mean": float(scores.mean()), "min": float(scores.min()), "max": float(scores.max())}
        if len(scores)
        else None,
        "not_scored_lines": sorted({v.line for v in variants if v.status != "scored"}),
    }
    write_atomic(out.with_name(out.name + ".summary.json"), json.dumps(summary, indent=1))
    write_atomic(out, text.getvalue())
    return summary
