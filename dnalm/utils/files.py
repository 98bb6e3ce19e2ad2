"""Files that are whole or absent: written beside their final name, synced to disk, renamed into place.

A rename is atomic, but only durable once the file's data and the directory holding the new name
are on disk: after a power or node loss, a file renamed before its data was synced can be there
and empty. So every writer here syncs the data, renames, then syncs the directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from dnalm.utils.errors import DnalmError


def fsync_path(path: str | Path) -> None:
    """Flush one file's or directory's data and metadata to disk (a read-only descriptor is enough on Linux)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str | Path) -> None:
    """Every file and directory under ``folder``, then ``folder`` itself."""
    for root, _dirs, files in os.walk(folder, topdown=False):
        for name in files:
            fsync_path(os.path.join(root, name))
        fsync_path(root)


def rename_durably(source: str | Path, target: str | Path) -> None:
    """``os.replace`` followed by a sync of the target's directory, so the new name survives a crash."""
    os.replace(source, target)
    fsync_path(Path(target).parent)


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` so that a reader (or a crash) sees the old file or the new one, never a part; a
    missing folder is made first (an output named in a folder not made yet is what the user asked for)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
        fh.flush()
        os.fsync(fh.fileno())
    rename_durably(tmp, path)
    return path


def binary_kind(path: str | os.PathLike[str]) -> str:
    """What a file that is not UTF-8 text looks like, for a message: "a gzip file", "a binary file"."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    return "a gzip file" if head[:2] == b"\x1f\x8b" else "a binary file"


def refuse_file_as_folder(folder: str | os.PathLike[str], what: str) -> None:
    """Refuse, before any work, an output folder that is, or lies under, an existing file (``what`` names where it
    was given: ``--out``, ``run_dir``)."""
    folder = Path(folder)
    for path in (folder, *folder.parents):
        if path.exists() or path.is_symlink():
            if not path.is_dir():
                where = "is" if path == folder else f"lies under {path}, which is"
                raise DnalmError(f"{what} {folder}: {where} a file, not a folder; give a folder to create")
            return


@contextmanager
def staged_folder(folder: str | os.PathLike[str], error: type[DnalmError] = DnalmError):
    """Yield a temporary folder next to ``folder``; it becomes ``folder`` (synced) only if the block finishes."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise error(f"{folder}: exists and is not empty; choose another folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        yield staging
        fsync_tree(staging)
        if folder.exists():
            folder.rmdir()
        rename_durably(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
