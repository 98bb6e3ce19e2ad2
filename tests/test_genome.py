"""Reading, normalising and reporting genomes, on the real chromosomes and on small edge cases."""

import numpy as np
import pytest
from Bio import bgzf

from dnalm import genome
from tests.conftest import CHR20, needs_shared

MULTI = ">chrA first record\nACGTACGTAC\nacgtNNNNNN\nNNRYacgt\n>chrB\nGGGGCCCCAAAATTTT\n>chrC\nACGTWSKMBDHVN\n"


@needs_shared(CHR20)
def test_chr20_golden_numbers(chr20):
    assert chr20.name == "20"
    report = chr20.report(min_n_run=100)
    assert report.length == 63_025_520
    assert report.n_count == 3_520_000
    assert report.ambiguous_replaced == 0
    assert report.long_n_runs == 7 and report.segments == 6
    assert 0.43 < report.gc_fraction < 0.45
    assert chr20.sequence[59_995:60_020] == "NNNNNGATCCAGAGGTGGAAGAGGA"
    assert chr20.n_runs(100)[:2].tolist() == [[0, 60_000], [26_319_569, 29_419_569]]


@needs_shared(CHR20)
def test_chr20_random_access_through_pyfaidx_matches_streaming(chr20):
    indexed = genome.IndexedGenome(CHR20)
    assert indexed.backend == "pyfaidx"
    assert indexed.lengths == {"20": len(chr20)}
    rng = np.random.default_rng(0)
    for start in [0, 59_990, *rng.integers(0, len(chr20) - 5000, 5).tolist()]:
        piece = indexed.fetch("20", start, start + 5000)
        assert piece.sequence == chr20.sequence[start : start + 5000]


def test_bundled_ecoli(ecoli):
    assert genome.DEFAULT_GENOME.exists()
    assert ecoli.name == "K-12-MG1655" and len(ecoli) == 4_639_675
    assert ecoli.sequence.startswith("AGCTTTTCATTCTGACTGCAACGGGCAATATGTC")
    report = ecoli.report()
    assert report.n_count == 0 and 0.50 < report.gc_fraction < 0.52
    indexed = genome.IndexedGenome(genome.DEFAULT_GENOME)  # plain gzip: pyfaidx cannot index it in place
    assert indexed.backend == "memory"
    assert indexed.fetch("K-12-MG1655", 100, 140).sequence == ecoli.sequence[100:140]


def test_normalisation_softmask_and_ambiguity(write_fasta):
    g = genome.read(write_fasta(MULTI))
    assert g.names == ["chrA", "chrB", "chrC"]
    a, b, c = g.contigs
    assert a.sequence == "ACGTACGTACACGTNNNNNNNNNNACGT"
    assert a.softmask.tolist() == [False] * 10 + [True] * 4 + [False] * 10 + [True] * 4
    assert a.ambiguous == 2 and b.ambiguous == 0
    assert c.sequence == "ACGT" + "N" * 9 and c.ambiguous == 8
    report = g.report()
    assert report["total_ambiguous_replaced"] == 10
    assert report["contigs"][0]["softmasked_fraction"] == pytest.approx(8 / 28)


def test_compressed_forms_read_the_same(write_fasta, tmp_path):
    plain = genome.read(write_fasta(MULTI))
    gz = genome.read(write_fasta(MULTI, "genome.fa.gz"))
    bgz_path = tmp_path / "genome.bgz.fa.gz"
    with bgzf.BgzfWriter(str(bgz_path), "wb") as fh:
        fh.write(MULTI.encode())
    assert genome.detect_format(bgz_path) == "bgzip" and genome.detect_format(tmp_path / "genome.fa.gz") == "gzip"
    for other in (gz, genome.read(bgz_path)):
        assert other.names == plain.names
        for x, y in zip(plain, other):
            assert x.sequence == y.sequence and np.array_equal(x.softmask, y.softmask)


