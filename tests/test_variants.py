"""Variant-effect scores from the decoder and encoder bundles trained on the bundled genome."""

import gzip
import json
import math

import numpy as np
import pytest
import torch

import dnalm
from dnalm import genome
from dnalm.tokenizers.base import MASK_ID
from dnalm.use.sequences import reverse_complement
from dnalm.use.variants import Variant, VariantError, read_vcf, score_variants
from tests.conftest import run_cli

OTHER = {"A": "C", "C": "G", "G": "T", "T": "A"}


@pytest.fixture(scope="module")
def ecoli_vcf(tmp_path_factory):
    """SNVs, a multi-allelic line, a deletion, an insertion, a planted REF mismatch, a symbolic ALT, an unknown
    contig and a variant 2 bases from the contig's start, as a bgzip-free gzip VCF."""
    contig = genome.read(genome.DEFAULT_GENOME).contigs[0]
    seq, name = contig.sequence, contig.name
    records = [
        (name, 1001, seq[1000], OTHER[seq[1000]]),
        (name, 2001, seq[2000], f"{OTHER[seq[2000]]},{OTHER[OTHER[seq[2000]]]}"),
        (name, 3001, OTHER[seq[3000]], seq[3000]),  # REF does not match the genome
        (name, 4001, seq[4000:4003], seq[4000]),
        (name, 5001, seq[5000], seq[5000] + "GG"),
        (name, 6001, seq[6000], "<DEL>"),
        ("chrZ", 10, "A", "C"),
        (name, 3, seq[2], OTHER[seq[2]]),
    ]
    text = "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
    text += "".join(f"{c}\t{p}\tv{i}\t{r}\t{a}\t.\t.\t.\n" for i, (c, p, r, a) in enumerate(records))
    path = tmp_path_factory.mktemp("vcf") / "planted.vcf.gz"
    path.write_bytes(gzip.compress(text.encode()))
    return path, seq


def test_decoder_scores_every_allele_and_reports_what_it_cannot(bundles, ecoli_vcf, tmp_path):
    vcf, _ = ecoli_vcf
    result = run_cli(
        "score-variants",
        "--model",
        bundles["decoder"],
        "--vcf",
        vcf,
        "--genome",
        genome.DEFAULT_GENOME,
        "--out",
        tmp_path / "scores.tsv",
        "--window",
        "200",
        "--batch-size",
        "3",
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in (tmp_path / "scores.tsv").read_text().splitlines()]
    assert rows[0] == ["chrom", "pos", "id", "ref", "alt", "score", "window", "status", "vcf_line"]
    status = {(r[2], r[4]): r[7] for r in rows[1:]}
    assert len(rows) - 1 == 9  # the multi-allelic line gives two rows
    assert [s for (vid, _), s in status.items() if s != "scored"] == [
        "ref_mismatch",
        "unsupported_allele",
        "unknown_contig",
    ]
    assert [r[8] for r in rows[1:] if r[7] == "ref_mismatch"] == ["5"]  # the VCF line, headers counted
    assert all(math.isfinite(float(r[5])) for r in rows[1:] if r[7] == "scored")
    near_start = next(r for r in rows[1:] if r[2] == "v7")
    assert near_start[6].endswith(":0-103")  # clipped at the contig's start: 2 bases left, the base, 100 right
    summary = json.loads((tmp_path / "scores.tsv.summary.json").read_text())
    assert summary["by_status"] == {"scored": 6, "ref_mismatch": 1, "unsupported_allele": 1, "unknown_contig": 1}
    assert "VCF lines 5, 8, 9" in result.stdout


def log_likelihood(model, tokenizer, sequence: str) -> float:
    ids = torch.as_tensor(tokenizer.encode(sequence).ids, dtype=torch.long)[None]
    with torch.no_grad():
        log_probs = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    return float(log_probs.gather(-1, ids[0, 1:, None]).sum())


