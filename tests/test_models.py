"""Models: named sizes, invalid combinations, causality, both directions, backends, checkpointing, caches."""

from pathlib import Path

import pytest
import torch

from dnalm.models import NAMED_CONFIGS, ModelConfig, ModelConfigError, build_model, count_parameters, get_config
from dnalm.models.performer import PerformerFeatures, softmax_features

REPO = Path(__file__).resolve().parents[1]
META_ONLY = {"encoder-large", "decoder-medium", "decoder-1.5b"}
BACKENDS = ["eager", "sdpa", "flash", "performer"]
POSITIONS = ["rope", "alibi", "learned", "none"]


def tiny(arch="decoder", **changes) -> ModelConfig:
    base = dict(
        vocab_size=16, d_model=32, n_layers=2, n_heads=4, max_seq_len=64, performer_features=64, performer_chunk=8
    )
    return get_config(f"{arch}-tiny", **(base | changes))


def built(config: ModelConfig, seed=0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(config).eval()


def ids(batch=2, length=24, seed=1):
    return torch.randint(5, 16, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(NAMED_CONFIGS))
def test_named_sizes_build_and_run(name):
    config = get_config(name)
    meta = build_model(config, device="meta")
    assert all(p.is_meta for p in meta.parameters())
    assert ModelConfig.from_yaml(REPO / "configs" / "model" / f"{name}.yaml") == config
    if name in META_ONLY:
        return
    model = build_model(config).eval()
    with torch.no_grad():
        out = model(torch.randint(5, 100, (1, 16)))
    assert out.logits.shape == (1, 16, config.vocab_size) and torch.isfinite(out.logits).all()


def test_parameter_counts_on_meta():
    assert 1.4e9 <= count_parameters(build_model("decoder-1.5b", device="meta")) <= 1.6e9
    assert 100e6 <= count_parameters(build_model("encoder-base", device="meta")) <= 125e6


def test_initial_weights_follow_init_std_and_shrink_with_depth_on_the_residual_projections():
    torch.manual_seed(0)
    config = get_config("encoder-small")
    model = build_model(config)
    residual = config.init_std / (2 * config.n_layers) ** 0.5
    first, last = model.blocks[0], model.blocks[-1]
    for name, layer, expected in (
        ("embed", model.embed, config.init_std),
        ("qkv", first.attn.qkv, config.init_std),
        ("up", last.mlp.up, config.init_std),
        ("out", first.attn.out, residual),
        ("down", last.mlp.down, residual),
    ):
        assert float(layer.weight.detach().std()) == pytest.approx(expected, rel=0.05), name


@pytest.mark.parametrize(
    "changes,reason",
    [
        (dict(attention="performer", positions="alibi"), "ALiBi adds a bias to explicit attention scores"),
        (dict(num_segments=2), "a decoder reads one view"),
        (dict(n_heads=5), "not divisible by n_heads"),
        (dict(d_model=36, n_heads=4, positions="rope"), "RoPE needs an even head dimension"),
        (dict(attention="ring"), "attention"),
        (dict(mlm_target="bases"), "a decoder predicts the next token's id"),
        (
            dict(conv_layers=2),
            "conv_layers is a stem for an encoder's attention blocks; arch decoder would see the future",
        ),
    ],
)
def test_invalid_combinations_say_why(changes, reason):
    with pytest.raises(ModelConfigError, match=reason):
        tiny(**changes)


def test_unknown_name_and_bad_yaml(tmp_path):
    with pytest.raises(ModelConfigError, match="unknown model 'decoder-7b'"):
        get_config("decoder-7b")
    bad = tmp_path / "bad.yaml"
    bad.write_text("arch: decoder\nnum_segments: 3\n")
    with pytest.raises(ModelConfigError, match=rf"{bad}: .*a decoder reads one view"):
        ModelConfig.from_yaml(bad)


def cases():
    return [(b, p) for b in BACKENDS for p in POSITIONS if not (b == "performer" and p == "alibi")]


@pytest.mark.parametrize("backend,positions", cases())
def test_decoders_do_not_see_the_future(backend, positions):
    model = built(tiny(attention=backend, positions=positions))
    x = ids()
    changed = x.clone()
    changed[:, -1] = (changed[:, -1] - 4) % 11 + 5
    with torch.no_grad():
        a, b = model(x).logits, model(changed).logits
    torch.testing.assert_close(a[:, :-1], b[:, :-1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[:, -1], b[:, -1])


@pytest.mark.parametrize("backend,positions", cases())
def test_encoders_see_both_directions(backend, positions):
    model = built(tiny("encoder", attention=backend, positions=positions))
    x = ids()
    changed = x.clone()
    changed[:, -1] = (changed[:, -1] - 4) % 11 + 5
    with torch.no_grad():
        assert not torch.allclose(model(x).logits[:, 0], model(changed).logits[:, 0])


@pytest.mark.parametrize("arch", ["encoder", "decoder"])
@pytest.mark.parametrize("backend", ["sdpa", "flash"])
@pytest.mark.parametrize("positions", ["alibi", "rope"])
def test_model_backends_match_eager_with_padding(arch, backend, positions):
    reference = built(tiny(arch, attention="eager", positions=positions))
    other = built(tiny(arch, attention=backend, positions=positions))
    other.load_state_dict(reference.state_dict())
    x, mask = ids(), torch.ones(2, 24, dtype=torch.bool)
    mask[1, 17:] = False
    with torch.no_grad():
        expected, got = reference(x, attention_mask=mask).logits, other(x, attention_mask=mask).logits
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-5, rtol=1e-4)


def test_padding_does_not_change_real_tokens():
    model = built(tiny("encoder", positions="alibi"))
    x = ids(1, 20)
    padded = torch.cat([x, torch.zeros(1, 6, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 20, dtype=torch.bool), torch.zeros(1, 6, dtype=torch.bool)], 1)
    with torch.no_grad():
        torch.testing.assert_close(
            model(padded, attention_mask=mask).logits[:, :20], model(x).logits, atol=1e-5, rtol=1e-4
        )


def test_hybrid_encoder_convolves_before_attending_and_ignores_padding():
    model = built(tiny("encoder", positions="rope", conv_layers=3, cnn_kernel=5))
    assert len(model.conv_stem) == 3 and [c.conv.dilation[0] for c in model.conv_stem] == [1, 2, 4]
    x = ids(1, 20)
    padded = torch.cat([x, ids(1, 6, seed=7)], 1)
    mask = torch.cat([torch.ones(1, 20, dtype=torch.bool), torch.zeros(1, 6, dtype=torch.bool)], 1)
    with torch.no_grad():
        plain = model(x).logits
        torch.testing.assert_close(model(padded, attention_mask=mask).logits[:, :20], plain, atol=1e-5, rtol=1e-4)
        with_stem_removed = built(tiny("encoder", positions="rope"))
        with_stem_removed.load_state_dict(
            {k: v for k, v in model.state_dict().items() if not k.startswith("conv_stem")}
        )
        assert not torch.allclose(with_stem_removed(x).logits, plain)
    with pytest.raises(ModelConfigError, match="arch cnn is convolutions throughout"):
        get_config("cnn-base", conv_layers=2)
    with pytest.raises(ModelConfigError, match="cnn_kernel must be odd"):
        tiny("encoder", conv_layers=1, cnn_kernel=4)


def test_views_input_with_segments_and_positions():
    model = built(tiny("encoder", num_segments=2, positions="learned"))
    x = ids(2, 20)
    segments = torch.tensor([[0] * 12 + [1] * 8] * 2)
    positions = torch.tensor([list(range(12)) + list(range(1, 9))] * 2)
    with torch.no_grad():
        a = model(x, segment_ids=segments, positions=positions).logits
        b = model(x, segment_ids=torch.zeros_like(segments), positions=positions).logits
    assert a.shape == (2, 20, 16) and not torch.allclose(a, b)


@pytest.mark.parametrize("arch", ["encoder", "cnn"])
def test_a_bases_head_gives_five_classes_per_base_of_a_token(arch):
    """mlm_target bases: bases_per_token × (A C G T N) outputs in place of the vocabulary, the body untouched."""

    def config(**changes):
        return (
            get_config("cnn-base", vocab_size=4111, d_model=32, n_layers=2, **changes)
            if arch == "cnn"
            else tiny(arch, vocab_size=4111, **changes)
        )

    by_token, by_base = built(config()), built(config(mlm_target="bases", bases_per_token=6))
    x = ids(2, 20)
    with torch.no_grad():
        out = by_base(x)
    assert out.logits.shape == (2, 20, 6, 5)
    assert by_base.head.weight.shape == (30, by_base.config.d_model)
    assert count_parameters(by_token) - count_parameters(by_base) == (4111 - 30) * by_base.config.d_model
    with pytest.raises(ModelConfigError, match="cannot be tied"):
        tiny("encoder", mlm_target="bases", tie_embeddings=True)


@pytest.mark.parametrize("arch", ["encoder", "decoder"])
def test_activation_checkpointing_gives_the_same_gradients(arch):
    grads = []
    for checkpointing in (False, True):
        model = built(tiny(arch, activation_checkpointing=checkpointing, dropout=0.0)).train()
        loss = model(ids()).logits.logsumexp(-1).mean()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend,positions", cases())
def test_cached_decoding_equals_full_forward(backend, positions):
    model = built(tiny(attention=backend, positions=positions))
    x = ids(2, 30)
    with torch.no_grad():
        full = model(x).logits
        out = model(x[:, :11], use_cache=True)
        steps, cache = [out.logits], out.cache
        for t in range(11, 30):
            out = model(x[:, t : t + 1], cache=cache, use_cache=True)
            steps.append(out.logits)
            cache = out.cache
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-4, rtol=1e-4)
    if backend == "performer":  # the recurrent state does not grow with the tokens generated
        assert set(cache[0]) == {"state", "length"} and cache[0]["state"][0].shape[2] == 64


