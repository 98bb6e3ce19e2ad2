"""One DataLoader worker's shard reading: its open shards, the shards that would not open, and the samples its planned
batches still need, read ahead of a shard's closing (``dnalm.data.stream`` plans and reads through it)."""

from __future__ import annotations

from collections import OrderedDict, deque
from itertools import islice

import numpy as np

from dnalm.data.shards import IndexedShard, ShardError


class Reading:
    """One worker's open shards (least recently used first), the shards that would not open (missing or truncated:
    known after one try, the same in every run), and the samples its planned batches still need of each shard, in
    the order they will be read.

    A shard closed while planned samples still need it has those read first and held (``early``), so it opens
    again only for samples planned after it closed. In the blocks order a rank's current blocks span more shards
    than a worker keeps open, and without this nearly every sample would open its shard again."""

    def __init__(self):
        self.open: OrderedDict[int, IndexedShard] = OrderedDict()
        self.unopenable: set[int] = set()
        self.needs: dict[int, deque[int]] = {}  # shard → its samples in the planned batches, in reading order
        self.early: dict[int, deque] = {}  # shard → the first of those, read before it closed (or their ShardError)
        self.held = self.held_most = 0

    def plan(self, shards: np.ndarray, samples: np.ndarray) -> None:
        for shard, index in zip(shards.tolist(), samples.tolist()):
            self.needs.setdefault(shard, deque()).append(index)

    def take(self, shard: int):
        """The next planned sample of ``shard`` is being read: what was read of it early, else None."""
        needs = self.needs[shard]
        needs.popleft()
        if not needs:
            del self.needs[shard]
        early = self.early.get(shard)
        if not early:
            return None
        self.held -= 1
        if len(early) == 1:
            del self.early[shard]
        return early.popleft()

    def close_oldest(self, keep: bool = True) -> int:
        """Close the least recently used shard, first reading what planned batches still need of it (``keep``);
        the bytes it read."""
        shard, reader = self.open.popitem(last=False)
        owed = self.needs.get(shard, ()) if keep else ()
        if owed:
            early = self.early.setdefault(shard, deque())
            for index in islice(owed, len(early), None):
                try:
                    early.append(reader.read_sample(index))
                except ShardError as exc:  # raised (or skipped) when its turn comes, as a read then would be
                    early.append(exc)
                self.held += 1
            self.held_most = max(self.held_most, self.held)
        reader.close()
        return reader.bytes_read
