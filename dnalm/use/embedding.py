"""Embeddings of DNA sequences from a trained model: ``dnalm.embed`` and ``dnalm embed``.

A sequence is tokenized whole (with every view of a multi-view model), then cut into windows
that fit the model's context (``max_seq_len`` tokens, specials included). Windows start and end
where every view has a token boundary and overlap by a quarter of a window. Each token is taken
from exactly one window: the one whose middle it is nearest, since the midpoint of every overlap
divides it between the two windows beside it. So the tokens are those of the whole sequence, and
a token's row sees at least an eighth of a context on each side unless the sequence ends first.

Pooling: ``mean`` and ``max`` over the sequence's tokens (every view's; specials excluded),
``cls`` the mean of the windows' [CLS] rows (only inputs that have one: multi-view), ``none``
every token's row with its base span and view. ``layer``: 1…n_layers or negative from the end;
the last (-1) is the model's final, normalised output, an earlier one the residual stream after
that block. ``reverse_complement_average`` averages the pooled embedding of a sequence and of
its reverse complement, so both strands give the same vector.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from dnalm.tokenizers import Tokenizer, ViewTokenizer
from dnalm.tokenizers.views import concatenate_views
from dnalm.use.sequences import reverse_complement
from dnalm.utils.errors import DnalmError

POOLINGS = ("mean", "max", "cls", "none")
OVERLAP = 0.25


class EmbedError(DnalmError):
    """Embedding settings or inputs that cannot work, with the reason."""


@dataclass
class TokenRows:
    """Per-token output (``pooling="none"``): one row per token, its [start, end) bases and its view."""

    rows: np.ndarray
    spans: np.ndarray
    views: np.ndarray


@dataclass
class _Window:
    sequence: int
    tokens: list[tuple[int, int]]  # per view: [first, last) token index of the whole sequence's encoding
    owned: tuple[int, int]  # bases whose tokens this window supplies
    result: dict = field(default_factory=dict)


def embed(
    model,
    tokenizer: Tokenizer,
    sequences: Iterable[str],
    *,
    pooling: str = "mean",
    layer: int = -1,
    reverse_complement_average: bool = False,
    batch_size: int = 8,
    progress: bool = False,
):
    """Pooled embeddings as an (n, d_model) float32 array, or a list of ``TokenRows`` for ``pooling="none"``.

    The model stays on its device; inputs follow it.
    """
    if pooling not in POOLINGS:
        raise EmbedError(f"pooling: {pooling!r} is not one of {', '.join(POOLINGS)}")
    if reverse_complement_average and pooling == "none":
        raise EmbedError("reverse_complement_average: per-token rows of the two strands do not line up; pool them")
    views = tokenizer.tokenizers if isinstance(tokenizer, ViewTokenizer) else [tokenizer]
    if pooling == "cls" and not isinstance(tokenizer, ViewTokenizer):
        raise EmbedError(
            f"pooling cls: {tokenizer.name} inputs carry no [CLS] token (only multi-view inputs do); use mean or max"
        )
    sequences = list(sequences)
    block = _block_index(model, layer)
    forward = _Embedder(model, tokenizer, views, block)
    result = forward.run(sequences, pooling, batch_size, progress)
    if reverse_complement_average:
        other = forward.run([reverse_complement(s) for s in sequences], pooling, batch_size, progress)
        result = (result + other) / 2
    return result


def _block_index(model, layer: int) -> int | None:
    """None for the final output, else the block whose output is taken."""
    n = len(model.blocks)
    if not (1 <= layer <= n or -n <= layer <= -1):
        raise EmbedError(f"layer: {layer} is outside 1…{n} (or -{n}…-1 from the end) for this {n}-layer model")
    index = layer - 1 if layer > 0 else n + layer
    return None if index == n - 1 else index


class _Embedder:
    def __init__(self, model, tokenizer, views, block):
        self.model, self.tokenizer, self.views, self.block = model, tokenizer, views, block
        self.multi = isinstance(tokenizer, ViewTokenizer)
        self.context = model.config.max_seq_len - ((1 + len(views)) if self.multi else 0)
        if self.context < 8:
            raise EmbedError(f"max_seq_len {model.config.max_seq_len} leaves no room for tokens")
        self.device = next(model.parameters()).device

    def run(self, sequences: Sequence[str], pooling: str, batch_size: int, progress: bool):
        encodings = [[view.encode(s) for view in self.views] for s in sequences]
        windows = [w for i, enc in enumerate(encodings) for w in self._windows(i, enc)]
        from tqdm import tqdm

        with torch.no_grad():
            for start in tqdm(range(0, len(windows), batch_size), disable=not progress, unit="batch", desc="embed"):
                self._forward(windows[start : start + batch_size], encodings)
        by_sequence: list[list[_Window]] = [[] for _ in sequences]
        for w in windows:
            by_sequence[w.sequence].append(w)
        tokens = [self._token_rows(ws, encodings[i]) for i, ws in enumerate(by_sequence)]
        if pooling == "none":
            return tokens
        if pooling == "cls":
            return np.stack([np.mean([w.result["cls"] for w in ws], axis=0) for ws in by_sequence]).astype(np.float32)
        if any(len(t.rows) == 0 for t in tokens):
            raise EmbedError(
                f"sequence {next(i for i, t in enumerate(tokens) if len(t.rows) == 0)}: empty, nothing to pool"
            )
        pool = np.mean if pooling == "mean" else np.max
        return np.stack([pool(t.rows, axis=0) for t in tokens]).astype(np.float32)

    def _windows(self, index: int, encodings) -> list[_Window]:
        """Windows of at most ``context`` tokens, cut where every view has a token boundary."""
        starts = [e.offsets[:, 0].astype(np.int64) for e in encodings]
        length = int(encodings[0].offsets[-1, 1]) if len(encodings[0]) else 0
        cuts = starts[0]
        for other in starts[1:]:
            cuts = np.intersect1d(cuts, other)
        cuts = np.union1d(cuts, [length])
        if length == 0:
            return [_Window(index, [(0, 0)] * len(starts), (0, 0))]

        def tokens_between(begin: int, end: int) -> int:
            return sum(int(np.searchsorted(s, end) - np.searchsorted(s, begin)) for s in starts)

        spans, begin = [], 0
        while True:
            lo, hi = int(np.searchsorted(cuts, begin, side="right")), len(cuts) - 1  # largest cut that fits
            if lo > hi or tokens_between(begin, int(cuts[lo])) > self.context:
                raise EmbedError(
                    f"sequence {index}: no window of {self.context} tokens ends on a boundary every view shares"
                )
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if tokens_between(begin, int(cuts[mid])) <= self.context else (lo, mid - 1)
            end = int(cuts[lo])
            spans.append((begin, end))
            if end >= length:
                break
            before = cuts[int(np.searchsorted(cuts, end - int((end - begin) * OVERLAP), side="right")) - 1]
            begin = int(before) if before > begin else end
        windows = []
        for w, (begin, end) in enumerate(spans):
            own_start = 0 if w == 0 else (begin + spans[w - 1][1]) // 2
            own_end = length if w == len(spans) - 1 else (end + spans[w + 1][0]) // 2
            tokens = [(int(np.searchsorted(s, begin)), int(np.searchsorted(s, end))) for s in starts]
            windows.append(_Window(index, tokens, (own_start, own_end)))
        return windows

    def _forward(self, batch: list[_Window], encodings) -> None:
        inputs = []
        for w in batch:
            own = [encodings[w.sequence][v].ids[a:b] for v, (a, b) in enumerate(w.tokens)]
            if self.multi:
                spans = [encodings[w.sequence][v].offsets[a:b] for v, (a, b) in enumerate(w.tokens)]
                first = int(spans[0][0, 0]) if len(spans[0]) else 0  # positions count bases from the window's start
                inputs.append(concatenate_views(own, [s - first for s in spans], self.tokenizer.id_offsets))
            else:
                ids = own[0].astype(np.int32)
                inputs.append((ids, np.zeros_like(ids), np.arange(len(ids), dtype=np.int32)))
        longest = max(1, max(len(ids) for ids, _, _ in inputs))
        padded = np.zeros((3, len(batch), longest), np.int64)
        mask = np.zeros((len(batch), longest), bool)
        for row, (ids, segments, positions) in enumerate(inputs):
            padded[:, row, : len(ids)] = ids, segments, positions
            mask[row, : len(ids)] = True
        ids, segments, positions = (torch.from_numpy(a).to(self.device) for a in padded)
        captured: dict[str, torch.Tensor] = {}
        hook = None
        if self.block is not None:
            hook = self.model.blocks[self.block].register_forward_hook(
                lambda module, args, out: captured.__setitem__("x", out[0] if isinstance(out, tuple) else out)
            )
        try:
            # no key mask when nothing is padded (a long window alone), so attention takes its fused kernels; no head
            out = self.model(
                ids,
                segment_ids=segments if self.multi else None,
                positions=positions,
                attention_mask=None if mask.all() else torch.from_numpy(mask).to(self.device),
                logits=False,
            )
        finally:
            if hook is not None:
                hook.remove()
        hidden = (captured["x"] if self.block is not None else out.hidden).float().cpu().numpy()
        for row, w in enumerate(batch):
            w.result["hidden"] = hidden[row, : mask[row].sum()]
            if self.multi:
                w.result["cls"] = hidden[row, 0]

    def _token_rows(self, windows: list[_Window], encodings) -> TokenRows:
        rows, spans, views = [], [], []
        for v, encoding in enumerate(encodings):
            for w in windows:
                first, last = w.tokens[v]
                local = self._view_rows(w, v)
                starts = encoding.offsets[first:last, 0]
                keep = (starts >= w.owned[0]) & (starts < w.owned[1])
                rows.append(local[keep])
                spans.append(encoding.offsets[first:last][keep])
                views.append(np.full(int(keep.sum()), v, np.int32))
        d = self.model.config.d_model
        return TokenRows(
            np.concatenate(rows) if rows else np.zeros((0, d), np.float32),
            np.concatenate(spans) if spans else np.zeros((0, 2), np.int64),
            np.concatenate(views) if views else np.zeros(0, np.int32),
        )

    def _view_rows(self, w: _Window, view: int) -> np.ndarray:
        """The rows of one view's tokens within a window's output ([CLS] v0 [SEP] v1 [SEP] … for views)."""
        if not self.multi:
            return w.result["hidden"]
        at = 1
        for v, (first, last) in enumerate(w.tokens):
            if v == view:
                return w.result["hidden"][at : at + last - first]
            at += last - first + 1
        raise AssertionError("unreachable")


def save(result, inputs, out) -> tuple:
    """Write ``out`` (.npy: pooled rows; .npz: ``embeddings`` and, per token, ``spans``, ``views``, ``sequence``)
    and ``OUT.index.tsv`` naming each sequence, both atomically. Returns the two paths."""
    import io
    from pathlib import Path

    from dnalm.utils.files import write_atomic

    out = Path(out)
    if out.suffix not in (".npy", ".npz"):
        raise EmbedError(f"--out {out}: name a .npy or .npz file")
    buffer = io.BytesIO()
    if isinstance(result, np.ndarray):
        (np.save if out.suffix == ".npy" else lambda f, a: np.savez(f, embeddings=a))(buffer, result)
    else:
        if out.suffix != ".npz":
            raise EmbedError(f"--out {out}: per-token rows (pooling none) need a .npz file")
        np.savez(
            buffer,
            embeddings=np.concatenate([t.rows for t in result]),
            spans=np.concatenate([t.spans for t in result]),
            views=np.concatenate([t.views for t in result]),
            sequence=np.concatenate([np.full(len(t.rows), i, np.int64) for i, t in enumerate(result)]),
        )
    index = out.with_name(out.name + ".index.tsv")
    lines = ["row\tname\tstrand\tlength\tlabel"] + [
        f"{i}\t{s.name}\t{s.strand}\t{len(s.sequence)}\t{s.label}" for i, s in enumerate(inputs)
    ]
    write_atomic(index, "\n".join(lines) + "\n")
    write_atomic(out, buffer.getvalue())
    return out, index
