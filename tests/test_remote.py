"""Shards from object storage: s3:// through moto's S3 server and http:// through the standard library's, both on
loopback and read with the clients users use (boto3, urllib); the node-local cache; each rank's share of the
downloads; network faults that are retried and then named, and never give a wrong or partial sample."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data_prep.jobs import prep
from data_prep.plan import PrepConfig
from dnalm import genome
from dnalm.data.cache import ShardCache, default_cache_dir, shard_bytes
from dnalm.data.manifest import DataError, Manifest
from dnalm.data.shards import IndexedShard
from dnalm.data.sources import SourceError, open_source
from dnalm.data.stream import GenomeStream, StreamLoader
from tests.conftest import REPO, refused_by_cli
from tests.launching import losses, run, sample_keys, torchrun_cmd
from tests.servers import FAULTS, FaultProxy, FileServer, free_port, s3_server
from tests.test_stream import take

PREP = [
    "--seq-len",
    "512",
    "--shard-size-mb",
    "1.0",
    "--val-fraction",
    "0.05",
]  # the settings of conftest's ecoli_prepared


def bucket_keys(prefix: str) -> dict[str, int]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket="dnalm", Prefix=prefix)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


def samples(stream, n: int) -> list[tuple[str, list[int]]]:
    out = []
    for sample in stream:
        out.append((sample["key"], sample["input_ids"].tolist()))
        if len(out) == n:
            break
    return out


@pytest.fixture(scope="module")
def s3():
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def http(ecoli_prepared):
    server = FileServer(ecoli_prepared)
    yield server
    server.close()


@pytest.fixture(scope="module")
def published(s3, tmp_path_factory):
    """`dnalm prep --out s3://dnalm/ecoli`, killed just after its 5th shard upload, what the bucket held then, and
    the same command run again."""
    root = tmp_path_factory.mktemp("published")
    url = "s3://dnalm/ecoli"
    cmd = [
        sys.executable,
        "-m",
        "dnalm",
        "prep",
        str(genome.DEFAULT_GENOME),
        "--out",
        url,
        "--work",
        str(root / "work"),
        *PREP,
    ]
    killed = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,
        env=os.environ | {"DNALM_FAULTS": "kill@prep.uploaded:5"},
    )
    after_kill = bucket_keys("ecoli/")
    with pytest.raises(DataError) as refused:
        GenomeStream(url, batch_size=4, cache_dir=root / "early-reader")
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return {
        "url": url,
        "root": root,
        "killed": killed,
        "after_kill": after_kill,
        "refused": str(refused.value),
        "rerun": rerun,
    }


def test_prep_to_s3_uploads_every_shard_before_the_manifest(published, ecoli_prepared):
    assert published["killed"].returncode == -signal.SIGKILL
    up = published["after_kill"]
    assert "ecoli/plan.json" in up and "ecoli/manifest.json" not in up
    sidecars = [k for k in up if k.endswith(".tar.json")]
    assert len(sidecars) == 5, sidecars
    assert all(k.removesuffix(".json") in up and k.replace(".json", ".idx") in up for k in sidecars), (
        "a sidecar follows its shard"
    )
    assert "s3://dnalm/ecoli/manifest.json: no manifest" in published["refused"]

    assert published["rerun"].returncode == 0, published["rerun"].stderr
    remote = Manifest.model_validate_json(open_source(published["url"]).read("manifest.json"))
    local = Manifest.load(ecoli_prepared)
    assert remote.plan_fingerprint == local.plan_fingerprint
    for split in ("train", "val"):
        assert [(s.path, s.sha256, s.index_sha256) for s in remote.splits[split].shards] == [
            (s.path, s.sha256, s.index_sha256) for s in local.splits[split].shards
        ]
    up = bucket_keys("ecoli/")
    for shard in (s for split in remote.splits.values() for s in split.shards):
        assert up[f"ecoli/{shard.path}"] == shard.bytes and up[f"ecoli/{shard.path}.idx"] == shard.num_samples * 24
    assert all(f"ecoli/{t.folder}/{name}" in up for t in remote.tokenizers for name in t.files)


def test_job_slices_on_two_machines_publish_one_prep_and_other_inputs_are_refused(published, ecoli_prepared, tmp_path):
    """Two slices of the same prep, each with its own work folder (as on two nodes): the first leaves no manifest, the
    second writes it from both slices' sidecars, with the shards of a local prep. Another prep into the same prefix is
    refused before it uploads anything."""
    url = "s3://dnalm/sliced"
    config = PrepConfig(
        genomes=[str(genome.DEFAULT_GENOME)],
        tokenizers=["nucleotide"],
        seq_len=512,
        shard_size_mb=1.0,
        val_fraction=0.05,
    )
    first = prep(config, tmp_path / "node0", job_index=0, num_jobs=2, publish_to=url)
    assert first["manifest"] is None and "sliced/manifest.json" not in bucket_keys("sliced/")
    second = prep(config, tmp_path / "node1", job_index=1, num_jobs=2, publish_to=url)
    local = Manifest.load(ecoli_prepared)
    assert second["manifest"].plan_fingerprint == local.plan_fingerprint
    remote = Manifest.model_validate_json(open_source(url).read("manifest.json"))
    assert [(s.path, s.sha256) for s in remote.splits["train"].shards] == [
        (s.path, s.sha256) for s in local.splits["train"].shards
    ]
    assert not list((tmp_path / "node1" / "train").glob("shard-000000.tar")), "node 1 never wrote node 0's shards"

    done = refused_by_cli("prep", "--out", url, "--work", tmp_path / "other", "--seq-len", "256")
    assert done.returncode == 1 and "holds a prep of different inputs" in done.stderr
    assert len(bucket_keys("sliced/")) == len(bucket_keys("ecoli/")), "nothing of the other prep went up"
    assert not (tmp_path / "other").exists(), "refused before a plan was made"


def test_remote_streams_read_what_the_local_folder_gives(published, http, ecoli_prepared, tmp_path):
    for order in ("global", "blocks"):
        local = samples(GenomeStream(ecoli_prepared, batch_size=8, seed=2, order=order), 400)
        for url in (published["url"], http.url):
            stream = GenomeStream(url, batch_size=8, seed=2, order=order, cache_dir=tmp_path / order)
            assert samples(stream, 400) == local, (url, order)
    remote_default = GenomeStream(http.url, batch_size=8, cache_dir=tmp_path / "global")
    assert remote_default.state.order == "blocks" and GenomeStream(ecoli_prepared, batch_size=8).state.order == "global"


def test_a_remote_stream_resumes_exactly_with_other_workers_and_a_cold_cache(published, tmp_path):
    def loader(cache, workers):
        return StreamLoader(
            GenomeStream(published["url"], batch_size=4, seed=3, epochs=None, cache_dir=tmp_path / cache),
            num_workers=workers,
        )

    uninterrupted = take(loader("a", 2), 60)
    first = loader("b", 2)
    head = take(first, 25)
    resumed = loader("c", 1)
    resumed.load_state_dict(first.state_dict())
    assert head + take(resumed, 35) == uninterrupted


def test_webdataset_reads_the_shards_over_http(http, ecoli_prepared):
    import webdataset as wds

    shards = Manifest.load(ecoli_prepared).splits["train"].shards[:2]
    theirs = list(wds.WebDataset([f"{http.url}/{s.path}" for s in shards], shardshuffle=False))
    ours = [IndexedShard(ecoli_prepared / s.path, s.num_samples).read(i) for s in shards for i in range(s.num_samples)]
    assert [s["__key__"] for s in theirs] == [key for key, _, _ in ours]
    for sample, (_, meta, (ids,)) in zip(theirs, ours):
        assert json.loads(sample["json"]) == meta
        assert np.array_equal(np.load(__import__("io").BytesIO(sample["tok0.npy"])), ids)


def test_each_rank_downloads_its_share_and_every_sample_is_read_once(ecoli, tmp_path):
    half = tmp_path / "half.fa"  # 2.3 Mb in ~60 shards: each of 8 ranks has ~8, so its two end shards cost little
    half.write_text(f">half\n{ecoli.sequence[:2_300_000]}\n")
    folder = tmp_path / "small-shards"
    prep(
        PrepConfig(genomes=[str(half)], tokenizers=["nucleotide"], seq_len=512, shard_size_mb=0.125, val_fraction=0.0),
        folder,
    )
    manifest = Manifest.load(folder)
    split = sum(shard_bytes(s) for s in manifest.splits["train"].shards)
    server = FileServer(folder)
    try:
        for world in (2, 8):
            seen = []
            for rank in range(world):
                stream = GenomeStream(
                    server.url,
                    batch_size=4,
                    rank=rank,
                    world_size=world,
                    seed=0,
                    cache_dir=tmp_path / f"{world}-{rank}",
                )
                seen += [s["key"] for s in stream]
                downloaded = stream.cache.stats()["bytes_downloaded"]
                assert downloaded <= 1.2 * split / world, (world, rank, downloaded / split)
            assert len(seen) == len(set(seen)) and manifest.splits["train"].num_samples - len(seen) < world * 4
    finally:
        server.close()


NODE_RANK = """
import sys
from dnalm.data.stream import GenomeStream, StreamLoader
stream = GenomeStream(sys.argv[1], batch_size=8, rank=int(sys.argv[2]), world_size=2, seed=0, order="global",
                      cache_dir=sys.argv[3])
