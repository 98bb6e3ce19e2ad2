import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dnalm import genome
from tests.scheduling import (  # noqa: F401 (pytest's hooks, found by name here)
    pytest_collection_modifyitems,
    pytest_xdist_auto_num_workers,
    pytest_xdist_make_scheduler,
)

if os.environ.get("PYTEST_XDIST_WORKER"):  # before torch loads: the workers share the cores (tests/scheduling.py)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CHR20 = SHARED_DATA / "genomes" / "hs37_chr20.fa.gz"
CHR20_SM = SHARED_DATA / "genomes" / "hs37_chr20.sm.fa.gz"  # soft-masked by WindowMasker
PROBE_TASK = SHARED_DATA / "gue" / "prom_core_tata"  # the linear probe's task in training tests (70 bp promoters)


def probe_settings(rows: str = "[400,200]", **extra) -> dict:
    """Training overrides for a linear probe on GUE ``prom_core_tata`` (``eval.probes``) where the team's data holds
    it, else none: the probe assertions skip then."""
    if not PROBE_TASK.exists():
        return {}
    return {"eval.probes": f"[{PROBE_TASK}]", "eval.probe_rows": rows, **extra}


def _deepspeed_buffers() -> set[Path]:
    shm = Path("/dev/shm")
    return set(shm.glob("deepspeed_*")) if shm.is_dir() else set()


_BUFFERS_BEFORE = pytest.StashKey[set]()


def pytest_sessionstart(session):
    session.config.stash[_BUFFERS_BEFORE] = _deepspeed_buffers()


def pytest_sessionfinish(session):
    """Runs the tests kill never reach their own clean-up: remove the /dev/shm buffers they leave, once every test has
    ended (under xdist, in the controlling process: a worker's end is not the others')."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    for leftover in _deepspeed_buffers() - session.config.stash.get(_BUFFERS_BEFORE, set()):
        leftover.unlink(missing_ok=True)


@pytest.fixture(scope="session", autouse=True)
def team_data_folder():
    """Commands find the team's data through $DNALM_DATA, as a user's would; no command assumes ../shared/data."""
    if SHARED_DATA.is_dir() and "DNALM_DATA" not in os.environ:
        os.environ["DNALM_DATA"] = str(SHARED_DATA)
        yield
        os.environ.pop("DNALM_DATA", None)
    else:
        yield


def needs_shared(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"{path} is absent (the team's shared data folder)")


@pytest.fixture(scope="session")
def chr20() -> genome.Contig:
    if not CHR20.exists():
        pytest.skip(f"{CHR20} is absent (the team's shared data folder)")
    return genome.read(CHR20).contigs[0]


@pytest.fixture(scope="session")
def ecoli() -> genome.Contig:
    return genome.read(genome.DEFAULT_GENOME).contigs[0]


@pytest.fixture
def write_fasta(tmp_path):
    """Write bytes (or text) to a FASTA file in tmp_path, gzip-compressed when the name ends in .gz."""

    def write(content: bytes | str, name: str = "genome.fa") -> Path:
        data = content.encode() if isinstance(content, str) else content
        path = tmp_path / name
        path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
        return path

    return write


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dnalm", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def refused_by_cli(*args: str) -> subprocess.CompletedProcess:
    """The command line's answer to bad input, run in this process: ``dnalm.cli.main`` with its argument parsing and
    error handling, as ``python -m dnalm`` runs it, without the 2 s of a new interpreter importing torch. For input
    refused before any work starts; anything else goes through ``run_cli``."""
    import contextlib
    import io

    from dnalm.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse's own refusals
            code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(["dnalm", *map(str, args)], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def any_genome_contig(request):
    """chr20 where the shared data is present, else the bundled E. coli genome."""
    return request.getfixturevalue("chr20") if CHR20.exists() else request.getfixturevalue("ecoli")


@pytest.fixture(scope="session")
def bpe_small():
    """A small BPE (vocab 512) trained on the bundled E. coli genome."""
    from dnalm.tokenizers import train_bpe

    return train_bpe([genome.DEFAULT_GENOME], 512, max_memory_gb=2.0, threads=1)


def prep_folder(folder: Path, genomes, tokenizers=("nucleotide",), **settings) -> Path:
    """Run a whole prep in-process (the same code `dnalm prep` runs)."""
    from data_prep.jobs import prep
    from data_prep.plan import PrepConfig

    config = PrepConfig(genomes=[str(g) for g in genomes], tokenizers=list(tokenizers), **settings)
    prep(config, folder)
    return folder


@pytest.fixture(scope="session")
def ecoli_prepared(tmp_path_factory) -> Path:
    """The bundled genome as nucleotide windows of 512, in ~1 MB shards, 5% held out."""
    return prep_folder(
        tmp_path_factory.mktemp("ecoli") / "data",
        [genome.DEFAULT_GENOME],
        seq_len=512,
        shard_size_mb=1.0,
        val_fraction=0.05,
    )


@pytest.fixture(scope="session")
def ecoli128(tmp_path_factory) -> Path:
    """The bundled genome as nucleotide windows of 128 in ~2 MB shards, 5% held out; shared by the training tests,
    which only read it (a test that damages data damages a copy)."""
    return prep_folder(
        tmp_path_factory.mktemp("ecoli128") / "data",
        [genome.DEFAULT_GENOME],
        seq_len=128,
        shard_size_mb=2.0,
        val_fraction=0.05,
    )


def write_slice(source: Path, out: Path, start: int, length: int) -> Path:
    """``length`` bases of ``source``'s first record from ``start``, case (soft-masking) kept, as a FASTA."""
    contig = next(genome.iter_contigs(source))
    bases = contig.bases[start : start + length]
    letters = np.where(contig.softmask[start : start + length], bases | 0x20, bases).astype(np.uint8).tobytes()
    lines = [letters[i : i + 60] for i in range(0, len(letters), 60)]
    out.write_bytes(b">" + f"{contig.name}:{start}-{start + length}".encode() + b"\n" + b"\n".join(lines) + b"\n")
    return out


