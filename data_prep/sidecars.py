"""A shard's sidecar (``SHARD.tar.json``): written last, it says the shard is whole, for which plan, with which
checksum.

The jobs write it, the merge and the publisher read it: a module of its own so that none of them imports another
for it.
"""

from __future__ import annotations

import json
from pathlib import Path

from data_prep.plan import ShardPlan
from dnalm.data.shards import INDEX_ENTRY, file_sha256, index_path


def sidecar_path(folder: Path, shard: ShardPlan) -> Path:
    return Path(folder) / f"{shard.path}.json"


def shard_done(folder: Path, fingerprint: str, shard: ShardPlan, verify: bool = True) -> bool:
    side, tar = sidecar_path(folder, shard), Path(folder) / shard.path
    if not (side.is_file() and tar.is_file()):
        return False
    try:
        info = json.loads(side.read_text())
    except json.JSONDecodeError:
        return False
    if info.get("plan_fingerprint") != fingerprint or info.get("bytes") != tar.stat().st_size:
        return False
    index = index_path(tar)
    if not index.is_file() or index.stat().st_size != info.get("num_samples", -1) * INDEX_ENTRY:
        return False
    return not verify or file_sha256(tar) == info["sha256"]
