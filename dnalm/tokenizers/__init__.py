"""Tokenizers: bases → ids with the base span of every token.

``load(spec)`` takes a name (``nucleotide``, ``kmer:6``, ``kmer:6:1``), a saved folder
(``bpe:PATH`` or just ``PATH``), or several joined by ``+`` for concatenated views
(``nucleotide+kmer:6``).
"""

from __future__ import annotations

import json
from pathlib import Path

from dnalm.tokenizers.base import (
    CLS_ID,
    CONFIG_FILE,
    MASK_ID,
    NUM_SPECIAL,
    PAD_ID,
    SEP_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    Encoding,
    Tokenizer,
)
from dnalm.tokenizers.bpe import BpeTokenizer, train_bpe
from dnalm.tokenizers.kmer import KmerTokenizer
from dnalm.tokenizers.nucleotide import NucleotideTokenizer
from dnalm.tokenizers.views import ViewEncoding, ViewTokenizer
from dnalm.utils.errors import TokenizerError

KINDS: dict[str, type[Tokenizer]] = {
    cls.kind: cls for cls in (NucleotideTokenizer, KmerTokenizer, BpeTokenizer, ViewTokenizer)
}


def _kmer(*args: str) -> KmerTokenizer:
    try:
        numbers = [int(a) for a in args]
    except ValueError:
        raise TokenizerError(
            f"kmer: expected kmer:K or kmer:K:STRIDE with integers, got kmer:{':'.join(args)}"
        ) from None
    if not 1 <= len(numbers) <= 2:
        raise TokenizerError("kmer: expected kmer:K or kmer:K:STRIDE")
    return KmerTokenizer(*numbers)


def _nucleotide(*args: str) -> NucleotideTokenizer:
    if args:
        raise TokenizerError("nucleotide takes no arguments")
    return NucleotideTokenizer()


def _bpe(*args: str) -> Tokenizer:
    if not args:
        raise TokenizerError("bpe: expected bpe:PATH to a folder made by `dnalm tokenizer train-bpe`")
    tokenizer = load_folder(Path(":".join(args)))
    if not isinstance(tokenizer, BpeTokenizer):
        raise TokenizerError(f"bpe:{':'.join(args)} holds a {tokenizer.kind} tokenizer, not bpe")
    return tokenizer


SPECS = {"nucleotide": _nucleotide, "char": _nucleotide, "kmer": _kmer, "bpe": _bpe}


def load(spec: str | Path) -> Tokenizer:
    """A tokenizer from a spec or a saved folder (see the module docstring)."""
    text = str(spec).strip()
    if "+" in text and not Path(text).exists():
        return ViewTokenizer([load(part) for part in text.split("+")])
    if Path(text).is_dir():
        return load_folder(Path(text))
    name, *args = text.split(":")
    if name not in SPECS:
        raise TokenizerError(
            f"unknown tokenizer '{text}': use one of nucleotide, kmer:K[:STRIDE], bpe:PATH, or a saved folder"
        )
    return SPECS[name](*args)


def load_many(specs: str) -> list[Tokenizer]:
    """Comma-separated specs (``nucleotide,kmer:6,bpe:PATH``) → tokenizers."""
    return [load(s) for s in specs.split(",") if s.strip()]


def load_folder(folder: Path) -> Tokenizer:
    meta_path = folder / CONFIG_FILE
    if not meta_path.is_file():
        raise TokenizerError(f"{folder}: no {CONFIG_FILE}; not a saved tokenizer folder")
    try:
        meta = json.loads(meta_path.read_text())
        cls = KINDS[meta["kind"]]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise TokenizerError(f"{meta_path}: unreadable tokenizer description ({exc})") from None
    tokenizer = cls.from_saved(folder, meta)
    if meta.get("fingerprint") not in (None, tokenizer.fingerprint):
        raise TokenizerError(
            f"{folder}: fingerprint {tokenizer.fingerprint} does not match the saved {meta['fingerprint']} (files "
            "changed?)"
        )
    return tokenizer


__all__ = [
    "BpeTokenizer",
    "CLS_ID",
    "Encoding",
    "KINDS",
    "KmerTokenizer",
    "MASK_ID",
    "NUM_SPECIAL",
    "NucleotideTokenizer",
    "PAD_ID",
    "SEP_ID",
    "SPECIAL_TOKENS",
    "Tokenizer",
    "UNK_ID",
    "ViewEncoding",
    "ViewTokenizer",
    "load",
    "load_folder",
    "load_many",
    "train_bpe",
]
