"""Byte-pair encoding of DNA, trained with sentencepiece from genomes in bounded memory.

Training never feeds a genome whole (sentencepiece needs ~44 bytes of memory per training
base): it samples fixed-length chunks from every contig, in proportion to contig length and
with a generator seeded by the contig's name, so the vocabulary depends neither on file
order nor on which contigs happen to come first. Chunks never span two contigs, chunks that
are mostly N are never drawn, and the N inside a chunk is cut out (N is its own token at
encode time, never merged).

Encoding cuts every A/C/G/T run into sentences of ``sentence_length`` bases counted from the
run's start (sentencepiece slows down on megabase strings), so a contig always tokenizes the
same way, and each N becomes the ``N`` token.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from dnalm import genome as genome_io
from dnalm.tokenizers.base import (
    N_CODE,
    NUM_SPECIAL,
    SPECIAL_TOKENS,
    UNK_ID,
    Encoding,
    Tokenizer,
    base_codes,
    check_ids,
)
from dnalm.utils.errors import TokenizerError, validated
from dnalm.utils.memory import peak_rss_bytes

MODEL_FILE = "bpe.model"
REPORT_FILE = "training_report.json"
N_ID = NUM_SPECIAL
# Measured on chr20 corpora of 5-20 Mb (sentencepiece 0.2.x, 1-4 threads): 40-44 bytes a base plus ~60 MB,
# and the same corpus peaks up to ~90 MB apart from run to run.
BYTES_PER_TRAINING_BASE = 50
PROCESS_ALLOWANCE_BYTES = 384 << 20  # Python, numpy, torch (~230-290 MB in the CLI) and sentencepiece's fixed part
MIN_SUB_SENTENCE = 8
MIB = 1 << 20


class BpeTokenizer(Tokenizer):
    kind = "bpe"

    def __init__(self, model: bytes, sentence_length: int = 4096, training_report: dict | None = None):
        import sentencepiece as spm

        self.model = model
        self.sentence_length = sentence_length
        self.training_report = training_report
        self._sp = spm.SentencePieceProcessor(model_proto=model)
        pieces = [self._sp.id_to_piece(i) for i in range(self._sp.get_piece_size())]
        if self._sp.unk_id() != 0 or any("▁" in p for p in pieces):
            raise TokenizerError("bpe: not a dnalm DNA model (expected <unk> at id 0 and no whitespace pieces)")
        super().__init__(list(SPECIAL_TOKENS) + ["N"] + pieces[1:])
        self._sp_to_id = np.arange(len(pieces), dtype=np.int32) + N_ID
        self._sp_to_id[0] = UNK_ID
        self._width = np.array([len(p) for p in pieces], np.int64)

    @property
    def name(self) -> str:
        return f"bpe:{self.vocab_size}"

    def config(self) -> dict:
        return {"sentence_length": self.sentence_length}

    def _files(self) -> dict[str, bytes]:
        return {MODEL_FILE: self.model}

    def _side_files(self) -> dict[str, bytes]:
        return {REPORT_FILE: json.dumps(self.training_report, indent=1).encode()} if self.training_report else {}

    def encode(self, bases) -> Encoding:
        codes = base_codes(bases)
        text = _LETTERS[codes].tobytes().decode("ascii")
        items = _sentences(codes == N_CODE, self.sentence_length)
        encoded = iter(self._sp.encode([text[s:e] for is_n, s, e in items if not is_n], num_threads=1))
        ids, widths = [], []
        for is_n, start, end in items:
            if is_n:
                ids.append(np.full(end - start, N_ID, np.int32))
                widths.append(np.ones(end - start, np.int64))
            else:
                sp_ids = np.asarray(next(encoded), np.int64)
                if (sp_ids == 0).any():
                    raise TokenizerError(f"bpe: bases {start}-{end} hold a letter the model never saw in training")
                ids.append(self._sp_to_id[sp_ids])
                widths.append(self._width[sp_ids])
        if not ids:
            return Encoding(np.zeros(0, np.int32), np.zeros((0, 2), np.int64))
        width = np.concatenate(widths)
        ends = np.cumsum(width)
        return Encoding(np.concatenate(ids), np.stack([ends - width, ends], axis=1))

    def decode(self, ids) -> str:
        ids = check_ids(ids, self.vocab_size)
        return "".join(self.vocab[i] for i in ids[ids >= NUM_SPECIAL].tolist())

    @classmethod
    def from_saved(cls, folder: Path, meta: dict) -> BpeTokenizer:
        model_path = folder / MODEL_FILE
        if not model_path.is_file():
            raise TokenizerError(f"{folder}: missing {MODEL_FILE}")
        report_path = folder / REPORT_FILE
        report = json.loads(report_path.read_text()) if report_path.is_file() else None
        return cls(model_path.read_bytes(), training_report=report, **meta["config"])


_LETTERS = np.frombuffer(b"ACGTN", np.uint8)


def _sentences(is_n: np.ndarray, length: int) -> list[tuple[bool, int, int]]:
    """(is_n, start, end) in order: N runs whole, A/C/G/T runs cut every ``length`` bases from their start."""
    edges = np.flatnonzero(np.diff(is_n.view(np.int8))) + 1
    bounds = np.concatenate(([0], edges, [len(is_n)])).tolist()
    items = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end <= start:
            continue
        if is_n[start]:
            items.append((True, start, end))
        else:
            items.extend((False, s, min(s + length, end)) for s in range(start, end, length))
    return items


class BpeTrainingConfig(BaseModel):
    """The settings of one BPE training run (validated; saved in the training report)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: int = Field(4096, ge=16, le=1_000_000, description="total, including the five specials and N")
    max_memory_gb: float = Field(4.0, gt=0, description="peak memory of the training process")
    sentence_length: int = Field(4096, ge=64, le=1_000_000, description="bases per training chunk and encoded sentence")
    max_n_fraction: float = Field(0.5, ge=0, le=1, description="chunks with more N than this are never drawn")
    seed: int = Field(0, description="seed of the chunk sampling")

    @classmethod
    def checked(cls, **values) -> BpeTrainingConfig:
        return validated(cls, values, TokenizerError, "bpe")


