"""Repeat-aware data and loss: soft-mask flags from the genome through prep and the stream to a weighted loss.

The training runs that check the loss under sequence parallelism, resume, and the per-genome and per-repeat metrics
are in test_sequence_parallel.py (they share its launches); here: the pieces, on real soft-masked chr20 where it
counts."""

import json

import numpy as np
import pytest
import torch

from dnalm import genome
from dnalm.data.manifest import Manifest
from dnalm.data.masking import IGNORE
from dnalm.data.shards import IndexedShard, parse_key
from dnalm.data.stream import GenomeStream
from dnalm.data.windows import token_repeats
from dnalm.models import build_model, get_config
from dnalm.train import losses
from tests.conftest import prep_folder, run_cli


def test_a_token_is_a_repeat_when_most_of_its_bases_are_soft_masked():
    softmask = np.array([1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 0, 0], bool)
    offsets = np.array([[0, 6], [6, 12], [0, 1], [3, 4], [2, 5]])  # 3 of 6, 4 of 6, 1 of 1, 0 of 1, 1 of 3
    assert token_repeats(offsets, softmask).tolist() == [False, True, True, False, False]


def _bases_lowercase(fasta) -> str:
    contig = next(genome.iter_contigs(fasta))
    return "".join(np.where(contig.softmask, "r", ".").tolist())


@pytest.fixture(scope="module")
def views_prep(softmasked128, tmp_path_factory):
    """The soft-masked genome of ``softmasked128`` as nucleotide + 6-mer views, both strands."""
    human = sorted(p for p in softmasked128.parent.glob("*.fa") if "ecoli" not in p.name)[0]
    folder = tmp_path_factory.mktemp("views") / "data"
    return prep_folder(folder, [human], tokenizers=("nucleotide", "kmer:6"), views=True, seq_len=256), human


def test_every_view_carries_the_flags_of_its_bases_on_both_strands(views_prep):
    """Prep's flags, read back through the stream (views concatenated, half the windows flipped to the other
    strand), are each token's majority of soft-masked bases, from the FASTA's own letters."""
    folder, fasta = views_prep
    mask = _bases_lowercase(fasta)
    manifest = Manifest.load(folder)
    assert manifest.repeats and manifest.genomes[0].softmask == "repeats"
    stream = GenomeStream(folder, "train", batch_size=8, rank=0, world_size=1, seed=0, epochs=1)
    stream_rc = GenomeStream(folder, "train", batch_size=8, rank=0, world_size=1, seed=0, epochs=1,
                             reverse_complement=True)  # fmt: skip
    checked, flipped, repeat_tokens = 0, 0, 0
    for sample in [*zip(range(60), stream), *zip(range(60), stream_rc)]:
        sample = sample[1]
        key = parse_key(sample["key"])
        bases = np.array([c == "r" for c in mask[key["start"] : key["end"]]])
        if (key["strand"] == "-") != sample["reverse_complement"]:
            bases = bases[::-1]
        flipped += sample["reverse_complement"]
        spans, segments = sample["spans"].numpy(), sample["segment_ids"].numpy()
        ids, flags = sample["input_ids"].numpy(), sample["repeats"].numpy()
        own = (ids >= 5) & (spans[:, 1] > spans[:, 0])  # the views' own tokens, not [CLS]/[SEP]/[PAD]
        expected = token_repeats(spans[own], bases)
        assert (flags[own] == expected).all(), key
        assert not flags[~own].any()
        assert set(segments[own].tolist()) == {0, 1}
        checked += int(own.sum())
        repeat_tokens += int(flags.sum())
    assert flipped > 10 and checked > 20_000 and 0.1 < repeat_tokens / checked < 0.7


def test_old_shards_and_manifests_read_as_no_repeats(ecoli_prepared):
    """A folder prepared before repeat flags (manifest version 2, no soft-mask fields): no repeats, no flags."""
    raw = json.loads((ecoli_prepared / "manifest.json").read_text())
    for g in raw["genomes"]:
        g.pop("softmask", None), g.pop("softmasked", None)
    raw["version"] = 2
    old = Manifest.model_validate(raw)
    assert not old.repeats and old.genomes[0].softmask == "none"
    shard = Manifest.load(ecoli_prepared).splits["train"].shards[0]
    sample = IndexedShard(ecoli_prepared / shard.path, shard.num_samples).read_sample(0)
    assert sample.repeats == [None]
    stream = GenomeStream(ecoli_prepared, "train", batch_size=4, rank=0, world_size=1, seed=0, epochs=1)
    assert "repeats" not in next(iter(stream))


