"""dnalm tokenizers as ``tokenizers``/``transformers`` fast tokenizers, loadable with no dnalm installed.

Each tokenizer is rebuilt from the rules ``dnalm.tokenizers`` follows, so ``AutoTokenizer`` gives
dnalm's ids on any A/C/G/T/N text, either case:

- every layout first uppercases a, c, g, t, n;
- nucleotide and non-overlapping k-mers: one regex, ``[ACGT]{k}|.``, read left to right, cuts
  each A/C/G/T run into k-mers from its start and leaves the tail and every N as single letters
  (nucleotide is k = 1), and a word-level vocabulary maps them to ids;
- BPE: every N is split off, each A/C/G/T run is cut into sentences of ``sentence_length``
  bases from its start, and a BPE model holding sentencepiece's pieces and merges (ranked by
  the merged piece's id, as sentencepiece ranks them) encodes each sentence.

No special tokens are added (dnalm's single-view windows carry none). Letters that are not a
base become ``[UNK]``, where dnalm's own tokenizers refuse them. Overlapping k-mers and multi-view
inputs have no equivalent here and are refused with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

from dnalm.tokenizers import BpeTokenizer, KmerTokenizer, NucleotideTokenizer, Tokenizer
from dnalm.tokenizers.base import NUM_SPECIAL, SPECIAL_TOKENS
from dnalm.utils.errors import DnalmError

SPECIALS = dict(zip(("pad_token", "cls_token", "sep_token", "mask_token", "unk_token"), SPECIAL_TOKENS))


class NoHfTokenizer(DnalmError):
    """A dnalm tokenizer that no single ``transformers`` tokenizer reproduces."""


def _uppercase():
    from tokenizers import normalizers

    return normalizers.Sequence([normalizers.Replace(letter, letter.upper()) for letter in "acgtn"])


def _word_level(tokenizer: Tokenizer, k: int):
    from tokenizers import Regex, models, pre_tokenizers
    from tokenizers import Tokenizer as FastTokenizer

    fast = FastTokenizer(models.WordLevel({token: i for i, token in enumerate(tokenizer.vocab)}, unk_token="[UNK]"))
    fast.normalizer = _uppercase()
    fast.pre_tokenizer = pre_tokenizers.Split(Regex(f"[ACGT]{{{k}}}|." if k > 1 else "."), behavior="isolated")
    return fast


def _bpe(tokenizer: BpeTokenizer):
    from tokenizers import Regex, models, pre_tokenizers
    from tokenizers import Tokenizer as FastTokenizer

    vocab = {token: i for i, token in enumerate(tokenizer.vocab)}
    pieces = tokenizer.vocab[NUM_SPECIAL + 1 :]  # after the specials and N, in sentencepiece's id order
    merges = []
    for piece in pieces:
        splits = [(piece[:i], piece[i:]) for i in range(1, len(piece)) if piece[:i] in vocab and piece[i:] in vocab]
        merges.extend(sorted(splits, key=lambda pair: (vocab[pair[0]], vocab[pair[1]])))
    fast = FastTokenizer(models.BPE(vocab, merges, unk_token="[UNK]"))
    fast.normalizer = _uppercase()
    fast.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("N", behavior="isolated"),
            pre_tokenizers.Split(Regex(f"[ACGT]{{1,{tokenizer.sentence_length}}}"), behavior="isolated"),
        ]
    )
    return fast


def fast_tokenizer(tokenizer: Tokenizer):
    """The ``tokenizers.Tokenizer`` that gives ``tokenizer``'s ids."""
    if isinstance(tokenizer, NucleotideTokenizer):
        return _word_level(tokenizer, 1)
    if isinstance(tokenizer, KmerTokenizer) and not tokenizer.overlapping:
        return _word_level(tokenizer, tokenizer.k)
    if isinstance(tokenizer, BpeTokenizer):
        return _bpe(tokenizer)
    raise NoHfTokenizer(
        f"{tokenizer.name}: no transformers tokenizer reproduces it (overlapping k-mers and multi-view inputs "
        "depend on context a word-level or BPE tokenizer cannot see); encode with dnalm.tokenizers"
    )


def save_hf_tokenizer(tokenizer: Tokenizer, folder: Path, model_max_length: int) -> None:
    """``tokenizer.json`` and ``tokenizer_config.json`` that ``AutoTokenizer.from_pretrained(folder)`` loads."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=fast_tokenizer(tokenizer), model_max_length=model_max_length, **SPECIALS
    )
    hf.save_pretrained(folder)
    # transformers 5 names the class TokenizersBackend; the older name loads in 4.x and 5.x alike
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2))