def test_alibi_extrapolates_and_learned_positions_refuse():
    model = built(tiny("encoder", positions="alibi", max_seq_len=32))
    with torch.no_grad():
        for length in (64, 128):  # 2x and 4x the training length
            assert torch.isfinite(model(ids(1, length)).logits).all()
    learned = built(tiny("encoder", positions="learned", max_seq_len=32))
    with pytest.raises(ValueError, match="beyond max_seq_len 32"):
        learned(ids(1, 40))


def test_performer_keys_match_performer_pytorch():
    from performer_pytorch.performer_pytorch import softmax_kernel

    performer = PerformerFeatures(16, 32)
    x = torch.randn(2, 3, 10, 16)
    for is_query in (True, False):
        expected = softmax_kernel(x, projection_matrix=performer.fast.projection_matrix, is_query=is_query)
        torch.testing.assert_close(softmax_features(x, performer.fast.projection_matrix, is_query=is_query), expected)


def test_redraw_reaches_every_layer():
    model = built(tiny(attention="performer"))
    before = [b.attn.performer.fast.projection_matrix.clone() for b in model.blocks]
    model.redraw_performer_features()
    assert all(not torch.equal(a, b.attn.performer.fast.projection_matrix) for a, b in zip(before, model.blocks))


def test_cnn_baseline():
    config = get_config("cnn-base", vocab_size=16, d_model=32, n_layers=3)
    model = built(config)
    x, mask = ids(), torch.ones(2, 24, dtype=torch.bool)
    with torch.no_grad():
        out = model(x, attention_mask=mask).logits
    assert out.shape == (2, 24, 16)
    with pytest.raises(ModelConfigError, match="cnn_kernel must be odd"):
        get_config("cnn-base", cnn_kernel=4)


def test_fp8_takes_the_block_linears_and_leaves_the_head():
    """precision fp8 would convert exactly the blocks' linear layers of decoder-small (qkv, out, up, down: all
    multiples of 16), never the LM head; on this CPU it is refused before any of that (tests/test_train.py)."""
    from dnalm.train.fp8 import Fp8Error, check, qualifies

    model = build_model(get_config("decoder-small", vocab_size=10))
    taken = [name for name, module in model.named_modules() if qualifies(module, name)]
    assert len(taken) == 4 * model.config.n_layers and "head" not in taken
    with pytest.raises(Fp8Error, match="this run is on cpu"):
        check(torch.device("cpu"))
