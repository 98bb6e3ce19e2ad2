"""Writing a folder so that no reader ever sees it half-made: build it beside, rename it into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from dnalm.errors import DnalmError


@contextmanager
def staged_folder(folder: str | Path, error: type[DnalmError] = DnalmError):
    """Yield a temporary folder next to ``folder``; it becomes ``folder`` only if the block finishes."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise error(f"{folder}: exists and is not empty; choose another folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        yield staging
        if folder.exists():
            folder.rmdir()
        os.rename(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
