"""Where a prepared data folder lives: a local path, ``s3://bucket/prefix`` or ``http(s)://host/prefix``.

A remote object is read whole (a shard, its index, the manifest) and written whole. A fault that may pass
(connection refused or dropped, a timeout, 5xx, 429, a truncated body, bytes that differ from what the
manifest says) is retried with exponential backoff, ``retries`` times; then the read fails with one
error naming the URL. A fault that will not pass (no such bucket or object, credentials refused or
missing) fails at once. A download is written under a temporary name beside its target and renamed
only once its size and sha256 match, so no caller ever sees part of an object.

S3 goes through boto3 with the standard AWS settings (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
or ``AWS_PROFILE``, ``AWS_REGION``, and ``AWS_ENDPOINT_URL`` for S3-compatible stores); botocore's own
retries are turned off so that ``retries`` is the whole story.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import urlparse

from dnalm.data.manifest import DataError

CHUNK = 1 << 20
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
MAX_WAIT_S = 30.0


class SourceError(DataError):
    """A remote object that could not be read or written: the message names its URL."""


class _LocalWriteError(Exception):
    """Writing a download to local disk failed (carries the OSError)."""


class Transient(Exception):
    """A fault that may pass on another attempt."""


class Permanent(Exception):
    """A fault that another attempt will not change."""


def is_remote(location: str | os.PathLike) -> bool:
    return isinstance(location, str) and urlparse(location).scheme in SOURCES


class Source(ABC):
    """A data folder's location; object names are relative paths inside it (``train/shard-000000.tar``)."""

    remote = True

    def __init__(self, url: str, retries: int = 5, wait_s: float = 0.5):
        self.url, self.retries, self.wait_s = url.rstrip("/"), retries, wait_s

    def url_of(self, name: str) -> str:
        return f"{self.url}/{name}"

    # --- what a backend provides: one attempt each, raising Transient or Permanent ---------------
    @abstractmethod
    def _get(self, name: str, sink) -> None:
        """Write the object's bytes to ``sink(chunk)``."""

    @abstractmethod
    def _size(self, name: str) -> int | None:
        """The object's size in bytes; None where it is absent or its size is not told."""

    def _put(self, path: Path, name: str) -> None:
        raise Permanent(f"{type(self).__name__} is read-only: write to a local folder or to s3://")

    # --- retried operations -------------------------------------------------------------------
    def read(self, name: str) -> bytes:
        """A whole (small) object."""

        def once() -> bytes:
            parts: list[bytes] = []
            self._get(name, parts.append)
            return b"".join(parts)

        return self._retried(once, name)

    def download(self, name: str, target: Path, size: int | None = None, sha256: str | None = None) -> int:
        """The object into ``target`` (temporary name, checked against ``size`` and ``sha256``, renamed); its bytes."""
        target = Path(target)
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}-{random.getrandbits(32):08x}")

        def once() -> int:
            digest, written = hashlib.sha256(), 0
            try:
                with open(tmp, "wb") as fh:

                    def sink(chunk: bytes) -> None:
                        nonlocal written
                        try:
                            fh.write(chunk)
                        except OSError as exc:  # the disk, not the network: not worth a retry
                            raise _LocalWriteError(exc) from None
                        digest.update(chunk)
                        written += len(chunk)

                    self._get(name, sink)
                if size is not None and written != size:
                    raise Transient(f"received {written:,} bytes, the manifest says {size:,} (truncated or replaced)")
                if sha256 is not None and digest.hexdigest() != sha256:
                    raise Transient(f"its sha256 {digest.hexdigest()[:16]}… is not the manifest's {sha256[:16]}…")
                os.replace(tmp, target)
                return written
            finally:
                tmp.unlink(missing_ok=True)

        try:
            return self._retried(once, name)
        except (_LocalWriteError, OSError) as exc:
            cause = exc.args[0] if isinstance(exc, _LocalWriteError) else exc
            raise SourceError(
                f"{target}: cannot write the download of {self.url_of(name)} "
                f"({cause.strerror or cause}); free space or point data.cache_dir elsewhere"
            ) from None

    def size(self, name: str) -> int | None:
        """The object's size in bytes, or None when there is no such object."""
        return self._retried(lambda: self._size(name), name)

    def upload(self, path: Path, name: str) -> None:
        """A whole local file as ``name`` (an object store's PUT is atomic: the object is whole or absent)."""
        self._retried(lambda: self._put(Path(path), name), name)

    def _retried(self, attempt, name: str):
        url = self.url_of(name)
        for tried in range(self.retries + 1):
            try:
                return attempt()
            except Permanent as exc:
                raise SourceError(f"{url}: {exc}") from None
            except Transient as exc:
                if tried == self.retries:
                    raise SourceError(
                        f"{url}: {exc} (gave up after {tried + 1} attempts; data.retries {self.retries})"
                    ) from None
                time.sleep(min(MAX_WAIT_S, self.wait_s * 2**tried) * (0.5 + random.random()))