def test_scores_are_what_the_method_says(bundles, ecoli_vcf):
    """Decoder: the likelihood ratio of the windows, both strands; encoder: the masked marginal, both strands.
    Recomputed here one sequence at a time, without batching or padding."""
    vcf, seq = ecoli_vcf
    indexed = genome.IndexedGenome(genome.DEFAULT_GENOME)
    decoder, tokenizer = dnalm.load_pretrained(bundles["decoder"])
    variants = score_variants(decoder, tokenizer, read_vcf(vcf), indexed, window=100, batch_size=4)
    snv, deletion = variants[0], variants[4]
    for v in (snv, deletion):
        left, right = seq[v.pos - 1 - 50 : v.pos - 1], seq[v.pos - 1 + len(v.ref) : v.pos - 1 + len(v.ref) + 50]
        ref, alt = left + v.ref + right, left + v.alt + right
        expected = (
            log_likelihood(decoder, tokenizer, alt)
            - log_likelihood(decoder, tokenizer, ref)
            + log_likelihood(decoder, tokenizer, reverse_complement(alt))
            - log_likelihood(decoder, tokenizer, reverse_complement(ref))
        ) / 2
        assert v.score == pytest.approx(expected, abs=1e-3)

    encoder, tokenizer = dnalm.load_pretrained(bundles["encoder"])
    variants = score_variants(encoder, tokenizer, read_vcf(vcf), indexed, window=100)
    assert [v.status for v in variants][3:6] == ["ref_mismatch", "unsupported_allele", "unsupported_allele"]  # indels
    snv = variants[0]
    marginals = []
    for window, at, ref, alt in (
        (seq[950:1051], 50, snv.ref, snv.alt),
        (reverse_complement(seq[950:1051]), 50, reverse_complement(snv.ref), reverse_complement(snv.alt)),
    ):
        ids = torch.as_tensor(tokenizer.encode(window).ids, dtype=torch.long)
        ids[at] = MASK_ID
        with torch.no_grad():
            log_probs = torch.log_softmax(encoder(ids[None]).logits[0, at].float(), -1)
        marginals.append(float(log_probs[tokenizer.encode(alt).ids[0]] - log_probs[tokenizer.encode(ref).ids[0]]))
    assert snv.score == pytest.approx(np.mean(marginals), abs=1e-4)


def test_malformed_vcf_stops_with_file_and_line(bundles, tmp_path):
    vcf = tmp_path / "bad.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\nchr\t12\t.\tA\tC\nchr\tabc\t.\tA\tC\n")
    result = run_cli(
        "score-variants",
        "--model",
        bundles["decoder"],
        "--vcf",
        vcf,
        "--genome",
        genome.DEFAULT_GENOME,
        "--out",
        tmp_path / "out.tsv",
    )
    assert result.returncode == 1 and "bad.vcf:4: POS 'abc' is not a positive integer" in result.stderr
    assert not (tmp_path / "out.tsv").exists()
    vcf.write_text("chr\t12\t.\tA\n")
    with pytest.raises(VariantError, match="bad.vcf:1: a VCF record needs"):
        read_vcf(vcf)


def test_models_without_a_per_base_likelihood_are_refused():
    from dnalm.models import build_model, get_config
    from dnalm.tokenizers import KmerTokenizer, NucleotideTokenizer, ViewTokenizer

    variants = [Variant("chr", 5, ".", "A", "C", 1)]
    kmer = KmerTokenizer(6)
    with pytest.raises(VariantError, match="needs one token per base .* kmer:6"):
        score_variants(build_model(get_config("encoder-tiny", vocab_size=kmer.vocab_size)), kmer, variants, None)
    views = ViewTokenizer([NucleotideTokenizer(), kmer])
    with pytest.raises(VariantError, match="multi-view model"):
        score_variants(
            build_model(get_config("encoder-tiny", vocab_size=views.vocab_size, num_segments=2)), views, variants, None
        )
