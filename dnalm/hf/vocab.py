"""A ``transformers`` folder's tokenizer → a dnalm tokenizer, and which of the model's rows each dnalm id takes.

In order: ``--tokenizer SPEC|DIR`` (ids kept: its vocabulary size must be the model's), the
``dnalm_tokenizer/`` that dnalm's own exports carry (ids kept), then the folder's ``tokenizer.json``
(word-level) or ``vocab.txt`` (ESM's, as Nucleotide Transformer's 6-mers). A vocabulary of single
bases becomes ``nucleotide``; one of every k-mer of one k (and single bases), ``kmer:k``. dnalm's ids
0–4 are its specials in every tokenizer, so a mapped vocabulary is reordered: each dnalm id takes the
embedding and output rows of the same token (its special by role: pad, cls or bos, sep or eos, mask,
unk), and tokens dnalm has no use for (``<bos>`` beside ``<cls>``, say) are dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dnalm.tokenizers import KmerTokenizer, NucleotideTokenizer, Tokenizer, load, load_folder
from dnalm.tokenizers.base import SPECIAL_TOKENS
from dnalm.utils.errors import DnalmError

ROLES = {
    "[PAD]": ("pad_token",),
    "[CLS]": ("cls_token", "bos_token"),
    "[SEP]": ("sep_token", "eos_token"),
    "[MASK]": ("mask_token",),
    "[UNK]": ("unk_token",),
}
DEFAULT_SPECIALS = {
    "pad_token": ("[PAD]", "<pad>"),
    "cls_token": ("[CLS]", "<cls>", "<s>"),
    "bos_token": ("<bos>",),
    "sep_token": ("[SEP]", "<sep>"),
    "eos_token": ("<eos>", "</s>"),
    "mask_token": ("[MASK]", "<mask>"),
    "unk_token": ("[UNK]", "<unk>"),
}


class HfVocabError(DnalmError):
    """A tokenizer that dnalm cannot map, with the file and the reason."""


@dataclass
class Mapped:
    tokenizer: Tokenizer
    rows: list[int] | None  # dnalm id → the model's row; None: the ids are the model's
    source: str


def from_folder(folder: Path, vocab_size: int, spec: str | None = None) -> Mapped:
    if spec is not None:
        return _kept(load(spec), vocab_size, f"--tokenizer {spec}")
    if (folder / "dnalm_tokenizer").is_dir():
        return _kept(load_folder(folder / "dnalm_tokenizer"), vocab_size, f"{folder}/dnalm_tokenizer")
    if (folder / "tokenizer.json").is_file():
        vocab, where = _fast_vocab(folder / "tokenizer.json"), folder / "tokenizer.json"
    elif (folder / "vocab.txt").is_file():
        lines = (folder / "vocab.txt").read_text().splitlines()
        vocab, where = {token.strip(): i for i, token in enumerate(lines) if token.strip()}, folder / "vocab.txt"
    else:
        raise HfVocabError(
            f"{folder}: no tokenizer files (tokenizer.json, vocab.txt or dnalm_tokenizer/); pass "
            f"--tokenizer SPEC|DIR, a dnalm tokenizer of the model's {vocab_size} ids"
        )
    if max(vocab.values()) >= vocab_size:
        raise HfVocabError(f"{where}: token id {max(vocab.values())} is beyond config.json's vocab_size {vocab_size}")
    return _mapped(vocab, _specials(folder, vocab), where)


def _kept(tokenizer: Tokenizer, vocab_size: int, where: str) -> Mapped:
    if tokenizer.vocab_size != vocab_size:
        raise HfVocabError(
            f"{where}: {tokenizer.name} has {tokenizer.vocab_size} ids, config.json's vocab_size is "
            f"{vocab_size}; the ids are kept as they are, so the two must be equal"
        )
    return Mapped(tokenizer, None, where)


def _fast_vocab(path: Path) -> dict[str, int]:
    try:
        model = json.loads(path.read_text())["model"]
    except (ValueError, KeyError) as exc:
        raise HfVocabError(f"{path}: not a tokenizers file ({exc})") from None
    kind = model.get("type")
    if kind not in ("WordLevel", "WordPiece"):
        raise HfVocabError(
            f"{path}: a {kind} tokenizer, which dnalm cannot map to its own (it maps word-level "
            "vocabularies of single bases or k-mers); pass --tokenizer SPEC|DIR"
        )
    return dict(model["vocab"])


def _specials(folder: Path, vocab: dict[str, int]) -> dict[str, int]:
    """role (pad_token, …) → id, from the folder's tokenizer configs, else the usual names."""
    named: dict[str, int] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (folder / name).is_file():
            for role, value in json.loads((folder / name).read_text()).items():
                content = value.get("content") if isinstance(value, dict) else value
                if role in DEFAULT_SPECIALS and isinstance(content, str) and content in vocab:
                    named.setdefault(role, vocab[content])
    for role, names in DEFAULT_SPECIALS.items():
        found = [vocab[n] for n in names if n in vocab]
        if role not in named and found:
            named[role] = found[0]
    return named


def _mapped(vocab: dict[str, int], specials: dict[str, int], where: Path) -> Mapped:
    special_ids = set(specials.values())
    plain = {token.upper(): i for token, i in vocab.items() if i not in special_ids}
    odd = [t for t in plain if not set(t) <= set("ACGTN") or (len(t) > 1 and "N" in t)]
    if odd:
        raise HfVocabError(
            f"{where}: token {odd[0]!r} is not a base, a k-mer of A/C/G/T or a special token dnalm knows"
        )
    lengths = sorted({len(t) for t in plain if len(t) > 1})
    if not lengths:
        tokenizer: Tokenizer = NucleotideTokenizer()
    elif len(lengths) == 1 and sum(len(t) == lengths[0] for t in plain) == 4 ** lengths[0]:
        tokenizer = KmerTokenizer(lengths[0])
    else:
        raise HfVocabError(
            f"{where}: tokens of {', '.join(map(str, lengths))} bases are not every k-mer of one k; "
            "dnalm maps single-base and k-mer vocabularies (pass --tokenizer SPEC|DIR otherwise)"
        )
    rows = []
    for token in tokenizer.vocab:
        if token in SPECIAL_TOKENS:
            row = next((specials[r] for r in ROLES[token] if r in specials), specials.get("unk_token"))
        else:
            row = plain.get(token, specials.get("unk_token"))
        if row is None:
            raise HfVocabError(f"{where}: no token for dnalm's {token} and no unknown token to stand for it")
        rows.append(row)
    return Mapped(tokenizer, rows, str(where))
