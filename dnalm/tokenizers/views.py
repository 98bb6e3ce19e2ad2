"""Several tokenizers' views of the same bases, concatenated into one input.

Layout: ``[CLS] view₀ [SEP] view₁ [SEP] …``. Ids share the five specials and give each
view's other tokens their own range, so one embedding table serves every view. Each token
carries its segment (view index; [CLS] is in segment 0), its position and its base span, so a
masking step can hide a base in every view at once. Positions are aligned to bases: a token sits
at 1 + the base offset where it starts, [CLS] at 0 and each [SEP] at 1 + the number of bases, so
the nucleotide token of base b and the 6-mer that starts at b share a position, and a 6-mer's
neighbour is 6 positions away, as its bases are.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dnalm.tokenizers.base import (
    CLS_ID,
    CONFIG_FILE,
    NUM_SPECIAL,
    PAD_ID,
    SEP_ID,
    SPECIAL_TOKENS,
    Encoding,
    Tokenizer,
    check_ids,
)
from dnalm.utils.errors import TokenizerError


@dataclass(frozen=True)
class ViewEncoding(Encoding):
    segment_ids: np.ndarray
    positions: np.ndarray


def concatenate_views(
    view_ids: Sequence[np.ndarray],
    view_spans: Sequence[np.ndarray],
    id_offsets: Sequence[int],
    length: int | None = None,
):
    """Each view's own ids and base spans → ``[CLS] v0 [SEP] v1 [SEP] …`` (padded with [PAD] to ``length``):
    ids, segments, base-aligned positions."""
    n_bases = int(view_spans[0][-1, 1]) if len(view_spans[0]) else 0
    id_parts: list[np.ndarray | list[int]] = [[CLS_ID]]
    segment_parts: list[np.ndarray | list[int]] = [[0]]
    position_parts: list[np.ndarray | list[int]] = [[0]]
    for v, (own, spans, offset) in enumerate(zip(view_ids, view_spans, id_offsets)):
        own = np.asarray(own, np.int32)
        id_parts += [np.where(own < NUM_SPECIAL, own, own + offset), [SEP_ID]]
        segment_parts.append(np.full(len(own) + 1, v, np.int32))
        position_parts += [np.asarray(spans, np.int64)[:, 0] + 1, [n_bases + 1]]
    ids, segments, positions = (np.concatenate(x).astype(np.int32) for x in (id_parts, segment_parts, position_parts))
    if length is not None:
        if len(ids) > length:
            raise TokenizerError(f"views: {len(ids)} tokens do not fit in {length}")
        pad = length - len(ids)
        ids = np.concatenate([ids, np.full(pad, PAD_ID, np.int32)])
        segments = np.concatenate([segments, np.zeros(pad, np.int32)])
        positions = np.concatenate([positions, np.zeros(pad, np.int32)])
    return ids, segments, positions


class ViewTokenizer(Tokenizer):
    kind = "views"

    def __init__(self, tokenizers: Sequence[Tokenizer]):
        if len(tokenizers) < 1:
            raise TokenizerError("views: need at least one tokenizer")
        if any(isinstance(t, ViewTokenizer) for t in tokenizers):
            raise TokenizerError("views: a view cannot itself be a set of views")
        self.tokenizers = list(tokenizers)
        self.id_offsets = np.cumsum([0] + [t.vocab_size - NUM_SPECIAL for t in self.tokenizers[:-1]]).tolist()
        vocab = list(SPECIAL_TOKENS)
        for v, t in enumerate(self.tokenizers):
            vocab += [f"{v}:{token}" for token in t.vocab[NUM_SPECIAL:]]
        super().__init__(vocab)

    @property
    def name(self) -> str:
        return "+".join(t.name for t in self.tokenizers)

    def config(self) -> dict:
        return {"views": [{"kind": t.kind, "fingerprint": t.fingerprint} for t in self.tokenizers]}

    def _files(self) -> dict[str, bytes]:
        files = {}
        for v, t in enumerate(self.tokenizers):
            meta = {
                "kind": t.kind,
                "name": t.name,
                "fingerprint": t.fingerprint,
                "config": t.config(),
                "vocab": t.vocab,
            }
            files[f"view{v}/{CONFIG_FILE}"] = json.dumps(meta, indent=1).encode()
            files.update({f"view{v}/{name}": data for name, data in t._files().items()})
        return files

    def _side_files(self) -> dict[str, bytes]:
        return {
            f"view{v}/{name}": data for v, t in enumerate(self.tokenizers) for name, data in t._side_files().items()
        }

    def encode(self, bases) -> ViewEncoding:
        parts = [t.encode(bases) for t in self.tokenizers]
        ids, segment_ids, positions = concatenate_views(
            [p.ids for p in parts], [p.offsets for p in parts], self.id_offsets
        )
        n_bases = int(parts[0].offsets[-1, 1]) if len(parts[0]) else 0
        edge = [[0, 0]], [[n_bases, n_bases]]
        offsets = np.concatenate([edge[0], *(x for p in parts for x in (p.offsets, edge[1]))]).astype(np.int64)
        return ViewEncoding(ids=ids, offsets=offsets, segment_ids=segment_ids, positions=positions)

    def split(self, ids) -> list[np.ndarray]:
        """Concatenated ids → each view's own ids (specials dropped)."""
        ids = check_ids(ids, self.vocab_size)
        bounds = self.id_offsets + [self.vocab_size - NUM_SPECIAL]
        out = []
        for v, _t in enumerate(self.tokenizers):
            mine = ids[(ids >= NUM_SPECIAL + bounds[v]) & (ids < NUM_SPECIAL + bounds[v + 1])]
            out.append(mine - self.id_offsets[v])
        return out

    def decode(self, ids) -> str:
        """The bases; every view present must agree on them."""
        decoded = [t.decode(view_ids) for t, view_ids in zip(self.tokenizers, self.split(ids)) if len(view_ids)]
        if any(d != decoded[0] for d in decoded[1:]):
            raise TokenizerError("views: the views decode to different bases")
        return decoded[0] if decoded else ""

    @classmethod
    def from_saved(cls, folder: Path, meta: dict) -> ViewTokenizer:
        from dnalm.tokenizers import load_folder

        return cls([load_folder(folder / f"view{v}") for v in range(len(meta["config"]["views"]))])
