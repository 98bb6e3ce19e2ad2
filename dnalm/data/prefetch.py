"""Download the shards a stream will need next, in background threads, while it reads the current ones."""

from __future__ import annotations

import threading
from collections import OrderedDict, deque

from dnalm.data.cache import ShardCache
from dnalm.data.manifest import ShardEntry
from dnalm.data.sources import Source

TAKEN = 4096  # shards remembered as fetched (or found here): not looked at again until forgotten


class Prefetcher:
    """``depth`` threads that keep downloading the next shards the stream needs and has not opened yet.

    The stream tells it, each batch, the shards its next batches need in order (``want``); of those not open,
    the first ``depth + 1`` are the plan, so the threads never run further ahead than a cache of ``depth + 2``
    shards can hold. A failed prefetch is forgotten: the reader then fetches the shard itself, with the same
    retries, and its error is the one that reaches the user.
    """

    def __init__(self, cache: ShardCache, source: Source, entries: list[ShardEntry], depth: int):
        self.cache, self.source, self.entries, self.depth = cache, source, entries, depth
        self.plan: deque[int] = deque()
        self.taken: OrderedDict[int, None] = OrderedDict()  # in flight or fetched lately: not planned again
        self.changed = threading.Condition()
        self.closed = False
        self.threads = [
            threading.Thread(target=self._work, daemon=True, name=f"dnalm-prefetch-{i}") for i in range(depth)
        ]
        for thread in self.threads:
            thread.start()

    def want(self, upcoming, skip=()) -> None:
        """``upcoming``: shard numbers in the order the stream will need them; ``skip``: those it has open."""
        with self.changed:
            wanted = [s for s in upcoming if s not in skip][: self.depth + 1]
            plan = []
            for shard in wanted:
                if shard in self.taken:
                    continue
                if self.cache.present(self.entries[shard]):  # a warm cache: nothing to do, and no lock taken
                    self._take(shard)
                else:
                    plan.append(shard)
            self.plan = deque(plan)
            if plan:
                self.changed.notify(len(plan))

    def _take(self, shard: int) -> None:
        self.taken[shard] = None
        while len(self.taken) > TAKEN:
            self.taken.popitem(last=False)

    def _work(self) -> None:
        while True:
            with self.changed:
                while not self.plan and not self.closed:
                    self.changed.wait()
                if self.closed:
                    return
                shard = self.plan.popleft()
                self._take(shard)
            try:
                self.cache.ensure(self.source, self.entries[shard])
            except Exception:  # noqa: BLE001 — the reader meets the same fault and reports it
                with self.changed:
                    self.taken.pop(shard, None)

    def close(self) -> None:
        """Stop planning; a download in flight finishes into the cache (its thread is a daemon)."""
        with self.changed:
            self.closed = True
            self.changed.notify_all()
