"""Multi-genome corpora: a corpus YAML with names, weights, tags and contig filters; the manifest records the mix;
the stream draws genomes in proportion to their weights."""

from collections import Counter

import pytest
import yaml

from dnalm import genome
from dnalm.data.manifest import Manifest
from dnalm.data.shards import parse_key
from dnalm.data.stream import GenomeStream
from tests.conftest import CHR20, needs_shared, run_cli


def write_corpus(path, genomes):
    path.write_text(yaml.safe_dump({"genomes": genomes}))
    return path


@pytest.fixture(scope="module")
def assembly(tmp_path_factory, ecoli=None):
    """Real E. coli sequence cut into the contig kinds a reference carries: a chromosome, chrM, an alt, an unplaced."""
    sequence = genome.read(genome.DEFAULT_GENOME).contigs[0].sequence
    folder = tmp_path_factory.mktemp("assembly")
    parts = {
        "chr1": sequence[:1_000_000],
        "chrM": sequence[1_000_000:1_016_569],
        "chr1_alt": sequence[1_100_000:1_300_000],
        "chrUn_KI270302v1": sequence[2_000_000:2_150_000],
    }
    path = folder / "ref.fa"
    path.write_text("".join(f">{name}\n{seq}\n" for name, seq in parts.items()))
    return path, {name: len(seq) for name, seq in parts.items()}


def test_contig_filters_and_the_mix_are_recorded(tmp_path, assembly):
    path, lengths = assembly
    corpus = write_corpus(
        tmp_path / "corpus.yaml",
        [
            {
                "name": "ref",
                "path": str(path),
                "weight": 2,
                "tags": ["bacterium", "reference"],
                "exclude": ["chrM", "*_alt", "chrUn*"],
            },
            {"name": "ecoli", "path": str(genome.DEFAULT_GENOME), "include": ["K-12*"]},
        ],
    )
    done = run_cli("prep", corpus, "--out", tmp_path / "data", "--seq-len", "512", "--val-fraction", "0")
    assert done.returncode == 0, done.stderr
    manifest = Manifest.load(tmp_path / "data")
    excluded = lengths["chrM"] + lengths["chr1_alt"] + lengths["chrUn_KI270302v1"]
    assert manifest.accounting.excluded == excluded
    acc = manifest.accounting
    assert acc.in_samples + acc.dropped_n + acc.left_over + acc.excluded == acc.genome_bases
    ref, ecoli = manifest.mix
    assert (ref.name, ref.weight, ref.tags, ref.excluded) == ("ref", 2.0, ["bacterium", "reference"], excluded)
    assert (ecoli.name, ecoli.weight, ecoli.excluded) == ("ecoli", 1.0, 0)
    assert ref.in_samples + ref.left_over + ref.dropped_n + ref.excluded == ref.bases == sum(lengths.values())
    assert manifest.splits["train"].genome_samples == [ref.samples["train"], ecoli.samples["train"]]
    contigs = {parse_key(s["key"])["contig"] for s in GenomeStream(tmp_path / "data", batch_size=1, shuffle=False)}
    assert contigs == {"chr1", "K-12-MG1655"}
    assert "weight 2" in done.stdout and "excluded" in done.stdout


@needs_shared(CHR20)
def test_the_stream_draws_genomes_in_proportion_to_their_weights(tmp_path):
    part = tmp_path / "chr20_part.fa"
    part.write_text(f">20_part\n{genome.IndexedGenome(CHR20).fetch('20', 30_000_000, 40_000_000).sequence}\n")
    corpus = write_corpus(
        tmp_path / "corpus.yaml",
        [
            {"name": "ecoli", "path": str(genome.DEFAULT_GENOME), "weight": 3},
            {"name": "human", "path": str(part), "weight": 1},
        ],
    )
    done = run_cli("prep", corpus, "--out", tmp_path / "data", "--seq-len", "1024", "--val-fraction", "0")
    assert done.returncode == 0, done.stderr
    manifest = Manifest.load(tmp_path / "data")
    available = manifest.splits["train"].genome_samples
    keys = [s["key"] for s in GenomeStream(tmp_path / "data", batch_size=16, seed=1, epochs=1)]
    share = Counter(parse_key(k)["genome"] for k in keys)
    assert abs(share[0] / len(keys) - 0.75) < 0.02 and abs(share[1] / len(keys) - 0.25) < 0.02, share
    repeats = Counter(keys)
    rounds = share[0] // available[0]
    uneven = [n for k, n in repeats.items() if parse_key(k)["genome"] == 0 and n not in (rounds, rounds + 1)]
    assert len(uneven) < 16 and set(uneven) <= {rounds - 1}, (
        "oversampled evenly (but for the dropped last partial batch)"
    )
    assert max(n for k, n in repeats.items() if parse_key(k)["genome"] == 1) == 1, "undersampled without repeats"
    again = [s["key"] for s in GenomeStream(tmp_path / "data", batch_size=16, seed=1, epochs=2)][len(keys) :]
    assert set(k for k in again if parse_key(k)["genome"] == 1) != set(k for k in keys if parse_key(k)["genome"] == 1)


@pytest.mark.parametrize(
    "genomes,pattern",
    [
        ([{"name": "a", "path": "x.fa"}, {"name": "a", "path": "y.fa"}], "genome names must be unique: a"),
        ([{"name": "a", "path": "x.fa", "weight": 0}], "genomes.0.weight: Input should be greater than 0"),
        ([{"name": "a"}], "genomes.0.path: Field required"),
        ([{"name": "a", "path": "absent.fa"}], "absent.fa: no such file"),
    ],
)
def test_bad_corpus_files_are_refused_naming_the_field(tmp_path, genomes, pattern):
    corpus = write_corpus(tmp_path / "corpus.yaml", genomes)
    done = run_cli("prep", corpus, "--out", tmp_path / "data", "--seq-len", "512")
    assert done.returncode == 1 and pattern in done.stderr, done.stderr
    assert str(corpus) in done.stderr or "absent.fa" in pattern
    assert not (tmp_path / "data").exists()


def test_the_example_corpus_names_real_genomes():
    from data_prep.corpus import load_corpus
    from tests.conftest import REPO

    paths, settings = load_corpus(REPO / "configs" / "data" / "example-corpus.yaml")
    assert [s.name for s in settings] == ["human_chr20", "ecoli"] and [s.weight for s in settings] == [3, 1]
    assert paths[1] == str(genome.DEFAULT_GENOME.resolve())
    assert not settings[0].keeps("chrM") and settings[0].keeps("20")
    if CHR20.exists():
        assert paths[0] == str(CHR20.resolve())
