"""Cut one stretch of bases (a piece of a contig between hard boundaries) into token windows.

Windows are sized in tokens. The tail of a piece is packed, not padded: the last window is
moved back so that it ends at the piece's end (it overlaps the one before it). A piece too
short for one window is left over (counted, never padded).

- One tokenizer: the piece is encoded once and cut into runs of exactly ``seq_len`` tokens.
- Views: every tokenizer encodes the piece; a window starts and ends on a base where every
  view has a token boundary, so each view covers exactly the same bases, and takes as many
  bases as fit in ``[CLS] v0 [SEP] v1 [SEP] …`` of ``seq_len`` tokens; the rest is padding.

With the piece's soft-mask track, each window also carries one repeat flag per token and view: a token
is a repeat when most of its bases are soft-masked (lowercase in the FASTA).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dnalm.tokenizers import Tokenizer


@dataclass
class Window:
    start: int  # bases, relative to the piece
    end: int
    ids: list[np.ndarray]  # one array per tokenizer
    padding: int = 0
    repeats: list[np.ndarray] | None = None  # beside ids: True where most of a token's bases are soft-masked
    token_slices: list[slice] = field(default_factory=list)  # where ids lie in each view's encoding of the piece


def token_repeats(offsets: np.ndarray, softmask: np.ndarray) -> np.ndarray:
    """Per token, whether most of its bases are soft-masked; ``offsets``: the tokens' (n, 2) base spans."""
    masked = np.concatenate(([0], np.cumsum(softmask, dtype=np.int64)))
    return 2 * (masked[offsets[:, 1]] - masked[offsets[:, 0]]) > offsets[:, 1] - offsets[:, 0]


def cut_windows(
    bases: np.ndarray,
    tokenizers: Sequence[Tokenizer],
    seq_len: int,
    views: bool,
    encodings=None,
    softmask: np.ndarray | None = None,
) -> list[Window]:
    """``encodings``: the tokenizers' encodings of ``bases`` when the caller already has them; ``softmask``: the
    bases' soft-mask track, for windows that carry repeat flags."""
    encodings = encodings or [t.encode(bases) for t in tokenizers]
    windows = _single(encodings[0], seq_len) if not views else _views(encodings, seq_len, len(bases))
    if softmask is not None:
        flags = [token_repeats(enc.offsets, softmask) for enc in encodings]
        for w in windows:
            w.repeats = [f[s] for f, s in zip(flags, w.token_slices)]
    return windows


def covered_bases(windows: Sequence[Window]) -> int:
    """Bases inside at least one window (windows overlap where a tail was packed)."""
    covered, reach = 0, 0
    for w in sorted(windows, key=lambda w: w.start):
        if w.end > reach:
            covered += w.end - max(w.start, reach)
            reach = w.end
    return covered


def _single(enc, seq_len: int) -> list[Window]:
    n = len(enc)
    if n < seq_len:
        return []
    firsts = list(range(0, n - seq_len + 1, seq_len))
    if firsts[-1] + seq_len < n:
        firsts.append(n - seq_len)
    return [
        Window(
            int(enc.offsets[a, 0]),
            int(enc.offsets[a + seq_len - 1, 1]),
            [enc.ids[a : a + seq_len]],
            token_slices=[slice(a, a + seq_len)],
        )
        for a in firsts
    ]


def _views(encodings, seq_len: int, n_bases: int) -> list[Window]:
    budget = seq_len - 1 - len(encodings)  # [CLS] and one [SEP] per view
    starts = [enc.offsets[:, 0] for enc in encodings]
    boundary_count = np.zeros(n_bases + 1, np.int32)
    for s in starts:
        boundary_count[s] += 1
    boundary_count[n_bases] = len(starts)
    common = np.flatnonzero(boundary_count == len(starts))
    # tokens of all views before each common boundary; a window [p, q) holds total[q] - total[p]
    total = np.sum([np.searchsorted(s, common) for s in starts], axis=0)
    windows, i, last = [], 0, len(common) - 1
    while i < last:
        j = int(np.searchsorted(total, total[i] + budget, side="right")) - 1
        if j >= last:  # the rest fits in one window: pack it against the piece end instead of padding
            k = int(np.searchsorted(total, total[last] - budget, side="left"))
            if k > 0 or total[last] - total[0] == budget:  # a full window; else the piece is too short
                windows.append(
                    _view_window(encodings, starts, common[k], common[last], budget - (total[last] - total[k]))
                )
            break
        if j <= i:  # no common boundary within one window's reach: leave this step over
            i += 1
            continue
        windows.append(_view_window(encodings, starts, common[i], common[j], budget - (total[j] - total[i])))
        i = j
    return windows


def _view_window(encodings, starts, p: int, q: int, padding: int) -> Window:
    slices = [slice(int(np.searchsorted(s, p)), int(np.searchsorted(s, q))) for s in starts]
    return Window(int(p), int(q), [enc.ids[s] for enc, s in zip(encodings, slices)], int(padding), token_slices=slices)