for k, batch in enumerate(StreamLoader(stream, num_workers=2)):
    if k == 150:
        break
"""


def test_a_node_downloads_each_shard_once_for_all_its_ranks_and_workers(http, tmp_path):
    http.requests.clear()
    cache = tmp_path / "node-cache"
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", NODE_RANK, http.url, str(r), str(cache)],
            cwd=REPO,
            env=os.environ | {"PYTHONPATH": str(REPO)},
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    for process in ranks:
        assert process.wait(timeout=300) == 0, process.stderr.read()
    gets = http.gets(".tar")
    assert len(gets) >= 20 and set(gets.values()) == {1}, gets
    assert len(list((cache / "shards").glob("*.tar"))) == len(gets) and not list((cache / "shards").glob(".*"))


def test_the_cache_evicts_the_least_recently_used_shard_and_refuses_a_tiny_limit(published, ecoli_prepared, tmp_path):
    source = open_source(published["url"])
    entries = Manifest.load(ecoli_prepared).splits["train"].shards[:4]
    cache = ShardCache(tmp_path / "lru", limit=3 * max(shard_bytes(e) for e in entries))
    for entry in entries[:3]:
        cache.open(source, entry).close()
    cache.open(source, entries[0]).close()  # the first is now the most recently used
    cache.open(source, entries[3]).close()
    present = {e.path for e in entries if cache.paths(e)[0].exists()}
    assert present == {entries[0].path, entries[2].path, entries[3].path}
    assert cache.stats()["evicted"] == 1 and cache.stats()["hits"] == 1
    assert cache.usage() <= cache.limit

    limit = 6 * shard_bytes(entries[0])
    stream = GenomeStream(
        published["url"],
        batch_size=8,
        seed=1,
        cache_dir=tmp_path / "small",
        cache_limit=limit,
        partitions=2,
        block_size=316,
    )
    local = samples(
        GenomeStream(ecoli_prepared, batch_size=8, seed=1, order="blocks", partitions=2, block_size=316), 3000
    )
    got, most = [], 0
    for sample in stream:
        got.append((sample["key"], sample["input_ids"].tolist()))
        if len(got) % 100 == 0:
            most = max(most, stream.cache.usage())
        if len(got) == 3000:
            break
    assert got == local and most <= limit
    with pytest.raises(DataError, match=r"data.cache_limit 1,000,000 bytes cannot hold 6 of the largest shards"):
        GenomeStream(published["url"], batch_size=8, cache_dir=tmp_path / "tiny", cache_limit=1_000_000)


def test_the_cache_limit_counts_every_rank_and_worker_of_the_node(http, ecoli_prepared, tmp_path, monkeypatch):
    largest = max(shard_bytes(e) for e in Manifest.load(ecoli_prepared).splits["train"].shards)
    settings = {"batch_size": 8, "cache_dir": tmp_path / "cache", "cache_limit": 12 * largest}  # 2 × (4 + 2) shards
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun's
    stream = GenomeStream(http.url, **settings)
    StreamLoader(stream, num_workers=0)
    with pytest.raises(
        DataError,
        match=r"cannot hold 24 of the largest shards \([\d,]+ bytes\): 2 local ranks × 2 workers "
        r"× \(4 prefetched \+ the one read \+ one arriving\)",
    ):
        StreamLoader(stream, num_workers=2)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setenv("LOCAL_SIZE", "3")  # DeepSpeed's launcher's
    with pytest.raises(DataError, match=r"cannot hold 18 .*: 3 local ranks × 1 worker × \(4 prefetched"):
        GenomeStream(http.url, **settings)


def test_the_cache_defaults_to_a_node_local_folder(monkeypatch, tmp_path):
    for name in ("DNALM_CACHE", "DNALM_CACHE_DIR", "TMPDIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("USER", "ada")
    assert default_cache_dir() == Path("/tmp/dnalm-cache-ada")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "job"))
    assert default_cache_dir() == tmp_path / "job" / "dnalm-cache-ada"
    monkeypatch.setenv("DNALM_CACHE_DIR", str(tmp_path / "older-name"))
    assert default_cache_dir() == tmp_path / "older-name"
    monkeypatch.setenv("DNALM_CACHE", str(tmp_path / "chosen"))
    assert default_cache_dir() == tmp_path / "chosen"


def test_a_filesystem_that_refuses_flock_is_named_with_the_setting_to_change(http, tmp_path, monkeypatch):
    monkeypatch.setenv("DNALM_FAULTS", "refuse@cache.flock")  # flock raises ENOLCK, as on Lustre without -o flock
    with pytest.raises(DataError) as refused:
        GenomeStream(http.url, batch_size=8, cache_dir=tmp_path / "lustre")
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'lustre'}: this filesystem refuses file locks (flock: No locks available)")
    assert "set data.cache_dir to a node-local folder" in message and "\n" not in message


@pytest.fixture(scope="module")
def s3_proxy(s3, published):
    """moto behind a proxy that spoils chosen GETs, reached by boto3 as users reach S3."""
    proxy = FaultProxy(s3)
    yield proxy
    proxy.close()


def faulty_server(request, monkeypatch, kind: str):
    """(server, data URL, the server's path prefix of that data) for a spoilable loopback HTTP or S3 server."""
    if kind == "http":
        server = request.getfixturevalue("http")
        return server, server.url, ""
    server = request.getfixturevalue("s3_proxy")
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    return server, "s3://dnalm/ecoli", "dnalm/ecoli/"


def first_shard(folder, settings: dict) -> str:
    """The shard the stream with ``settings`` reads first."""
    stream = GenomeStream(folder, **settings)
    return stream.shards[int(stream.order(0)(0, [0])[0][0])].path


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("kind", ["http", "s3"])
def test_network_faults_are_retried_then_named(request, ecoli_prepared, tmp_path, monkeypatch, kind, fault):
    server, url, prefix = faulty_server(request, monkeypatch, kind)
    settings = {"batch_size": 4, "seed": 5, "order": "global", "retries": 2, "retry_wait_s": 0.01, "prefetch_shards": 0}
    shard = first_shard(ecoli_prepared, settings)
    expected = samples(GenomeStream(ecoli_prepared, **settings), 4)
    server.faults[prefix + shard].extend([fault, fault])
    server.requests[prefix + shard] = 0
    assert samples(GenomeStream(url, cache_dir=tmp_path / "passes", **settings), 4) == expected
    assert server.requests[prefix + shard] == 3, "two faults, then the good copy"

    server.faults[prefix + shard].extend([fault] * 3)
    started = time.monotonic()
    with pytest.raises(SourceError) as failed:
        samples(GenomeStream(url, cache_dir=tmp_path / "fails", **settings), 4)
    assert f"{url}/{shard}:" in str(failed.value) and "gave up after 3 attempts" in str(failed.value)
    assert time.monotonic() - started < 30
    assert not [p for p in (tmp_path / "fails" / "shards").iterdir() if p.name.endswith(".tar")], "nothing partial kept"


@pytest.mark.parametrize("kind", ["http", "s3"])
def test_a_missing_object_fails_at_once(request, ecoli_prepared, tmp_path, monkeypatch, kind):
    server, url, prefix = faulty_server(request, monkeypatch, kind)
    settings = {"batch_size": 4, "seed": 5, "order": "global", "retries": 3, "retry_wait_s": 5, "prefetch_shards": 0}
    shard = first_shard(ecoli_prepared, settings)
    server.faults[prefix + shard].append("404")
    server.requests[prefix + shard] = 0
    started = time.monotonic()
    with pytest.raises(SourceError, match=rf"{url}/{shard}: .*(404|NoSuchKey)") as failed:
        samples(GenomeStream(url, cache_dir=tmp_path, **settings), 4)
    assert "gave up" not in str(failed.value) and server.requests[prefix + shard] == 1
    assert time.monotonic() - started < 5, "not retried"


def test_missing_buckets_wrong_credentials_and_dead_endpoints_fail_clearly(published, s3, tmp_path, monkeypatch):
    import requests

    started = time.monotonic()
    with pytest.raises(DataError, match=r"s3://no-such-bucket/data/manifest.json: NoSuchBucket"):
        GenomeStream("s3://no-such-bucket/data", batch_size=4, cache_dir=tmp_path)
    for out, message in (
        ("s3://no-such-bucket/data", "s3://no-such-bucket/data/manifest.json: NoSuchBucket"),
        ("https://example.org/data", "--out https://example.org/data: http(s) sources are read-only"),
    ):
        done = refused_by_cli("prep", "--out", out, "--work", tmp_path / "work", "--seq-len", "256")
        assert done.returncode == 1 and message in done.stderr, done.stderr
        assert not (tmp_path / "work").exists(), "refused before any plan was made"
    requests.post(f"{s3}/moto-api/reset-auth", data=b"0")  # from now on moto checks credentials
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
        with pytest.raises(DataError, match=r"s3://dnalm/ecoli/manifest.json: 403.*credentials refused"):
            GenomeStream(published["url"], batch_size=4, cache_dir=tmp_path)
    finally:
        requests.post(f"{s3}/moto-api/reset-auth", data=b"inf")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(DataError, match=r"manifest.json: .*gave up after 2 attempts"):
        GenomeStream(published["url"], batch_size=4, cache_dir=tmp_path, retries=1, retry_wait_s=0.01)
    assert time.monotonic() - started < 60


READER = """
import sys
from dnalm.data.stream import GenomeStream, StreamLoader
url, cache, skip, batches, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
stream = GenomeStream(url, batch_size=4, seed=7, epochs=None, cache_dir=cache, prefetch_shards=1)
loader = StreamLoader(stream)
loader.load_state_dict(vars(stream.position_after(skip)))
with open(out, "a") as fh:
    for k, batch in enumerate(loader):
        fh.write(" ".join(batch["key"]) + "\\n")
        fh.flush()
        if k + 1 == batches:
            break
"""


def test_a_reader_killed_mid_download_resumes_with_exactly_the_uninterrupted_samples(http, ecoli_prepared, tmp_path):
    cache, log = tmp_path / "cache", tmp_path / "keys.txt"
    env = os.environ | {"PYTHONPATH": str(REPO)}
    http.rate = 4e6  # a 1 MB shard takes a quarter of a second
    try:
        reader = subprocess.Popen(
            [sys.executable, "-c", READER, http.url, str(cache), "0", "400", str(log)],
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = len(log.read_text().splitlines()) if log.exists() else 0
            if done >= 3 and list((cache / "shards").glob(".*.tar.tmp*")):
                break
            time.sleep(0.005)
        os.killpg(reader.pid, signal.SIGKILL)
        reader.wait()
        assert list((cache / "shards").glob(".*.tmp*")), "killed while a download was in flight"
        http.rate = None
        done = len(log.read_text().splitlines())
        again = subprocess.run(
            [sys.executable, "-c", READER, http.url, str(cache), str(done), "30", str(log)],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert again.returncode == 0, again.stderr
    finally:
        http.rate = None
    keys = [k for line in log.read_text().splitlines() for k in line.split()]
    uninterrupted = GenomeStream(ecoli_prepared, batch_size=4, seed=7, epochs=None, order="blocks")
    assert keys == [s["key"] for s, _ in zip(uninterrupted, range(len(keys)))]
    assert not list((cache / "shards").glob(".*")), "the interrupted download's temporary file is gone"
    for tar in (cache / "shards").glob("*.tar"):
        assert hashlib.sha256(tar.read_bytes()).hexdigest() == tar.stem, "every cached shard is whole"


def test_training_reads_its_windows_from_a_bucket(published, ecoli_prepared, tmp_path):
    run_dir = tmp_path / "run"
    run(
        torchrun_cmd(
            2,
            published["url"],
            run_dir,
            **{
                "budget.steps": 4,
                "eval.interval": 4,
                "checkpoint.interval": 4,
                "logging.record_sample_keys": "true",
                "data.cache_dir": tmp_path / "cache",
            },
        )
    )
    keys = sample_keys(run_dir)
    expected = [
        [
            s["key"]
            for s, _ in zip(
                GenomeStream(ecoli_prepared, batch_size=4, rank=r, world_size=2, order="blocks", epochs=None), range(16)
            )
        ]
        for r in range(2)
    ]
    assert [[line.split("\t")[1] for line in rank] for rank in keys] == expected
    assert all(np.isfinite(v) for v in losses(run_dir).values())


def test_bench_stream_measures_throughput_shares_and_the_input_path(ecoli, tmp_path):
    from dnalm.bench import stream

    source = tmp_path / "slice.fa"
    source.write_text(f">slice\n{ecoli.sequence[:1_000_000]}\n")
    result = stream.run(
        tmp_path / "out",
        tmp_path / "work",
        serve="http",
        genome=source,
        seq_len=512,
        shard_size_mb=0.1,
        samples=200,
        worlds=(4,),
        latency_s=0.002,
    )
    assert result["data"]["local_copy_compared"] and result["data"]["shards"] >= 16
    rates = result["throughput"]
    assert all(rates[k]["samples_per_s"] > 0 for k in rates)
    assert rates["remote_warm"]["cache"]["misses"] == 0 and rates["remote_cold_no_prefetch"]["cache"]["prefetched"] == 0
    assert [r["world_size"] for r in result["shares"]] == [4] and all(r["meets_goal"] for r in result["shares"])
    assert all(r["samples_read"] > 0.95 * result["data"]["samples"] for r in result["shares"])
    assert result["pipeline"]["meets_goal"] and result["diversity"]["ratio"] > 0.8
    assert (tmp_path / "out" / "stream.png").stat().st_size > 5000
