"""Labelled sequence sets: ``sequence,label`` rows (CSV, or TSV when the header has a tab), as GUE lays them out.

Read by fine-tuning (``dnalm.eval.finetune``) and by the trainer's linear probes (``dnalm.train.probes``), so it
lives below both.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dnalm.utils.errors import DnalmError

_BASES = set("ACGTNacgtn")


class LabelledDataError(DnalmError):
    """A labelled CSV/TSV that cannot be used, with file and line."""


@dataclass
class LabelledSet:
    path: Path
    sequences: list[str]
    labels: np.ndarray
    classes: list[str]


def read_labelled(path: str | Path, classes: list[str] | None = None) -> LabelledSet:
    """``sequence,label`` rows (CSV, or TSV when the header has a tab); ``classes`` from the training set."""
    path = Path(path)
    if not path.is_file():
        raise LabelledDataError(f"{path}: no such file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            text = fh.read()
    except UnicodeDecodeError:
        from dnalm.utils.files import binary_kind

        raise LabelledDataError(
            f"{path}: {binary_kind(path)}, not a CSV/TSV of sequence,label rows (uncompressed text)"
        ) from None
    if not text.strip():
        raise LabelledDataError(f"{path}: file is empty")
    delimiter = "\t" if "\t" in text.splitlines()[0] else ","
    rows = list(csv.reader(text.splitlines(), delimiter=delimiter))
    header = [h.strip().lower() for h in rows[0]]
    if "sequence" not in header or "label" not in header:
        raise LabelledDataError(f"{path}: line 1: header must name the columns 'sequence' and 'label', got {rows[0]}")
    seq_col, label_col = header.index("sequence"), header.index("label")
    sequences, labels = [], []
    for line, row in enumerate(rows[1:], start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(seq_col, label_col) or not row[label_col].strip():
            raise LabelledDataError(f"{path}: line {line}: missing label")
        sequence, label = row[seq_col].strip(), row[label_col].strip()
        if not sequence:
            raise LabelledDataError(f"{path}: line {line}: empty sequence")
        bad = next((ch for ch in sequence if ch not in _BASES), None)
        if bad is not None:
            raise LabelledDataError(f"{path}: line {line}: {bad!r} is not a DNA letter (A, C, G, T, N)")
        if classes is not None and label not in classes:
            raise LabelledDataError(
                f"{path}: line {line}: unknown label {label!r} (training labels: {', '.join(classes)})"
            )
        sequences.append(sequence.upper())
        labels.append(label)
    if not sequences:
        raise LabelledDataError(f"{path}: no rows after the header")
    if classes is None:
        classes = sorted(set(labels), key=lambda c: (len(c), c))
        if len(classes) < 2:
            raise LabelledDataError(
                f"{path}: every row has label {classes[0]!r}; a classifier needs at least two classes"
            )
    index = {c: i for i, c in enumerate(classes)}
    return LabelledSet(path, sequences, np.array([index[label] for label in labels], np.int64), classes)
