"""The training stream: samples of a prepared split, in one deterministic global order, resumable exactly.

Order. Epoch ``e`` visits every sample once in a pseudo-random permutation keyed by (seed, e)
(``dnalm.data.order``): a global batch is as diverse as random draws from the whole split, and
the order is computed position by position from the shard counts, so a worker holds O(shards)
state however large the corpus. ``shuffle=False`` keeps genome order (shard after shard).

Sharing. Step ``s`` of the epoch takes the ``world_size × batch_size`` positions that follow the
resume point; rank ``r`` gets the ``r``-th run of ``batch_size`` of them, and within a rank the
DataLoader workers take steps in turn (worker ``w`` of ``W`` builds every ``W``-th batch, which is
the order in which a DataLoader hands batches out). So after ``K`` steps every rank together has
consumed exactly the first ``K × world_size × batch_size`` positions of the epoch, whatever the
number of ranks or workers: the state is just ``(epoch, index)`` and a resumed stream, with any
world size, continues with the next sample. The last ``< world_size × batch_size`` samples of an
epoch are dropped (they come back in the next epoch's order), so every rank steps together.

Reading. A sample is read through its shard's index (two positioned reads and a CRC check), so
a rank reads only the samples it consumes: about 1/W of the bytes. Each worker keeps at most
``max_open_shards`` shards open (least recently used closed first, bounded by the process's file
limit). A corrupt shard stops the stream with the shard named and its last good sample key; with
``on_error="skip"`` each corrupt sample is replaced by the next readable one of the epoch's order
and counted (``skipped``), so batches stay full and a resumed run reads exactly what an
uninterrupted one would.

Augmentation. With ``reverse_complement`` half the positions of each epoch (a keyed hash of the
position) are read on the other strand (``dnalm.data.augment``); resuming flips the same ones.
"""

from __future__ import annotations

import resource
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dnalm.data.manifest import DataError, Manifest
from dnalm.data.augment import flip, flipped, reverse_complement_table
from dnalm.data.order import EpochOrder
from dnalm.data.shards import IndexedShard, ShardError
from dnalm.tokenizers import NUM_SPECIAL, Tokenizer, ViewTokenizer, load_folder
from dnalm.tokenizers.views import concatenate_views

STATE_VERSION = 2  # 1: shard shuffle + shuffle buffer (not resumable with this order)
ON_ERROR = ("raise", "skip")


@dataclass
class StreamState:
    epoch: int = 0
    index: int = 0  # samples of this epoch's global order already consumed
    seed: int = 0
    version: int = STATE_VERSION


