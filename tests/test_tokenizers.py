"""Nucleotide and k-mer tokenizers: parity with a per-base reference, round trips on real sequence, spans, save/load."""

import numpy as np
import pytest

from dnalm import tokenizers
from dnalm.tokenizers import KmerTokenizer, NucleotideTokenizer
from dnalm.utils.errors import TokenizerError

ALL_KMERS = [(k, s) for k in range(1, 9) for s in sorted({1, k})]


def reference_kmer_tokens(seq: str, k: int, stride: int) -> list[tuple[str, int]]:
    """(token, start) by walking the sequence base by base: the behaviour the vectorised encoder must match."""
    tokens, n = [], len(seq)
    if stride == k:
        i = 0
        while i < n:
            if seq[i] == "N":
                tokens.append(("N", i))
                i += 1
                continue
            j = i
            while j < n and seq[j] != "N":
                j += 1
            m = 0
            while m + k <= j - i:
                tokens.append((seq[i + m : i + m + k], i + m))
                m += k
            tokens.extend((seq[i + r], i + r) for r in range(m, j - i))
            i = j
        return tokens
    clean = [i for i in range(n - k + 1) if "N" not in seq[i : i + k]]
    covered = {b for i in clean for b in range(i, i + k)}
    for i in range(n):
        if i in clean:
            tokens.append((seq[i : i + k], i))
        elif i not in covered:
            tokens.append((seq[i], i))
    return tokens


def real_slices(contig) -> dict[str, str]:
    """Slices of a real chromosome: plain sequence, and both edges of its first N runs."""
    seq = contig.sequence
    slices = {"plain": seq[1_000_000:1_050_000]}
    for i, (start, end) in enumerate(contig.n_runs(1).tolist()[:3]):
        slices[f"n_run_{i}_start"] = seq[max(0, start - 20_000) : start + 300]
        slices[f"n_run_{i}_end"] = seq[max(0, end - 300) : end + 20_000]
    return slices


@pytest.mark.parametrize("k,stride", ALL_KMERS)
def test_kmer_matches_reference(k, stride):
    rng = np.random.default_rng(k * 10 + stride)
    tok = KmerTokenizer(k, stride)
    for trial in range(150):
        seq = "".join(rng.choice(list("ACGT" * 3 + "N" * (trial % 4)), size=int(rng.integers(0, 70))))
        enc = tok.encode(seq)
        got = [(tok.vocab[i], int(s)) for i, s in zip(enc.ids, enc.offsets[:, 0])]
        assert got == reference_kmer_tokens(seq, k, stride), seq
        assert tok.decode(enc.ids) == seq


def test_named_tokenizers():
    assert tokenizers.load("kmer:6").name == "kmer:6" and tokenizers.load("kmer:6").stride == 6
    assert tokenizers.load("kmer:6:1").overlapping
    assert tokenizers.load("char").name == "nucleotide"
    assert KmerTokenizer(6).vocab_size == 5 + 5 + 4**6
    assert KmerTokenizer(1).vocab_size == 10
    assert tokenizers.load("nucleotide").vocab == [
        "[PAD]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "[UNK]",
        "A",
        "C",
        "G",
        "T",
        "N",
    ]


def every_tokenizer(bpe_small):
    return [NucleotideTokenizer(), *(KmerTokenizer(k, s) for k, s in ALL_KMERS), bpe_small]


def assert_spans_hold(tok, seq: str, enc) -> None:
    """Each token's text is exactly the bases of its span; the spans cover the input."""
    starts, ends = enc.offsets[:, 0], enc.offsets[:, 1]
    for token_id, start, end in zip(enc.ids.tolist(), starts.tolist(), ends.tolist()):
        assert tok.vocab[token_id] == seq[start:end]
    assert np.all(np.diff(starts) > 0)
    if getattr(tok, "overlapping", False):
        covered = np.zeros(len(seq) + 1, int)
        np.add.at(covered, starts, 1)
        np.add.at(covered, ends, -1)
        assert np.all(np.cumsum(covered)[: len(seq)] > 0)
    else:
        assert starts[0] == 0 and ends[-1] == len(seq) and np.array_equal(starts[1:], ends[:-1])


def test_round_trips_on_real_sequence(any_genome_contig, bpe_small):
    for label, seq in real_slices(any_genome_contig).items():
        for tok in every_tokenizer(bpe_small):
            enc = tok.encode(seq)
            assert tok.decode(enc.ids) == seq, (label, tok.name)
            assert_spans_hold(tok, seq, enc)


def test_soft_masked_bases_encode_as_their_uppercase(any_genome_contig, bpe_small):
    seq = real_slices(any_genome_contig)["plain"][:5000]
    masked = seq[:1000] + seq[1000:3000].lower() + seq[3000:]
    for tok in every_tokenizer(bpe_small):
        assert np.array_equal(tok.encode(masked).ids, tok.encode(seq).ids), tok.name
        assert tok.decode(tok.encode(masked).ids) == seq


def test_spans_recovered_from_ids_alone(any_genome_contig, bpe_small):
    for seq in real_slices(any_genome_contig).values():
        for tok in every_tokenizer(bpe_small):
            enc = tok.encode(seq)
            assert np.array_equal(tok.spans_of(enc.ids), enc.offsets), tok.name


def test_save_load_gives_identical_ids_and_fingerprint(tmp_path, ecoli, bpe_small):
    seq = ecoli.bases[:20_000]
    for i, tok in enumerate(every_tokenizer(bpe_small)):
        loaded = tokenizers.load(tok.save(tmp_path / f"tok{i}"))
        assert type(loaded) is type(tok) and loaded.fingerprint == tok.fingerprint
        assert np.array_equal(loaded.encode(seq).ids, tok.encode(seq).ids)
        assert np.array_equal(loaded.encode(seq).offsets, tok.encode(seq).offsets)


def test_fingerprints_change_when_ids_would(bpe_small):
    prints = [t.fingerprint for t in every_tokenizer(bpe_small)]
    assert len(set(prints)) == len(prints)
    assert KmerTokenizer(6).fingerprint == KmerTokenizer(6, 6).fingerprint


def test_bad_bases_and_ids():
    tok = KmerTokenizer(3)
    with pytest.raises(TokenizerError, match=r"base 4: 'R' is not one of A, C, G, T, N"):
        tok.encode("ACGTRA")
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tok.decode([5, 10_000])
    assert len(tok.encode("")) == 0 and tok.decode([]) == ""
    assert tok.decode([1, 5, 2, 0, 0]) == "A"  # specials are dropped


@pytest.mark.parametrize(
    "spec,pattern",
    [
        ("kmer:9", "k must be between 1 and 8"),
        ("kmer:0", "k must be between 1 and 8"),
        ("kmer:6:2", "stride must be 1"),
        ("kmer:x", "integers"),
        ("wordpiece", "unknown tokenizer 'wordpiece'"),
        ("bpe", "expected bpe:PATH"),
        ("bpe:/no/such/dir", "no tokenizer.json"),
    ],
)
def test_bad_specs(spec, pattern):
    with pytest.raises(TokenizerError, match=pattern):
        tokenizers.load(spec)


def test_tampered_folder_is_refused(tmp_path, bpe_small):
    folder = bpe_small.save(tmp_path / "bpe")
    model = folder / "bpe.model"
    model.write_bytes(model.read_bytes()[:-1] + bytes([model.read_bytes()[-1] ^ 1]))
    with pytest.raises(TokenizerError):
        tokenizers.load(folder)


def test_save_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(TokenizerError, match="not empty"):
        NucleotideTokenizer().save(tmp_path / "x")
