"""``data.order: blocks``: a shard-aware epoch order, for shards that come from object storage.

The epoch's shards are put in a seeded order and laid end to end (a shard's samples stay together).
That run of samples is cut into ``partitions`` P contiguous stretches of equal length (±1), and each
stretch into blocks of ``block_size`` B samples, each block shuffled by its own keyed permutation.
Position ``i`` of the epoch is the ``i // P``-th place of the partition in slot ``i mod P`` (the last
``n mod P`` positions go to the partitions one sample longer). Slot ``s`` holds the stretch at
``location(s)``: with P = q·2^e (q odd), ``(s mod q)·2^e + bit-reversal of s // q`` over e bits.

- Shares. Rank ``r`` of ``W`` takes the positions of each global batch that are ``≡ r (mod W)``
  (``GenomeStream``): the slots ``≡ r + index (mod W)``. When W = q·2^i divides P these slots are,
  after the bit reversal, one contiguous run of stretches, so a rank reads a contiguous 1/W of the
  epoch's shards and shares at most the two shards at its run's ends with other ranks. That holds for
  every such W at once (a run moving from 2 to 1 to 4 ranks keeps it when 4 divides P); for a W that
  does not divide P the order is as exact, only the shares overlap more. The ranks of one node (one
  cache) download about 1/N of the shards between them.
- Resumption. The order depends on (seed, epoch, P, B) and the shard counts, never on W, so
  ``(epoch, index)`` resumes exactly at any world size; P and B are fixed when an epoch starts and
  travel in the stream state.
- Mixing. A global batch of G positions takes ``G / P`` consecutive places of every partition's
  current block; ``block_for`` makes a block span at least 8 Mb of sequence for each of those
  samples, so a batch's windows fall in distinct regions about as often as random draws would.
- Cache. A rank needs its partitions' current blocks at once: (P/W)·(B / samples per shard + 1)
  shards, whatever the size of the corpus; that is its cache's warm-up, and ``default_partitions``
  keeps P at most a tenth of the shards.
- Memory: O(shards) numbers per epoch; nothing the size of the epoch.

Weighted corpora: a genome drawn ``d = k·a + rem`` times in an epoch (it has ``a`` samples) gives
each of its pieces (its samples in one shard) k times, plus ``rem`` samples as whole pieces in a
seeded order and a seeded subset of one more piece; a shard's pieces stay together, so shards
still come whole.
"""

from __future__ import annotations

import math

import numpy as np

from dnalm.data.order import Permutation, ShardLocator, weighted_counts

MOST_PARTITIONS = 64  # unless the world is larger
SHARDS_PER_PARTITION = 10  # a rank needs its partitions' current blocks at once: few partitions, a small warm-up
BLOCK_BASES = 8_000_000  # sequence a block spans per sample its partition gives each global batch


