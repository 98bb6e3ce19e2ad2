"""The shard sample schema, the atomic shard writer and the indexed shard reader.

A sample is one window of one contig on one strand. In the tar it is ``KEY.json`` (coordinates) plus
``KEY.tokN.npy`` (token ids of tokenizer N), and, where some of its tokens are repeats (most of
their bases soft-masked), ``KEY.repN.npy``: those flags, one bit a token (``np.packbits``). A sample
without one has no repeats, as has every sample of shards prepared before the flags existed. The key
carries genome index, contig, start, end and strand with no ``.`` in it: WebDataset splits member
names at the first dot, so contig names such as ``NC_000913.3`` are escaped (every byte outside
``[A-Za-z0-9_]`` becomes ``~XX``).

Beside each ``shard-N.tar`` lies ``shard-N.tar.idx``: for every sample, in order, the byte offset and
length of its members in the tar and their CRC-32, as little-endian uint64 triples. The training
stream reads a sample with two positioned reads (its index entry, then its bytes) and checks the
CRC, so a rank reads only the samples it consumes, never a whole shard.
"""

from __future__ import annotations

import hashlib
import io
import json
import mmap
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dnalm.genome import file_sha256  # noqa: F401 (shard checksums: the readers and prep take it from here)
from dnalm.utils.errors import DnalmError
from dnalm.utils.files import rename_durably

_SAFE = re.compile(rb"[A-Za-z0-9_]")
STRANDS = {"+": "f", "-": "r"}


class ShardError(DnalmError):
    """A shard that is missing, truncated or does not match its checksum."""


def escape(name: str) -> str:
    return "".join(chr(b) if _SAFE.fullmatch(bytes([b])) else f"~{b:02X}" for b in name.encode("utf-8"))


def unescape(text: str) -> str:
    return re.sub(rb"~([0-9A-F]{2})", lambda m: bytes([int(m.group(1), 16)]), text.encode("ascii")).decode("utf-8")


def sample_key(genome: int, contig: str, start: int, end: int, strand: str) -> str:
    return f"g{genome}-{escape(contig)}-{start}-{end}-{STRANDS[strand]}"


def parse_key(key: str) -> dict:
    genome, contig, start, end, strand = key.split("-")
    return {
        "genome": int(genome[1:]),
        "contig": unescape(contig),
        "start": int(start),
        "end": int(end),
        "strand": {v: k for k, v in STRANDS.items()}[strand],
    }


def encode_sample(
    key: str, meta: dict, token_arrays: list[np.ndarray], repeats: list[np.ndarray] | None = None
) -> dict[str, str | bytes]:
    """``repeats``: each view's per-token repeat flags; a view's are stored only when one of them is set."""
    sample: dict[str, str | bytes] = {"__key__": key, "json": json.dumps(meta, sort_keys=True).encode()}
    for i, ids in enumerate(token_arrays):
        sample[f"tok{i}.npy"] = _npy(ids)
    for i, flags in enumerate(repeats or []):
        if flags.any():
            sample[f"rep{i}.npy"] = _npy(np.packbits(flags))
    return sample


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@dataclass
class ShardSample:
    key: str
    meta: dict
    tokens: list[np.ndarray]  # one array per tokenizer
    repeats: list[np.ndarray | None]  # beside each: per-token repeat flags, None where the sample has none


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.int32)


