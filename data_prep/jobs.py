"""Run one slice of a plan (job I of K): stream the genomes once, window the pieces, write the shards.

A shard is written under a temporary name and renamed when complete; then its sidecar
(``shard-N.tar.json``: sample counts, accounting, sha256) is written the same way. A shard
counts as done only when its sidecar matches the plan and the tar's checksum, so a re-run after
a crash redoes exactly the shards that did not finish.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from data_prep import publish
from data_prep.merge import merge, try_merge
from data_prep.packing import FragmentPacker
from data_prep.plan import Plan, PrepConfig, ShardPlan, checked_fingerprint, prepare_folder
from data_prep.sidecars import shard_done, sidecar_path
from dnalm import genome as genome_io
from dnalm.data.kmers import Exclusion
from dnalm.data.manifest import DataError
from dnalm.data.shards import ShardWriter, encode_sample, sample_key, token_dtype
from dnalm.data.sources import open_source
from dnalm.data.windows import covered_bases, cut_windows, token_repeats
from dnalm.utils.files import write_atomic

_EXCLUSIONS: dict[tuple, Exclusion] = {}  # prep --exclude's k-mers, built once a process
_COMPLEMENT = np.zeros(256, np.uint8)
for _a, _b in zip(b"ACGTN", b"TGCAN"):
    _COMPLEMENT[_a] = _b


def slice_of(plan: Plan, job_index: int, num_jobs: int) -> list[ShardPlan]:
    """Job I of K takes a contiguous run of the plan's shards, so it touches only the genomes and contigs in it."""
    n = len(plan.shards)
    return plan.shards[job_index * n // num_jobs : (job_index + 1) * n // num_jobs]


def run_slice(folder: Path, job_index: int, num_jobs: int, progress: bool = False, upload: str | None = None) -> dict:
    """Write every shard of job ``job_index`` of ``num_jobs`` that is not done yet; return counts. With ``upload``
    (a URL), each shard goes up as soon as it is finished."""
    folder = Path(folder)
    source = open_source(upload) if upload else None
    plan = Plan.load(folder)
    tokenizers = plan.load_tokenizers(folder)
    mine = slice_of(plan, job_index, num_jobs)
    pending = [s for s in mine if not shard_done(folder, plan.fingerprint, s)]
    for shard in pending:
        name = Path(shard.path).name  # the tar's, the index's and the sidecar's (write_atomic's) temporary names
        for pattern in (f"{name}.tmp*", f"{name}.idx.tmp*", f".{name}.json.tmp*"):
            for stale in (folder / shard.path).parent.glob(pattern):
                stale.unlink(missing_ok=True)
    counts = {"shards": len(mine), "skipped_done": len(mine) - len(pending), "written": 0, "bases": 0}
    if not pending:
        return counts
    by_contig = defaultdict(list)
    for shard in pending:
        for piece in shard.pieces:
            by_contig[(piece.genome, piece.contig)].append((shard, piece))
    remaining = {s.index: len(s.pieces) for s in pending}
    writers: dict[int, tuple[ShardWriter, dict]] = {}
    bar = _bar(sum(s.bases for s in pending), progress)
    repeats = [g.get("softmask") == "repeats" for g in plan.per_genome]  # genomes whose lowercase marks repeats
    try:
        for g, path in enumerate(plan.config.genomes):
            wanted = {contig for genome, contig in by_contig if genome == g}
            if not wanted:
                continue
            for contig in genome_io.iter_contigs(path, only=set(wanted)):
                wanted.discard(contig.name)
                for shard, piece in by_contig.get((g, contig.name), ()):
                    writer, stats = writers.get(shard.index) or writers.setdefault(
                        shard.index, _open(folder, shard, plan)
                    )
                    softmask = contig.softmask[piece.start : piece.end] if repeats[g] else None
                    _write_piece(
                        writer, stats, contig.bases[piece.start : piece.end], piece, plan, tokenizers, softmask
                    )
                    counts["bases"] += piece.end - piece.start
                    if bar is not None:
                        bar.update(piece.end - piece.start)
                    remaining[shard.index] -= 1
                    if remaining[shard.index] == 0:
                        _close(folder, plan, shard, *writers.pop(shard.index))
                        counts["written"] += 1
                        if source is not None:
                            publish.upload_shard(source, folder, shard, counts["written"])
                if not wanted:  # every contig this job needs from this genome is written: stop parsing it
                    break
    except BaseException:
        for writer, _ in writers.values():
            writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    return counts


def _open(folder: Path, shard: ShardPlan, plan: Plan):
    stats = {"num_samples": 0, "num_tokens": 0, "padding_tokens": 0, "in_samples": 0, "left_over": 0, "genomes": {}}
    if plan.config.pack_fragments:
        stats["packer"] = FragmentPacker(plan.config.seq_len)
    if plan.config.exclude:  # prep --exclude: the k-mers that keep a window out (read once a process)
        stats.update(exclusion=_exclusion(tuple(plan.config.exclude), plan.config.exclude_k), excluded_windows=0)
    return ShardWriter(Path(folder) / shard.path), stats


def _write_piece(
    writer: ShardWriter, stats: dict, bases: np.ndarray, piece, plan: Plan, tokenizers, softmask: np.ndarray | None
) -> None:
    """Cut one piece into windows on each strand and write them; ``softmask``: the piece's, when its genome's
    lowercase marks repeats."""
    config = plan.config
    dtypes = [token_dtype(t.vocab_size) for t in tokenizers]
    encodings = None
    if "packer" in stats:
        encodings = [tokenizers[0].encode(bases)]
        if len(encodings[0]) < config.seq_len:  # a fragment: packed with others instead of left over
            if "exclusion" in stats and len(stats["exclusion"].hits(bases)):  # prep --exclude: left out
                _excluded(stats, piece.genome, windows=1, bases=len(bases))
                return
            flags = token_repeats(encodings[0].offsets, softmask) if softmask is not None else None
            for packed in stats["packer"].add(piece.genome, piece.contig, piece.start, encodings[0], flags):
                _write_packed(writer, stats, packed, dtypes[0])
            return
    windows = cut_windows(bases, tokenizers, config.seq_len, config.views, encodings, softmask)
    covered = covered_bases(windows)
    exclusion = stats.get("exclusion")  # prep --exclude: a window holding one of its k-mers is left out (both strands)
    held = exclusion.held(bases) if exclusion is not None else None
    kept = covered if held is None else covered_bases([w for w in windows if not held(w.start, w.end)])
    genome = stats["genomes"].setdefault(str(piece.genome), {"num_samples": 0, "in_samples": 0, "left_over": 0})
    for where in (stats, genome):
        where["in_samples"] += kept
        where["left_over"] += len(bases) - covered
    if kept != covered:
        _excluded(stats, piece.genome, windows=0, bases=covered - kept)
    strands = [("+", windows)]
    if config.reverse_complement:
        reverse_mask = softmask[::-1] if softmask is not None else None
        strands.append(
            ("-", cut_windows(_COMPLEMENT[bases[::-1]], tokenizers, config.seq_len, config.views, None, reverse_mask))
        )
    n = len(bases)
    for strand, strand_windows in strands:
        for w in strand_windows:
            start, end = (w.start, w.end) if strand == "+" else (n - w.end, n - w.start)
            if held is not None and held(start, end):
                stats["excluded_windows"] += 1
                continue
            start, end = piece.start + start, piece.start + end
            key = sample_key(piece.genome, piece.contig, start, end, strand)
            meta = {
                "genome": piece.genome,
                "contig": piece.contig,
                "start": start,
                "end": end,
                "strand": strand,
                "padding": w.padding,
            }
            writer.write(encode_sample(key, meta, [ids.astype(dt) for ids, dt in zip(w.ids, dtypes)], w.repeats))
            stats["num_samples"] += 1
            genome["num_samples"] += 1
            stats["num_tokens"] += sum(len(ids) for ids in w.ids)
            stats["padding_tokens"] += w.padding


def _write_packed(writer: ShardWriter, stats: dict, packed, dtype) -> None:
    contig, start, end = packed.parts[0]
    key = sample_key(packed.genome, contig, start, end, "+")
    meta = {
        "genome": packed.genome,
        "contig": contig,
        "start": start,
        "end": end,
        "strand": "+",
        "padding": packed.padding,
        "parts": [list(p) for p in packed.parts],
    }
    writer.write(encode_sample(key, meta, [packed.ids.astype(dtype)], [packed.repeats]))
    genome = stats["genomes"].setdefault(str(packed.genome), {"num_samples": 0, "in_samples": 0, "left_over": 0})
    for where in (stats, genome):
        where["num_samples"] += 1
        where["in_samples"] += packed.bases
    stats["num_tokens"] += len(packed.ids)
    stats["padding_tokens"] += packed.padding


def _exclusion(paths: tuple[str, ...], k: int) -> Exclusion:
    key = (paths, k)
    if key not in _EXCLUSIONS:
        _EXCLUSIONS.clear()
        _EXCLUSIONS[key] = Exclusion(paths, k)
    return _EXCLUSIONS[key]


def _excluded(stats: dict, genome: int, windows: int, bases: int) -> None:
    """Count what prep --exclude left out: windows (or packed fragments), and bases no kept window covers."""
    stats["excluded_windows"] += windows
    for where in (stats, stats["genomes"].setdefault(str(genome), {"num_samples": 0, "in_samples": 0, "left_over": 0})):
        where["dropped_overlap"] = where.get("dropped_overlap", 0) + bases


def _close(folder: Path, plan: Plan, shard: ShardPlan, writer: ShardWriter, stats: dict) -> None:
    exclusion = stats.pop("exclusion", None)
    if exclusion is not None:  # the merge checks that every shard was cut with the same files
        stats["exclude_files"] = exclusion.files
    packer = stats.pop("packer", None)
    if packer is not None:
        for packed in packer.flush():
            _write_packed(writer, stats, packed, token_dtype(plan.tokenizers[0].vocab_size))
    digest = writer.close()
    tar = Path(folder) / shard.path
    info = {
        "index": shard.index,
        "split": shard.split,
        "plan_fingerprint": plan.fingerprint,
        "sha256": digest,
        "index_sha256": writer.index_sha256,
        "bytes": tar.stat().st_size,
        "bases": shard.bases,
        **stats,
    }
    write_atomic(sidecar_path(folder, shard), json.dumps(info, indent=1))


def _bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="b", unit_scale=True, desc="prep", smoothing=0.1)


