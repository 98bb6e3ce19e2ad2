"""Evaluation leakage: ``dnalm data leakage`` and ``dnalm prep --exclude`` on a real genome.

One module-scoped prep (about 2 s): 1 Mb of the bundled E. coli genome, plus 100 kb of it under a 120-character
contig name with dots (its samples' tar members carry a pax header). The evaluation CSV is built from the prep's
own training windows: substrings (contained), reverse complements of others (contained), sequences across the
boundary of two abutting windows (a shared k-mer, not contained), random sequences (neither).
"""

import json
import random

import numpy as np
import pytest

from data_prep.leakage import check, shard_metadata
from dnalm import genome
from dnalm.cli import main
from dnalm.data.kmers import KmerSet, kmers, reverse_complement_bases
from dnalm.data.manifest import Manifest
from tests.conftest import prep_folder, refused_by_cli

LONG_NAME = "plasmid." + "x" * 100 + ".v1.2"
K = 32


def rc(text: str) -> str:
    return reverse_complement_bases(text.encode()).decode()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, ecoli):
    root = tmp_path_factory.mktemp("leakage")
    fasta = root / "slice.fa"
    fasta.write_text(f">main\n{ecoli.sequence[:1_000_000]}\n>{LONG_NAME}\n{ecoli.sequence[2_000_000:2_100_000]}\n")
    folder = prep_folder(root / "data", [fasta], seq_len=512, shard_size_mb=0.25, val_fraction=0.05)
    contigs = {c.name: c.sequence for c in genome.iter_contigs(fasta)}
    manifest = Manifest.load(folder)
    windows = sorted(
        (meta["contig"], meta["start"], meta["end"])
        for entry in manifest.splits["train"].shards
        for meta in shard_metadata(folder, entry)
    )
    rng = random.Random(7)
    rows, expected = [], []
    for kind in ("forward", "reverse", "across", "random"):
        for _ in range(12):
            if kind == "random":
                rows.append("".join(rng.choice("ACGT") for _ in range(rng.randrange(80, 150))))
                expected.append((False, False))
                continue
            if kind == "across":  # two abutting windows, and no window holding the stretch whole
                i = rng.choice(
                    [i for i in range(len(windows) - 1) if windows[i][::2] == (windows[i + 1][0], windows[i + 1][1])]
                )
                contig, end = windows[i][0], windows[i][2]
                a, b = end - 60, end + 60
                if any(c == contig and s <= a and b <= e for c, s, e in windows):
                    continue
                rows.append(contigs[contig][a:b])
                expected.append((True, False))
                continue
            contig, start, end = rng.choice(windows)
            length = rng.randrange(80, 150)
            a = rng.randrange(start, end - length)
            text = contigs[contig][a : a + length]
            rows.append(text if kind == "forward" else rc(text))
            expected.append((True, True))
    csv = root / "eval.csv"
    csv.write_text("sequence,label\n" + "".join(f"{r},{i % 2}\n" for i, r in enumerate(rows)))
    return {"folder": folder, "fasta": fasta, "csv": csv, "rows": rows, "expected": expected, "contigs": contigs}


def test_kmers_match_a_per_base_reference():
    rng = random.Random(3)
    sparse = "".join(rng.choice("ACGT" if rng.random() > 0.05 else "acgtNR") for _ in range(400))
    dense = "".join(rng.choice("ACGT" if rng.random() > 0.3 else "acgtNR") for _ in range(400))  # many Ns: counted
    for text, k in [(t, k) for t in (sparse, dense) for k in (8, 13, 16, 31, 32)]:
        forward, canonical = kmers(np.frombuffer(text.encode(), np.uint8).copy(), k)
        for p in range(len(text) - k + 1):
            word = text[p : p + k].upper()
            if set(word) - set("ACGT"):
                assert canonical[p] == np.uint64(2**64 - 1)
                continue
            value = int(word.translate(str.maketrans("ACGT", "0123")), 4)
            assert int(forward[p]) == value
            assert int(canonical[p]) == min(value, int(rc(word).translate(str.maketrans("ACGT", "0123")), 4))
    values = np.array(rng.sample(range(1, 2**62), 5000), np.uint64)
    found = KmerSet(values[::2])
    where, ids = found.find(values)
    assert where.tolist() == list(range(0, 5000, 2)) and (found.keys[ids] == values[where]).all()