class LocalSource(Source):
    """A folder on this machine (or a shared file system): read in place, never cached."""

    remote = False

    def __init__(self, path: str | os.PathLike, retries: int = 0, wait_s: float = 0.0):
        super().__init__(str(path), retries, wait_s)
        self.folder = Path(path)

    def _get(self, name: str, sink) -> None:
        try:
            with open(self.folder / name, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    sink(chunk)
        except FileNotFoundError:
            raise Permanent("no such file") from None

    def _size(self, name: str) -> int | None:
        path = self.folder / name
        return path.stat().st_size if path.is_file() else None

    def _put(self, path: Path, name: str) -> None:
        from dnalm.utils.files import rename_durably

        target = self.folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        shutil.copyfile(path, tmp)
        rename_durably(tmp, target)


class HttpSource(Source):
    """``http(s)://`` objects read by whole-object GETs (any static file server); read-only."""

    def _request(self, name: str, method: str = "GET"):
        import urllib.error
        import urllib.request

        try:
            return urllib.request.urlopen(
                urllib.request.Request(self.url_of(name), method=method), timeout=READ_TIMEOUT_S
            )
        except urllib.error.HTTPError as exc:
            if method == "HEAD" and exc.code == 404:
                return None
            raise (Transient if exc.code >= 500 or exc.code in (408, 429) else Permanent)(
                f"HTTP {exc.code} {exc.reason}"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            raise Transient(f"cannot connect ({getattr(exc, 'reason', exc)})") from None

    def _get(self, name: str, sink) -> None:
        import http.client

        response = self._request(name)
        with response:
            length = response.headers.get("Content-Length")
            received = 0
            try:
                while chunk := response.read(CHUNK):
                    sink(chunk)
                    received += len(chunk)
            except (http.client.HTTPException, OSError) as exc:
                raise Transient(f"connection lost after {received:,} bytes ({type(exc).__name__})") from None
        if length is not None and received != int(length):
            raise Transient(f"connection lost after {received:,} of {int(length):,} bytes")

    def _size(self, name: str) -> int | None:
        response = self._request(name, "HEAD")
        if response is None:
            return None
        with response:
            length = response.headers.get("Content-Length")
        return int(length) if length is not None else None


class S3Source(Source):
    """``s3://bucket/prefix`` through boto3 (one client per process: DataLoader workers are forked)."""

    def __init__(self, url: str, retries: int = 5, wait_s: float = 0.5):
        super().__init__(url, retries, wait_s)
        parsed = urlparse(self.url)
        self.bucket, self.prefix = parsed.netloc, parsed.path.strip("/")
        if not self.bucket:
            raise SourceError(f"{url}: no bucket (expected s3://bucket/prefix)")
        self._client, self._pid = None, None
        self._making = threading.Lock()  # prefetch threads may ask for the client together

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def __getstate__(self) -> dict:  # a DataLoader worker started by spawn makes its own client
        return {k: v for k, v in self.__dict__.items() if k not in ("_client", "_making")} | {
            "_client": None,
            "_pid": None,
        }

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _making=threading.Lock())

    @property
    def client(self):
        with self._making:
            if self._client is None or self._pid != os.getpid():
                import boto3
                from botocore.config import Config

                config = Config(
                    retries={"total_max_attempts": 1}, connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S
                )
                self._client, self._pid = boto3.session.Session().client("s3", config=config), os.getpid()
            return self._client

    def _calling(self, call):
        """Run one boto3 call, sorting its failures into Transient and Permanent."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

        try:
            return call()
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise Permanent(f"{exc} (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)") from None
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            code = error.get("Code", "")
            reason = f"{code or 'HTTP ' + str(status)}: {error.get('Message') or 'no message'}"
            if status in (401, 403):
                reason += " (credentials refused: check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"
            raise (Transient if status >= 500 or status in (408, 429) else Permanent)(reason) from None
        except (BotoCoreError, OSError) as exc:
            raise Transient(f"{type(exc).__name__}: {exc}") from None
        except Exception as exc:  # urllib3's protocol errors surface from the streaming body
            if type(exc).__module__.startswith("urllib3"):
                raise Transient(f"{type(exc).__name__}: {exc}") from None
            raise

    def _get(self, name: str, sink) -> None:
        def get() -> None:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(name))["Body"]
            with body:
                for chunk in body.iter_chunks(CHUNK):
                    sink(chunk)

        self._calling(get)

    def _size(self, name: str) -> int | None:
        from botocore.exceptions import ClientError

        def status(exc: ClientError) -> int:
            return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)

        def head() -> int | None:
            try:
                return int(self.client.head_object(Bucket=self.bucket, Key=self.key(name))["ContentLength"])
            except ClientError as exc:
                if status(exc) != 404:
                    raise
            try:  # HEAD answers a bare 404 for a missing bucket too: tell the two apart
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if status(exc) == 404:
                    raise Permanent(f"NoSuchBucket: bucket '{self.bucket}' does not exist") from None
                raise
            return None

        return self._calling(head)

    def _put(self, path: Path, name: str) -> None:
        self._calling(lambda: self.client.upload_file(str(path), self.bucket, self.key(name)))


SOURCES: dict[str, type[Source]] = {"s3": S3Source, "http": HttpSource, "https": HttpSource}


def open_source(location: str | os.PathLike, retries: int = 5, wait_s: float = 0.5) -> Source:
    """The Source for a local path or a URL of a known scheme."""
    scheme = urlparse(str(location)).scheme if isinstance(location, str) else ""
    if scheme in SOURCES:
        return SOURCES[scheme](str(location), retries, wait_s)
    if "://" in str(location):
        raise SourceError(f"{location}: unknown scheme '{scheme}' (use a local path, s3://, http:// or https://)")
    return LocalSource(location)
