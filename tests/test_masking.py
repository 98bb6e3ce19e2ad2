"""MLM masking by bases (no view leaks a masked base), CLM labels."""

import numpy as np
import pytest
import torch

from dnalm import tokenizers
from dnalm.data.masking import IGNORE, base_targets, clm_batch, mlm_batch, view_ranges
from dnalm.data.stream import GenomeStream, StreamLoader
from dnalm.tokenizers import MASK_ID, PAD_ID
from tests.conftest import prep_folder


@pytest.fixture(scope="module")
def views_folder(tmp_path_factory, ecoli):
    path = tmp_path_factory.mktemp("views") / "slice.fa"
    path.write_text(f">slice\n{ecoli.sequence[:400_000]}\n")
    return prep_folder(path.parent / "data", [path], ("nucleotide", "kmer:6"), seq_len=512, views=True, val_fraction=0)


def first_batch(folder, batch_size=16):
    return next(iter(StreamLoader(GenomeStream(folder, batch_size=batch_size, seed=1))))


def test_single_view_masks_about_fifteen_percent(ecoli_prepared):
    batch = first_batch(ecoli_prepared)
    out = mlm_batch(batch, view_ranges([10]), np.random.default_rng(0))
    targets = out["labels"] != IGNORE
    assert 0.10 < targets.float().mean() < 0.20
    assert torch.equal(out["labels"][targets], batch["input_ids"][targets])
    assert torch.equal(out["input_ids"][~targets], batch["input_ids"][~targets])
    masked = (out["input_ids"] == MASK_ID)[targets].float().mean()
    assert 0.65 < masked < 0.95
    again = mlm_batch(batch, view_ranges([10]), np.random.default_rng(0))
    assert torch.equal(again["input_ids"], out["input_ids"])


def test_a_masked_base_is_hidden_in_every_view(views_folder):
    stream = GenomeStream(views_folder, batch_size=16, seed=1)
    batch = next(iter(StreamLoader(stream)))
    ranges = view_ranges([t.vocab_size for t in stream.manifest.tokenizers])
    out = mlm_batch(batch, ranges, np.random.default_rng(3))
    for ids, spans, segments, original in zip(
        out["input_ids"], batch["spans"], batch["segment_ids"], batch["input_ids"]
    ):
        hidden = set()  # the masked bases: exactly what the nucleotide view (segment 0) hides
        for token, (start, end), segment in zip(ids.tolist(), spans.tolist(), segments.tolist()):
            if token == MASK_ID and segment == 0:
                hidden.update(range(start, end))
        assert hidden
        for token, before, (start, end) in zip(ids.tolist(), original.tolist(), spans.tolist()):
            if token == before and end > start and before > PAD_ID + 4:
                assert not hidden & set(range(start, end)), "a token shows a base another view hides"
    nucleotide, kmer = out["target_rate"]  # a 6-mer touching any masked base is a target: about twice as often
    assert 0.10 < nucleotide < 0.20 and 0.25 < kmer < 0.45 and kmer > 1.8 * nucleotide
    random_tokens = (out["input_ids"] != batch["input_ids"]) & (out["input_ids"] != MASK_ID)
    for token, segment in zip(out["input_ids"][random_tokens].tolist(), batch["segment_ids"][random_tokens].tolist()):
        low, high = ranges[segment]
        assert low <= token < high, "a random replacement comes from the same view"


def test_base_targets_spell_every_token_of_every_view(views_folder):
    """mlm_target bases: a target token's label is the bases it spells, A C G T N as 0-4, IGNORE past its end."""
    stream = GenomeStream(views_folder, batch_size=4, seed=1)
    views = tokenizers.ViewTokenizer([tokenizers.load("nucleotide"), tokenizers.load("kmer:6")])
    table = base_targets(views.vocab)
    assert table.shape == (views.vocab_size + 1, 6)
    assert (table[: tokenizers.NUM_SPECIAL] == IGNORE).all() and (table[-1] == IGNORE).all()
    assert table[views.vocab.index("0:G")].tolist() == [2] + [IGNORE] * 5
    assert table[views.vocab.index("1:ACGTTA")].tolist() == [0, 1, 2, 3, 3, 0]
    assert table[views.vocab.index("1:N")].tolist() == [4] + [IGNORE] * 5
    batch = next(iter(StreamLoader(stream)))
    ranges = view_ranges([t.vocab_size for t in stream.manifest.tokenizers])
    by_token = mlm_batch(batch, ranges, np.random.default_rng(5))
    by_base = mlm_batch(batch, ranges, np.random.default_rng(5), table)
    assert (
        torch.equal(by_base["input_ids"], by_token["input_ids"]) and by_base["target_rate"] == by_token["target_rate"]
    )
    targets = by_token["labels"] != IGNORE
    assert by_base["labels"].shape == (*targets.shape, 6)
    assert (by_base["labels"][~targets] == IGNORE).all()
    for token, bases in zip(by_token["labels"][targets].tolist(), by_base["labels"][targets].tolist()):
        spelled = views.vocab[token].split(":")[1]
        assert "".join("ACGTN"[b] for b in bases if b != IGNORE) == spelled
    with pytest.raises(ValueError, match="does not spell bases"):
        base_targets(list(tokenizers.SPECIAL_TOKENS) + ["A", "▁AC"])


def test_clm_labels_ignore_padding():
    batch = {"input_ids": torch.tensor([[5, 6, 7, PAD_ID]]), "spans": torch.zeros(1, 4, 2, dtype=torch.long)}
    out = clm_batch(batch)
    assert out["labels"].tolist() == [[5, 6, 7, IGNORE]] and out["attention_mask"].tolist() == [
        [True, True, True, False]
    ]


def test_spans_are_painted_all_at_once_as_one_by_one():
    """The vectorised painting equals laying spans one by one (unchanged, then random, then [MASK] on top)."""
    from dnalm.data.masking import KEPT, MASKED, RANDOM, _paint

    rng = np.random.default_rng(1)
    for _ in range(500):
        n, k = int(rng.integers(1, 200)), int(rng.integers(1, 40))
        starts, lengths, actions = rng.integers(0, n, k), rng.geometric(1 / 3, k), rng.integers(0, 3, k)
        expected = np.full(n, -1, np.int64)
        for priority in (KEPT, RANDOM, MASKED):
            for start, length in zip(starts[actions == priority], lengths[actions == priority]):
                expected[start : start + length] = priority
        assert (_paint(n, starts, lengths, actions) == expected).all()