@dataclass
class _Sample:
    contigs: list[dict] = field(default_factory=list)
    sentences: int = 0
    bases: int = 0


def train_bpe(
    genomes: Iterable[str | os.PathLike],
    vocab_size: int,
    max_memory_gb: float,
    *,
    sentence_length: int = 4096,
    max_n_fraction: float = 0.5,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = False,
) -> BpeTokenizer:
    """Train a BPE tokenizer on chunks sampled from ``genomes`` so that peak memory stays under the budget."""
    import sentencepiece as spm

    settings = BpeTrainingConfig.checked(
        vocab_size=vocab_size,
        max_memory_gb=max_memory_gb,
        sentence_length=sentence_length,
        max_n_fraction=max_n_fraction,
        seed=seed,
    )
    genomes = [genome_io.check_path(p) for p in genomes]
    lengths = {str(p): genome_io.contig_lengths(p) for p in genomes}
    total = sum(sum(per.values()) for per in lengths.values())
    budget = _training_bases(max_memory_gb, max(max(per.values()) for per in lengths.values()))
    fraction = min(1.0, budget / max(1, total))
    with tempfile.TemporaryDirectory(prefix="dnalm-bpe-") as tmp:
        corpus = Path(tmp) / "corpus.txt"
        sample = _write_corpus(genomes, lengths, fraction, sentence_length, max_n_fraction, seed, corpus, progress)
        if sample.sentences == 0:
            raise TokenizerError(
                "bpe: no training chunk could be drawn (every contig shorter than a few bases or mostly N)"
            )
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                input=str(corpus),
                model_writer=model,
                vocab_size=vocab_size - NUM_SPECIAL,
                model_type="bpe",
                character_coverage=1.0,
                max_sentence_length=sentence_length + 16,
                input_sentence_size=0,
                add_dummy_prefix=False,
                remove_extra_whitespaces=False,
                normalization_rule_name="identity",
                split_by_whitespace=False,
                bos_id=-1,
                eos_id=-1,
                pad_id=-1,
                unk_id=0,
                minloglevel=2,
                num_threads=threads or min(4, os.cpu_count() or 1),
            )
        except RuntimeError as exc:
            raise TokenizerError(
                f"bpe: sentencepiece could not train on {sample.bases:,} sampled bases: {exc}"
            ) from None
    report = {
        "genomes": [str(p) for p in genomes],
        "settings": settings.model_dump(),
        "total_bases": total,
        "sampled_bases": sample.bases,
        "sampled_sentences": sample.sentences,
        "peak_rss_mb": round(peak_rss_bytes() / MIB, 1),
        "contigs": sample.contigs,
    }
    return BpeTokenizer(_without_machine_details(model.getvalue()), sentence_length, report)


