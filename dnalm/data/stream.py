"""The training stream: samples of a prepared split, in one deterministic global order, resumable exactly.

Source. The split is read from a local folder in place, or from ``s3://`` or ``http(s)://``
(``dnalm.data.sources``): then its manifest and tokenizers are copied once into the node-local cache
(``dnalm.data.cache``), shards come whole into that cache, verified, when first needed, and a
``Prefetcher`` downloads the next ``prefetch_shards`` shards the order needs while the current ones
are read.

Order. Epoch ``e`` visits every sample once in a pseudo-random order keyed by (seed, e):

- ``global`` (``dnalm.data.order``, the default for one process on a local folder): a permutation of
  the whole split, so a global batch is as diverse as random draws; a rank's samples come from every
  shard, which costs nothing on a local disk but an open of a shard for nearly every sample once the
  shards outnumber the ones a worker keeps open;
- ``blocks`` (``dnalm.data.blocks``, the default for remote sources and for several ranks, whose
  shared filesystem pays for every open): the split is cut into partitions of shards, each shuffled in
  blocks that span many shards; a rank reads only its partitions' shards (about 1/W of the bytes) while
  a global batch still mixes the whole corpus.

Both are computed position by position from the shard counts, so a worker holds O(shards) state
however large the corpus. ``shuffle=False`` keeps genome order (shard after shard).

Sharing. Step ``s`` of the epoch takes the ``world_size × batch_size`` positions that follow the
resume point; rank ``r`` gets those ``≡ r (mod world_size)`` among them, and within a rank the
DataLoader workers take steps in turn (worker ``w`` of ``W`` builds every ``W``-th batch, which is
the order in which a DataLoader hands batches out). So after ``K`` steps every rank together has
consumed exactly the first ``K × world_size × batch_size`` positions of the epoch, whatever the
number of ranks or workers: the state is ``(epoch, index)`` plus the order's settings for that epoch,
and a resumed stream, with any world size, continues with the next sample. The last
``< world_size × batch_size`` samples of an epoch are dropped (they come back in the next epoch's
order), so every rank steps together. An epoch keeps the order settings it started with; the next
one takes the stream's own.

Reading. A sample is read through its shard's index (two positioned reads and a CRC check). Each
worker keeps at most ``max_open_shards`` shards open (least recently used closed first, bounded by
the process's file limit), and plans its batches ahead: in the blocks order as far as its rank's
current blocks last (at most ``READ_AHEAD_BYTES`` of shard bytes). A shard that closes first reads the
samples those planned batches still need of it and holds them, so it opens again only for a later
block: a rank opens each shard it reads at most about twice an epoch, however small the shards, and
holds at most its current blocks' samples (8 Mb of bases is ~16 MB of tokens). A corrupt shard stops
the stream with the shard named and its last good sample key; with ``on_error="skip"`` each corrupt
sample is replaced by the next readable one of the epoch's order and counted (``skipped``), so
batches stay full and a resumed run reads exactly what an uninterrupted one would. A remote shard
that cannot be fetched after its retries always stops the stream, naming its URL.

Augmentation. With ``reverse_complement`` half the positions of each epoch (a keyed hash of the
position) are read on the other strand (``dnalm.data.augment``); resuming flips the same ones.
"""

from __future__ import annotations

import os
import resource
from collections import Counter, deque
from dataclasses import asdict, dataclass, replace
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dnalm.data.augment import flip, flip_flags, flipped, reverse_complement_table
from dnalm.data.blocks import BlockOrder, block_for, default_partitions
from dnalm.data.cache import ShardCache, local_folder
from dnalm.data.manifest import DataError, Manifest
from dnalm.data.order import EpochOrder
from dnalm.data.prefetch import Prefetcher
from dnalm.data.reading import Reading
from dnalm.data.shards import IndexedShard, ShardError, ShardSample
from dnalm.data.sources import open_source
from dnalm.tokenizers import NUM_SPECIAL, Tokenizer, ViewTokenizer, load_folder
from dnalm.tokenizers.views import concatenate_views
from dnalm.utils.errors import DnalmError

STATE_VERSION = 3  # 2: the global order only, ranks took contiguous runs of a step's positions; 1: shard shuffle
ON_ERROR = ("raise", "skip")
ORDERS = ("global", "blocks")
PLAN_CHUNK = 64  # batches whose samples are located with one call of the order
LOOKAHEAD = 32  # batches of this worker whose shards the prefetcher may see
READ_AHEAD_BYTES = 1 << 30  # shard bytes of the samples a worker plans ahead (and may hold read early) at most
PREFETCH_SHARDS = 4  # downloads in flight beside the reader: an object store gives each GET a fraction of the bandwidth


