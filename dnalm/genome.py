"""FASTA reading: validated, normalised contigs from plain, gzip or bgzip files.

Whole-genome passes go through a streaming parser that works on 16 MB blocks with numpy
lookup tables (no Python loop per base). Random access by contig and interval goes through
pyfaidx where the file allows it (uncompressed or bgzip with uniform line widths) and falls
back to an in-memory parse otherwise (plain gzip, varying line widths, unwritable index).

Normalisation: bases are uppercase A, C, G, T, N; lowercase (soft-masked) letters set a
boolean track kept alongside; IUPAC ambiguity codes become N and are counted; U is an
error unless ``convert_u`` is set; anything else is an error naming file, record and line.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import BinaryIO

import numpy as np

from dnalm.utils.errors import GenomeError

DEFAULT_GENOME = Path(str(resources.files("dnalm") / "assets" / "genomes" / "ecoli_k12_mg1655.fa.gz"))
DEFAULT_MIN_N_RUN = 100
BLOCK_BYTES = 1 << 24
FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".fas")

_AMBIGUITY = b"RYKMSWBDHV"
_PROTEIN_ONLY = "EFILPQJOZX*"


class GenomeWarning(UserWarning):
    """Something skipped while reading (a record with no sequence)."""


_WHITESPACE = b" \t\r\n"


def _tables(convert_u: bool) -> tuple[bytes, bytes]:
    """bytes.translate tables: byte → uppercase base (0 for an invalid byte), byte → 1 if soft-masked."""
    base = bytearray(256)
    lower = bytearray(256)
    letters = {c: c for c in b"ACGTN"} | {c: ord("N") for c in _AMBIGUITY}
    if convert_u:
        letters[ord("U")] = ord("T")
    for upper, out in letters.items():
        base[upper] = base[upper + 32] = out
        lower[upper + 32] = 1
    return bytes(base), bytes(lower)


_TABLES = {flag: _tables(flag) for flag in (False, True)}


SOFTMASK_MAX_FRACTION = 0.9  # more lowercase than this is a lowercase file, not a repeat annotation


def softmask_status(fraction: float) -> str:
    """What a genome's lowercase share means: "repeats" (a soft-mask prep carries into the shards), "none", or
    "not soft-masked" (lowercase throughout or nearly: read as unmasked)."""
    if fraction == 0:
        return "none"
    return "repeats" if fraction <= SOFTMASK_MAX_FRACTION else "not soft-masked"


@dataclass
class Contig:
    """One FASTA record: uppercase ASCII bases (uint8) and the soft-mask track beside them."""

    name: str
    bases: np.ndarray
    softmask: np.ndarray
    ambiguous: int = 0
    line: int = 0

    def __len__(self) -> int:
        return len(self.bases)

    @property
    def sequence(self) -> str:
        return self.bases.tobytes().decode("ascii")

    def n_runs(self, min_length: int = 1) -> np.ndarray:
        """Runs of N as an (r, 2) array of [start, end), keeping runs of at least ``min_length``."""
        is_n = np.concatenate(([False], self.bases == ord("N"), [False]))
        edges = np.flatnonzero(is_n[1:] != is_n[:-1]).reshape(-1, 2)
        return edges[(edges[:, 1] - edges[:, 0]) >= min_length]

    def segments(self, min_n_run: int = DEFAULT_MIN_N_RUN) -> np.ndarray:
        """The [start, end) stretches left once every N run of ``min_n_run`` or more is cut out."""
        cuts = self.n_runs(min_n_run)
        starts = np.concatenate(([0], cuts[:, 1]))
        ends = np.concatenate((cuts[:, 0], [len(self)]))
        keep = ends > starts
        return np.stack([starts[keep], ends[keep]], axis=1)

    def report(self, min_n_run: int = DEFAULT_MIN_N_RUN) -> ContigReport:
        n = len(self)
        counts = {ch: int(np.count_nonzero(self.bases == ord(ch))) for ch in "GCN"}
        runs = self.n_runs(min_n_run)
        return ContigReport(
            name=self.name,
            length=n,
            n_count=counts["N"],
            gc_fraction=(counts["G"] + counts["C"]) / max(1, n - counts["N"]),
            softmasked_fraction=float(np.count_nonzero(self.softmask) / max(1, n)),
            ambiguous_replaced=int(self.ambiguous),
            long_n_runs=len(runs),
            long_n_run_bases=int((runs[:, 1] - runs[:, 0]).sum()),
            segments=len(self.segments(min_n_run)),
        )


@dataclass
class ContigReport:
    name: str
    length: int
    n_count: int
    gc_fraction: float
    softmasked_fraction: float
    ambiguous_replaced: int
    long_n_runs: int
    long_n_run_bases: int
    segments: int


@dataclass
class Genome:
    path: Path
    contigs: list[Contig]

    def __iter__(self) -> Iterator[Contig]:
        return iter(self.contigs)

    def __getitem__(self, name: str) -> Contig:
        for contig in self.contigs:
            if contig.name == name:
                return contig
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.contigs]

    def report(self, min_n_run: int = DEFAULT_MIN_N_RUN) -> dict:
        contigs = [c.report(min_n_run) for c in self.contigs]
        total = sum(c.length for c in contigs)
        softmasked = sum(c.softmasked_fraction * c.length for c in contigs) / max(1, total)
        return {
            "path": str(self.path),
            "format": detect_format(self.path),
            "sha256": file_sha256(self.path),
            "min_n_run": min_n_run,
            "num_contigs": len(contigs),
            "total_length": total,
            "total_n": sum(c.n_count for c in contigs),
            "total_ambiguous_replaced": sum(c.ambiguous_replaced for c in contigs),
            "softmasked_fraction": softmasked,
            "softmask": softmask_status(softmasked),
            "contigs": [asdict(c) for c in contigs],
        }


def read(path: str | os.PathLike, *, convert_u: bool = False, progress: bool = False) -> Genome:
    """Read every record of a FASTA file (plain, gzip or bgzip) into validated contigs."""
    return Genome(Path(path), list(iter_contigs(path, convert_u=convert_u, progress=progress)))


def iter_contigs(
    path: str | os.PathLike, *, convert_u: bool = False, progress: bool = False, only: set[str] | None = None
) -> Iterator[Contig]:
    """Stream the records of a FASTA file one contig at a time (constant memory beyond one contig).

    ``only``: yield just these records; the sequence of the others is neither validated nor kept (a
    sharding job reading the few contigs its shards need).
    """
    path = check_path(path)
    parser = _FastaParser(path, convert_u, only)
    with open(path, "rb") as raw:
        bar = _progress_bar(path, progress)
        try:
            for block in _read_blocks(path, raw, bar):
                yield from parser.feed(block)
        finally:
            if bar is not None:
                bar.close()
    yield from parser.finish()


def contig_lengths(path: str | os.PathLike) -> dict[str, int]:
    """Length of every contig: from a ``.fai`` index beside the file when it is current, else one streaming pass."""
    path = check_path(path)
    fai = Path(f"{path}.fai")
    if fai.exists() and fai.stat().st_mtime >= path.stat().st_mtime:
        try:
            rows = [line.split("\t") for line in fai.read_text().splitlines() if line.strip()]
            return {row[0]: int(row[1]) for row in rows}
        except (ValueError, IndexError, UnicodeDecodeError):
            pass
    return {contig.name: len(contig) for contig in iter_contigs(path)}


def check_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise GenomeError(f"{path}: no such file")
    if path.is_dir():
        raise GenomeError(f"{path}: is a directory, not a FASTA file")
    if path.stat().st_size == 0:
        raise GenomeError(f"{path}: file is empty")
    return path


def detect_format(path: str | os.PathLike) -> str:
    """'bgzip', 'gzip' or 'plain', from the file's first bytes."""
    with open(path, "rb") as fh:
        head = fh.read(18)
    if head[:2] != b"\x1f\x8b":
        return "plain"
    has_extra = len(head) >= 14 and head[3] & 4
    return "bgzip" if has_extra and head[12:14] == b"BC" else "gzip"


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _progress_bar(path: Path, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=f"reading {path.name}")


