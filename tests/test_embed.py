"""Embeddings from the encoder bundle trained on the bundled genome (2 processes, ZeRO-3)."""

import numpy as np
import pytest

import dnalm
from dnalm import genome
from dnalm.use.embedding import EmbedError
from dnalm.use.sequences import SequenceInputError, from_bed, from_csv, reverse_complement
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def ecoli_records(ecoli, tmp_path_factory):
    """Three records of E. coli: one of 3.5 kb (over three contexts of the 1024-token encoder), one with N, one
    short."""
    folder = tmp_path_factory.mktemp("embed")
    records = {
        "long": ecoli.sequence[200_000:203_500],
        "gappy": ecoli.sequence[10_000:10_300] + "NNNN" + ecoli.sequence[20_000:20_100].lower(),
        "short": ecoli.sequence[50_000:50_040],
    }
    fasta = folder / "records.fa"
    fasta.write_text("".join(f">{name}\n{seq}\n" for name, seq in records.items()))
    return fasta, records


def test_cli_pooled_rows_are_the_mean_of_per_token_rows(bundles, ecoli_records, tmp_path):
    fasta, records = ecoli_records
    tokens = run_cli(
        "embed", "--model", bundles["encoder"], "--fasta", fasta, "--pooling", "none", "--out", tmp_path / "t.npz"
    )
    pooled = run_cli(
        "embed", "--model", bundles["encoder"], "--fasta", fasta, "--out", tmp_path / "p.npy", "--batch-size", "2"
    )
    assert tokens.returncode == 0 and pooled.returncode == 0, tokens.stderr + pooled.stderr
    saved, means = np.load(tmp_path / "t.npz"), np.load(tmp_path / "p.npy")
    index = (tmp_path / "p.npy.index.tsv").read_text().splitlines()
    assert index[0] == "row\tname\tstrand\tlength\tlabel" and [line.split("\t")[1] for line in index[1:]] == list(
        records
    )
    assert means.shape == (3, saved["embeddings"].shape[1]) and means.dtype == np.float32
    for row, (_name, sequence) in enumerate(records.items()):
        mine = saved["sequence"] == row
        spans = saved["spans"][mine]
        # every base once, in order, whatever the number of windows (the long record needs four)
        assert len(spans) == len(sequence) and (spans[:, 0] == np.arange(len(sequence))).all()
        np.testing.assert_allclose(saved["embeddings"][mine].mean(0), means[row], atol=1e-5)


def test_long_sequences_take_each_token_from_the_window_it_is_central_in(bundles, ecoli_records):
    model, tokenizer = dnalm.load_pretrained(bundles["encoder"])
    sequence = ecoli_records[1]["long"]
    whole = dnalm.embed(model, tokenizer, [sequence], pooling="none")[0].rows
    first_window = dnalm.embed(model, tokenizer, [sequence[:1024]], pooling="none")[0].rows
    # tokens up to the midpoint of the first overlap come from the first window, which is sequence[:1024]
    np.testing.assert_allclose(whole[:800], first_window[:800], atol=1e-5)
    assert not np.allclose(whole[900:1024], first_window[900:1024], atol=1e-3)  # later ones from the next window


def test_reverse_complement_average_gives_both_strands_one_vector(bundles, ecoli_records):
    model, tokenizer = dnalm.load_pretrained(bundles["encoder"])
    sequences = list(ecoli_records[1].values())
    forward = dnalm.embed(model, tokenizer, sequences, reverse_complement_average=True)
    backward = dnalm.embed(
        model, tokenizer, [reverse_complement(s) for s in sequences], reverse_complement_average=True
    )
    np.testing.assert_allclose(forward, backward, atol=1e-5)
    plain = dnalm.embed(model, tokenizer, sequences)
    assert not np.allclose(plain, forward, atol=1e-3)
    first_layer = dnalm.embed(model, tokenizer, sequences, layer=1, pooling="max")
    assert first_layer.shape == plain.shape and not np.allclose(first_layer, plain, atol=1e-3)
    with pytest.raises(EmbedError, match="layer: 9 is outside"):
        dnalm.embed(model, tokenizer, sequences, layer=9)
    with pytest.raises(EmbedError, match="no \\[CLS\\] token"):
        dnalm.embed(model, tokenizer, sequences, pooling="cls")