def test_leakage_counts_exact_with_locations(prepared, tmp_path):
    out, fasta = tmp_path / "report.json", tmp_path / "eval.fa"
    fasta.write_text("".join(f">row{i}\n{row}\n" for i, row in enumerate(prepared["rows"])))
    args = ["data", "leakage", prepared["folder"], "--eval", prepared["csv"], fasta, "--out", out]
    assert main([str(a) for a in args]) == 0
    report = json.loads(out.read_text())
    result, from_fasta = report["evaluation"]
    assert from_fasta["name"].endswith("eval.fa") and from_fasta["examples"][0]["line"] == 1
    assert {k: v for k, v in from_fasta.items() if k not in ("name", "path", "examples")} == {
        k: v for k, v in result.items() if k not in ("name", "path", "examples")
    }
    shared = sum(s for s, _ in prepared["expected"])
    contained = sum(c for _, c in prepared["expected"])
    assert (result["sequences"], result["shared"], result["contained"]) == (len(prepared["rows"]), shared, contained)
    assert 0 < contained < shared < len(prepared["rows"])
    assert report["k"] == 32 and report["split"] == "train"
    assert report["training"]["bases_scanned"] > 900_000 and report["performance"]["eval_distinct_kmers"] > 0
    # every example is where it says: its bases (or their reverse complement) at that position of that contig
    detail = check(prepared["folder"], [prepared["csv"]], K, examples=len(prepared["rows"]))["evaluation"][0]
    assert [x["index"] for x in detail["examples"] if x["contained"]] == [
        i for i, (_, c) in enumerate(prepared["expected"]) if c
    ]
    strands = set()
    for x in detail["examples"]:
        row = prepared["rows"][x["index"]]
        seq = row if x["contained"] else row[x["offset"] : x["offset"] + K]
        at = prepared["contigs"][x["contig"]][x["position"] : x["position"] + len(seq)]
        assert at == (seq if x["strand"] == "+" else rc(seq)), x
        strands.add((x["contained"], x["strand"]))
    assert {(True, "+"), (True, "-")} <= strands and LONG_NAME in {x["contig"] for x in detail["examples"]}


def test_prep_exclude_drops_exactly_the_windows_sharing_a_kmer(prepared, tmp_path):
    """Against a per-base reference: a Python set of the CSV's 32-mers on both strands, every window looked up."""
    out = tmp_path / "excluded"
    fasta, csv = prepared["fasta"], prepared["csv"]
    args = ["prep", str(fasta), "--seq-len", "512", "--shard-size-mb", "0.25", "--val-fraction", "0.05"]
    assert main([*args, "--out", str(out), "--exclude", str(csv)]) == 0
    words = {
        w for row in prepared["rows"] for s in (row, rc(row)) for w in (s[p : p + K] for p in range(len(s) - K + 1))
    }
    before, after = Manifest.load(prepared["folder"]), Manifest.load(out)
    expected = {}
    for split, entry in before.splits.items():
        expected[split] = sum(
            any(prepared["contigs"][m["contig"]][p : p + K] in words for p in range(m["start"], m["end"] - K + 1))
            for shard in entry.shards
            for m in shard_metadata(prepared["folder"], shard)
        )
    assert after.exclusion is not None and after.exclusion.windows_dropped == expected and expected["train"] > 0
    assert after.splits["train"].num_samples == before.splits["train"].num_samples - expected["train"]
    assert after.exclusion.k == K and after.exclusion.files[0].sha256 == genome.file_sha256(csv)
    assert after.exclusion.files[0].sequences == len(prepared["rows"])
    acc = after.accounting
    assert acc.in_samples + acc.dropped_n + acc.left_over + acc.excluded + acc.dropped_overlap == acc.genome_bases
    assert acc.dropped_overlap == after.exclusion.bases_dropped > 0
    assert after.plan_fingerprint != before.plan_fingerprint
    again = check(out, [csv], K)["evaluation"][0]
    assert again["shared"] == again["contained"] == 0
    # the same run again resumes (nothing to do); the CSV changed: the folder is refused
    assert main([*args, "--out", str(out), "--exclude", str(csv)]) == 0
    csv2 = tmp_path / "other.csv"
    csv2.write_text(csv.read_text() + "ACGTACGTACGTACGTACGTACGTACGTACGTAAA,1\n")
    refused = refused_by_cli(*args, "--out", out, "--exclude", csv2)
    assert refused.returncode == 1 and "holds a prep of different inputs" in refused.stderr


