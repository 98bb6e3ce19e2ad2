"""The training stream: exact resume (workers, world size), epochs, corrupt shards, tokenizer checks."""

import shutil
from itertools import islice

import numpy as np
import pytest
import torch

from dnalm import tokenizers
from dnalm.data.manifest import DataError, Manifest
from dnalm.data.shards import IndexedShard, ShardError
from dnalm.data.stream import GenomeStream, StreamLoader
from tests.conftest import prep_folder


def take(loader, n_batches):
    keys = []
    for k, batch in enumerate(loader):
        keys += batch["key"]
        if k + 1 == n_batches:
            break
    return keys


def stream(folder, **kw):
    settings = {"batch_size": 4, "epochs": None, "seed": 3} | kw
    return GenomeStream(folder, **settings)


def test_resume_yields_exactly_the_uninterrupted_samples(ecoli_prepared):
    uninterrupted = take(StreamLoader(stream(ecoli_prepared), num_workers=2), 100)
    first = StreamLoader(stream(ecoli_prepared), num_workers=2)
    head = take(first, 37)
    state = first.state_dict()
    assert state == {
        "epoch": 0,
        "index": 37 * 4,
        "seed": 3,
        "version": 3,
        "order": "global",
        "partitions": 0,
        "block_size": 0,
    }
    resumed = StreamLoader(stream(ecoli_prepared), num_workers=1)  # a different number of workers too
    resumed.load_state_dict(state)
    assert head + take(resumed, 63) == uninterrupted
    assert len(set(uninterrupted)) == len(uninterrupted) == 400


@pytest.mark.parametrize("order", ["global", "blocks"])
def test_world_size_change_continues_the_epoch(ecoli_prepared, order):
    """2 ranks for 30 steps, then 1 rank for 500, then 4 to the end of the epoch: every sample once."""
    total = Manifest.load(ecoli_prepared).splits["train"].num_samples
    ranks = [StreamLoader(stream(ecoli_prepared, rank=r, world_size=2, epochs=1, order=order)) for r in range(2)]
    seen = [key for loader in ranks for key in take(loader, 30)]
    state = ranks[0].state_dict()
    assert state == ranks[1].state_dict() and (state["epoch"], state["index"], state["order"]) == (0, 240, order)
    alone = StreamLoader(stream(ecoli_prepared, epochs=1, order=order))
    alone.load_state_dict(state)
    seen += take(alone, 500)
    state = alone.state_dict()
    again = [StreamLoader(stream(ecoli_prepared, rank=r, world_size=4, epochs=1, order=order)) for r in range(4)]
    for loader in again:
        loader.load_state_dict(state)
        seen += take(loader, 10_000)
    assert len(seen) == len(set(seen)), "no sample repeated"
    assert total - len(seen) < 4 * 4, "only the last partial global batch of the epoch is dropped"


def test_an_epoch_keeps_the_order_it_began_with(ecoli_prepared):
    """A checkpoint of the global order resumed by a stream set to blocks finishes its epoch in the global order."""
    uninterrupted = take(StreamLoader(stream(ecoli_prepared, batch_size=64, epochs=2)), 10_000)
    first = StreamLoader(stream(ecoli_prepared, batch_size=64, epochs=2))
    head = take(first, 50)
    switched = StreamLoader(stream(ecoli_prepared, batch_size=64, epochs=2, order="blocks"))
    switched.load_state_dict(first.state_dict())
    rest = take(switched, 10_000)
    per_epoch = len(uninterrupted) // 2
    assert head + rest[: per_epoch - len(head)] == uninterrupted[:per_epoch]
    second, dropped = (
        rest[per_epoch - len(head) :],
        Manifest.load(ecoli_prepared).splits["train"].num_samples - per_epoch,
    )
    assert len(set(second)) == per_epoch and second != uninterrupted[per_epoch:], (
        "the next epoch is in the blocks order"
    )
    assert len(set(second) ^ set(uninterrupted[per_epoch:])) <= 2 * dropped, (
        "each order drops its own last partial batch"
    )
    assert switched.state_dict()["order"] == "blocks"


