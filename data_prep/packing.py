"""Pieces shorter than a window, packed end to end into full windows: ``frag₁ [SEP] frag₂ [SEP] …``.

A fragmented assembly (10⁵ scaffolds of a few hundred bases) would otherwise lose almost all of
its bases: a window never crosses a contig, and a piece shorter than one window is left over.
With ``pack_fragments`` such pieces are laid one after another, each followed by ``[SEP]``, and a
window is emitted whenever ``seq_len`` tokens are filled; a fragment that does not fit is cut
there and continues the next window. The buffer is flushed (padded) when the genome changes and
when the shard ends, so a genome's samples stay consecutive. The sample's key names its first
fragment; its meta lists every part as ``[contig, start, end]``. Repeat flags (soft-masked tokens) travel
beside the ids, False on [SEP] and padding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dnalm.tokenizers import PAD_ID, SEP_ID


@dataclass
class PackedWindow:
    genome: int
    parts: list[tuple[str, int, int]]  # (contig, start, end) of each fragment part, in order
    ids: np.ndarray
    padding: int
    bases: int
    repeats: np.ndarray  # beside ids: soft-masked tokens


@dataclass
class FragmentPacker:
    seq_len: int
    genome: int | None = None
    ids: list[np.ndarray] = field(default_factory=list)
    repeats: list[np.ndarray] = field(default_factory=list)
    parts: list[tuple[str, int, int]] = field(default_factory=list)
    length: int = 0
    bases: int = 0

    def add(
        self, genome: int, contig: str, start: int, encoding, repeats: np.ndarray | None = None
    ) -> list[PackedWindow]:
        """Append one fragment (its encoding, starting at base ``start`` of ``contig``, and its tokens' repeat flags
        if it has any); return the windows it filled."""
        out = self.flush() if self.genome is not None and genome != self.genome else []
        self.genome = genome
        ids, offsets, taken = encoding.ids, encoding.offsets, 0
        while taken < len(ids):
            room = self.seq_len - self.length - 1  # keep one place for the [SEP] after this part
            if room <= 0:
                out.append(self._emit())
                continue
            part = slice(taken, min(len(ids), taken + room))
            a, b = int(offsets[part.start, 0]), int(offsets[part.stop - 1, 1])
            self.ids += [ids[part], np.array([SEP_ID], ids.dtype)]
            flags = repeats[part] if repeats is not None else np.zeros(part.stop - part.start, bool)
            self.repeats += [flags, np.zeros(1, bool)]
            self.parts.append((contig, start + a, start + b))
            self.length += part.stop - part.start + 1
            self.bases += b - a
            taken = part.stop
            if self.length >= self.seq_len:
                out.append(self._emit())
        return out

    def flush(self) -> list[PackedWindow]:
        return [self._emit()] if self.parts else []

    def _emit(self) -> PackedWindow:
        assert self.genome is not None  # add() sets it before the first part
        ids = np.concatenate(self.ids)
        padding = self.seq_len - len(ids)
        window = PackedWindow(
            self.genome,
            self.parts,
            np.concatenate([ids, np.full(padding, PAD_ID, ids.dtype)]),
            padding,
            self.bases,
            np.concatenate([*self.repeats, np.zeros(padding, bool)]),
        )
        self.ids, self.repeats, self.parts, self.length, self.bases = [], [], [], 0, 0
        return window