def test_crlf_and_header_junk_are_accepted(write_fasta):
    crlf = genome.read(write_fasta(MULTI.replace("\n", "\r\n")))
    assert [c.sequence for c in crlf] == [c.sequence for c in genome.read(write_fasta(MULTI, "lf.fa"))]
    junk = b">chr\x93quoted\x94 caf\xe9\nACGT\n>r\xc3\xa9gion2 \xe2\x80\x94 utf8\nGGCC\n"
    g = genome.read(write_fasta(junk, "junk.fa"))
    assert [c.sequence for c in g] == ["ACGT", "GGCC"]
    assert g.names[1] == "région2"


def test_parser_is_independent_of_block_boundaries(write_fasta, monkeypatch):
    rng = np.random.default_rng(1)
    records = []
    for i in range(20):
        seq = "".join(rng.choice(list("ACGTacgtN"), size=int(rng.integers(1, 300))))
        width = int(rng.integers(5, 80))
        lines = "\n".join(seq[j : j + width] for j in range(0, len(seq), width))
        records.append(f">rec{i} some description\n{lines}\n")
    path = write_fasta("".join(records))
    whole = genome.read(path)
    monkeypatch.setattr(genome, "BLOCK_BYTES", 7)
    tiny = genome.read(path)
    assert whole.names == tiny.names == [f"rec{i}" for i in range(20)]
    for x, y in zip(whole, tiny):
        assert x.sequence == y.sequence and np.array_equal(x.softmask, y.softmask) and x.line == y.line


def test_varying_line_widths_fall_back_to_memory(write_fasta):
    path = write_fasta(">a\nACGT\nAC\nACGTACGT\n>b\nGGG\n")
    indexed = genome.IndexedGenome(path)
    assert indexed.backend == "memory"
    assert indexed.fetch("a", 2, 8).sequence == "GTACAC"


def test_uniform_plain_fasta_uses_pyfaidx_with_softmask(write_fasta):
    path = write_fasta(">a\nACGTacgt\nNNRYacgt\nAC\n>b\nGGGG\n")
    indexed = genome.IndexedGenome(path)
    assert indexed.backend == "pyfaidx"
    piece = indexed.fetch("a", 2, 12)
    assert piece.sequence == "GTACGTNNNN"
    assert piece.softmask.tolist() == [False, False] + [True] * 4 + [False] * 4
    with pytest.raises(genome.GenomeError, match="no contig named 'zz'"):
        indexed.fetch("zz", 0, 1)
    with pytest.raises(genome.GenomeError, match="outside contig"):
        indexed.fetch("b", 0, 5)


def test_n_runs_and_segments(write_fasta):
    contig = genome.read(write_fasta(">x\n" + "N" * 5 + "ACGT" + "N" * 3 + "ACG" + "N" * 10 + "TT\n")).contigs[0]
    assert contig.n_runs(1).tolist() == [[0, 5], [9, 12], [15, 25]]
    assert contig.n_runs(5).tolist() == [[0, 5], [15, 25]]
    assert contig.segments(5).tolist() == [[5, 15], [25, 27]]
    assert contig.report(min_n_run=5).long_n_run_bases == 15


def test_rna_only_when_asked(write_fasta):
    path = write_fasta(">r\nACGU\nacgu\n")
    with pytest.raises(genome.GenomeError, match="RNA"):
        genome.read(path)
    contig = genome.read(path, convert_u=True).contigs[0]
    assert contig.sequence == "ACGTACGT" and contig.softmask.sum() == 4


def test_contig_lengths_use_the_index_or_a_pass(write_fasta):
    path = write_fasta(MULTI)
    assert genome.contig_lengths(path) == {"chrA": 28, "chrB": 16, "chrC": 13}
    if CHR20.exists():
        assert genome.contig_lengths(CHR20) == {"20": 63_025_520}


def test_iter_contigs_can_read_only_some_records(tmp_path):
    path = tmp_path / "three.fa"
    path.write_text(">a\nACGT\n>b\nGGXX\n>c\nTTTT\n")  # b is invalid: skipped records are not validated
    assert [(c.name, c.sequence) for c in genome.iter_contigs(path, only={"a", "c"})] == [("a", "ACGT"), ("c", "TTTT")]
    with pytest.raises(genome.GenomeError, match="'X' is not a DNA letter"):
        list(genome.iter_contigs(path, only={"b"}))