def test_epochs_reshuffle_and_end(ecoli_prepared):
    loader = StreamLoader(stream(ecoli_prepared, batch_size=64, epochs=2))
    keys = take(loader, 10_000)
    total = Manifest.load(ecoli_prepared).splits["train"].num_samples
    per_epoch = total // 64 * 64
    assert len(keys) == 2 * per_epoch
    first, second = keys[:per_epoch], keys[per_epoch:]
    assert first != second and len(set(first)) == per_epoch
    assert len(set(first) & set(second)) > 0.95 * per_epoch
    assert loader.state_dict()["epoch"] == 2


def test_batches_hold_tensors(ecoli_prepared):
    batch = next(iter(StreamLoader(stream(ecoli_prepared, batch_size=8))))
    assert batch["input_ids"].shape == (8, 512) and batch["input_ids"].dtype == torch.int64
    assert int(batch["input_ids"].min()) >= 5  # nucleotide windows hold bases only


def test_views_batches_are_laid_out_for_the_model(tmp_path, ecoli):
    path = tmp_path / "slice.fa"
    path.write_text(f">slice\n{ecoli.sequence[:300_000]}\n")
    folder = prep_folder(tmp_path / "views", [path], ("nucleotide", "kmer:3"), seq_len=256, views=True, val_fraction=0)
    batch = next(iter(StreamLoader(stream(folder, batch_size=2))))
    ids, segments = batch["input_ids"][0], batch["segment_ids"][0]
    assert ids.shape == (256,) and ids[0] == tokenizers.CLS_ID and (ids == tokenizers.SEP_ID).sum() == 2
    views = tokenizers.ViewTokenizer([tokenizers.load("nucleotide"), tokenizers.load("kmer:3")])
    first_sep = int((ids == tokenizers.SEP_ID).nonzero()[0])
    assert set(segments[1:first_sep].tolist()) == {0} and set(segments[first_sep + 1 : first_sep + 5].tolist()) == {1}
    bases = views.decode(ids.numpy())
    assert bases in ecoli.sequence[:300_000]
    real = ids != tokenizers.PAD_ID
    assert batch["positions"][0][real].tolist() == views.encode(bases).positions.tolist(), (
        "the stream lays out positions as encode does"
    )
    GenomeStream(folder, batch_size=2, tokenizer=views)  # the matching tokenizer is accepted


def test_fingerprint_mismatch_is_refused(ecoli_prepared):
    with pytest.raises(DataError, match=r"shards were made with nucleotide .* model's tokenizer is kmer:6"):
        GenomeStream(ecoli_prepared, batch_size=4, tokenizer=tokenizers.load("kmer:6"))
    GenomeStream(ecoli_prepared, batch_size=4, tokenizer=tokenizers.load("nucleotide"))