@dataclass
class StreamState:
    epoch: int = 0
    index: int = 0  # samples of this epoch's global order already consumed
    seed: int = 0
    version: int = STATE_VERSION
    order: str = "global"  # this epoch's order, and for "blocks" its partitions and block size
    partitions: int = 0
    block_size: int = 0


class GenomeStream(IterableDataset):
    def __init__(
        self,
        source: str | Path,
        split: str = "train",
        *,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        epochs: int | None = 1,
        tokenizer: Tokenizer | None = None,
        on_error: str = "raise",
        max_open_shards: int = 64,
        reverse_complement: bool = False,
        order: str | None = None,
        partitions: int | None = None,
        block_size: int | None = None,
        cache_dir: str | Path | None = None,
        cache_limit: int | None = None,
        prefetch_shards: int = PREFETCH_SHARDS,
        retries: int = 5,
        retry_wait_s: float = 0.5,
    ):
        self.source = open_source(source, retries, retry_wait_s)
        self.cache = ShardCache(cache_dir, cache_limit) if self.source.remote else None
        self.folder = local_folder(self.source, self.cache) if self.cache else Path(source)
        self.location = self.source.url if self.source.remote else self.folder  # what messages call the data
        self.manifest = Manifest.load(self.folder)
        if split not in self.manifest.splits:
            raise DataError(f"{self.location}: no split '{split}' (have {', '.join(self.manifest.splits)})")
        if on_error not in ON_ERROR:
            raise DataError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.order_kind = order or ("blocks" if self.source.remote or world_size > 1 else "global")
        if self.order_kind not in ORDERS:
            raise DataError(f"order must be one of {ORDERS}, got {order!r}")
        if not 0 <= rank < world_size or batch_size < 1 or prefetch_shards < 0:
            raise DataError(
                f"need 0 <= rank < world_size, batch_size >= 1 and prefetch_shards >= 0 (rank {rank}, "
                f"world {world_size}, batch {batch_size}, prefetch {prefetch_shards})"
            )
        if tokenizer is not None:
            check_tokenizer(self.manifest, tokenizer, self.location)
        self.split, self.batch_size, self.rank, self.world_size = split, batch_size, rank, world_size
        self.epochs, self.on_error, self.shuffle = epochs, on_error, shuffle
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.max_open_shards = max(1, min(max_open_shards, soft_limit // 8))  # two files a shard, room for the rest
        self.shards = [s for s in self.manifest.splits[split].shards if s.num_samples > 0]
        self.counts = np.array([s.num_samples for s in self.shards], np.int64)
        self.total = int(self.counts.sum())
        if self.total < world_size * batch_size:
            raise DataError(
                f"{self.location}: split '{split}' has {self.total} samples, fewer than one global batch "
                f"({world_size} ranks × {batch_size})"
            )
        self.prefetch_shards = prefetch_shards
        self.check_cache(workers=1)
        self.partitions_setting, self.block_size_setting = partitions, block_size
        self.state = StreamState(seed=seed, **self._configured_order())
        self._orders: dict[tuple, EpochOrder | BlockOrder] = {}
        self.bytes_read = 0  # by this process's readers (in-process iteration; workers count their own)
        self.shard_opens: Counter[int] = Counter()  # each shard's opens by this process, likewise
        self.held_most = 0  # the most samples this process held read early at once (``Reading``)
        sizes = [t.vocab_size - NUM_SPECIAL for t in self.manifest.tokenizers]
        self.id_offsets = np.cumsum([0] + sizes[:-1]).tolist()
        self.tokenizers = [load_folder(self.folder / t.folder) for t in self.manifest.tokenizers]
        self.flip_tables = [reverse_complement_table(t) for t in self.tokenizers] if reverse_complement else []

    def check_cache(self, workers: int) -> None:
        """Refuse a cache limit too small for this node's ranks, each read by ``workers`` workers (0 counts as 1)."""
        if self.cache is not None:
            self.cache.check_limit(self.shards, self.prefetch_shards, workers)

    # --- order -----------------------------------------------------------------------------
    @property
    def global_batch(self) -> int:
        return self.world_size * self.batch_size

    def _configured_order(self) -> dict:
        """The order a new epoch takes: this stream's settings, resolved for its world size and batch."""
        if self.order_kind == "global":
            return {"order": "global", "partitions": 0, "block_size": 0}
        partitions = self.partitions_setting or default_partitions(self.world_size, len(self.shards))
        bases = self.manifest.accounting.in_samples / max(self.manifest.num_samples, 1)
        block = self.block_size_setting or block_for(
            self.global_batch, partitions, bases, self.total / len(self.shards)
        )
        return {"order": "blocks", "partitions": partitions, "block_size": block}

    def order(self, epoch: int) -> EpochOrder | BlockOrder:
        spec = self.state if epoch == self.state.epoch else StreamState(**self._configured_order())
        key = (self.state.seed, spec.order, spec.partitions, spec.block_size)
        if key not in self._orders:
            split = self.manifest.splits[self.split]
            weights = [g.weight for g in self.manifest.mix] if self.manifest.mix else None
            shared = {"genome_samples": split.genome_samples, "weights": weights}
            self._orders[key] = (
                EpochOrder(self.counts, self.state.seed, self.shuffle, **shared)
                if spec.order == "global"
                else BlockOrder(self.counts, self.state.seed, spec.partitions, spec.block_size, self.shuffle, **shared)
            )
        return self._orders[key]

    def steps(self, epoch_start_index: int) -> int:
        return (self.total - epoch_start_index) // self.global_batch

    def position_after(self, steps: int) -> StreamState:
        """The state once ``steps`` more global steps have been consumed from the current state."""
        state = replace(self.state)
        while steps > 0:
            left = self.steps(state.index)
            if steps < left:
                state.index += steps * self.global_batch
                break
            steps -= left
            state = StreamState(state.epoch + 1, 0, state.seed, **self._configured_order())
        if self.steps(state.index) == 0:
            state = StreamState(state.epoch + 1, 0, state.seed, **self._configured_order())
        return state

    def positions(self, index: int, steps: int) -> np.ndarray:
        """This rank's positions in the ``steps`` global steps from position ``index`` of an epoch, one row a step:
        of each step's ``world_size × batch_size`` positions, those ``≡ rank (mod world_size)``."""
        return (
            index
            + np.arange(steps)[:, None] * self.global_batch
            + self.rank
            + self.world_size * np.arange(self.batch_size)
        )

    # --- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return asdict(self.state)

    def load_state_dict(self, state: dict) -> None:
        version = state.get("version")
        if version == 2:  # the global order, whose positions mean the same samples; the ranks' layout does not matter
            state = {**state, "version": STATE_VERSION}
        if state.get("version") != STATE_VERSION:
            raise DataError(
                f"stream state version {version} is not {STATE_VERSION}: it counts positions of "
                "another epoch order, so resuming would repeat and skip samples"
            )
        self.state = StreamState(**state)
        self._orders.clear()

    # --- reading ---------------------------------------------------------------------------
    def _planned(self, worker: int, workers: int):
        """This worker's batches, in consumption order, with their shards and samples: (epoch, positions, shards,
        samples), computed PLAN_CHUNK batches at a time (the order costs far less per call than per position)."""
        epoch, index, taken = self.state.epoch, self.state.index, 0  # taken: this rank's batches before the epoch
        while self.epochs is None or epoch < self.epochs:
            steps = self.steps(index)
            mine = np.arange((worker - taken) % workers, steps, workers)
            for first in range(0, len(mine), PLAN_CHUNK):
                positions = self.positions(index, 1) + mine[first : first + PLAN_CHUNK, None] * self.global_batch
                shards, samples = (a.reshape(positions.shape) for a in self.order(epoch)(epoch, positions.ravel()))
                yield from zip([epoch] * len(positions), positions, shards, samples)
            epoch, index, taken = epoch + 1, 0, taken + steps

    def _window(self, workers: int) -> int:
        """Batches a worker plans ahead: LOOKAHEAD, and in the blocks order the time its rank's current blocks last
        (their samples this worker takes), so that a shard closed early still has read what it owes those blocks
        (``Reading``) and opens again at most once, for the next block; at most READ_AHEAD_BYTES of shards' bytes."""
        samples = 0
        for spec in (self.state, StreamState(**self._configured_order())):  # this epoch's order and the next ones'
            if spec.order == "blocks":
                block = min(spec.block_size, -(-self.total // spec.partitions))  # a partition may be shorter
                samples = max(samples, -(-block * spec.partitions // (self.world_size * workers)))
        most = READ_AHEAD_BYTES * self.total // max(1, sum(s.bytes for s in self.shards))
        return max(LOOKAHEAD, -(-min(samples, most) // self.batch_size) + 1)

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        reading = Reading()
        prefetcher = (
            Prefetcher(self.cache, self.source, self.shards, self.prefetch_shards)
            if self.cache is not None and self.prefetch_shards
            else None
        )
        planned = self._planned(worker, workers)
        ahead: deque = deque()

        def plan(batches: int) -> None:
            for batch in islice(planned, batches):
                ahead.append(batch)
                reading.plan(batch[2], batch[3])

        plan(self._window(workers))
        try:
            while ahead:
                if prefetcher is not None:
                    upcoming = dict.fromkeys(s for batch in islice(ahead, LOOKAHEAD) for s in batch[2].tolist())
                    prefetcher.want(upcoming, skip=reading.open)
                epoch, positions, shards, samples = ahead.popleft()
                plan(1)
                flips = (
                    flipped(self.state.seed, epoch, positions) if self.flip_tables else np.zeros(len(positions), bool)
                )
                for position, shard, index, reverse in zip(
                    positions.tolist(), shards.tolist(), samples.tolist(), flips.tolist()
                ):
                    sample = self._read(reading, shard, index, reverse, reading.take(shard))
                    yield sample if sample is not None else self._substitute(reading, epoch, position, reverse)
        finally:
            if prefetcher is not None:
                prefetcher.close()
            while reading.open:
                self.bytes_read += reading.close_oldest(keep=False)
            self.held_most = max(self.held_most, reading.held_most)

    def _read(self, reading: Reading, shard: int, index: int, reverse: bool, early=None) -> dict | None:
        """The sample, or None when it is corrupt (or its shard is) and ``on_error`` is "skip". ``early``: the sample as
        read before its shard closed, or the ShardError that reading it raised."""
        try:
            if early is None:
                if shard in reading.unopenable:
                    return None
                early = self._reader(reading, shard).read_sample(index)
            elif isinstance(early, ShardError):
                raise early
            return self._sample(early, reverse)
        except ShardError:
            if self.on_error == "raise":
                raise
            if early is None and shard not in reading.open:  # the shard itself would not open, not just this sample
                reading.unopenable.add(shard)
            return None

    def _substitute(self, reading: Reading, epoch: int, position: int, reverse: bool) -> dict:
        """In place of a corrupt sample, the next readable one in the epoch's order, marked ``skipped``.

        Batches stay full, so every rank keeps its position and the state stays exact; and since
        whether a sample reads is a property of the data, a resumed run substitutes the same ones.
        """
        reach = max(1024, 2 * int(self.counts.max()))  # genome order: past a whole corrupt shard
        for step in range(1, reach + 1):
            shards, samples = self.order(epoch)(epoch, np.array([(position + step) % self.total]))
            sample = self._read(reading, int(shards[0]), int(samples[0]), reverse)
            if sample is not None:
                return sample | {"skipped": 1}
        raise DataError(
            f"{self.location}: split '{self.split}' has no readable sample within {reach} positions after "
            f"position {position} of epoch {epoch}: most of it is corrupt; re-run `dnalm prep`"
        )

    def _reader(self, reading: Reading, shard: int) -> IndexedShard:
        if shard in reading.open:
            reading.open.move_to_end(shard)
            return reading.open[shard]
        entry = self.shards[shard]
        reader = (
            self.cache.open(self.source, entry)
            if self.cache is not None
            else IndexedShard(self.folder / entry.path, entry.num_samples, entry.bytes)
        )
        reading.open[shard] = reader
        self.shard_opens[shard] += 1
        while len(reading.open) > self.max_open_shards:
            self.bytes_read += reading.close_oldest()
        return reader

    def _repeat_flags(self, read: ShardSample, reverse: bool) -> np.ndarray:
        """A repeat flag beside every id of the model's input, laid out as its ids are (``[CLS] v0 [SEP] v1 [SEP] …``
        with views; specials and padding are never repeats), flipped with a reverse-complemented window."""
        views = [np.zeros(len(ids), bool) if r is None else r for ids, r in zip(read.tokens, read.repeats)]
        if reverse:
            views = [flip_flags(r, ids) for r, ids in zip(views, read.tokens)]
        flags = np.zeros(self.manifest.seq_len, bool)
        at = 1 if self.manifest.views else 0
        for r in views:
            flags[at : at + len(r)] = r
            at += len(r) + 1
        return flags

    def _sample(self, read: ShardSample, reverse: bool = False) -> dict:
        """The model-ready sample: ids (views concatenated), base spans, its genome and, when the data marks repeats,
        a repeat flag beside every id."""
        sample = {
            "key": read.key,
            "genome": int(read.key[1 : read.key.index("-")]),
            "skipped": 0,
            "reverse_complement": reverse,
        }
        if self.manifest.repeats:
            sample["repeats"] = torch.from_numpy(self._repeat_flags(read, reverse))
        arrays = read.tokens
        if reverse:
            arrays = [flip(ids.astype(np.int64), table) for ids, table in zip(arrays, self.flip_tables)]
        spans = [tok.spans_of(ids) for tok, ids in zip(self.tokenizers, arrays)]
        if self.manifest.views:
            ids, segments, positions = concatenate_views(arrays, spans, self.id_offsets, self.manifest.seq_len)
            sample.update(
                segment_ids=torch.from_numpy(segments.astype(np.int64)),
                positions=torch.from_numpy(positions.astype(np.int64)),
            )
            bases = int(spans[0][-1, 1]) if len(spans[0]) else 0
            edge = np.array([[bases, bases]])
            token_spans = np.concatenate(
                [
                    [[0, 0]],
                    *(x for view in spans for x in (view, edge)),
                    np.repeat(edge, len(ids) - 1 - sum(len(v) + 1 for v in spans), axis=0),
                ]
            )
        else:
            ids, token_spans = arrays[0], spans[0]
        sample["input_ids"] = torch.from_numpy(ids.astype(np.int64))
        sample["spans"] = torch.from_numpy(np.asarray(token_spans, np.int64))
        return sample


def unwrapped(exc: DnalmError) -> DnalmError:
    """A worker's error as its own line: a DataLoader re-raises it as "Caught ShardError in DataLoader worker process
    0. Original Traceback …", ending in the original's "…ShardError: message"."""
    text = str(exc).rstrip()
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return exc
    _, found, message = text.splitlines()[-1].partition(f"{type(exc).__name__}: ")
    return type(exc)(message) if found else exc


def check_tokenizer(manifest: Manifest, tokenizer: Tokenizer, folder) -> None:
    """The model's tokenizer must be the one the shards were made with."""
    wanted = [t.fingerprint for t in manifest.tokenizers]
    given = (
        [t.fingerprint for t in tokenizer.tokenizers]
        if isinstance(tokenizer, ViewTokenizer)
        else [tokenizer.fingerprint]
    )
    if given != wanted:
        names = ", ".join(f"{t.name} ({t.fingerprint})" for t in manifest.tokenizers)
        raise DataError(
            f"{folder}: shards were made with {names}, but the model's tokenizer is "
            f"{tokenizer.name} ({', '.join(given)}); re-run prep or use the data's tokenizer"
        )


def _own_process_group(worker_id: int) -> None:
    """A DataLoader worker leaves its rank's process group. torchrun ends (or asks to save) with a signal to the
    group, and torch's worker dies of SIGTERM, which took the rank down before it could save; a worker still ends
    with its rank (torch's watchdog sees its parent go)."""
    os.setpgrp()


class StreamLoader:
    """A DataLoader over a GenomeStream that counts consumed batches, so its state is exact to the step."""

    def __init__(self, stream: GenomeStream, num_workers: int = 0):
        stream.check_cache(num_workers)
        self.stream, self.num_workers = stream, num_workers
        self.steps_taken = 0
        self.skipped = 0  # corrupt samples read around so far (on_error="skip")

    def __iter__(self):
        loader = DataLoader(
            self.stream,
            batch_size=self.stream.batch_size,
            num_workers=self.num_workers,
            worker_init_fn=_own_process_group,
        )
        try:
            for batch in loader:
                self.steps_taken += 1
                self.skipped += int(batch["skipped"].sum())
                yield batch
        except DnalmError as exc:
            raise unwrapped(exc) from None

    def state_dict(self) -> dict:
        return asdict(self.stream.position_after(self.steps_taken))

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)
        self.steps_taken = 0
