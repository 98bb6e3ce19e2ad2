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


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
        if sha256 is not None and file_sha256(self.path) != sha256:
            raise ShardError(f"{self.path}: does not match its checksum (corrupt or truncated); {self._last_good()}")
        try:
            with tarfile.open(self.path, "r:") as tar:
                members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ShardError(f"{self.path}: unreadable tar ({exc}); {self._last_good()}") from None
        self.keys: list[str] = []
        self.members: dict[str, dict[str, _Member]] = {}
        for m in members:
            key, _, ext = m.name.partition(".")
            if key not in self.members:
                self.keys.append(key)
                self.members[key] = {}
            self.members[key][ext] = _Member(m.offset_data, m.size)
        with open(self.path, "rb") as fh:
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if self.path.stat().st_size else b""

    def __len__(self) -> int:
        return len(self.keys)

    def read(self, index: int) -> tuple[str, dict, list[np.ndarray]]:
        key = self.keys[index]
        parts = self.members[key]
        try:
            meta = json.loads(self._bytes(parts["json"]))
            arrays = [np.load(io.BytesIO(self._bytes(parts[f"tok{i}.npy"])), allow_pickle=False)
                      for i in range(sum(1 for ext in parts if ext.startswith("tok")))]
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