def _read_blocks(path: Path, raw: BinaryIO, bar) -> Iterator[bytes]:
    """Decompressed blocks that each end on a line boundary (the last one may not)."""
    stream: gzip.GzipFile | BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb") if detect_format(path) != "plain" else raw
    carry: list[bytes] = []  # pieces of a line longer than one block (single-line FASTA)
    while True:
        try:
            chunk = stream.read(BLOCK_BYTES)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise GenomeError(f"{path}: truncated or corrupt gzip data ({exc})") from None
        if bar is not None:
            bar.update(raw.tell() - bar.n)
        if not chunk:
            break
        cut = chunk.rfind(b"\n") + 1
        if cut == 0:
            carry.append(chunk)
            continue
        yield b"".join([*carry, chunk[:cut]])
        carry = [chunk[cut:]]
    if any(carry):
        yield b"".join(carry)


class _FastaParser:
    """Turns line-aligned blocks into contigs, tracking line numbers for error messages."""

    def __init__(self, path: Path, convert_u: bool, only: set[str] | None = None):
        self.path, self.only = path, only
        self.base_table, self.lower_table = _TABLES[convert_u]
        self.convert_u = convert_u
        self.lines_before = 0
        self.seen: dict[str, int] = {}
        self.name: str | None = None
        self.header_line = 0
        self.pieces: list[tuple[np.ndarray, np.ndarray]] = []
        self.ambiguous = 0
        self.any_byte = False
        self.yielded = 0
        self.wanted = True
        self.skipped: list[str] = []

    def feed(self, block: bytes) -> Iterator[Contig]:
        if not self.any_byte:
            self.any_byte = bool(block.strip())
        headers = _header_offsets(block)
        self._sequence(block, 0, headers[0] if headers else len(block))
        counted, line = (
            0,
            self.lines_before + 1,
        )  # newlines counted up to `counted`: linear in the block, however many records
        for i, start in enumerate(headers):
            end_of_line = block.find(b"\n", start)
            end_of_line = len(block) if end_of_line < 0 else end_of_line
            contig = self._close_record()
            if contig is not None:
                yield contig
            line += block.count(b"\n", counted, start)
            counted = start
            self._open_record(block[start + 1 : end_of_line], line)
            next_header = headers[i + 1] if i + 1 < len(headers) else len(block)
            self._sequence(block, min(end_of_line + 1, next_header), next_header)
        self.lines_before += block.count(b"\n")

    def finish(self) -> Iterator[Contig]:
        contig = self._close_record()
        if contig is not None:
            yield contig
        if self.yielded == 0 and self.only is None:
            if not self.any_byte:
                raise GenomeError(f"{self.path}: file is empty")
            if self.skipped:
                raise GenomeError(f"{self.path}: every record is empty ({len(self.skipped)} with no sequence)")
            raise GenomeError(f"{self.path}: no FASTA record found")

    def _line_at(self, block: bytes, offset: int) -> int:
        return self.lines_before + block.count(b"\n", 0, offset) + 1

    def _open_record(self, header: bytes, line: int) -> None:
        text = _decode_header(header).strip()
        if not text:
            raise GenomeError(f"{self.path}: line {line}: FASTA header '>' with no record name")
        name = text.split()[0]
        if name in self.seen:
            raise GenomeError(
                f"{self.path}: line {line}: duplicate record name '{name}' (first at line {self.seen[name]})"
            )
        self.seen[name] = line
        self.name, self.header_line, self.pieces, self.ambiguous = name, line, [], 0
        self.wanted = self.only is None or name in self.only

    def _close_record(self) -> Contig | None:
        if self.name is None:
            return None
        name, self.name = self.name, None
        if not self.wanted:
            return None
        if not self.pieces or sum(len(b) for b, _ in self.pieces) == 0:
            self.skipped.append(name)
            warnings.warn(
                f"{self.path}: record '{name}' (line {self.header_line}) has no sequence; skipped",
                GenomeWarning,
                stacklevel=2,
            )
            return None
        bases = np.concatenate([b for b, _ in self.pieces]) if len(self.pieces) > 1 else self.pieces[0][0]
        mask = np.concatenate([m for _, m in self.pieces]) if len(self.pieces) > 1 else self.pieces[0][1]
        self.pieces = []
        self.yielded += 1
        return Contig(name, bases, mask, self.ambiguous, self.header_line)

    def _sequence(self, block: bytes, start: int, end: int) -> None:
        if end <= start or (self.name is not None and not self.wanted):
            return
        raw = block[start:end]
        bases = raw.translate(self.base_table, _WHITESPACE)
        if self.name is None:
            if bases:
                first = start + len(raw) - len(raw.lstrip(_WHITESPACE))
                raise GenomeError(
                    f"{self.path}: line {self._line_at(block, first)}: sequence before any '>' header (not a FASTA "
                    "file?)"
                )
            return
        if b"\0" in bases:
            self._invalid(block, start + _first_invalid(raw, self.base_table))
        softmask = raw.translate(self.lower_table, _WHITESPACE)
        self.pieces.append((np.frombuffer(bases, np.uint8), np.frombuffer(softmask, np.bool_)))
        self.ambiguous += bases.count(b"N") - raw.count(b"N") - raw.count(b"n")

    def _invalid(self, block: bytes, offset: int) -> None:
        byte = block[offset]
        where = f"{self.path}: record '{self.name}', line {self._line_at(block, offset)}"
        shown = repr(chr(byte)) if 32 < byte < 127 else f"byte 0x{byte:02x}"
        if byte in b"Uu" and not self.convert_u:
            raise GenomeError(f"{where}: {shown} is RNA, not DNA; pass convert_u=True (--rna-to-dna) to read U as T")
        hint = " (this looks like a protein FASTA)" if chr(byte).upper() in _PROTEIN_ONLY else ""
        raise GenomeError(f"{where}: {shown} is not a DNA letter{hint}")


