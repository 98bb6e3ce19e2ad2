"""``dnalm bench stream``: reading shards from object storage, against reading them from local disk.

The source is a URL (``--source``), or a loopback server the bench starts, in a process of its own, over
the prepared folder: ``--serve s3`` (moto's S3 server, needs the dev extra; the bucket is filled by the
same upload that ``dnalm prep --out s3://`` does) or ``--serve http`` (the standard library's file
server). Measured:

- one rank's throughput, samples/s and MB/s: local disk; remote with a cold cache and the default
  prefetch; the same without prefetch; remote with a warm cache; and, with and without prefetch, from an HTTP
  server that answers every request 50 ms late (an object store's time to first byte: loopback has
  none, so there prefetching only competes with the reader for the same cores);
- the bytes each rank downloads in one epoch at W = 1, 2, 4, 8 (each rank with a cache of its own, as
  one rank per node), against the goal of 1.2/W of the split; the cache hit rate of each;
- the input path as training uses it (one DataLoader worker, MLM masking) from the remote source,
  against the tokens/s one encoder-small training step consumes on this machine;
- distinct 1-Mb regions per global batch of 64 taken by 8 ranks in the blocks order, against random draws.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from dnalm.bench import report

WORLD_SIZES = (1, 2, 4, 8)
SHARE_GOAL = 1.2
PIPELINE_GOAL = 10.0
REGION = 1_000_000


LATENCY_S = 0.05  # an object store's time to first byte, for the prefetch comparison


def serve_with_latency(folder: str, port: int, latency: float) -> None:
    """A static file server on 127.0.0.1 that answers every request after ``latency`` seconds."""
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Slow(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=folder, **kwargs)

        def log_message(self, *args):
            pass

        def send_head(self):
            time.sleep(latency)
            return super().send_head()

    ThreadingHTTPServer(("127.0.0.1", port), Slow).serve_forever()


@contextmanager
def loopback(kind: str, folder: Path, latency: float = 0.0):
    """A server on 127.0.0.1 holding ``folder``, in a process of its own (so it does not share this one's
    interpreter lock); yields the data's URL. ``latency`` (http only) delays every answer."""
    import os
    import socket
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    if kind == "s3":
        try:
            import moto.server  # noqa: F401
        except ImportError:
            from dnalm.utils.errors import DnalmError

            raise DnalmError("--serve s3 needs moto's server (pip install -e '.[dev]')") from None
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    elif latency:
        command = [
            sys.executable,
            "-c",
            f"from dnalm.bench.stream import serve_with_latency; "
            f"serve_with_latency({str(folder)!r}, {port}, {latency})",
        ]
    else:
        command = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(folder), str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):  # up within 20 s
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
                break
            except OSError as exc:
                if getattr(exc, "code", None):  # an HTTP answer, even an error, means it is up
                    break
                time.sleep(0.1)
        if kind == "http":
            yield f"http://127.0.0.1:{port}"
            return
        import boto3

        from data_prep.publish import upload_folder
        from dnalm.data.sources import open_source

        os.environ.update(
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        )
        boto3.client("s3").create_bucket(Bucket="bench")
        upload_folder(folder, open_source("s3://bench/data"))
        yield "s3://bench/data"
    finally:
        server.terminate()
        server.wait()


def read_rate(stream, samples: int) -> dict:
    """Samples/s and MB/s of ``samples`` samples read in this process (a cache's counts beside)."""
    started, tokens = time.perf_counter(), 0
    for i, sample in enumerate(stream):
        tokens += sample["input_ids"].numel()
        if i + 1 == samples:
            break
    seconds = time.perf_counter() - started
    shard_bytes = (
        sum(s.bytes for s in stream.shards) / stream.total * samples
    )  # the shard bytes these samples stand for
    row = {
        "samples": samples,
        "seconds": round(seconds, 3),
        "samples_per_s": round(samples / seconds),
        "tokens_per_s": round(tokens / seconds),
        "mb_per_s": round(shard_bytes / seconds / 1e6, 2),
    }
    if stream.cache is not None:
        row["cache"] = stream.cache.stats()
    return row


