"""A node-local cache of remote shards, shared by every rank and DataLoader worker of a node.

Layout under ``cache_dir``:

- ``shards/<sha256>.tar`` and ``.tar.idx``: whole shards and their indexes, named by the manifest's
  checksum (so a stale or foreign copy can never be taken for another), present only once downloaded,
  checked against the manifest's sizes and sha256s, and renamed into place;
- ``folders/<manifest sha256>/``: a remote data folder's manifest and tokenizers (``local_folder``);
- ``locks/``: one lock file per stripe of shards (``flock``, so threads and processes of the node
  exclude each other); a shard is downloaded once per node, whoever asks first.

Shards are evicted least recently used first (a hit refreshes a shard's time) to keep the total under
``limit`` bytes; a shard being downloaded or opened holds its stripe's lock and is never evicted then.
A reader keeps its open files, so evicting a shard someone still reads costs disk until they close it,
never a wrong read.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

from dnalm.data.manifest import MANIFEST_FILE, DataError, Manifest, ShardEntry
from dnalm.data.shards import INDEX_ENTRY, IndexedShard
from dnalm.data.sources import Source, open_source

STRIPES = 4096
TOKENIZER_FILES = {"bpe": ["tokenizer.json", "bpe.model"]}  # manifests without tokenizer file lists


def default_cache_dir() -> Path:
    return Path(os.environ.get("DNALM_CACHE_DIR") or Path.home() / ".cache" / "dnalm")


def shard_bytes(entry: ShardEntry) -> int:
    return entry.bytes + entry.num_samples * INDEX_ENTRY


class ShardCache:
    def __init__(self, folder: str | os.PathLike | None = None, limit: int | None = None):
        self.folder = Path(folder) if folder else default_cache_dir()
        self.limit = limit
        self.shards = self.folder / "shards"
        self.locks = self.folder / "locks"
        for path in (self.shards, self.locks):
            path.mkdir(parents=True, exist_ok=True)
        self.counts = dict.fromkeys(("hits", "waits", "misses", "prefetched", "bytes_downloaded", "evicted"), 0)
        self._counting = threading.Lock()  # prefetch threads count too

    def __getstate__(self) -> dict:  # a DataLoader worker started by spawn counts on its own
        return {k: v for k, v in self.__dict__.items() if k != "_counting"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _counting=threading.Lock())

    def _count(self, **amounts) -> None:
        with self._counting:
            for name, amount in amounts.items():
                self.counts[name] += amount

    def check_limit(self, entries: list[ShardEntry], resident: int) -> None:
        """Refuse a limit that cannot hold ``resident`` of the largest shards at once."""
        if self.limit is None or not entries:
            return
        need = resident * max(shard_bytes(e) for e in entries)
        if self.limit < need:
            raise DataError(f"data.cache_limit {self.limit:,} bytes cannot hold {resident} of the largest shards "
                            f"({need:,} bytes: the shard being read, the prefetched ones and one arriving); "
                            f"raise it or lower data.prefetch_shards")

    def paths(self, entry: ShardEntry) -> tuple[Path, Path]:
        tar = self.shards / f"{entry.sha256}.tar"
        return tar, tar.with_name(f"{tar.name}.idx")

    def present(self, entry: ShardEntry) -> bool:
        tar, index = self.paths(entry)
        try:
            return tar.stat().st_size == entry.bytes and index.stat().st_size == entry.num_samples * INDEX_ENTRY
        except FileNotFoundError:
            return False

    @contextmanager
    def _lock(self, name: str, blocking: bool = True):
        stripe = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % STRIPES
        with open(self.locks / f"{stripe:04d}.lock", "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _ensure(self, source: Source, entry: ShardEntry) -> bool:
        """With the shard's lock held: download it unless present (index first, the tar last); whether it was."""
        tar, index = self.paths(entry)
        if self.present(entry):
            os.utime(tar)
            return True
        for stale in self.shards.glob(f".{entry.sha256}.*"):  # left by a process killed mid-download
            stale.unlink(missing_ok=True)
        reservation = self._reserve(entry)
        try:
            index_size = entry.num_samples * INDEX_ENTRY
            if not (index.is_file() and index.stat().st_size == index_size):
                self._count(bytes_downloaded=source.download(f"{entry.path}.idx", index, size=index_size,
                                                             sha256=entry.index_sha256))
            self._count(bytes_downloaded=source.download(entry.path, tar, size=entry.bytes, sha256=entry.sha256))
        finally:
            if reservation is not None:
                reservation.unlink(missing_ok=True)
        return False

    def ensure(self, source: Source, entry: ShardEntry) -> None:
        """Make the shard present (a prefetch)."""
        with self._lock(entry.sha256):
            if not self._ensure(source, entry):
                self._count(prefetched=1)

    def open(self, source: Source, entry: ShardEntry) -> IndexedShard:
        """The shard, downloaded if it is not here, opened while its lock is held (so it cannot be evicted first).

        Counted as a hit (here when asked for), a wait (another thread or process brought it meanwhile) or a miss."""
        here = self.present(entry)  # a look without the lock, for the count
        if here and self.limit is None:  # nothing is ever evicted: no lock needed to open it
            self._count(hits=1)
            return IndexedShard(self.paths(entry)[0], entry.num_samples, entry.bytes, source_url=source.url_of(entry.path))
        with self._lock(entry.sha256):
            arrived = self._ensure(source, entry)
            self._count(**{"hits" if here else "waits" if arrived else "misses": 1})
            return IndexedShard(self.paths(entry)[0], entry.num_samples, entry.bytes, source_url=source.url_of(entry.path))

    def _reserve(self, entry: ShardEntry) -> Path | None:
        """Evict least recently used shards until this one fits, and hold its room with a ``.reserve`` file of its
        size (so downloads in flight, here or in another process, count against the limit); None without a limit."""
        if self.limit is None:
            return None
        incoming = shard_bytes(entry)
        with open(self.folder / "evict.lock", "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            used, tars = self._scan()
            for _, sha in sorted(tars):
                if used + incoming <= self.limit:
                    break
                with self._lock(sha, blocking=False) as locked:
                    if not locked:  # being downloaded or opened right now
                        continue
                    for path in (self.shards / f"{sha}.tar", self.shards / f"{sha}.tar.idx"):
                        try:
                            used -= path.stat().st_size
                            path.unlink()
                        except FileNotFoundError:
                            pass
                    self._count(evicted=1)
            reservation = self.shards / f".{entry.sha256}.reserve"
            with open(reservation, "wb") as fh:
                fh.truncate(incoming)  # sparse: a size, not disk blocks
            return reservation

    def _scan(self) -> tuple[int, list[tuple[int, str]]]:
        """Bytes held (shards and indexes, or for a download in flight the room it reserved) and (mtime, sha256) of
        every whole shard. A reservation whose shard lock is free belongs to a process that died: it is removed."""
        files: dict[str, tuple[int, int]] = {}
        for item in os.scandir(self.shards):
            try:
                files[item.name] = (item.stat().st_size, item.stat().st_mtime_ns)
            except FileNotFoundError:
                continue
        reserved = set()
        for name in [n for n in files if n.endswith(".reserve")]:
            sha = name[1 : -len(".reserve")]
            with self._lock(sha, blocking=False) as stale:
                if stale:
                    (self.shards / name).unlink(missing_ok=True)
                    continue
            reserved.add(sha)
        used = sum(files[f".{sha}.reserve"][0] for sha in reserved)
        tars = []
        for name, (size, mtime) in files.items():
            sha = name.split(".")[0]
            if name.startswith(".") or sha in reserved:
                continue
            used += size
            if name.endswith(".tar"):
                tars.append((mtime, sha))
        return used, tars

    def usage(self) -> int:
        """Bytes the limit counts: shards, indexes, and the room reserved by downloads in flight."""
        return self._scan()[0]

    def stats(self) -> dict:
        """This process's counts: opens that found the shard here (hits), found it arriving (waits) or fetched it."""
        with self._counting:
            counts = dict(self.counts)
        opened = counts["hits"] + counts["waits"] + counts["misses"]
        return counts | {"hit_rate": round(counts["hits"] / opened, 4) if opened else 0.0}


def local_folder(source: Source, cache: ShardCache) -> Path:
    """The remote folder's manifest and tokenizers, copied once into the cache; a folder that names them."""
    if source.size(MANIFEST_FILE) is None:
        raise DataError(f"{source.url_of(MANIFEST_FILE)}: no manifest (prep not run, or not finished: run the same "
                        "`dnalm prep --out` again to complete it)")
    raw = source.read(MANIFEST_FILE)
    folder = cache.folder / "folders" / hashlib.sha256(raw).hexdigest()[:24]
    if (folder / MANIFEST_FILE).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))
    try:
        (staging / MANIFEST_FILE).write_bytes(raw)
        manifest = Manifest.load(staging)  # a clear error for a file that is not a manifest
        for entry in manifest.tokenizers:
            for name in entry.files or TOKENIZER_FILES.get(entry.kind, ["tokenizer.json"]):
                target = staging / entry.folder / name
                target.parent.mkdir(parents=True, exist_ok=True)
                source.download(f"{entry.folder}/{name}", target)
        try:
            os.rename(staging, folder)
        except OSError:  # another process of the node put it there first
            if not (folder / MANIFEST_FILE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def data_folder(location: str | os.PathLike, cache_dir: str | os.PathLike | None = None, retries: int = 5,
                wait_s: float = 0.5) -> Path:
    """A local folder holding the data's manifest and tokenizers: the location itself, or its copy in the cache."""
    source = open_source(location, retries, wait_s)
    return local_folder(source, ShardCache(cache_dir)) if source.remote else Path(location)
