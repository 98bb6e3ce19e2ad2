"""Concatenated multi-tokenizer views: layout, shared bases, round trips, save/load."""

import numpy as np
import pytest

from dnalm import tokenizers
from dnalm.tokenizers import CLS_ID, NUM_SPECIAL, SEP_ID, ViewTokenizer
from dnalm.utils.errors import TokenizerError


@pytest.fixture(scope="module")
def views(bpe_small):
    return ViewTokenizer(
        [tokenizers.load("nucleotide"), tokenizers.load("kmer:6"), tokenizers.load("kmer:3:1"), bpe_small]
    )


def test_layout_segments_positions(views, ecoli):
    seq = ecoli.sequence[10_000:10_500] + "NNNN" + ecoli.sequence[20_000:20_097]
    enc = views.encode(seq)
    assert enc.ids[0] == CLS_ID and enc.segment_ids[0] == 0 and enc.positions[0] == 0
    seps = np.flatnonzero(enc.ids == SEP_ID)
    assert len(seps) == 4 and seps[-1] == len(enc.ids) - 1
    starts = np.concatenate(([1], seps[:-1] + 1))
    for v, (a, b) in enumerate(zip(starts, seps)):
        tok = views.tokenizers[v]
        assert np.all(enc.segment_ids[a : b + 1] == v)
        assert enc.positions[a:b].tolist() == (enc.offsets[a:b, 0] + 1).tolist(), "a token sits at 1 + its first base"
        assert enc.positions[b] == len(seq) + 1
        own = enc.ids[a:b] - views.id_offsets[v]
        assert np.array_equal(own, tok.encode(seq).ids)
        for gid, (s, e) in zip(enc.ids[a:b].tolist(), enc.offsets[a:b].tolist()):
            assert views.vocab[gid] == f"{v}:{seq[s:e]}"
        assert enc.offsets[a, 0] == 0 and enc.offsets[b - 1, 1] == len(seq)
    assert views.decode(enc.ids) == seq


def test_tokens_over_the_same_bases_share_positions_across_views(views, ecoli):
    """The nucleotide token of base b and the 6-mer starting at b sit at one position; 6-mers lie 6 apart."""
    enc = views.encode(ecoli.sequence[30_000:30_600])
    own = ~np.isin(enc.ids, [CLS_ID, SEP_ID])  # the view's own tokens, not [CLS] or [SEP]
    nucleotide = {
        int(s): int(p)
        for s, p in zip(enc.offsets[own & (enc.segment_ids == 0), 0], enc.positions[own & (enc.segment_ids == 0)])
    }
    kmer = own & (enc.segment_ids == 1)
    assert kmer.sum() == 100
    assert all(nucleotide[int(s)] == int(p) for s, p in zip(enc.offsets[kmer, 0], enc.positions[kmer]))
    assert set(np.diff(enc.positions[kmer]).tolist()) == {6}


def test_every_base_can_be_hidden_in_every_view(views, ecoli):
    seq = ecoli.sequence[50_000:50_300]
    enc = views.encode(seq)
    for base in (0, 7, 150, 299):
        hit = (enc.offsets[:, 0] <= base) & (base < enc.offsets[:, 1])
        assert sorted(set(enc.segment_ids[hit].tolist())) == [0, 1, 2, 3]
    specials = enc.ids < NUM_SPECIAL
    assert np.all(enc.offsets[specials, 0] == enc.offsets[specials, 1])


def test_vocab_is_shared_specials_plus_each_view(views):
    assert views.vocab[:NUM_SPECIAL] == list(tokenizers.SPECIAL_TOKENS)
    assert views.vocab_size == NUM_SPECIAL + sum(t.vocab_size - NUM_SPECIAL for t in views.tokenizers)
    assert views.name == "nucleotide+kmer:6+kmer:3:1+bpe:512"


def test_save_load_and_spec(views, tmp_path, ecoli):
    loaded = tokenizers.load(views.save(tmp_path / "views"))
    assert loaded.fingerprint == views.fingerprint
    seq = ecoli.sequence[:3000]
    assert np.array_equal(loaded.encode(seq).ids, views.encode(seq).ids)
    by_spec = tokenizers.load("nucleotide+kmer:6")
    assert isinstance(by_spec, ViewTokenizer) and [t.name for t in by_spec.tokenizers] == ["nucleotide", "kmer:6"]
    assert by_spec.fingerprint != views.fingerprint


def test_views_that_disagree_are_refused(views):
    enc_a = views.encode("ACGTACGTAC")
    enc_b = views.encode("TTTTTTTTTT")
    mixed = np.concatenate([enc_a.ids[:12], enc_b.ids[12:]])
    with pytest.raises(TokenizerError, match="different bases"):
        views.decode(mixed)
