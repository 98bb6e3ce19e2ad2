"""Evaluation leakage: ``dnalm data leakage`` on a real genome.

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
    text = "".join(rng.choice("ACGT" if rng.random() > 0.05 else "acgtNR") for _ in range(400))
    for k in (8, 13, 16, 31, 32):
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
    out = tmp_path / "report.json"
    assert main(["data", "leakage", str(prepared["folder"]), "--eval", str(prepared["csv"]), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    (result,) = report["evaluation"]
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
    ]
    for args, message in cases:
        result = refused_by_cli(*args, "--out", out)
        assert result.returncode == 1, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("dnalm: error: ") and message in lines[0], (args, lines)
    assert not out.exists()