def test_bed_regions_and_csv_rows(bundles, ecoli_records, tmp_path):
    """A minus-strand region embeds as its reverse complement given in a CSV; bad lines are named."""
    contig = genome.read(genome.DEFAULT_GENOME).contigs[0]
    bed = tmp_path / "regions.bed"
    bed.write_text(
        f"# promoters\n{contig.name}\t1000\t1300\tplus_one\t0\t+\n{contig.name}\t5000\t5200\tminus_one\t0\t-\n"
    )
    csv = tmp_path / "rows.csv"
    csv.write_text(
        "sequence,label\n" + f"{contig.sequence[1000:1300]},a\n{reverse_complement(contig.sequence[5000:5200])},b\n"
    )
    for source, out in ((["--bed", bed, "--genome", genome.DEFAULT_GENOME], "bed.npy"), (["--csv", csv], "csv.npy")):
        result = run_cli("embed", "--model", bundles["encoder"], *source, "--out", tmp_path / out)
        assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(np.load(tmp_path / "bed.npy"), np.load(tmp_path / "csv.npy"), atol=1e-5)
    assert "minus_one\t-\t200" in (tmp_path / "bed.npy.index.tsv").read_text()
    assert "row2\t+\t200\tb" in (tmp_path / "csv.npy.index.tsv").read_text()

    bad = {
        "contig": f"{contig.name}\t10\t20\nchrZ\t1\t5\n",
        "order": f"{contig.name}\t50\t20\n",
        "past": f"{contig.name}\t10\t99999999\n",
        "columns": f"{contig.name} 10 20\n",
    }
    expected = {
        "contig": "regions.bed:2: contig 'chrZ' is not in",
        "order": "regions.bed:1: start '50' and end '20'",
        "past": "regions.bed:1: end 99999999 is past the end",
        "columns": "regions.bed:1: a BED line needs",
    }
    for case, text in bad.items():
        bed.write_text(text)
        with pytest.raises(SequenceInputError, match=expected[case]):
            from_bed(bed, genome.DEFAULT_GENOME)
    result = run_cli(
        "embed",
        "--model",
        bundles["encoder"],
        "--bed",
        bed,
        "--genome",
        genome.DEFAULT_GENOME,
        "--out",
        tmp_path / "bad.npy",
    )
    assert result.returncode == 1 and expected["columns"] in result.stderr and not (tmp_path / "bad.npy").exists()
    csv.write_text("sequence\nACGT\nACGRT\n")
    with pytest.raises(SequenceInputError, match="rows.csv:3: 'R' is not one of A, C, G, T, N"):
        from_csv(csv)
    csv.write_text("seq\nACGT\n")
    with pytest.raises(SequenceInputError, match="rows.csv:1: the header needs a 'sequence' column"):
        from_csv(csv)


def test_every_window_of_a_views_model_gets_the_positions_encode_gives(ecoli):
    """A multi-view window is the model input `ViewTokenizer.encode` makes of its bases: positions from its first
    base."""
    import torch

    from dnalm.models import build_model, get_config
    from dnalm.tokenizers import ViewTokenizer, load
    from dnalm.use.embedding import _Embedder

    views = ViewTokenizer([load("nucleotide"), load("kmer:6")])
    torch.manual_seed(0)
    model = build_model(
        get_config("encoder-tiny", vocab_size=views.vocab_size, num_segments=2, positions="learned", max_seq_len=128)
    ).eval()
    sequence = ecoli.sequence[70_000:70_400]
    encodings = [view.encode(sequence) for view in views.tokenizers]
    embedder = _Embedder(model, views, views.tokenizers, None)
    windows = embedder._windows(0, encodings)
    assert len(windows) >= 3
    for w in windows:
        with torch.no_grad():
            embedder._forward([w], [encodings])
        first, last = w.tokens[0]
        enc = views.encode(sequence[encodings[0].offsets[first, 0] : encodings[0].offsets[last - 1, 1]])
        with torch.no_grad():
            alone = model(
                torch.from_numpy(enc.ids[None].astype(np.int64)),
                segment_ids=torch.from_numpy(enc.segment_ids[None].astype(np.int64)),
                positions=torch.from_numpy(enc.positions[None].astype(np.int64)),
            ).hidden[0]
        np.testing.assert_allclose(w.result["hidden"], alone.numpy(), atol=1e-5)