def _header_offsets(block: bytes) -> list[int]:
    """Offsets of the '>' that start a line."""
    offsets = [0] if block.startswith(b">") else []
    at = block.find(b"\n>")
    while at >= 0:
        offsets.append(at + 1)
        at = block.find(b"\n>", at + 1)
    return offsets


def _first_invalid(raw: bytes, base_table: bytes) -> int:
    """Offset of the first byte that is neither a base letter nor whitespace."""
    mapped = np.frombuffer(raw.translate(base_table), np.uint8)
    whitespace = np.isin(np.frombuffer(raw, np.uint8), np.frombuffer(_WHITESPACE, np.uint8))
    return int(np.argmax((mapped == 0) & ~whitespace))


def _decode_header(header: bytes) -> str:
    try:
        return header.decode("utf-8")
    except UnicodeDecodeError:
        return header.decode("cp1252", errors="replace")


class IndexedGenome:
    """Random access by contig and interval.

    Uses pyfaidx (which keeps a ``.fai`` index beside the file) where the file allows it;
    plain gzip, varying line widths or a folder where no index can be written fall back to
    one streaming parse held in memory. Either way, fetched bases are validated and
    normalised exactly as :func:`read` does.
    """

    def __init__(self, path: str | os.PathLike, *, convert_u: bool = False):
        self.path = check_path(path)
        self.convert_u = convert_u
        self._faidx = self._open_faidx()
        self._parsed: Genome | None = None
        self.lengths: dict[str, int]
        if self._faidx is not None:
            self.lengths = {name: record.rlen for name, record in self._faidx.faidx.index.items()}
        else:
            self._parsed = read(self.path, convert_u=convert_u)
            self.lengths = {c.name: len(c) for c in self._parsed}

    @property
    def backend(self) -> str:
        return "pyfaidx" if self._faidx is not None else "memory"

    def _open_faidx(self):
        if detect_format(self.path) == "gzip":
            return None
        import pyfaidx

        try:
            return pyfaidx.Fasta(str(self.path), as_raw=True, sequence_always_upper=False, rebuild=False)
        except (pyfaidx.FastaIndexingError, pyfaidx.UnsupportedCompressionFormat, OSError, ImportError, ValueError):
            return None

    @property
    def names(self) -> list[str]:
        return list(self.lengths)

    def fetch(self, name: str, start: int = 0, end: int | None = None) -> Contig:
        """Bases [start, end) of contig ``name`` (0-based, end exclusive), normalised."""
        lengths = self.lengths
        if name not in lengths:
            raise GenomeError(f"{self.path}: no contig named '{name}' (have {', '.join(list(lengths)[:5])}…)")
        end = lengths[name] if end is None else end
        if not 0 <= start <= end <= lengths[name]:
            raise GenomeError(f"{self.path}: interval {name}:{start}-{end} outside contig of length {lengths[name]}")
        if self._parsed is not None:
            contig = self._parsed[name]
            return Contig(name, contig.bases[start:end], contig.softmask[start:end], line=contig.line)
        raw = self._faidx[name][start:end].encode("latin-1")
        base_table, lower_table = _TABLES[self.convert_u]
        bases = raw.translate(base_table)
        if b"\0" in bases:
            pos = start + bases.index(b"\0")
            raise GenomeError(
                f"{self.path}: record '{name}', base {pos}: {chr(raw[pos - start])!r} is not a DNA letter"
            )
        ambiguous = bases.count(b"N") - raw.count(b"N") - raw.count(b"n")
        return Contig(
            name, np.frombuffer(bases, np.uint8), np.frombuffer(raw.translate(lower_table), np.bool_), ambiguous
        )