def test_a_lowercase_genome_is_named_and_treated_as_unmasked(write_fasta, tmp_path):
    rng = np.random.default_rng(0)
    fasta = write_fasta(">lower\n" + "".join(rng.choice(list("acgt"), 20_000)) + "\n")
    shown = run_cli("genome", "inspect", str(fasta))
    assert shown.returncode == 0
    assert "probably not soft-masked, treated as unmasked" in shown.stdout
    assert json.loads(run_cli("genome", "inspect", str(fasta), "--json").stdout)["softmask"] == "not soft-masked"
    folder = prep_folder(tmp_path / "data", [fasta], seq_len=128)
    manifest = Manifest.load(folder)
    assert manifest.genomes[0].softmask == "not soft-masked" and not manifest.repeats
    shard = manifest.splits["train"].shards[0]
    assert IndexedShard(folder / shard.path, shard.num_samples).read_sample(0).repeats == [None]


def test_inspect_reports_chr20s_soft_masked_fraction():
    from tests.conftest import CHR20_SM

    if not CHR20_SM.exists():
        pytest.skip(f"{CHR20_SM} is absent (the team's shared data folder)")
    report = json.loads(run_cli("genome", "inspect", str(CHR20_SM), "--json").stdout)
    # WindowMasker masked 25.7% of the non-N bases (../shared/data/README.md); N is 3.52 Mb of 63.03 Mb
    assert report["softmask"] == "repeats"
    assert report["softmasked_fraction"] == pytest.approx(0.257 * (63_025_520 - 3_520_000) / 63_025_520, abs=0.002)


@pytest.mark.parametrize("mlm_target, causal", [("tokens", False), ("bases", False), ("tokens", True)])
def test_the_weighted_loss_is_the_weighted_mean_of_token_losses(mlm_target, causal):
    """Σ wᵢℓᵢ / Σ wᵢ over the targets, ℓ from the full logits; weight 1 gives the plain mean; the chunked head gives
    the same token losses; and two sequence slices' shares add up to the whole window's loss."""
    torch.manual_seed(0)
    name = "decoder-tiny" if causal else "encoder-tiny"
    overrides = {"mlm_target": "bases", "tie_embeddings": False, "bases_per_token": 2} if mlm_target == "bases" else {}
    config = get_config(name, vocab_size=9, **overrides)
    model = build_model(config).eval()
    ids = torch.randint(5, 9, (3, 32))
    labels = ids.clone()
    labels[torch.rand(3, 32) < 0.5] = IGNORE
    if mlm_target == "bases":  # each target token spells two bases (class 0..4)
        labels = torch.stack([ids - 5, 8 - ids], dim=-1)
        labels[torch.rand(3, 32, 2) < 0.5] = IGNORE
    repeats = torch.rand(3, 32) < 0.4
    batch = {"genome": torch.zeros(3, dtype=torch.long), "repeats": repeats}
    inputs = {"input_ids": ids, "labels": labels, "targets": int((labels != IGNORE).sum())}
    inputs = losses.prepare(inputs, batch, causal=False, repeat_weight=0.1)
    with torch.no_grad():
        out = model(ids, labels=labels)
        logits = out.logits.float().reshape(-1, out.logits.shape[-1])
        ce = torch.nn.functional.cross_entropy(logits, labels.reshape(-1), ignore_index=IGNORE, reduction="none")
        ce = ce.view(labels.shape)
        ce = ce.sum(-1) if ce.dim() == 3 else ce
        real = (labels != IGNORE).sum(-1) if labels.dim() == 3 else (labels != IGNORE)
        w = torch.where(repeats, 0.1, 1.0)
        want = (ce * w).sum() / (real * w).sum()
        assert losses.step_loss(out, inputs).item() == pytest.approx(want.item(), rel=1e-6)
        plain = losses.prepare({**inputs, "labels": labels}, batch, causal=False, repeat_weight=1.0)
        plain.pop("loss_weights", None)
        assert losses.step_loss(out, plain).item() == pytest.approx(ce.sum().item() / real.sum().item(), rel=1e-6)
        chunked = build_model(config.replace(loss_chunk=8)).eval()
        chunked.load_state_dict(model.state_dict())
        assert torch.allclose(chunked(ids, labels=labels).token_loss, out.token_loss, atol=1e-6)
        halves = [
            losses.step_loss(
                type(out)(None, out.hidden, token_loss=out.token_loss[:, h * 16 : (h + 1) * 16]),
                inputs | {"loss_weights": inputs["loss_weights"][:, h * 16 : (h + 1) * 16]},
            )
            for h in (0, 1)
        ]
        assert (halves[0] + halves[1]).item() == pytest.approx(want.item(), rel=1e-6)


def test_a_decoders_flags_follow_its_targets():
    """Position i of a decoder predicts token i + 1, so it is weighted by that token's flag."""
    batch = {"genome": torch.zeros(1, dtype=torch.long), "repeats": torch.tensor([[False, True, True, False]])}
    inputs = losses.prepare({"labels": torch.tensor([[6, 7, 8, IGNORE]])}, batch, causal=True, repeat_weight=0.5)
    assert inputs["repeats"].tolist() == [[True, True, False, False]]
    assert inputs["loss_weights"].tolist() == [[0.5, 0.5, 1.0, 1.0]]
    assert inputs["weight_total"] == pytest.approx(2.0)