class ShardWriter:
    """Writes one tar shard under a temporary name; ``close()`` renames it into place and returns its sha256."""

    def __init__(self, path: Path):
        import webdataset as wds

        self.path = Path(path)
        self.tmp = self.path.with_name(f"{self.path.name}.tmp{os.getpid()}")
        self._file = open(self.tmp, "wb")
        self._tar = wds.TarWriter(self._file, encoder=False, mtime=0, user="dnalm", group="dnalm", mode=0o444)
        self.num_samples = 0
        self.ranges: list[tuple[int, int]] = []  # (offset, length) of each sample's members in the archive

    def write(self, sample: dict[str, str | bytes]) -> None:
        start = self._tar.tarstream.offset
        self._tar.write(sample)
        self.ranges.append((start, self._tar.tarstream.offset - start))
        self.num_samples += 1

    def close(self) -> str:
        """Finish the tar and its index (both fsynced), rename both into place; returns the tar's sha256."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        with open(self.tmp, "rb") as fh:
            data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if os.fstat(fh.fileno()).st_size else b""
            digest = hashlib.sha256(data).hexdigest()
            entries = np.array([(a, n, zlib.crc32(data[a : a + n])) for a, n in self.ranges], "<u8").reshape(-1, 3)
        index = index_path(self.path)
        index_tmp = index.with_name(f"{index.name}.tmp{os.getpid()}")
        self.index_sha256 = hashlib.sha256(entries.tobytes()).hexdigest()
        with open(index_tmp, "wb") as fh:
            fh.write(entries.tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(index_tmp, index)
        rename_durably(self.tmp, self.path)  # syncs the folder, and with it the index's new name
        return digest

    def abort(self) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)


def index_path(shard: Path) -> Path:
    return Path(shard).with_name(f"{Path(shard).name}.idx")


INDEX_ENTRY = 24  # offset, length, crc32: three little-endian uint64


class IndexedShard:
    """One shard read sample by sample through its index: positioned reads, a CRC check, bytes counted.

    Opening costs two ``open`` calls and a size check against the manifest (a truncated or replaced
    shard is refused at once); nothing is read until a sample is asked for.
    """

    def __init__(self, path: Path, num_samples: int, size: int | None = None, source_url: str | None = None):
        self.path, self.num_samples = Path(path), num_samples
        self.name = f"{source_url} (cached as {self.path})" if source_url else str(self.path)  # what messages call it
        self.bytes_read = 0
        index = index_path(self.path)
        if not self.path.is_file():
            raise ShardError(f"{self.path}: shard is missing")
        if not index.is_file():
            raise ShardError(
                f"{index}: index is missing (prepared by an older dnalm? run `dnalm prep` into a new folder)"
            )
        if index.stat().st_size != num_samples * INDEX_ENTRY:
            raise ShardError(
                f"{index}: holds {index.stat().st_size // INDEX_ENTRY} entries, the manifest says {num_samples} samples"
            )
        actual = self.path.stat().st_size
        if size is not None and actual != size:
            raise ShardError(
                f"{self.name}: does not match its checksum ({actual:,} bytes, the manifest says {size:,}: "
                f"corrupt or truncated); {self._last_good(actual)}"
            )
        self._tar = os.open(self.path, os.O_RDONLY)
        self._index = os.open(index, os.O_RDONLY)

    def entry(self, index: int) -> tuple[int, int, int]:
        raw = os.pread(self._index, INDEX_ENTRY, index * INDEX_ENTRY)
        self.bytes_read += len(raw)
        offset, length, crc = (int(x) for x in np.frombuffer(raw, "<u8"))
        return offset, length, crc

    def read(self, index: int) -> tuple[str, dict, list[np.ndarray]]:
        """(key, coordinates, token arrays) of sample ``index``."""
        sample = self.read_sample(index)
        return sample.key, sample.meta, sample.tokens

    def read_sample(self, index: int) -> ShardSample:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"{self.name}: sample {index} of {self.num_samples}")
        offset, length, crc = self.entry(index)
        data = os.pread(self._tar, length, offset)
        self.bytes_read += len(data)
        if len(data) != length or zlib.crc32(data) != crc:
            raise ShardError(
                f"{self.name}: sample {index} does not match its checksum (corrupt); {self._last_good_before(index)}"
            )
        members = {name: (start, size) for name, start, size in walk_tar(data, self.name)}
        key = next(iter(members)).partition(".")[0]
        try:
            meta = json.loads(_member(data, members, f"{key}.json"))
            arrays, repeats, i = [], [], 0
            while f"{key}.tok{i}.npy" in members:
                arrays.append(np.load(io.BytesIO(_member(data, members, f"{key}.tok{i}.npy")), allow_pickle=False))
                packed = members.get(f"{key}.rep{i}.npy")
                bits = np.load(io.BytesIO(_member(data, members, f"{key}.rep{i}.npy"))) if packed else None
                repeats.append(None if bits is None else np.unpackbits(bits, count=len(arrays[-1])).astype(bool))
                i += 1
        except (KeyError, ValueError, OSError) as exc:
            raise ShardError(f"{self.name}: sample {key} is damaged ({exc!r})") from None
        return ShardSample(key, meta, arrays, repeats)

    def key(self, index: int) -> str:
        offset, length, _ = self.entry(index)
        header = os.pread(self._tar, 512, offset)
        return next(walk_tar(header + b"\0" * 1024, self.path, sizes_only=True))[0].partition(".")[0]

    def _last_good_before(self, index: int) -> str:
        return f"last good sample key: {self.key(index - 1)}" if index > 0 else "no readable sample before it"

    def _last_good(self, size: int) -> str:
        """The key of the last sample that lies wholly inside the first ``size`` bytes."""
        entries = np.fromfile(index_path(self.path), "<u8").reshape(-1, 3)
        whole = np.nonzero(entries[:, 0] + entries[:, 1] <= size)[0]
        if not len(whole):
            return "no readable sample"
        with open(self.path, "rb") as fh:
            fh.seek(int(entries[whole[-1], 0]))
            header = fh.read(512) + b"\0" * 1024
        name = next(walk_tar(header, self.path, sizes_only=True))[0]
        return f"last good sample key: {name.partition('.')[0]}"

    def close(self) -> None:
        """Close both files once: a descriptor number closed twice may by then belong to another open file."""
        for name in ("_tar", "_index"):
            fd = self.__dict__.pop(name, None)  # gone once closed (or never opened: __init__ refused the shard)
            if fd is not None:
                os.close(fd)

    def __del__(self):
        self.close()


def _member(data: bytes, members: dict, name: str) -> bytes:
    start, size = members[name]
    return data[start : start + size]


def walk_tar(data, path, sizes_only: bool = False):
    """(name, data offset, size) of each file in a run of 512-byte tar blocks (a whole tar or one sample's part)."""
    pos, long_name = 0, None
    while pos + 512 <= len(data):
        header = data[pos : pos + 512]
        if not header.strip(b"\0"):
            return
        try:
            size = int(header[124:136].strip(b"\0 ") or b"0", 8)
        except ValueError:
            raise ShardError(f"{path}: damaged tar header at byte {pos}") from None
        kind, start = header[156:157], pos + 512
        pos = start + (size + 511) // 512 * 512
        if kind == b"x":  # pax extended header: may carry a long path for the next member
            for record in bytes(data[start : start + size]).split(b"\n"):
                if b" path=" in record:
                    long_name = record.split(b" path=", 1)[1].decode()
            continue
        if kind in (b"0", b"\0"):
            name = header[:100].split(b"\0", 1)[0].decode()
            prefix = header[345:500].split(b"\0", 1)[0].decode()
            yield long_name or (f"{prefix}/{name}" if prefix else name), start, size
            if sizes_only:
                return
        long_name = None
