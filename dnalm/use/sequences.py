"""Named DNA sequences to run a model on, from FASTA records, BED regions of a genome or a CSV.

Every reader validates as it goes and names the file and line of what it refuses: a BED line
with too few columns, a start after its end, an unknown contig, an interval past a contig's end,
a strand other than +, - or .; a CSV without a ``sequence`` column, an empty sequence, a letter
that is not A, C, G, T or N. Regions on the minus strand are reverse-complemented.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from dnalm import genome as genome_io
from dnalm.utils.errors import DnalmError

_DNA = re.compile(r"[ACGTNacgtn]*")
_COMPLEMENT = bytes.maketrans(b"ACGTNacgtn", b"TGCANtgcan")


class SequenceInputError(DnalmError):
    """An input line that cannot be read, with its file and line."""


@dataclass(frozen=True)
class Named:
    name: str
    sequence: str
    strand: str = "+"
    label: str = ""


def reverse_complement(sequence: str) -> str:
    return sequence.translate(_COMPLEMENT)[::-1]


def from_fasta(path: str | Path) -> list[Named]:
    return [Named(c.name, c.sequence) for c in genome_io.iter_contigs(genome_io.check_path(path))]


def from_bed(bed: str | Path, genome: str | Path) -> list[Named]:
    bed, indexed = Path(bed), genome_io.IndexedGenome(genome)
    if not bed.is_file():
        raise SequenceInputError(f"{bed}: no such BED file")
    out = []
    for number, line in enumerate(bed.read_text().splitlines(), 1):
        if not line.strip() or line.startswith(("#", "track", "browser")):
            continue
        where = f"{bed}:{number}"
        fields = line.rstrip("\n").split("\t")
        if len(fields) < 3:
            raise SequenceInputError(
                f"{where}: a BED line needs chrom, start and end separated by tabs, got {line[:60]!r}"
            )
        chrom, start, end = fields[0], fields[1], fields[2]
        if not (start.isdigit() and end.isdigit()) or int(start) >= int(end):
            raise SequenceInputError(f"{where}: start {start!r} and end {end!r} must be integers with start < end")
        if chrom not in indexed.lengths:
            raise SequenceInputError(f"{where}: contig {chrom!r} is not in {indexed.path}")
        if int(end) > indexed.lengths[chrom]:
            raise SequenceInputError(f"{where}: end {end} is past the end of {chrom} ({indexed.lengths[chrom]:,} bp)")
        strand = fields[5] if len(fields) > 5 else "."
        if strand not in ("+", "-", "."):
            raise SequenceInputError(f"{where}: strand {strand!r} is not +, - or .")
        name = fields[3] if len(fields) > 3 and fields[3] else f"{chrom}:{start}-{end}"
        sequence = indexed.fetch(chrom, int(start), int(end)).sequence
        out.append(
            Named(name, reverse_complement(sequence) if strand == "-" else sequence, "-" if strand == "-" else "+")
        )
    return out


def from_csv(path: str | Path) -> list[Named]:
    """A ``sequence`` column (and optional ``name`` and ``label``), comma- or tab-separated by the file's suffix."""
    path = Path(path)
    if not path.is_file():
        raise SequenceInputError(f"{path}: no such file")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t" if path.suffix == ".tsv" else ",")
        if not reader.fieldnames or "sequence" not in reader.fieldnames:
            raise SequenceInputError(f"{path}:1: the header needs a 'sequence' column, got {reader.fieldnames}")
        out: list[Named] = []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            sequence = (row.get("sequence") or "").strip()
            if not sequence:
                raise SequenceInputError(f"{where}: empty sequence")
            if not _DNA.fullmatch(sequence):
                bad = next(ch for ch in sequence if ch not in "ACGTNacgtn")
                raise SequenceInputError(f"{where}: {bad!r} is not one of A, C, G, T, N")
            out.append(Named(row.get("name") or f"row{len(out) + 1}", sequence, label=row.get("label") or ""))
    return out