def default_partitions(world: int, shards: int) -> int:
    """The world size times the largest power of two that keeps P ≤ 64 and P ≤ shards / 10 (but P ≥ world): each
    rank owns whole partitions, and so does each rank of a world 2, 4, … times smaller or larger, up to P."""
    most = max(world, min(MOST_PARTITIONS, shards // SHARDS_PER_PARTITION))
    partitions = world
    while 2 * partitions <= most:
        partitions *= 2
    return partitions


def location(slots: np.ndarray, partitions: int) -> np.ndarray:
    """Where in the epoch's run of shards the stretch of each slot lies (a bijection of [0, P)): the odd part of P
    in order, then the bits of the rest reversed, so the slots one rank takes form one contiguous run."""
    odd, bits = partitions, 0
    while odd % 2 == 0:
        odd, bits = odd // 2, bits + 1
    high, low = np.divmod(np.asarray(slots, np.int64), odd)
    reversed_bits = np.zeros_like(high)
    for bit in range(bits):
        reversed_bits |= ((high >> bit) & 1) << (bits - 1 - bit)
    return low * (1 << bits) + reversed_bits


def block_for(global_batch: int, partitions: int, bases_per_sample: float, samples_per_shard: float) -> int:
    """Samples in a block: ≥ BLOCK_BASES of sequence per sample a partition gives a step, and ≥ one shard."""
    per_step = math.ceil(global_batch / partitions)
    return max(1, math.ceil(samples_per_shard), math.ceil(per_step * BLOCK_BASES / max(bases_per_sample, 1.0)))


def _groups(keys: np.ndarray) -> list[np.ndarray]:
    """Indices of ``keys`` grouped by equal key (one sort, not one pass per key)."""
    order = np.argsort(keys, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(keys[order])) + 1) if len(keys) else []


class _Epoch:
    """One epoch's pieces in order: global sample number of each piece's first sample, its count, and for a
    piece taken in part the length of the piece it is drawn from (0 when taken whole)."""

    def __init__(self, start: np.ndarray, count: np.ndarray, partial_of: np.ndarray):
        self.start, self.count, self.partial_of = start, count, partial_of
        self.ends = np.cumsum(count)


class BlockOrder(ShardLocator):
    """Epoch ``e``'s sample at each position: (shard index, sample within that shard)."""

    def __init__(
        self,
        counts,
        seed: int,
        partitions: int,
        block_size: int,
        shuffle: bool = True,
        genome_samples=None,
        weights=None,
    ):
        self.counts = np.asarray(counts, np.int64)
        self.ends = np.cumsum(self.counts)
        self.total = int(self.ends[-1]) if len(self.ends) else 0
        self.seed, self.shuffle = seed, shuffle
        self.partitions, self.block_size = int(partitions), int(block_size)
        if self.partitions < 1 or self.block_size < 1:
            raise ValueError(f"partitions and block_size must be >= 1 (got {partitions}, {block_size})")
        genome_ends = np.cumsum(genome_samples) if genome_samples else np.array([self.total], np.int64)
        cuts = np.union1d(np.concatenate(([0], self.ends)), np.concatenate(([0], genome_ends)))
        cuts = cuts[cuts <= self.total]
        self.piece_start, self.piece_len = cuts[:-1], np.diff(cuts)
        keep = self.piece_len > 0
        self.piece_start, self.piece_len = self.piece_start[keep], self.piece_len[keep]
        self.piece_genome = np.searchsorted(genome_ends, self.piece_start, side="right")
        self.weighted = bool(genome_samples) and weights is not None and len(set(weights)) > 1
        if self.weighted:
            self.available = np.asarray(genome_samples, np.int64)
            self.drawn = weighted_counts(self.available.tolist(), weights, self.total)
        self._epochs: dict[int, _Epoch] = {}
        self._permutations: dict[tuple, Permutation] = {}

    def reseed(self, seed: int) -> None:
        self.seed = seed
        self._epochs.clear()
        self._permutations.clear()

    def _permutation(self, n: int, *key) -> Permutation:
        if key not in self._permutations:
            if len(self._permutations) > 4096:
                self._permutations.clear()
            self._permutations[key] = Permutation(n, [self.seed, *key, 0xB10C])
        return self._permutations[key]

    def _epoch(self, epoch: int) -> _Epoch:
        if epoch not in self._epochs:
            if len(self._epochs) > 2:
                self._epochs.clear()
            self._epochs[epoch] = self._build(epoch)
        return self._epochs[epoch]

    def _build(self, epoch: int) -> _Epoch:
        start, count = self.piece_start, self.piece_len
        partial_of = np.zeros(len(start), np.int64)
        if self.weighted:
            parts = []
            rng = np.random.default_rng([self.seed, epoch, 0xD4A3])
            for g in range(len(self.available)):
                mine = np.nonzero(self.piece_genome == g)[0]
                if not len(mine):
                    continue
                whole, rem = divmod(int(self.drawn[g]), int(self.available[g]))
                parts += [(i, int(self.piece_len[i]), 0) for _ in range(whole) for i in mine]
                for i in rng.permutation(mine):
                    if rem == 0:
                        break
                    take = min(rem, int(self.piece_len[i]))
                    parts.append((i, take, 0 if take == self.piece_len[i] else int(self.piece_len[i])))
                    rem -= take
            index = np.array([p[0] for p in parts], np.int64)
            start, count = self.piece_start[index], np.array([p[1] for p in parts], np.int64)
            partial_of = np.array([p[2] for p in parts], np.int64)
        if self.shuffle:  # shards in a seeded order, a shard's pieces together (in a seeded order too)
            rng = np.random.default_rng([self.seed, epoch, 0x5A4D])
            shard_rank = rng.permutation(len(self.counts))[np.searchsorted(self.ends, start, side="right")]
            order = np.lexsort((rng.random(len(start)), shard_rank))
            start, count, partial_of = start[order], count[order], partial_of[order]
        return _Epoch(start, count, partial_of)

    def samples(self, epoch: int, positions) -> np.ndarray:
        """Global sample numbers (shard after shard) at ``positions`` of ``epoch``."""
        positions = np.asarray(positions, np.int64)
        n, parts, block = self.total, self.partitions, self.block_size
        per = n // parts
        lengths = (np.arange(1, parts + 1) * n) // parts - (np.arange(parts) * n) // parts
        longer = np.nonzero(lengths > per)[0]
        body = positions < parts * per
        partition = np.where(
            body,
            location(positions % parts, parts),
            longer[np.clip(positions - parts * per, 0, max(len(longer) - 1, 0))] if len(longer) else 0,
        )
        place = np.where(body, positions // parts, per)
        first = partition * n // parts
        block_index, offset = np.divmod(place, block)
        inner = offset.copy()
        if self.shuffle:
            block_len = np.minimum(block, lengths[partition] - block_index * block)
            for rows in _groups(partition * (n // block + 1) + block_index):
                p, b = int(partition[rows[0]]), int(block_index[rows[0]])
                inner[rows] = self._permutation(int(block_len[rows[0]]), epoch, 0, p, b)(offset[rows])
        run = first + block_index * block + inner  # place in the epoch's run of pieces
        table = self._epoch(epoch)
        piece = np.searchsorted(table.ends, run, side="right")
        within = run - (table.ends[piece] - table.count[piece])
        partial = np.flatnonzero(table.partial_of[piece] > 0)
        for rows in _groups(piece[partial]):
            k = int(piece[partial[rows[0]]])
            within[partial[rows]] = self._permutation(int(table.partial_of[k]), epoch, 1, k)(within[partial[rows]])
        return table.start[piece] + within
