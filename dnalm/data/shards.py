"""The shard sample schema, the atomic shard writer and a random-access shard reader.

A sample is one window of one contig on one strand. In the tar it is ``KEY.json`` (coordinates)
plus ``KEY.tokN.npy`` (token ids of tokenizer N). The key carries genome index, contig, start,
end and strand with no ``.`` in it: WebDataset splits member names at the first dot, so contig
names such as ``NC_000913.3`` are escaped (every byte outside ``[A-Za-z0-9_]`` becomes ``~XX``).
"""

from __future__ import annotations

import hashlib
import io
import json
import mmap
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dnalm.errors import DnalmError
from dnalm.genome import file_sha256

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
    return {"genome": int(genome[1:]), "contig": unescape(contig), "start": int(start), "end": int(end),
            "strand": {v: k for k, v in STRANDS.items()}[strand]}


def encode_sample(key: str, meta: dict, token_arrays: list[np.ndarray]) -> dict[str, bytes]:
    sample = {"__key__": key, "json": json.dumps(meta, sort_keys=True).encode()}
    for i, ids in enumerate(token_arrays):
        buffer = io.BytesIO()
        np.save(buffer, ids, allow_pickle=False)
        sample[f"tok{i}.npy"] = buffer.getvalue()
    return sample


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

    def write(self, sample: dict[str, bytes]) -> None:
        self._tar.write(sample)
        self.num_samples += 1

    def close(self) -> str:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        digest = file_sha256(self.tmp)
        os.replace(self.tmp, self.path)
        return digest

    def abort(self) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)


@dataclass
class _Member:
    offset: int
    size: int


class ShardReader:
    """Random access to the samples of one shard, by index, after checking its sha256."""

    def __init__(self, path: Path, sha256: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise ShardError(f"{self.path}: shard is missing")
        with open(self.path, "rb") as fh:
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if self.path.stat().st_size else b""
        if sha256 is not None and hashlib.sha256(self._map).hexdigest() != sha256:
            raise ShardError(f"{self.path}: does not match its checksum (corrupt or truncated); {self._last_good()}")
        self.keys: list[str] = []
        self.members: dict[str, dict[str, _Member]] = {}
        for name, offset, size in self._walk():
            key, _, ext = name.partition(".")
            if key not in self.members:
                self.keys.append(key)
                self.members[key] = {}
            self.members[key][ext] = _Member(offset, size)
        self.num_arrays = sum(1 for ext in self.members[self.keys[0]] if ext.startswith("tok")) if self.keys else 0

    def _walk(self):
        """(name, data offset, size) of every file in the tar, read straight from its 512-byte headers."""
        data, pos, long_name = self._map, 0, None
        while pos + 512 <= len(data):
            header = data[pos : pos + 512]
            if not header.strip(b"\0"):
                return
            try:
                size = int(header[124:136].strip(b"\0 ") or b"0", 8)
            except ValueError:
                raise ShardError(f"{self.path}: damaged tar header at byte {pos}; {self._last_good()}") from None
            kind, start = header[156:157], pos + 512
            pos = start + (size + 511) // 512 * 512
            if pos > len(data):
                raise ShardError(f"{self.path}: truncated tar (a member runs past the end); {self._last_good()}")
            if kind == b"x":  # pax extended header: may carry a long path for the next member
                for record in bytes(data[start : start + size]).split(b"\n"):
                    if b" path=" in record:
                        long_name = record.split(b" path=", 1)[1].decode()
                continue
            if kind in (b"0", b"\0"):
                name = header[:100].split(b"\0", 1)[0].decode()
                prefix = header[345:500].split(b"\0", 1)[0].decode()
                yield long_name or (f"{prefix}/{name}" if prefix else name), start, size
            long_name = None
        raise ShardError(f"{self.path}: truncated tar (no end-of-archive marker); {self._last_good()}")

    def __len__(self) -> int:
        return len(self.keys)

    def read(self, index: int) -> tuple[str, dict, list[np.ndarray]]:
        key = self.keys[index]
        parts = self.members[key]
        try:
            meta = json.loads(self._bytes(parts["json"]))
            arrays = [np.load(io.BytesIO(self._bytes(parts[f"tok{i}.npy"])), allow_pickle=False)
                      for i in range(self.num_arrays)]
        except (KeyError, ValueError, OSError) as exc:
            raise ShardError(f"{self.path}: sample {key} is damaged ({exc!r})") from None
        return key, meta, arrays

    def _bytes(self, member: _Member) -> bytes:
        return self._map[member.offset : member.offset + member.size]

    def _last_good(self) -> str:
        last = None
        try:
            with tarfile.open(self.path, "r:") as tar:
                for member in tar:
                    tar.extractfile(member).read()
                    last = member.name.partition(".")[0]
        except (tarfile.TarError, OSError, EOFError, AttributeError):
            pass
        return f"last good sample key: {last}" if last else "no readable sample"