@pytest.fixture
def damaged(tmp_path, ecoli_prepared):
    """Shard 1 truncated (unopenable) and one sample of shard 2 with a flipped byte (fails its CRC)."""
    folder = tmp_path / "damaged"
    shutil.copytree(ecoli_prepared, folder)
    shards = Manifest.load(folder).splits["train"].shards
    data = (folder / shards[1].path).read_bytes()
    (folder / shards[1].path).write_bytes(data[: len(data) // 2])
    reader = IndexedShard(folder / shards[2].path, shards[2].num_samples)
    offset, length, _ = reader.entry(7)
    bad_key = reader.key(7)
    reader.close()
    with open(folder / shards[2].path, "r+b") as fh:
        fh.seek(offset + length - 700)  # inside the token array, past the tar headers
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    original = IndexedShard(ecoli_prepared / shards[1].path, shards[1].num_samples)
    lost = {original.key(i) for i in range(shards[1].num_samples)} | {bad_key}
    original.close()
    return folder, shards[1].path, lost


def test_corrupt_shard_fails_by_default_naming_it(damaged):
    folder, name, _ = damaged
    with pytest.raises(
        ShardError, match=rf"{name}: does not match its checksum .*last good sample key: g0-K~2D12~2DMG1655-\d+"
    ):
        take(StreamLoader(stream(folder, shuffle=False, epochs=1)), 10_000)


def test_a_worker_process_reports_a_corrupt_shard_in_its_own_line(damaged):
    """Read in a DataLoader worker, the same error reaches the rank as itself, not wrapped in the DataLoader's
    "Caught ShardError in DataLoader worker process 0. Original Traceback …"."""
    folder, name, _ = damaged
    with pytest.raises(ShardError) as caught:
        take(StreamLoader(stream(folder, shuffle=False, epochs=1), num_workers=1), 10_000)
    assert str(caught.value).startswith(str(folder / name)) and "\n" not in str(caught.value)
    assert "Caught" not in str(caught.value) and "Traceback" not in str(caught.value)


def test_corrupt_samples_are_replaced_counted_and_never_read(damaged):
    folder, _, lost = damaged
    loader = StreamLoader(stream(folder, epochs=1, on_error="skip"))
    keys = take(loader, 10_000)
    total = Manifest.load(folder).splits["train"].num_samples
    assert len(keys) == total - total % 4, "every batch stays full"
    assert loader.skipped == len(lost) and not lost & set(keys)


def test_a_resumed_stream_replaces_corrupt_samples_exactly_as_an_uninterrupted_one(damaged):
    """Each rank keeps its position; resuming (with another number of workers) reads the same samples."""
    folder, _, lost = damaged
    for rank in (0, 1):
        settings = {"on_error": "skip", "rank": rank, "world_size": 2, "order": "global"}  # every rank meets the damage
        uninterrupted = StreamLoader(stream(folder, **settings), num_workers=2)
        keys = take(uninterrupted, 300)
        first = StreamLoader(stream(folder, **settings), num_workers=2)
        head = take(first, 120)
        resumed = StreamLoader(stream(folder, **settings), num_workers=1)
        resumed.load_state_dict(first.state_dict())
        assert head + take(resumed, 180) == keys
        assert uninterrupted.skipped == first.skipped + resumed.skipped > 0 and not lost & set(keys)


def test_samples_read_ahead_of_a_closing_shard_are_the_samples_and_faults_it_would_give(damaged):
    """One shard open at a time: each shard closes with its planned samples read ahead, a corrupt one among them;
    the stream gives what one keeping every shard open gives, and raises at the same sample."""
    folder, _, lost = damaged
    settings = {"order": "blocks", "reverse_complement": True}
    keys, skipped = [], []
    for most in (64, 1):
        loader = StreamLoader(stream(folder, on_error="skip", max_open_shards=most, **settings))
        keys.append([(k, int(ids.sum())) for b in islice(loader, 300) for k, ids in zip(b["key"], b["input_ids"])])
        skipped.append(loader.skipped)
    assert keys[0] == keys[1] and skipped[0] == skipped[1] > 0 and not lost & {k for k, _ in keys[0]}
    failed = []
    for most in (64, 1):
        with pytest.raises(ShardError) as error:
            take(StreamLoader(stream(folder, max_open_shards=most, **settings)), 300)
        failed.append(str(error.value))
    assert failed[0] == failed[1]


def test_bad_stream_settings(ecoli_prepared):
    with pytest.raises(DataError, match="no split 'test'"):
        GenomeStream(ecoli_prepared, "test", batch_size=4)
    with pytest.raises(DataError, match="fewer than one global batch"):
        GenomeStream(ecoli_prepared, "val", batch_size=10_000)
    with pytest.raises(DataError, match="on_error"):
        GenomeStream(ecoli_prepared, batch_size=4, on_error="ignore")
    with pytest.raises(DataError, match="no manifest"):
        GenomeStream(ecoli_prepared / "train", batch_size=4)


def test_reverse_complement_in_the_stream_is_seeded_and_resumable(ecoli_prepared, ecoli, tmp_path):
    nucleotide = tokenizers.load("nucleotide")
    complement = str.maketrans("ACGT", "TGCA")
    loader = StreamLoader(stream(ecoli_prepared, reverse_complement=True), num_workers=2)
    batches = []
    for k, batch in enumerate(loader):
        batches.append(batch)
        if k == 39:
            break
    flips = torch.cat([b["reverse_complement"] for b in batches])
    assert 0.35 < flips.float().mean() < 0.65
    from dnalm.data.shards import parse_key

    for batch in batches[:5]:
        for key, ids, reverse in zip(batch["key"], batch["input_ids"], batch["reverse_complement"]):
            where = parse_key(key)
            forward = ecoli.sequence[where["start"] : where["end"]]
            expected = forward.translate(complement)[::-1] if reverse else forward
            assert nucleotide.decode(ids.numpy()) == expected
    head = StreamLoader(stream(ecoli_prepared, reverse_complement=True), num_workers=1)
    take(head, 17)
    resumed = StreamLoader(stream(ecoli_prepared, reverse_complement=True))
    resumed.load_state_dict(head.state_dict())
    again = next(iter(resumed))
    assert again["key"] == batches[17]["key"] and torch.equal(again["input_ids"], batches[17]["input_ids"])


def test_reverse_complement_in_the_stream_keeps_kmer_views_aligned_and_refuses_bpe(tmp_path, ecoli, bpe_small):
    path = tmp_path / "slice.fa"
    path.write_text(f">slice\n{ecoli.sequence[:200_000]}\n")
    folder = prep_folder(tmp_path / "views", [path], ("nucleotide", "kmer:3"), seq_len=256, views=True, val_fraction=0)
    views = tokenizers.ViewTokenizer([tokenizers.load("nucleotide"), tokenizers.load("kmer:3")])
    for sample in GenomeStream(folder, batch_size=4, seed=0, reverse_complement=True):
        if sample["reverse_complement"]:
            ids = sample["input_ids"].numpy()
            first_sep = int(np.flatnonzero(ids == tokenizers.SEP_ID)[0])
            nucleotide_bases = views.decode(ids[: first_sep + 1])
            kmer_bases = views.decode(ids[first_sep + 1 :])
            assert nucleotide_bases == kmer_bases and nucleotide_bases not in ecoli.sequence[:200_000]
            break
    bpe_folder = tmp_path / "bpe"
    bpe_small.save(tmp_path / "bpe-tok")
    prep_folder(bpe_folder, [path], (f"bpe:{tmp_path / 'bpe-tok'}",), seq_len=128, val_fraction=0)
    with pytest.raises(DataError, match="no token for the reverse complement"):
        GenomeStream(bpe_folder, batch_size=2, reverse_complement=True)


def test_a_closed_shard_reader_never_closes_another_files_descriptor(ecoli_prepared):
    """Closing, then dropping, a reader must not close the descriptor numbers the next reader was given."""
    shard = Manifest.load(ecoli_prepared).splits["train"].shards[0]
    first = IndexedShard(ecoli_prepared / shard.path, shard.num_samples)
    first.close()
    second = IndexedShard(ecoli_prepared / shard.path, shard.num_samples)
    del first
    assert second.key(0) and second.read(1)[0]
    second.close()


def test_ranks_of_a_local_folder_default_to_the_blocks_order_and_a_global_epoch_stays_global(ecoli_prepared):
    """One process keeps the global order; several take blocks, but an epoch begun in the global order (a checkpoint
    from before this default) ends in it."""
    assert stream(ecoli_prepared).state.order == "global"
    assert stream(ecoli_prepared, rank=1, world_size=2).state.order == "blocks"
    uninterrupted = take(StreamLoader(stream(ecoli_prepared, rank=1, world_size=2, order="global")), 20)
    first = StreamLoader(stream(ecoli_prepared, rank=1, world_size=2, order="global"))
    head = take(first, 8)
    resumed = StreamLoader(stream(ecoli_prepared, rank=1, world_size=2))
    resumed.load_state_dict(first.state_dict())
    assert head + take(resumed, 12) == uninterrupted and resumed.state_dict()["order"] == "global"
