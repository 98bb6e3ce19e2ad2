"""``dnalm prep --out s3://…``: prepare in a local work folder, upload each shard once it is finished, the manifest
last.

- Before the plan is built, the destination is checked (unreachable, read-only, or holding a manifest or
  plan of other inputs: refused); once it is built, the plan and tokenizers go up.
- Each finished shard goes up as its tar, its index, then its sidecar: a sidecar in the bucket means its
  shard is whole there.
- ``publish`` runs when a prep (or a job slice) ends: it uploads every shard finished here that is not up
  yet (a run killed between a shard's rename and its upload), and once every shard of the plan has its
  sidecar in the bucket it merges the manifest from those sidecars and uploads ``contigs.tsv``, then
  ``manifest.json`` last. So a reader never sees a manifest whose shards are missing; job slices on
  different machines each upload their own shards, and whichever finishes last writes the manifest.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from data_prep.merge import merge
from data_prep.plan import PLAN_FILE, Plan, ShardPlan
from data_prep.sidecars import shard_done, sidecar_path
from dnalm.data.cache import default_cache_dir
from dnalm.data.manifest import CONTIGS_FILE, MANIFEST_FILE, DataError, Manifest
from dnalm.data.shards import index_path
from dnalm.data.sources import HttpSource, Source
from dnalm.utils import faults

PARALLEL = 16  # object requests in flight while checking a whole plan's shards


def work_folder(url: str) -> Path:
    """Where a prep to ``url`` runs when no --work is given: under the node-local cache, one folder per URL."""
    return default_cache_dir() / "prep" / hashlib.sha256(url.encode()).hexdigest()[:16]


def sidecar_name(shard: ShardPlan) -> str:
    return f"{shard.path}.json"


def check_destination(source: Source, fingerprint: str) -> None:
    """Before any work: a destination that can take shards (not a read-only http(s) server, reachable, credentials
    accepted) and holds no prep of other inputs (a manifest or plan of another fingerprint)."""
    if isinstance(source, HttpSource):
        raise DataError(f"--out {source.url}: http(s) sources are read-only; write to s3://… or a local folder")
    for name in (MANIFEST_FILE, PLAN_FILE):
        if source.size(name) is None:
            continue
        raw = json.loads(source.read(name))
        theirs = raw.get("plan_fingerprint") or raw.get("fingerprint")
        if theirs != fingerprint:
            raise DataError(
                f"{source.url_of(name)}: holds a prep of different inputs (plan {theirs}, this run "
                f"{fingerprint}); choose another --out"
            )


def start(source: Source, folder: Path, plan: Plan) -> None:
    """Put the plan and tokenizers up (the destination checked by ``check_destination``)."""
    for entry in plan.tokenizers:
        root = folder / entry.folder
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            source.upload(path, f"{entry.folder}/{path.relative_to(root).as_posix()}")
    source.upload(folder / PLAN_FILE, PLAN_FILE)


def upload_shard(source: Source, folder: Path, shard: ShardPlan, count: int = 0) -> None:
    """The shard's tar, its index, then its sidecar (which says the other two are whole in the bucket)."""

    tar = Path(folder) / shard.path
    source.upload(tar, shard.path)
    source.upload(index_path(tar), f"{shard.path}.idx")
    source.upload(sidecar_path(folder, shard), sidecar_name(shard))
    faults.strike("prep.uploaded", count)


def publish(source: Source, folder: Path) -> Manifest | None:
    """Upload what is finished here and missing there; the manifest once every shard is up (else None)."""

    folder = Path(folder)
    plan = Plan.load(folder)
    if source.size(MANIFEST_FILE) is not None:
        return Manifest.model_validate_json(source.read(MANIFEST_FILE))

    def settle(shard: ShardPlan) -> dict | None:
        """The shard's sidecar, uploading the shard first where it is finished here but not up; None if neither."""
        local = sidecar_path(folder, shard)
        up = source.size(sidecar_name(shard))
        if local.is_file() and shard_done(folder, plan.fingerprint, shard, verify=False):
            if up != local.stat().st_size:
                upload_shard(source, folder, shard)
            return json.loads(local.read_text())
        return json.loads(source.read(sidecar_name(shard))) if up is not None else None

    with ThreadPoolExecutor(PARALLEL) as pool:
        settled = dict(zip((s.index for s in plan.shards), pool.map(settle, plan.shards)))
    infos = {index: info for index, info in settled.items() if info is not None}
    if len(infos) < len(settled):
        return None
    stale = [s.path for s in plan.shards if infos[s.index].get("plan_fingerprint") != plan.fingerprint]
    if stale:
        raise DataError(
            f"{source.url_of(stale[0])}: its sidecar is from another plan ({len(stale)} shards); "
            "this destination mixes two preps: choose another --out"
        )
    manifest = merge(folder, infos=infos)
    source.upload(folder / CONTIGS_FILE, CONTIGS_FILE)
    source.upload(folder / MANIFEST_FILE, MANIFEST_FILE)
    return manifest


def upload_folder(folder: Path, source: Source) -> Manifest:
    """A prep finished in a local folder, up to ``source``: plan and tokenizers, every shard, the manifest last."""
    folder = Path(folder)
    plan = Plan.load(folder)
    check_destination(source, plan.fingerprint)
    start(source, folder, plan)
    manifest = publish(source, folder)
    if manifest is None:
        raise DataError(f"{folder}: not every shard is finished here; run its `dnalm prep` to the end first")
    return manifest