def _run_one(args) -> dict:
    folder, index, jobs, upload = args
    return run_slice(Path(folder), index, jobs, upload=upload)


def prep(
    config: PrepConfig,
    folder: Path,
    *,
    jobs: int = 1,
    job_index: int | None = None,
    num_jobs: int | None = None,
    progress: bool = False,
    publish_to: str | None = None,
) -> dict:
    """Plan (or resume) a prep run in ``folder`` and run all of it locally, or one slice of it. With
    ``publish_to`` (s3://…), ``folder`` is the local work folder and every shard, then the manifest, goes there."""
    started = time.perf_counter()
    source = open_source(publish_to) if publish_to else None
    if source is not None:  # a missing bucket, refused credentials or another prep there: before the plan's work
        publish.check_destination(source, checked_fingerprint(config)[1])
    plan = prepare_folder(folder, config, processes=jobs)
    if source is not None:
        publish.start(source, Path(folder), plan)
    if job_index is not None:
        assert num_jobs is not None, "job_index needs num_jobs"  # the CLI refuses one without the other
        counts = [run_slice(folder, job_index, num_jobs, progress=progress, upload=publish_to)]
        manifest = try_merge(folder) if source is None else publish.publish(source, folder)
    else:
        if jobs <= 1:
            counts = [run_slice(folder, 0, 1, progress=progress, upload=publish_to)]
        else:
            context = multiprocessing.get_context("spawn")
            with context.Pool(jobs) as pool:
                counts = pool.map(_run_one, [(str(folder), i, jobs, publish_to) for i in range(jobs)])
        manifest = merge(folder, processes=jobs) if source is None else publish.publish(source, folder)
        if manifest is None:
            raise DataError(f"{publish_to}: not every shard reached it; run the same `dnalm prep` again to finish")
    seconds = time.perf_counter() - started
    bases = sum(c["bases"] for c in counts)
    return {
        "manifest": manifest,
        "plan": plan,
        "seconds": seconds,
        "bases_processed": bases,
        "shards_written": sum(c["written"] for c in counts),
        "shards_already_done": sum(c["skipped_done"] for c in counts),
        "bases_per_second": bases / seconds if seconds else 0.0,
    }


