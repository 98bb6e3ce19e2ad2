"""BPE training from genomes: proportional, order-free sampling in bounded memory, N kept out of merges."""

import json
import subprocess
import sys

import pytest

from dnalm import genome
from dnalm.tokenizers import bpe as bpe_module
from dnalm.tokenizers import train_bpe
from dnalm.utils.errors import TokenizerError
from tests.conftest import CHR20, needs_shared


def three_contig_fasta(ecoli, write_fasta, order=(0, 1, 2)):
    parts = [
        ("big", ecoli.sequence[:2_000_000]),
        ("mid", ecoli.sequence[2_000_000:3_000_000]),
        ("small", ecoli.sequence[3_000_000:3_500_000]),
    ]
    text = "".join(f">{parts[i][0]}\n{parts[i][1]}\n" for i in order)
    return write_fasta(text, f"three_{''.join(map(str, order))}.fa")


def test_sampling_is_proportional_and_independent_of_file_order(ecoli, write_fasta, tmp_path):
    forward = three_contig_fasta(ecoli, write_fasta)
    backward = three_contig_fasta(ecoli, write_fasta, order=(2, 1, 0))
    samples = []
    for path in (forward, backward):
        lengths = {str(path): genome.contig_lengths(path)}
        sample = bpe_module._write_corpus([path], lengths, 0.2, 4096, 0.5, 7, tmp_path / f"{path.stem}.txt", False)
        samples.append({row["contig"]: row["sampled_bases"] for row in sample.contigs})
    assert samples[0] == samples[1]
    for name, length in [("big", 2_000_000), ("mid", 1_000_000), ("small", 500_000)]:
        assert samples[0][name] == pytest.approx(0.2 * length, abs=4096)
    assert (tmp_path / f"{forward.stem}.txt").read_text().splitlines()[0] in ecoli.sequence


def test_mostly_n_chunks_are_never_drawn_and_n_is_cut_out(ecoli, write_fasta, tmp_path):
    seq = "N" * 400_000 + ecoli.sequence[:100_000] + "NNN" + ecoli.sequence[100_000:200_000]
    path = write_fasta(f">gappy\n{seq}\n")
    contig = genome.read(path).contigs[0]
    starts = bpe_module._chunk_starts(contig, 1.0, 4096, 0.5, 0)
    assert len(starts) > 0 and starts.min() >= 400_000 - 4096
    corpus = tmp_path / "corpus.txt"
    bpe_module._write_corpus([path], {str(path): {"gappy": len(seq)}}, 1.0, 4096, 0.5, 0, corpus, False)
    assert "N" not in corpus.read_text()


def test_sentences_longer_than_sentencepiece_default_are_kept(ecoli, write_fasta):
    """sentencepiece drops sentences over max_sentence_length (4192 bytes by default) without a word."""
    path = write_fasta(f">one\n{ecoli.sequence[:60_000]}\n")
    tok = train_bpe([path], 64, max_memory_gb=2.0, sentence_length=10_000, threads=1)
    assert tok.training_report["sampled_sentences"] == 6
    assert tok.training_report["sampled_bases"] == 60_000
    assert max(len(p) for p in tok.vocab) > 2  # merges were learned from the long sentences


def test_n_is_its_own_token_and_never_merged(bpe_small):
    seq = "ACGTTGCA" + "N" * 7 + "GGATCC" + "N" + "TTAGGC"
    enc = bpe_small.encode(seq)
    n_tokens = [i for i, (a, b) in enumerate(enc.offsets.tolist()) if "N" in seq[a:b]]
    assert all(bpe_small.vocab[enc.ids[i]] == "N" for i in n_tokens) and len(n_tokens) == 8
    assert bpe_small.decode(enc.ids) == seq
    assert all("N" not in token for token in bpe_small.vocab[6:])


def test_training_report_and_determinism(bpe_small):
    report = bpe_small.training_report
    assert report["contigs"][0]["contig"] == "K-12-MG1655"
    assert report["sampled_bases"] == report["contigs"][0]["sampled_bases"] > 4_000_000
    again = train_bpe([genome.DEFAULT_GENOME], 512, max_memory_gb=2.0, threads=1)
    assert again.fingerprint == bpe_small.fingerprint


def test_training_size_does_not_follow_memory_noise(monkeypatch):
    """The sample size comes from the budget, not from how much this process happens to hold, so a
    genome larger than the budget allows still trains the same vocabulary every time."""
    sizes = {}
    for held_mb in (150, 250, 300, 700):
        monkeypatch.setattr(bpe_module, "peak_rss_bytes", lambda held_mb=held_mb: held_mb << 20)
        sizes[held_mb] = bpe_module._training_bases(1.0, 63_000_000)
    assert sizes[150] == sizes[250] == sizes[300] == (1024 - 384) * 2**20 // bpe_module.BYTES_PER_TRAINING_BASE
    assert sizes[700] == (1024 - 764) * 2**20 // bpe_module.BYTES_PER_TRAINING_BASE  # a caller already holding more


def test_bad_budgets_and_vocab(tmp_path):
    with pytest.raises(TokenizerError, match="too small"):
        train_bpe([genome.DEFAULT_GENOME], 512, max_memory_gb=0.01)
    with pytest.raises(TokenizerError, match="vocab_size: Input should be greater than or equal to 16"):
        train_bpe([genome.DEFAULT_GENOME], 8, max_memory_gb=2.0)
    with pytest.raises(TokenizerError, match="max_n_fraction"):
        train_bpe([genome.DEFAULT_GENOME], 512, max_memory_gb=2.0, max_n_fraction=1.5)


@needs_shared(CHR20)
def test_chr20_with_one_gigabyte_stays_under_it(tmp_path):
    """The CLI on a whole human chromosome, measured in a fresh process: peak RSS under the 1 GB budget."""
    out = tmp_path / "bpe"
    script = (
        "import sys; from dnalm.cli import main; from dnalm.utils.memory import peak_rss_bytes; "
        f"rc = main(['tokenizer', 'train-bpe', '{CHR20}', '--vocab-size', '4096', '--max-memory-gb', '1', '--out', "
        f"'{out}']); "
        "print('PEAK_KB', peak_rss_bytes() // 1024); sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    peak_mb = int(result.stdout.split("PEAK_KB")[1].split()[0]) / 1024
    assert peak_mb < 1024, f"peak {peak_mb:.0f} MB"
    report = json.loads((out / "training_report.json").read_text())
    assert report["contigs"][0]["contig"] == "20" and report["sampled_bases"] > 5_000_000
    assert "sampled" in result.stdout and "20" in result.stdout
