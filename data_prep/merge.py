"""Merge the shard sidecars of a finished prep run into ``manifest.json`` (written last, atomically)."""

from __future__ import annotations

import json
from pathlib import Path

from data_prep.plan import SPLITS, Plan, ShardPlan
from data_prep.sidecars import shard_done, sidecar_path
from dnalm.data.manifest import (
    Accounting,
    DataError,
    Exclusion,
    GenomeMix,
    Manifest,
    ManifestGenome,
    ShardEntry,
    SplitEntry,
    TokenizerEntry,
    write_contigs,
)


def verified_sidecars(folder: Path, plan: Plan, processes: int = 1) -> dict[int, dict]:
    """Every shard's sidecar, once every shard is here and matches its checksum."""

    missing = missing_shards(folder, plan)
    if missing:
        raise DataError(
            f"{folder}: {len(missing)} of {len(plan.shards)} shards are not finished (first: {missing[0]}); "
            "run the missing job slices (or `dnalm prep` again) before merging"
        )
    if processes > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            good = pool.map(
                _verified,
                [(folder, plan.fingerprint, s) for s in plan.shards],
                chunksize=max(1, len(plan.shards) // (4 * processes)),
            )
    else:
        good = [shard_done(folder, plan.fingerprint, s, verify=True) for s in plan.shards]
    corrupt = [s.path for s, ok in zip(plan.shards, good) if not ok]
    if corrupt:
        raise DataError(
            f"{folder}: {len(corrupt)} shards do not match their checksum (first: {corrupt[0]}); run `dnalm prep` "
            "again to redo them"
        )
    return {s.index: json.loads(sidecar_path(folder, s).read_text()) for s in plan.shards}


def listed(folder: Path, entry: TokenizerEntry) -> TokenizerEntry:
    """The tokenizer's entry with the files of its folder, which a remote reader fetches by name."""
    root = Path(folder) / entry.folder
    return entry.model_copy(
        update={"files": sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())}
    )


def missing_shards(folder: Path, plan: Plan) -> list[str]:

    return [s.path for s in plan.shards if not shard_done(folder, plan.fingerprint, s, verify=False)]


def try_merge(folder: Path) -> Manifest | None:
    """Write the manifest if every shard is done (the last job of a run does this); else None."""
    plan = Plan.load(folder)
    return None if missing_shards(folder, plan) else merge(folder)


def _verified(args: tuple[Path, str, ShardPlan]) -> bool:

    folder, fingerprint, shard = args
    return shard_done(folder, fingerprint, shard, verify=True)


def exclusion_record(folder: Path, plan: Plan, infos: dict[int, dict], bases: int) -> Exclusion | None:
    """What prep --exclude left out, once every shard says it was cut with the same files."""
    if not plan.config.exclude:
        return None
    files = {json.dumps(info.get("exclude_files"), sort_keys=True) for info in infos.values()}
    if len(files) > 1:
        raise DataError(
            f"{folder}: its shards were cut with different --exclude files (one changed during the prep); "
            "prep into a new folder"
        )
    by_split = {split: [s for s in plan.shards if s.split == split] for split in SPLITS}
    return Exclusion(
        k=plan.config.exclude_k,
        files=json.loads(files.pop()) if files else [],
        windows_dropped={
            split: sum(infos[s.index].get("excluded_windows", 0) for s in by_split[split]) for split in SPLITS
        },
        bases_dropped=bases,
    )


def merge(folder: Path, processes: int = 1, infos: dict[int, dict] | None = None) -> Manifest:
    """Check every shard against its checksum (in ``processes`` processes) and write the manifest.

    ``infos`` (shard index → sidecar) stands for shards checked elsewhere: uploaded by ``data_prep.publish``,
    perhaps from other machines, so their files need not be here.
    """
    folder = Path(folder)
    plan = Plan.load(folder)
    if infos is None:
        infos = verified_sidecars(folder, plan, processes)
    genomes = range(len(plan.genomes))

    def per_genome(info: dict, g: int, field: str) -> int:
        return info.get("genomes", {}).get(str(g), {}).get(field, 0)

    splits = {}
    for split in SPLITS:
        mine = [s for s in plan.shards if s.split == split]
        entries = [
            ShardEntry(
                path=s.path,
                num_samples=infos[s.index]["num_samples"],
                num_tokens=infos[s.index]["num_tokens"],
                sha256=infos[s.index]["sha256"],
                bytes=infos[s.index]["bytes"],
                index_sha256=infos[s.index].get("index_sha256"),
            )
            for s in mine
        ]
        splits[split] = SplitEntry(
            num_samples=sum(e.num_samples for e in entries),
            num_tokens=sum(e.num_tokens for e in entries),
            shards=entries,
            genome_samples=[sum(per_genome(infos[s.index], g, "num_samples") for s in mine) for g in genomes],
        )
    total = lambda field: sum(info[field] for info in infos.values())  # noqa: E731
    accounting = Accounting(
        genome_bases=plan.genome_bases,
        in_samples=total("in_samples"),
        dropped_n=plan.genome_bases - plan.excluded_bases - plan.segment_bases,
        left_over=total("left_over"),
        excluded=plan.excluded_bases,
        dropped_overlap=sum(info.get("dropped_overlap", 0) for info in infos.values()),
    )
    if (
        accounting.in_samples
        + accounting.dropped_n
        + accounting.left_over
        + accounting.excluded
        + accounting.dropped_overlap
        != accounting.genome_bases
    ):
        raise DataError(f"{folder}: base accounting does not add up ({accounting}); the shards do not match the plan")
    mix = []
    for g, entry in enumerate(plan.genomes):
        settings, stats = plan.config.genome_settings(g), plan.per_genome[g]
        mix.append(
            GenomeMix(
                name=settings.name,
                path=entry.path,
                weight=settings.weight,
                tags=settings.tags,
                bases=stats["bases"],
                excluded=stats["excluded"],
                dropped_n=stats["bases"] - stats["excluded"] - stats["segment_bases"],
                in_samples=sum(per_genome(i, g, "in_samples") for i in infos.values()),
                left_over=sum(per_genome(i, g, "left_over") for i in infos.values()),
                samples={split: splits[split].genome_samples[g] for split in SPLITS},
                dropped_overlap=sum(per_genome(i, g, "dropped_overlap") for i in infos.values()),
            )
        )
    num_samples = total("num_samples")
    padding = total("padding_tokens")
    manifest = Manifest(
        plan_fingerprint=plan.fingerprint,
        tokenizers=[listed(folder, t) for t in plan.tokenizers],
        views=plan.config.views,
        genomes=[
            ManifestGenome(
                path=g.path,
                sha256=g.sha256,
                num_contigs=len(g.contigs),
                bases=sum(c.length for c in g.contigs),
                softmasked=stats.get("softmasked", 0),
                softmask=stats.get("softmask", "none"),
            )
            for g, stats in zip(plan.genomes, plan.per_genome)
        ],
        seq_len=plan.config.seq_len,
        reverse_complement=plan.config.reverse_complement,
        num_samples=num_samples,
        num_tokens=total("num_tokens"),
        padding_tokens=padding,
        padding_fraction=padding / (num_samples * plan.config.seq_len) if num_samples else 0.0,
        splits=splits,
        accounting=accounting,
        settings=plan.config.model_dump(),
        mix=mix,
        exclusion=exclusion_record(folder, plan, infos, accounting.dropped_overlap),
    )
    write_contigs(folder, plan.genomes)
    manifest.save(folder)
    return manifest