def summary(result: dict, file=sys.stdout) -> None:
    manifest = result["manifest"]
    if manifest is None:
        print(
            f"slice done: {result['shards_written']} shards written, {result['shards_already_done']} already done; "
            "the manifest is written when every slice has finished (or by `python -m data_prep merge DIR`)",
            file=file,
        )
        return
    acc = manifest.accounting
    speed = (
        f"{result['bases_processed'] / max(result['seconds'], 1e-9) / 1e6:.2f} Mbases/s over {result['seconds']:.1f} s"
        if result["bases_processed"]
        else "nothing left to do"
    )
    print(
        f"{manifest.num_samples:,} samples "
        f"({', '.join(f'{k} {v.num_samples:,}' for k, v in manifest.splits.items())}), "
        f"{manifest.num_tokens:,} tokens, padding {manifest.padding_fraction:.3%}; "
        f"{result['shards_written']} shards written, {result['shards_already_done']} already done; {speed}",
        file=file,
    )
    excluded = f" + {acc.excluded:,} in excluded contigs" if acc.excluded else ""
    if manifest.exclusion is not None:  # prep --exclude
        dropped = ", ".join(f"{split} {n:,}" for split, n in manifest.exclusion.windows_dropped.items())
        excluded += f" + {acc.dropped_overlap:,} only in windows --exclude dropped ({dropped} windows)"
    print(
        f"bases: {acc.genome_bases:,} in genome = {acc.in_samples:,} in samples + {acc.dropped_n:,} dropped as N runs "
        f"+ {acc.left_over:,} left over{excluded}",
        file=file,
    )
    if len(manifest.mix) > 1:
        for g in manifest.mix:
            print(
                f"  {g.name:<20} weight {g.weight:g}  {g.in_samples:>14,} bases in {sum(g.samples.values()):,} samples "
                f"({g.left_over:,} left over, {g.excluded:,} excluded)",
                file=file,
            )
