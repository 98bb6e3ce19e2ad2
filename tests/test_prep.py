"""dnalm prep end to end on real genomes: windows, accounting, splits, jobs, crash and resume, bad input."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import webdataset as wds

from data_prep.jobs import run_slice
from data_prep.merge import merge
from data_prep.plan import PrepConfig, prepare_folder
from dnalm import genome, tokenizers
from dnalm.data.manifest import DataError, Manifest
from dnalm.data.shards import IndexedShard, parse_key
from tests.conftest import CHR20, needs_shared, prep_folder, refused_by_cli, run_cli

COMPLEMENT = str.maketrans("ACGTN", "TGCAN")


def all_samples(folder: Path):
    manifest = Manifest.load(folder)
    for split, entry in manifest.splits.items():
        for shard in entry.shards:
            reader = IndexedShard(folder / shard.path, shard.num_samples, shard.bytes)
            for i in range(shard.num_samples):
                key, meta, arrays = reader.read(i)
                yield split, key, meta, arrays


def shard_digests(folder: Path) -> dict:
    manifest = Manifest.load(folder)
    return {s.path: s.sha256 for split in manifest.splits.values() for s in split.shards}


def test_ecoli_manifest_and_accounting(ecoli_prepared, ecoli):
    m = Manifest.load(ecoli_prepared)
    assert m.seq_len == 512 and not m.views and m.padding_fraction == 0 and m.padding_tokens == 0
    assert m.genomes[0].sha256 == genome.file_sha256(genome.DEFAULT_GENOME)
    assert (m.genomes[0].num_contigs, m.genomes[0].bases) == (1, 4_639_675)
    assert [[(c.name, c.length) for c in g] for g in Manifest.contigs(ecoli_prepared)] == [[("K-12-MG1655", 4_639_675)]]
    assert m.tokenizers[0].fingerprint == tokenizers.load("nucleotide").fingerprint
    acc = m.accounting
    assert acc.in_samples + acc.dropped_n + acc.left_over == acc.genome_bases == 4_639_675
    assert m.num_samples == sum(s.num_samples for s in m.splits.values()) > 9000
    assert m.num_tokens == m.num_samples * 512
    assert len(m.splits["train"].shards) > 3 and m.splits["val"].num_samples > 0


def test_every_sample_is_exact_genome_sequence(ecoli_prepared, ecoli):
    tok = tokenizers.load("nucleotide")
    seq = ecoli.sequence
    spans = {"train": [], "val": []}
    for split, key, meta, (ids,) in all_samples(ecoli_prepared):
        assert parse_key(key) == {k: meta[k] for k in ("genome", "contig", "start", "end", "strand")}
        assert len(ids) == 512 and meta["contig"] == "K-12-MG1655"
        assert tok.decode(ids) == seq[meta["start"] : meta["end"]]
        spans[split].append((meta["start"], meta["end"]))
    block = 100_000
    val_blocks = {b for s, e in spans["val"] for b in range(s // block, (e - 1) // block + 1)}
    train_blocks = {b for s, e in spans["train"] for b in range(s // block, (e - 1) // block + 1)}
    assert val_blocks and not (val_blocks & train_blocks), "validation is held out by whole blocks"


def test_webdataset_reads_the_shards_with_keys_intact(ecoli_prepared):
    m = Manifest.load(ecoli_prepared)
    urls = [str(ecoli_prepared / s.path) for s in m.splits["train"].shards]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert len(samples) == m.splits["train"].num_samples
    first = samples[0]
    assert set(first) >= {"__key__", "json", "tok0.npy"} and first["json"]["contig"] == "K-12-MG1655"
    assert "~2D" in first["__key__"] and "." not in first["__key__"]


@needs_shared(CHR20)
def test_chr20_slice_views_never_cross_n_runs(tmp_path, chr20):
    start, end = 26_100_000, 30_000_000  # holds the centromere's two long N runs
    path = tmp_path / "chr20_slice.fa"
    seq = chr20.sequence[start:end]
    path.write_text(">20:26100000-30000000\n" + "\n".join(seq[i : i + 60] for i in range(0, len(seq), 60)) + "\n")
    folder = prep_folder(
        tmp_path / "data", [path], ("nucleotide", "kmer:6"), seq_len=1024, views=True, val_fraction=0.1
    )
    m = Manifest.load(folder)
    assert 0 < m.padding_fraction <= 0.01
    assert m.accounting.dropped_n == 3_100_000 + 150_000
    assert m.accounting.in_samples + m.accounting.dropped_n + m.accounting.left_over == len(seq)
    nucleotide, kmer = tokenizers.load("nucleotide"), tokenizers.load("kmer:6")
    for _, _key, meta, (ids_n, ids_k) in all_samples(folder):
        bases = seq[meta["start"] : meta["end"]]
        assert "N" * 100 not in bases
        assert nucleotide.decode(ids_n) == bases == kmer.decode(ids_k)
        assert 1 + len(ids_n) + 1 + len(ids_k) + 1 + meta["padding"] == 1024


def test_dots_and_spaces_in_contig_names(tmp_path, ecoli):
    path = tmp_path / "named.fa"
    path.write_text(
        f">NC_000913.3 Escherichia coli str. K-12\n{ecoli.sequence[:30_000]}\n"
        f">scaffold.1~x/y\n{ecoli.sequence[40_000:60_000]}\n"
    )
    folder = prep_folder(tmp_path / "data", [path], seq_len=256, val_fraction=0)
    samples = list(
        wds.WebDataset(
            [str(folder / s.path) for s in Manifest.load(folder).splits["train"].shards], shardshuffle=False
        ).decode()
    )
    contigs = {s["json"]["contig"] for s in samples}
    assert contigs == {"NC_000913.3", "scaffold.1~x/y"}
    assert all({"json", "tok0.npy"} <= set(s) for s in samples), "a key cut at a dot would scatter a sample's fields"
    assert all(parse_key(s["__key__"])["contig"] == s["json"]["contig"] for s in samples)
    sequences = {"NC_000913.3": ecoli.sequence[:30_000], "scaffold.1~x/y": ecoli.sequence[40_000:60_000]}
    tok = tokenizers.load("nucleotide")
    for s in samples:  # a window never runs from one contig into the next
        meta = s["json"]
        assert tok.decode(s["tok0.npy"]) == sequences[meta["contig"]][meta["start"] : meta["end"]]


def test_reverse_complement(tmp_path, ecoli):
    folder = prep_folder(
        tmp_path / "data", [genome.DEFAULT_GENOME], seq_len=4096, val_fraction=0, reverse_complement=True
    )
    tok = tokenizers.load("nucleotide")
    strands = {"+": 0, "-": 0}
    for _, _, meta, (ids,) in all_samples(folder):
        bases = ecoli.sequence[meta["start"] : meta["end"]]
        expected = bases if meta["strand"] == "+" else bases.translate(COMPLEMENT)[::-1]
        assert tok.decode(ids) == expected
        strands[meta["strand"]] += 1
    assert strands["+"] == strands["-"] > 1000


def config_for(path, **extra):
    return PrepConfig(
        genomes=[str(path)], tokenizers=["nucleotide"], seq_len=512, shard_size_mb=0.5, val_fraction=0.05, **extra
    )


@pytest.fixture(scope="module")
def one_job(tmp_path_factory):
    folder = tmp_path_factory.mktemp("one") / "data"
    prep_folder(folder, [genome.DEFAULT_GENOME], seq_len=512, shard_size_mb=0.5, val_fraction=0.05)
    return folder


def test_job_slices_and_merge_equal_one_job(tmp_path, one_job):
    folder = tmp_path / "sliced"
    prepare_folder(folder, config_for(genome.DEFAULT_GENOME))
    for index in (2, 0):
        run_slice(folder, index, 3)
    with pytest.raises(DataError, match="not finished"):
        merge(folder)
    result = run_cli(
        "prep",
        genome.DEFAULT_GENOME,
        "--out",
        folder,
        "--seq-len",
        "512",
        "--shard-size-mb",
        "0.5",
        "--val-fraction",
        "0.05",
        "--job-index",
        "1",
        "--num-jobs",
        "3",
    )
    assert result.returncode == 0, result.stderr
    assert (folder / "manifest.json").exists(), "the last slice writes the manifest"
    assert shard_digests(folder) == shard_digests(one_job)
    assert Manifest.load(folder).model_dump() == Manifest.load(one_job).model_dump()
    (folder / "manifest.json").unlink()
    merged = subprocess.run([sys.executable, "-m", "data_prep", "merge", str(folder)], capture_output=True, text=True)
    assert merged.returncode == 0 and Manifest.load(folder).num_samples == Manifest.load(one_job).num_samples


def test_local_jobs_equal_one_job(tmp_path, one_job):
    result = run_cli(
        "prep",
        genome.DEFAULT_GENOME,
        "--out",
        tmp_path / "two",
        "--seq-len",
        "512",
        "--shard-size-mb",
        "0.5",
        "--val-fraction",
        "0.05",
        "--jobs",
        "2",
    )
    assert result.returncode == 0, result.stderr
    assert shard_digests(tmp_path / "two") == shard_digests(one_job)
    assert "in samples" in result.stdout and "Mbases/s" in result.stdout


def test_kill_nine_then_resume_equals_uninterrupted(tmp_path, one_job):
    folder = tmp_path / "crashed"
    cmd = [
        sys.executable,
        "-m",
        "dnalm",
        "prep",
        str(genome.DEFAULT_GENOME),
        "--out",
        str(folder),
        "--seq-len",
        "512",
        "--shard-size-mb",
        "0.5",
        "--val-fraction",
        "0.05",
    ]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(folder.glob("train/*.tar.json"))) < 2:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = sorted(folder.glob("train/*.tar.json"))
    assert 2 <= len(done) and not (folder / "manifest.json").exists()
    victim = Path(str(done[0])[: -len(".json")])
    victim.write_bytes(victim.read_bytes()[:1000])  # a finished shard damaged after the fact is redone too
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "already done" in result.stdout
    assert shard_digests(folder) == shard_digests(one_job)
    assert not list(folder.rglob("*.tmp*"))


def test_other_inputs_into_the_same_folder_are_refused(tmp_path, one_job):
    result = refused_by_cli("prep", genome.DEFAULT_GENOME, "--out", one_job, "--seq-len", "256")
    assert result.returncode == 1 and "holds a prep of different inputs" in result.stderr
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    result = refused_by_cli("prep", "--out", foreign, "--seq-len", "256")
    assert result.returncode == 1 and "not a dnalm prep folder" in result.stderr


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["--tokenizers", "nucleotide,kmer:6"], "need --views"),
        (["--tokenizers", "nucleotide,kmer:6:1", "--views"], "overlapping k-mers"),
        (["--tokenizers", "kmer:12"], "k must be between 1 and 8"),
        (["--seq-len", "4"], "seq_len: Input should be greater than or equal to 8"),
        (["--val-fraction", "1.5"], "val_fraction"),
        (["--job-index", "3", "--num-jobs", "2"], "--job-index must be in 0..1"),
    ],
)
def test_bad_settings(tmp_path, args, pattern):
    base = ["prep", "--out", tmp_path / "out", "--seq-len", "256"]
    result = refused_by_cli(*base, *args)
    assert result.returncode == 1 and pattern in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_missing_genome_leaves_nothing(tmp_path):
    result = refused_by_cli("prep", tmp_path / "absent.fa", "--out", tmp_path / "out", "--seq-len", "256")
    assert result.returncode == 1 and "no such file" in result.stderr
    assert not (tmp_path / "out").exists()


def test_four_jobs_started_at_once_on_an_empty_folder_all_succeed(tmp_path, one_job):
    """A SLURM array's tasks start together: one builds the plan, the others wait for it; the shards equal one job's."""
    folder = tmp_path / "array"
    command = [
        sys.executable,
        "-m",
        "dnalm",
        "prep",
        str(genome.DEFAULT_GENOME),
        "--out",
        str(folder),
        "--seq-len",
        "512",
        "--shard-size-mb",
        "0.5",
        "--val-fraction",
        "0.05",
        "--num-jobs",
        "4",
    ]
    jobs = [
        subprocess.Popen([*command, "--job-index", str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(4)
    ]
    outputs = [job.communicate(timeout=300) for job in jobs]
    assert [job.returncode for job in jobs] == [0] * 4, [err[-500:] for _, err in outputs]
    assert shard_digests(folder) == shard_digests(one_job)
    assert not (folder / ".plan.lock").exists()


def test_a_job_slice_is_a_contiguous_run_of_shards(one_job):
    from data_prep.jobs import slice_of
    from data_prep.plan import Plan

    plan = Plan.load(one_job)
    slices = [slice_of(plan, i, 3) for i in range(3)]
    assert [s.index for part in slices for s in part] == [s.index for s in plan.shards]
    assert all(part == plan.shards[part[0].index : part[-1].index + 1] for part in slices if part)
