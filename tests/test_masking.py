"""MLM masking by bases (no view leaks a masked base), CLM labels."""

import numpy as np
import pytest
import torch

from dnalm.data.masking import IGNORE, clm_batch, mlm_batch, view_ranges
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
    for ids, spans, segments, original in zip(out["input_ids"], batch["spans"], batch["segment_ids"], batch["input_ids"]):
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


def test_clm_labels_ignore_padding():
    batch = {"input_ids": torch.tensor([[5, 6, 7, PAD_ID]]), "spans": torch.zeros(1, 4, 2, dtype=torch.long)}
    out = clm_batch(batch)
    assert out["labels"].tolist() == [[5, 6, 7, IGNORE]] and out["attention_mask"].tolist() == [[True, True, True, False]]


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
