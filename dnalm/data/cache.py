"""A node-local cache of remote shards, shared by every rank and DataLoader worker of a node.

Layout under ``cache_dir``:

- ``shards/<sha256>.tar`` and ``.tar.idx``: whole shards and their indexes, named by the manifest's
  checksum (so a stale or foreign copy can never be taken for another), present only once downloaded,
  checked against the manifest's sizes and sha256s, and renamed into place;
- ``folders/<manifest sha256>/``: a remote data folder's manifest and tokenizers (``local_folder``);
- ``locks/``: one lock file per stripe of shards (``flock``, so threads and processes of the node
  exclude each other); a shard is downloaded once per node, whoever asks first. A filesystem that
  refuses ``flock`` (Lustre mounted without ``-o flock``) is named at once, with ``data.cache_dir``.

The folder defaults to a node-local one (``default_cache_dir``), never the home directory, which
clusters share between nodes.

Shards are evicted least recently used first (a hit refreshes a shard's time) to keep the total under
``limit`` bytes; a shard being downloaded or opened holds its stripe's lock and is never evicted then.
A reader keeps its open files, so evicting a shard someone still reads costs disk until they close it,
never a wrong read.
"""

from __future__ import annotations

import errno
import fcntl
import getpass
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
from dnalm.utils import faults

STRIPES = 4096
TOKENIZER_FILES = {"bpe": ["tokenizer.json", "bpe.model"]}  # manifests without tokenizer file lists
NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)  # what a filesystem without flock answers


def default_cache_dir() -> Path:
    """``$DNALM_CACHE`` (or ``$DNALM_CACHE_DIR``, its older name), else ``dnalm-cache-$USER`` under ``$TMPDIR``, else
    under ``/tmp``: on the node, where every local rank finds the same folder."""
    named = os.environ.get("DNALM_CACHE") or os.environ.get("DNALM_CACHE_DIR")
    if named:
        return Path(named)
    try:
        user = os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (some containers)
        user = str(os.getuid())
    return Path(os.environ.get("TMPDIR") or "/tmp") / f"dnalm-cache-{user}"


def local_ranks() -> int:
    """Processes of the run on this node, as the launcher tells them: torchrun's ``LOCAL_WORLD_SIZE``, DeepSpeed's
    ``LOCAL_SIZE``; 1 without a launcher."""
    for name in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


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
        with open(self.locks / "probe.lock", "a") as fh:  # a filesystem without flock, named now, not mid-epoch
            self._flock(fh, fcntl.LOCK_SH)
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

    def check_limit(self, entries: list[ShardEntry], prefetch: int, workers: int = 1) -> None:
        """Refuse a limit that cannot hold what everything sharing the node's cache may hold at once: each of the
        ``workers`` of each local rank reads a shard, has ``prefetch`` more downloaded ahead and one arriving."""
        if self.limit is None or not entries:
            return
        ranks, workers = local_ranks(), max(1, workers)
        resident, largest = ranks * workers * (prefetch + 2), max(shard_bytes(e) for e in entries)
        if self.limit < resident * largest:
            raise DataError(
                f"data.cache_limit {self.limit:,} bytes cannot hold {resident} of the largest shards "
                f"({resident * largest:,} bytes): {ranks} local rank{'s' * (ranks != 1)} × {workers} "
                f"worker{'s' * (workers != 1)} × ({prefetch} prefetched + the one read + one arriving) share "
                f"this node's cache; raise it, or lower data.prefetch_shards or data.num_workers"
            )

    def _flock(self, fh, flags: int) -> None:
        try:
            if faults.hit("cache.flock", "refuse"):
                raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
            fcntl.flock(fh, flags)
        except OSError as exc:
            if exc.errno in NO_FLOCK:
                raise DataError(
                    f"{self.folder}: this filesystem refuses file locks (flock: {exc.strerror}), which the "
                    "node's shard cache needs; set data.cache_dir to a node-local folder (or mount Lustre "
                    "with -o flock)"
                ) from None
            raise

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
                self._flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
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
                self._count(
                    bytes_downloaded=source.download(
                        f"{entry.path}.idx", index, size=index_size, sha256=entry.index_sha256
                    )
                )
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
            return IndexedShard(
                self.paths(entry)[0], entry.num_samples, entry.bytes, source_url=source.url_of(entry.path)
            )
        with self._lock(entry.sha256):
            arrived = self._ensure(source, entry)
            self._count(**{"hits" if here else "waits" if arrived else "misses": 1})
            return IndexedShard(
                self.paths(entry)[0], entry.num_samples, entry.bytes, source_url=source.url_of(entry.path)
            )

    def _reserve(self, entry: ShardEntry) -> Path | None:
        """Evict least recently used shards until this one fits, and hold its room with a ``.reserve`` file of its
        size (so downloads in flight, here or in another process, count against the limit); None without a limit."""
        if self.limit is None:
            return None
        incoming = shard_bytes(entry)
        with open(self.folder / "evict.lock", "a") as guard:
            self._flock(guard, fcntl.LOCK_EX)
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
        raise DataError(
            f"{source.url_of(MANIFEST_FILE)}: no manifest (prep not run, or not finished: run the same "
            "`dnalm prep --out` again to complete it)"
        )
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


def data_folder(
    location: str | os.PathLike, cache_dir: str | os.PathLike | None = None, retries: int = 5, wait_s: float = 0.5
) -> Path:
    """A local folder holding the data's manifest and tokenizers: the location itself, or its copy in the cache."""
    source = open_source(location, retries, wait_s)
    return local_folder(source, ShardCache(cache_dir)) if source.remote else Path(location)
