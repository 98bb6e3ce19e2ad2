"""Download the shards a stream will need next, in background threads, while it reads the current ones."""

from __future__ import annotations

from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

from dnalm.data.cache import ShardCache
from dnalm.data.manifest import ShardEntry
from dnalm.data.sources import Source


class Prefetcher:
    """Keeps up to ``depth`` downloads of upcoming shards in flight.

    A failed prefetch is forgotten: the reader then fetches the shard itself, with the same retries, and
    its error is the one that reaches the user.
    """

    def __init__(self, cache: ShardCache, source: Source, entries: list[ShardEntry], depth: int):
        self.cache, self.source, self.entries, self.depth = cache, source, entries, depth
        self.pool = ThreadPoolExecutor(max_workers=depth, thread_name_prefix="dnalm-prefetch")
        self.running: dict[int, Future] = {}
        self.fetched: OrderedDict[int, None] = OrderedDict()  # recently prefetched, not asked again

    def want(self, upcoming, skip=()) -> None:
        """``upcoming``: shard numbers in the order the stream will need them."""
        for shard, future in list(self.running.items()):
            if future.done():
                del self.running[shard]
                if future.exception() is None:
                    self.fetched[shard] = None
                    while len(self.fetched) > 4 * self.depth:
                        self.fetched.popitem(last=False)
        for shard in upcoming:
            if len(self.running) >= self.depth:
                break
            if shard in self.running or shard in self.fetched or shard in skip:
                continue
            self.running[shard] = self.pool.submit(self.cache.ensure, self.source, self.entries[shard])

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