def format_report(report: dict) -> str:
    """The human table printed by ``dnalm genome inspect``."""
    lines = [
        f"{report['path']}  ({report['format']}, {report['num_contigs']} contigs, {report['total_length']:,} bp, "
        f"N-runs ≥ {report['min_n_run']} split segments)",
        f"{'contig':<24}{'length':>14}{'N':>12}{'GC':>7}{'softmask':>10}{'IUPAC→N':>9}{'N-runs':>8}{'segments':>9}",
    ]
    for c in report["contigs"]:
        lines.append(
            f"{c['name'][:23]:<24}{c['length']:>14,}{c['n_count']:>12,}{c['gc_fraction']:>7.3f}"
            f"{c['softmasked_fraction']:>10.3f}{c['ambiguous_replaced']:>9,}{c['long_n_runs']:>8}{c['segments']:>9}"
        )
    fraction = report.get("softmasked_fraction", 0.0)
    lines.append(
        {
            "none": "soft-masking: none (no lowercase bases)",
            "repeats": f"soft-masking: {fraction:.1%} of bases lowercase, read as repeats (objective.repeat_weight)",
            "not soft-masked": f"soft-masking: {fraction:.1%} of bases lowercase: probably not soft-masked, treated as "
            f"unmasked (over {SOFTMASK_MAX_FRACTION:.0%} is a lowercase file, not a repeat annotation)",
        }[report.get("softmask", "none")]
    )
    return "\n".join(lines)