def _without_machine_details(model: bytes) -> bytes:
    """Drop the temporary corpus path and thread count sentencepiece records, so equal training gives equal bytes."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]  # protobuf builds it at import
    proto.ParseFromString(model)
    del proto.trainer_spec.input[:]
    proto.trainer_spec.ClearField("num_threads")
    return proto.SerializeToString()


def _training_bases(max_memory_gb: float, longest_contig: int) -> int:
    """Bases sentencepiece may see: the budget less a fixed allowance for the process, ~50 bytes a base.

    The allowance is a constant, not this process's measured memory, so the same genomes and settings
    always sample the same chunks. Only a process that already holds more than the allowance (a
    library caller) gets fewer bases, by what it holds beyond it.
    """
    budget = max_memory_gb * 1024 * MIB
    held = max(PROCESS_ALLOWANCE_BYTES, peak_rss_bytes() + 64 * MIB)
    streaming = peak_rss_bytes() + 3 * longest_contig + 4 * genome_io.BLOCK_BYTES
    if streaming > budget:
        raise TokenizerError(
            f"bpe: --max-memory-gb {max_memory_gb} is too small: streaming the longest contig "
            f"({longest_contig:,} bp) needs ~{streaming / 1024**3:.2f} GB"
        )
    bases = int((budget - held) / BYTES_PER_TRAINING_BASE)
    if bases < 100_000:
        raise TokenizerError(f"bpe: --max-memory-gb {max_memory_gb} leaves room for only {bases:,} training bases")
    return bases


def _write_corpus(genomes, lengths, fraction, sentence_length, max_n_fraction, seed, corpus: Path, progress) -> _Sample:
    sample = _Sample()
    with open(corpus, "w") as out:
        for path in genomes:
            for contig in genome_io.iter_contigs(path, progress=progress):
                starts = _chunk_starts(contig, fraction, sentence_length, max_n_fraction, seed)
                bases = 0
                for start in starts.tolist():
                    chunk = contig.bases[start : start + sentence_length].tobytes()
                    for piece in chunk.split(b"N"):
                        if len(piece) >= MIN_SUB_SENTENCE:
                            out.write(piece.decode("ascii"))
                            out.write("\n")
                            bases += len(piece)
                            sample.sentences += 1
                sample.bases += bases
                sample.contigs.append(
                    {
                        "genome": str(path),
                        "contig": contig.name,
                        "length": len(contig),
                        "chunks": len(starts),
                        "sampled_bases": bases,
                    }
                )
    return sample


def _chunk_starts(contig, fraction: float, length: int, max_n_fraction: float, seed: int) -> np.ndarray:
    """Starts of non-overlapping chunks, drawn from the contig's slots that are not mostly N."""
    slots = max(1, len(contig) // length)
    slot_length = min(length, len(contig))
    grid = contig.bases[: slots * slot_length].reshape(slots, slot_length)
    n_fraction = np.count_nonzero(grid == ord("N"), axis=1) / slot_length
    good = np.flatnonzero(n_fraction <= max_n_fraction)
    wanted = min(len(good), int(np.ceil(fraction * len(contig) / length)))
    rng = np.random.default_rng([seed, zlib.crc32(contig.name.encode())])
    chosen = np.sort(rng.choice(good, size=wanted, replace=False)) if wanted else good[:0]
    return chosen * slot_length