def test_bad_input_is_one_line_and_leaves_nothing(prepared, tmp_path):
    folder, csv = prepared["folder"], prepared["csv"]
    no_column = tmp_path / "no_column.csv"
    no_column.write_text("seq,label\nACGT,1\n")
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    out = tmp_path / "report.json"
    cases = [
        (["data", "leakage", tmp_path / "missing", "--eval", csv], "no such prep folder"),
        (["data", "leakage", folder, "--eval", empty], "empty_folder: no CSV files"),
        (["data", "leakage", folder, "--eval", tmp_path / "gone.csv"], "gone.csv: no such file"),
        (["data", "leakage", folder, "--eval", no_column], "no_column.csv: line 1: no 'sequence' column"),
        (["data", "leakage", folder, "--eval", csv, "--k", "7"], "--k 7: k must be in 8..32"),
        (["data", "leakage", folder, "--eval", csv, "--k", "33"], "--k 33: k must be in 8..32"),
        (["data", "leakage", folder, "--eval", csv, "--split", "test"], "--split test: the prep has splits"),
        (
            ["prep", "--seq-len", "64", "--out", tmp_path / "p1", "--exclude", no_column],
            "no_column.csv: line 1: no 'sequence' column",
        ),
        (["prep", "--seq-len", "64", "--out", tmp_path / "p2", "--exclude", csv, "--exclude-k", "40"], "exclude_k"),
    ]
    for args, message in cases:
        result = refused_by_cli(*args, "--out", out) if args[0] == "data" else refused_by_cli(*args)
        assert result.returncode == 1, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("dnalm: error: ") and message in lines[0], (args, lines)
    assert not out.exists() and not (tmp_path / "p1").exists() and not (tmp_path / "p2").exists()


def test_bench_leakage_writes_json_and_plot(prepared, tmp_path):
    """The bench on the module's prep (reused through --work, --copies 0): one check in a fresh process (~3 s)."""
    work, gue = tmp_path / "work", tmp_path / "gue" / "synthetic"
    work.mkdir()
    (work / "chr20").symlink_to(prepared["folder"])
    gue.mkdir(parents=True)
    (gue / "dev.csv").write_text(prepared["csv"].read_text())
    args = [
        "bench",
        "leakage",
        "--genome",
        prepared["fasta"],
        "--gue",
        gue.parent,
        "--copies",
        "0",
        "--jobs",
        "1",
        "--no-exclude",
    ]
    assert main([str(a) for a in [*args, "--work", work, "--out", tmp_path / "out"]]) == 0
    saved = json.loads((tmp_path / "out" / "leakage.json").read_text())
    (task,) = saved["tasks"]
    assert task["name"] == "synthetic/dev" and task["contained"] == sum(c for _, c in prepared["expected"])
    (run,) = saved["runs"]
    assert run["jobs"] == 1 and run["train_bases_per_s"] > 0 and run["peak_rss_mb"] > 0 and saved["machine"]["cpu"]
    assert saved["extrapolation"]["bases"] == 3_100_000_000 and saved["extrapolation"]["minutes_1_job"] > 0
    assert (tmp_path / "out" / "leakage.png").stat().st_size > 1000