def epoch_shares(url: str, scratch: Path, split_bytes: int, micro_batch: int, worlds=WORLD_SIZES) -> list[dict]:
    """Bytes each rank downloads in one whole epoch, every rank with its own cache, at each world size."""
    from dnalm.data.stream import GenomeStream

    rows = []
    for world in worlds:
        downloaded, hit_rates, seen, started = [], [], 0, time.perf_counter()
        for rank in range(world):
            cache = scratch / f"shares-{world}-{rank}"
            stream = GenomeStream(url, batch_size=micro_batch, rank=rank, world_size=world, cache_dir=cache)
            seen += sum(1 for _ in stream)
            assert stream.cache is not None  # a URL with a cache_dir
            stats = stream.cache.stats()
            downloaded.append(stats["bytes_downloaded"])
            hit_rates.append(stats["hit_rate"])
            shutil.rmtree(cache, ignore_errors=True)
        share = max(downloaded) / split_bytes
        rows.append(
            {
                "world_size": world,
                "partitions": stream.state.partitions,
                "block_size": stream.state.block_size,
                "bytes_per_rank": downloaded,
                "max_share": round(share, 4),
                "ideal_share": round(1 / world, 4),
                "max_share_over_ideal": round(share * world, 3),
                "meets_goal": share <= SHARE_GOAL / world,
                "hit_rate_per_rank": hit_rates,
                "samples_read": seen,
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    return rows


def diversity(url: str, scratch: Path, world: int = 8, batch: int = 64, batches: int = 40) -> dict:
    """Distinct 1-Mb regions per global batch of ``batch`` windows taken by ``world`` ranks (blocks order), and per
    batch of random draws from the whole split."""
    from dnalm.data.shards import parse_key
    from dnalm.data.stream import GenomeStream

    def region(key: str) -> tuple:
        k = parse_key(key)
        return k["genome"], k["contig"], k["start"] // REGION

    ranks = [
        iter(
            GenomeStream(
                url, batch_size=batch // world, rank=r, world_size=world, epochs=None, cache_dir=scratch / "diversity"
            )
        )
        for r in range(world)
    ]
    measured = [
        len({region(next(rank)["key"]) for rank in ranks for _ in range(batch // world)}) for _ in range(batches)
    ]
    every = GenomeStream(url, batch_size=1, shuffle=False, order="global", cache_dir=scratch / "diversity")
    regions = [region(s["key"]) for s in every]
    rng = np.random.default_rng(1)
    random = [len({regions[i] for i in rng.choice(len(regions), batch, replace=False)}) for _ in range(batches)]
    return {
        "world_size": world,
        "global_batch": batch,
        "batches": batches,
        "stream_mean_regions": round(float(np.mean(measured)), 2),
        "random_mean_regions": round(float(np.mean(random)), 2),
        "ratio": round(float(np.mean(measured) / np.mean(random)), 3),
    }


def prepare(genome: Path, folder: Path, seq_len: int, shard_size_mb: float) -> Path:
    from data_prep.jobs import prep
    from data_prep.plan import PrepConfig

    if not (folder / "manifest.json").exists():
        prep(
            PrepConfig(
                genomes=[str(genome)],
                tokenizers=["nucleotide"],
                seq_len=seq_len,
                shard_size_mb=shard_size_mb,
                val_fraction=0.0,
            ),
            folder,
        )
    return folder


def run(
    out_dir: Path,
    work: Path,
    source: str | None = None,
    serve: str = "s3",
    genome: Path | None = None,
    seq_len: int = 1024,
    shard_size_mb: float = 2.0,
    samples: int = 20_000,
    micro_batch: int = 8,
    worlds=WORLD_SIZES,
    latency_s: float = LATENCY_S,
) -> dict:
    from dnalm.bench.data import _encoder_small_step, _pipeline_tokens_per_s
    from dnalm.data.cache import shard_bytes
    from dnalm.data.stream import PREFETCH_SHARDS, GenomeStream
    from dnalm.utils.devices import resolve

    genome = Path(genome) if genome else report.chr20_or_bundled()
    local = prepare(genome, Path(work) / f"{genome.name.split('.')[0]}-{seq_len}", seq_len, shard_size_mb)
    scratch = Path(tempfile.mkdtemp(prefix="dnalm-bench-stream-"))
    command = (
        f"dnalm bench stream {'--source ' + source if source else '--serve ' + serve} --seq-len {seq_len} "
        f"--shard-size-mb {shard_size_mb} --samples {samples}"
    )
    started = time.perf_counter()
    try:
        with loopback(serve, local) if source is None else _given(source) as url:
            remote = GenomeStream(url, batch_size=micro_batch, cache_dir=scratch / "probe")
            same = remote.manifest.plan_fingerprint == GenomeStream(local, batch_size=1).manifest.plan_fingerprint
            split = sum(shard_bytes(s) for s in remote.shards)
            depth = PREFETCH_SHARDS

            def rate(location, cache: str, prefetch: int) -> dict:
                stream = GenomeStream(
                    location, batch_size=micro_batch, prefetch_shards=prefetch, cache_dir=scratch / cache
                )
                return read_rate(stream, samples) | {"prefetch_shards": prefetch}

            throughput = {
                "local_disk": read_rate(GenomeStream(local, batch_size=micro_batch, order="blocks"), samples)
                if same
                else None,
                "remote_cold": rate(url, "cold", depth),
                "remote_cold_no_prefetch": rate(url, "cold0", 0),
                "remote_warm": rate(url, "cold", depth),
            }
            if latency_s:
                with loopback("http", local, latency_s) as slow:
                    late = f"remote_{latency_s * 1000:.0f}ms"
                    throughput[f"{late}_cold"] = rate(slow, "late", depth)
                    throughput[f"{late}_cold_no_prefetch"] = rate(slow, "late0", 0)
            shares = epoch_shares(url, scratch, split, micro_batch, worlds)
            pipeline = _pipeline_tokens_per_s(url, samples, micro_batch, cache_dir=scratch / "pipeline")
            step = _encoder_small_step(remote.manifest, remote.manifest.seq_len, resolve("cpu"))
            mixing = diversity(url, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = report.header("stream", command, resolve("cpu")) | {
        "source": source or f"loopback {serve} server on 127.0.0.1 ({'moto' if serve == 's3' else 'http.server'})",
        "data": {
            "genome": genome.name,
            "seq_len": seq_len,
            "shards": len(remote.shards),
            "split_bytes": split,
            "samples": remote.total,
            "local_copy_compared": same,
        },
        "throughput": throughput,
        "shares": shares,
        "share_goal": f"each rank downloads <= {SHARE_GOAL}/W of the split in an epoch",
        "pipeline": {
            "what": "StreamLoader (1 DataLoader worker) from the remote source, batches of "
            f"{micro_batch}, MLM masking in the training process",
            "tokens_per_s": round(pipeline),
            "encoder_small_step_tokens_per_s": round(step),
            "ratio": round(pipeline / step, 1),
            "goal": PIPELINE_GOAL,
            "meets_goal": pipeline / step >= PIPELINE_GOAL,
        },
        "diversity": mixing,
        "seconds": round(time.perf_counter() - started, 1),
    }
    report.write(result, out_dir, "stream")
    _plot(result, out_dir)
    return result


@contextmanager
def _given(url: str):
    yield url


def _plot(result: dict, out_dir: Path) -> None:
    from dnalm.utils.plots import pyplot

    plt = pyplot()
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(13, 3.8))
    rows = {k: v for k, v in result["throughput"].items() if v}
    left.bar(
        [k.replace("remote_", "").replace("_", "\n", 2).replace("_", " ") for k in rows],
        [r["samples_per_s"] for r in rows.values()],
        color="#3b7dd8",
    )
    left.set_ylabel("samples / s, one rank")
    left.tick_params(axis="x", labelsize=7)
    shares = result["shares"]
    worlds = [r["world_size"] for r in shares]
    middle.plot(worlds, [r["max_share"] for r in shares], marker="o", label="largest rank's download")
    middle.plot(worlds, [1 / w for w in worlds], linestyle="--", color="grey", label="1/W")
    middle.plot(worlds, [SHARE_GOAL / w for w in worlds], linestyle=":", color="#d83b3b", label=f"{SHARE_GOAL}/W goal")
    middle.set_xscale("log", base=2)
    middle.set_xlabel("ranks W")
    middle.set_ylabel("share of the split downloaded per epoch")
    middle.legend(fontsize=7)
    pipe = result["pipeline"]
    right.bar(
        ["stream + masking\n(remote)", "encoder-small\nstep"],
        [pipe["tokens_per_s"], pipe["encoder_small_step_tokens_per_s"]],
        color=["#3b7dd8", "#8a8a8a"],
    )
    right.set_yscale("log")
    right.set_ylabel("tokens / s")
    right.set_title(f"{pipe['ratio']}x (goal {pipe['goal']:g}x)", fontsize=9)
    fig.suptitle(
        f"dnalm bench stream — {result['source']}; {result['machine']['cpu']}, "
        f"{result['machine']['cores_available']} cores",
        fontsize=9,
    )
    report.save_plot(fig, out_dir, "stream")
