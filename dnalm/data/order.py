"""The order of an epoch: a pseudo-random permutation of every sample, computed position by position.

A global batch of a training step is ``world × micro_batch`` consecutive positions of this order, so
its windows are spread over the whole corpus as if drawn at random (not a stretch of one shard).
The permutation is a keyed Feistel network over the next even power of two, walked until it lands
inside the sample count ("cycle walking"), so it is a bijection on [0, n) whose keys are drawn from
(seed, epoch): no array the size of the epoch is ever built, and a position's sample costs a few
integer operations. Samples are numbered shard after shard; ``locate`` turns sample numbers into
(shard, sample within shard) with one ``searchsorted`` over the shard counts.
"""

from __future__ import annotations

import numpy as np

ROUNDS = 4
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray, key: np.uint64) -> np.ndarray:
    """splitmix64's finaliser of x ^ key: a well-scrambled 64-bit value (wrapping arithmetic)."""
    z = x ^ key
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


class Permutation:
    """A seeded bijection of [0, n), evaluated on arrays of positions."""

    def __init__(self, n: int, seed):
        self.n = int(n)
        bits = max(2, int(self.n - 1).bit_length())
        self.half = (bits + 1) // 2
        self.mask = np.uint64((1 << self.half) - 1)
        self.keys = np.random.default_rng(seed).integers(0, 2**63, ROUNDS, dtype=np.uint64)

    def _feistel(self, x: np.ndarray) -> np.ndarray:
        half = np.uint64(self.half)
        left, right = x >> half, x & self.mask
        for key in self.keys:
            left, right = right, left ^ (_mix(right, key) & self.mask)
        return (left << half) | right

    def __call__(self, positions) -> np.ndarray:
        x = np.asarray(positions, dtype=np.uint64).copy()
        if self.n <= 1:
            return x.astype(np.int64)
        outside = np.ones(x.shape, bool)
        while outside.any():  # cycle walking: at most a few rounds, the domain is < 4n
            x[outside] = self._feistel(x[outside])
            outside = x >= np.uint64(self.n)
        return x.astype(np.int64)


class EpochOrder:
    """Epoch ``e``'s sample at each position: (shard index, sample within that shard)."""

    def __init__(self, counts, seed: int, shuffle: bool = True):
        self.counts = np.asarray(counts, np.int64)
        self.ends = np.cumsum(self.counts)
        self.total = int(self.ends[-1]) if len(self.ends) else 0
        self.seed, self.shuffle = seed, shuffle
        self._epoch, self._permutation = None, None

    def samples(self, epoch: int, positions) -> np.ndarray:
        """Global sample numbers (shard after shard) at ``positions`` of ``epoch``."""
        if not self.shuffle:
            return np.asarray(positions, np.int64)
        if epoch != self._epoch:
            self._epoch, self._permutation = epoch, Permutation(self.total, [self.seed, epoch, 0x5EED])
        return self._permutation(positions)

    def locate(self, samples) -> tuple[np.ndarray, np.ndarray]:
        samples = np.asarray(samples, np.int64)
        shard = np.searchsorted(self.ends, samples, side="right")
        return shard, samples - (self.ends[shard] - self.counts[shard])

    def __call__(self, epoch: int, positions) -> tuple[np.ndarray, np.ndarray]:
        return self.locate(self.samples(epoch, positions))