@pytest.fixture(scope="session")
def softmasked128(tmp_path_factory) -> Path:
    """Two genomes as nucleotide windows of 128, 5% held out: 1 Mb of soft-masked human chr20 (37% of it lowercase,
    WindowMasker's repeats) and 500 kb of E. coli (no repeats marked). Without the team's data, the first is a stretch
    of E. coli with every other kilobase lowercased."""
    root = tmp_path_factory.mktemp("softmasked")
    if CHR20_SM.exists():
        human = write_slice(CHR20_SM, root / "chr20_30M.fa", 30_000_000, 1_000_000)
    else:
        contig = genome.read(genome.DEFAULT_GENOME).contigs[0]
        letters = contig.bases[1_000_000:2_000_000].copy()
        for start in range(0, len(letters), 2000):
            letters[start : start + 1000] |= 0x20
        human = root / "stand_in.fa"
        human.write_bytes(b">stand_in\n" + letters.tobytes() + b"\n")
    ecoli = write_slice(genome.DEFAULT_GENOME, root / "ecoli_500k.fa", 0, 500_000)
    return prep_folder(root / "data", [human, ecoli], seq_len=128, shard_size_mb=2.0, val_fraction=0.05)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, ecoli128):
    """A decoder (ZeRO-2) and an encoder (ZeRO-3) trained 12 steps each on two processes, in one launch; the encoder
    logs a linear probe on GUE prom_core_tata at steps 6 and 12 where the team's data is present (about 3 s)."""
    from tests.launching import run_spec, train_runs

    root = tmp_path_factory.mktemp("use")
    decoder, encoder = root / "decoder", root / "encoder"
    common = {"budget.steps": 12, "checkpoint.interval": 6}
    runs = [
        run_spec(ecoli128, decoder, **common, **{"model.name": "decoder-tiny", "deepspeed": "zero2"}),
        run_spec(ecoli128, encoder, **common, deepspeed="zero3", **probe_settings(**{"eval.probe_interval": 6})),
    ]
    train_runs(2, runs, root / "runs.json")
    return {"decoder": decoder, "encoder": encoder, "root": root, "data": ecoli128}


@pytest.fixture(scope="session")
def bundles(trained):
    from dnalm.convert import convert

    out = trained["root"] / "bundles"
    return {name: convert(trained[name], out / name) for name in ("decoder", "encoder")}
