"""The order of an epoch: a pseudo-random permutation of every sample, computed position by position.

A global batch of a training step is ``world × micro_batch`` consecutive positions of this order, so
its windows are spread over the whole corpus as if drawn at random (not a stretch of one shard).
The permutation is a keyed Feistel network over the next even power of two, walked until it lands
inside the sample count ("cycle walking"), so it is a bijection on [0, n) whose keys are drawn from
(seed, epoch): no array the size of the epoch is ever built, and a position's sample costs a few
integer operations. Samples are numbered shard after shard; ``locate`` turns sample numbers into
(shard, sample within shard) with one ``searchsorted`` over the shard counts. A corpus whose
genomes carry sampling weights draws each genome's share of the epoch in proportion to its weight.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

ROUNDS = 4
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def mix64(x: np.ndarray, key: np.uint64) -> np.ndarray:
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
            left, right = right, left ^ (mix64(right, key) & self.mask)
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


def weighted_counts(available: list[int], weights: list[float], total: int) -> np.ndarray:
    """Samples each genome contributes to an epoch of ``total``: shares proportional to ``weights`` among the
    genomes that have samples (largest remainders, so the counts add up to ``total``)."""
    shares = np.where(np.asarray(available) > 0, np.asarray(weights, np.float64), 0.0)
    exact = total * shares / shares.sum()
    counts = np.floor(exact).astype(np.int64)
    counts[np.argsort(-(exact - counts), kind="stable")[: total - int(counts.sum())]] += 1
    return counts


class ShardLocator(ABC):
    """What both epoch orders share: a global sample number (shard after shard) as (shard index, sample within that
    shard), and an epoch's positions located through ``samples``."""

    counts: np.ndarray  # samples in each shard
    ends: np.ndarray  # their running total

    @abstractmethod
    def samples(self, epoch: int, positions) -> np.ndarray:
        """The global sample numbers at ``positions`` of ``epoch`` (each order draws them its own way)."""

    def locate(self, samples) -> tuple[np.ndarray, np.ndarray]:
        samples = np.asarray(samples, np.int64)
        shard = np.searchsorted(self.ends, samples, side="right")
        return shard, samples - (self.ends[shard] - self.counts[shard])

    def __call__(self, epoch: int, positions) -> tuple[np.ndarray, np.ndarray]:
        return self.locate(self.samples(epoch, positions))


class EpochOrder(ShardLocator):
    """Epoch ``e``'s sample at each position: (shard index, sample within that shard).

    With per-genome weights, an epoch of the same length draws ``weighted_counts`` samples from each
    genome: a genome drawn more often than it has samples cycles through fresh permutations of its
    own samples, one drawn less often gets a different random subset each epoch.
    """

    def __init__(self, counts, seed: int, shuffle: bool = True, genome_samples=None, weights=None):
        self.counts = np.asarray(counts, np.int64)
        self.ends = np.cumsum(self.counts)
        self.total = int(self.ends[-1]) if len(self.ends) else 0
        self.seed, self.shuffle = seed, shuffle
        self._permutations: dict[tuple, Permutation] = {}
        self.weighted = bool(genome_samples) and weights is not None and len(set(weights)) > 1
        if self.weighted:
            self.available = np.asarray(genome_samples, np.int64)
            self.first = np.concatenate(([0], np.cumsum(self.available)[:-1]))
            self.drawn = weighted_counts(self.available.tolist(), weights, self.total)
            self.drawn_ends = np.cumsum(self.drawn)

    def reseed(self, seed: int) -> None:
        self.seed = seed
        self._permutations.clear()

    def _permutation(self, n: int, *key) -> Permutation:
        if key not in self._permutations:
            if len(self._permutations) > 4096:
                self._permutations.clear()
            self._permutations[key] = Permutation(n, [self.seed, *key, 0x5EED])
        return self._permutations[key]

    def samples(self, epoch: int, positions) -> np.ndarray:
        """Global sample numbers (shard after shard) at ``positions`` of ``epoch``."""
        positions = np.asarray(positions, np.int64)
        if not self.shuffle:
            return positions
        drawn = self._permutation(self.total, epoch)(positions)
        if not self.weighted:
            return drawn
        genome = np.searchsorted(self.drawn_ends, drawn, side="right")
        within = drawn - (self.drawn_ends[genome] - self.drawn[genome])
        cycle, within = np.divmod(within, self.available[genome])
        out = np.empty_like(drawn)
        for g, c in set(zip(genome.tolist(), cycle.tolist())):
            rows = (genome == g) & (cycle == c)
            out[rows] = self.first[g] + self._permutation(int(self.available[g]), epoch, g, c)(within[rows])
        return out
