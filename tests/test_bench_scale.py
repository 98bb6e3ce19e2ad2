"""dnalm bench scale end to end at toy size (the committed JSON comes from the full-size command)."""

import json

from tests.conftest import refused_by_cli, run_cli


def test_bench_scale_measures_both_corpora(tmp_path, ecoli):
    source = tmp_path / "slice.fa"  # 1.5 Mb of E. coli: shorter than a corpus genome (4.6 Mb), so each takes all of it
    source.write_text(f">slice\n{ecoli.sequence[:1_500_000]}\n")
    done = run_cli(
        "bench",
        "scale",
        "--source",
        source,
        "--copies",
        "1",
        "--genomes",
        "2",
        "--stream-samples",
        "2000",
        "--rank-steps",
        "20",
        "--work",
        tmp_path / "work",
        "--out",
        tmp_path / "out",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "scale.json").read_text())
    for name in ("grch38_sized", "hundred_genomes"):
        corpus = result["corpora"][name]
        assert corpus["prep"]["samples"] > 0 and corpus["prep"]["plan_bytes"] > 0
        assert [r["world_size"] for r in corpus["bytes_per_rank"]] == [1, 2, 4, 8]
        assert all(r["max_share"] <= 1.2 / r["world_size"] for r in corpus["bytes_per_rank"])
        assert corpus["diversity"]["ratio"] > 0.8 and corpus["blocks"]["diversity"]["ratio"] > 0.8
        assert [r["world_size"] for r in corpus["blocks"]["shard_bytes_per_rank_per_epoch"]] == [1, 2, 4, 8]
        assert corpus["worker"]["max_files_open"] <= 2 * corpus["worker"]["max_open_shards"]
    assert result["corpora"]["hundred_genomes"]["genome_shares"]["max_relative_error"] < 0.02
    assert result["corpora"]["hundred_genomes"]["blocks"]["genome_shares"]["max_relative_error"] < 0.02
    assert (tmp_path / "out" / "scale.png").stat().st_size > 1000
    refused = refused_by_cli(
        "bench", "scale", "--source", tmp_path / "absent.fa", "--work", tmp_path / "w2", "--out", tmp_path / "o2"
    )
    assert refused.returncode == 1 and "absent.fa: no such file" in refused.stderr