class GenomeStream(IterableDataset):
    def __init__(self, folder: str | Path, split: str = "train", *, batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True, epochs: int | None = 1, tokenizer: Tokenizer | None = None,
                 on_error: str = "raise", max_open_shards: int = 64, reverse_complement: bool = False):
        self.folder = Path(folder)
        self.manifest = Manifest.load(self.folder)
        if split not in self.manifest.splits:
            raise DataError(f"{self.folder}: no split '{split}' (have {', '.join(self.manifest.splits)})")
        if on_error not in ON_ERROR:
            raise DataError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if not 0 <= rank < world_size or batch_size < 1:
            raise DataError(f"need 0 <= rank < world_size and batch_size >= 1 (rank {rank}, world {world_size}, batch {batch_size})")
        if tokenizer is not None:
            check_tokenizer(self.manifest, tokenizer, self.folder)
        self.split, self.batch_size, self.rank, self.world_size = split, batch_size, rank, world_size
        self.epochs, self.on_error = epochs, on_error
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.max_open_shards = max(1, min(max_open_shards, soft_limit // 8))  # two files a shard, room for the rest
        self.shards = [s for s in self.manifest.splits[split].shards if s.num_samples > 0]
        self.counts = np.array([s.num_samples for s in self.shards], np.int64)
        self.total = int(self.counts.sum())
        if self.total < world_size * batch_size:
            raise DataError(f"{self.folder}: split '{split}' has {self.total} samples, fewer than one global batch "
                            f"({world_size} ranks × {batch_size})")
        self.state = StreamState(seed=seed)
        split_entry = self.manifest.splits[split]
        weights = [g.weight for g in self.manifest.mix] if self.manifest.mix else None
        self.order = EpochOrder(self.counts, seed, shuffle, genome_samples=split_entry.genome_samples, weights=weights)
        self.bytes_read = 0  # by this process's readers (in-process iteration; workers count their own)
        sizes = [t.vocab_size - NUM_SPECIAL for t in self.manifest.tokenizers]
        self.id_offsets = np.cumsum([0] + sizes[:-1]).tolist()
        self.tokenizers = [load_folder(self.folder / t.folder) for t in self.manifest.tokenizers]
        self.flip_tables = [reverse_complement_table(t) for t in self.tokenizers] if reverse_complement else None

    # --- order -----------------------------------------------------------------------------
    @property
    def global_batch(self) -> int:
        return self.world_size * self.batch_size

    def steps(self, epoch_start_index: int) -> int:
        return (self.total - epoch_start_index) // self.global_batch

    def position_after(self, steps: int) -> StreamState:
        """The state once ``steps`` more global steps have been consumed from the current state."""
        epoch, index = self.state.epoch, self.state.index
        while steps > 0:
            left = self.steps(index)
            if steps < left:
                index += steps * self.global_batch
                break
            steps -= left
            epoch, index = epoch + 1, 0
        if self.steps(index) == 0:
            epoch, index = epoch + 1, 0
        return StreamState(epoch, index, self.state.seed)

    def _rank_batches(self):
        """(epoch, first global position) of each batch of this rank, in consumption order."""
        epoch, index = self.state.epoch, self.state.index
        while self.epochs is None or epoch < self.epochs:
            for step in range(self.steps(index)):
                yield epoch, index + (step * self.world_size + self.rank) * self.batch_size
            epoch, index = epoch + 1, 0

    # --- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return asdict(self.state)

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise DataError(f"stream state version {state.get('version')} is not {STATE_VERSION}: it counts positions of "
                            "another epoch order, so resuming would repeat and skip samples")
        self.state = StreamState(**state)
        self.order.reseed(self.state.seed)

    # --- reading ---------------------------------------------------------------------------
    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        readers: OrderedDict[int, IndexedShard] = OrderedDict()
        unopenable: set[int] = set()  # missing or truncated shards: known after one try, the same in every run
        try:
            for k, (epoch, start) in enumerate(self._rank_batches()):
                if k % workers != worker:
                    continue
                positions = np.arange(start, start + self.batch_size)
                shards, samples = self.order(epoch, positions)
                flips = flipped(self.state.seed, epoch, positions) if self.flip_tables else np.zeros(len(positions), bool)
                for position, shard, index, reverse in zip(positions.tolist(), shards.tolist(), samples.tolist(), flips.tolist()):
                    sample = self._read(readers, unopenable, shard, index, reverse)
                    yield sample if sample is not None else self._substitute(readers, unopenable, epoch, position, reverse)
        finally:
            for reader in readers.values():
                self.bytes_read += reader.bytes_read
                reader.close()

    def _read(self, readers: OrderedDict, unopenable: set, shard: int, index: int, reverse: bool) -> dict | None:
        """The sample, or None when it is corrupt (or its shard is) and ``on_error`` is "skip"."""
        if shard in unopenable:
            return None
        try:
            return self._sample(self._reader(readers, shard), index, reverse)
        except ShardError:
            if self.on_error == "raise":
                raise
            if shard not in readers:  # the shard itself would not open, not just this sample
                unopenable.add(shard)
            return None

    def _substitute(self, readers: OrderedDict, unopenable: set, epoch: int, position: int, reverse: bool) -> dict:
        """In place of a corrupt sample, the next readable one in the epoch's order, marked ``skipped``.

        Batches stay full, so every rank keeps its position and the state stays exact; and since
        whether a sample reads is a property of the data, a resumed run substitutes the same ones.
        """
        reach = max(1024, 2 * int(self.counts.max()))  # genome order: past a whole corrupt shard
        for step in range(1, reach + 1):
            shards, samples = self.order(epoch, np.array([(position + step) % self.total]))
            sample = self._read(readers, unopenable, int(shards[0]), int(samples[0]), reverse)
            if sample is not None:
                return sample | {"skipped": 1}
        raise DataError(f"{self.folder}: split '{self.split}' has no readable sample within {reach} positions after "
                        f"position {position} of epoch {epoch}: most of it is corrupt; re-run `dnalm prep`")

    def _reader(self, readers: OrderedDict, shard: int) -> IndexedShard:
        if shard in readers:
            readers.move_to_end(shard)
            return readers[shard]
        entry = self.shards[shard]
        reader = IndexedShard(self.folder / entry.path, entry.num_samples, entry.bytes)
        readers[shard] = reader
        while len(readers) > self.max_open_shards:
            _, closed = readers.popitem(last=False)
            self.bytes_read += closed.bytes_read
            closed.close()
        return reader

    def _sample(self, reader: IndexedShard, index: int, reverse: bool = False) -> dict:
        key, meta, arrays = reader.read(index)
        if reverse:
            arrays = [flip(ids.astype(np.int64), table) for ids, table in zip(arrays, self.flip_tables)]
        sample = {"key": key, "skipped": 0, "reverse_complement": reverse}
        spans = [tok.spans_of(ids) for tok, ids in zip(self.tokenizers, arrays)]
        if self.manifest.views:
            ids, segments, positions = concatenate_views(arrays, spans, self.id_offsets, self.manifest.seq_len)
            sample.update(segment_ids=torch.from_numpy(segments.astype(np.int64)), positions=torch.from_numpy(positions.astype(np.int64)))
            bases = int(spans[0][-1, 1]) if len(spans[0]) else 0
            edge = np.array([[bases, bases]])
            spans = np.concatenate([[[0, 0]], *(x for view in spans for x in (view, edge)),
                                    np.repeat(edge, len(ids) - 1 - sum(len(v) + 1 for v in spans), axis=0)])
        else:
            ids, spans = arrays[0], spans[0]
        sample["input_ids"] = torch.from_numpy(ids.astype(np.int64))
        sample["spans"] = torch.from_numpy(np.asarray(spans, np.int64))
        return sample


def check_tokenizer(manifest: Manifest, tokenizer: Tokenizer, folder: Path) -> None:
    """The model's tokenizer must be the one the shards were made with."""
    wanted = [t.fingerprint for t in manifest.tokenizers]
    given = [t.fingerprint for t in tokenizer.tokenizers] if isinstance(tokenizer, ViewTokenizer) else [tokenizer.fingerprint]
    if given != wanted:
        names = ", ".join(f"{t.name} ({t.fingerprint})" for t in manifest.tokenizers)
        raise DataError(f"{folder}: shards were made with {names}, but the model's tokenizer is "
                        f"{tokenizer.name} ({', '.join(given)}); re-run prep or use the data's tokenizer")


class StreamLoader:
    """A DataLoader over a GenomeStream that counts consumed batches, so its state is exact to the step."""

    def __init__(self, stream: GenomeStream, num_workers: int = 0):
        self.stream, self.num_workers = stream, num_workers
        self.steps_taken = 0
        self.skipped = 0  # corrupt samples read around so far (on_error="skip")

    def __iter__(self):
        loader = DataLoader(self.stream, batch_size=self.stream.batch_size, num_workers=self.num_workers)
        for batch in loader:
            self.steps_taken += 1
            self.skipped += int(batch["skipped"].sum())
            yield batch

    def state_dict(self) -> dict:
        return asdict(self.stream.position_after(self.steps_taken))

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)
        self.steps_taken = 0
