"""Attention backends against the eager reference; Performer's causal prefix sums; ALiBi; RoPE."""

import pytest
import torch

from dnalm.models.attention import ATTENTION
from dnalm.models.performer import PerformerFeatures, causal_linear_attention, naive_causal_linear_attention
from dnalm.models.positions import Rotary, alibi_slopes

B, H, T, D = 2, 4, 37, 16


def inputs(seed=0, length=T, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, length, D, generator=g, dtype=dtype) for _ in range(3))
    pos = torch.arange(length).expand(B, length)
    mask = torch.ones(B, length, dtype=torch.bool)
    mask[1, length - 9 :] = False  # the second sequence ends in padding
    return q, k, v, pos, mask


@pytest.mark.parametrize("backend", ["sdpa", "flash"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("alibi", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_softmax_backends_match_eager(backend, causal, alibi, padded):
    q, k, v, pos, mask = inputs()
    kwargs = dict(
        causal=causal, q_pos=pos, k_pos=pos, key_mask=mask if padded else None, alibi=alibi_slopes(H) if alibi else None
    )
    expected = ATTENTION["eager"](q, k, v, **kwargs)
    got = ATTENTION[backend](q, k, v, **kwargs)
    rows = mask if padded else torch.ones_like(mask)  # outputs at padded queries are unused
    torch.testing.assert_close(got.transpose(1, 2)[rows], expected.transpose(1, 2)[rows], atol=2e-5, rtol=1e-4)


def test_alibi_bias_is_built_once_for_rows_that_share_positions():
    from dnalm.models.attention import additive_mask
    from dnalm.models.positions import alibi_bias

    q, k, _, pos, mask = inputs()
    slopes = alibi_slopes(H)
    common = dict(causal=False, alibi=slopes)
    shared = additive_mask(q, k, q_pos=pos, k_pos=pos, key_mask=torch.ones_like(mask), **common)
    assert shared.shape == (1, H, T, T)  # not B copies, and an all-True key mask adds nothing
    torch.testing.assert_close(shared.expand(B, -1, -1, -1), alibi_bias(slopes, pos, pos, False))
    shifted = pos + torch.tensor([[0], [3]])
    assert additive_mask(q, k, q_pos=shifted, k_pos=shifted, key_mask=None, **common).shape == (B, H, T, T)
    padded = additive_mask(q, k, q_pos=pos, k_pos=pos, key_mask=mask, **common)
    assert padded.shape == (B, H, T, T) and torch.equal(padded[0], shared[0])
    assert padded[1, :, :, -9:].eq(float("-inf")).all() and torch.equal(padded[1, :, :, :-9], shared[0, :, :, :-9])


@pytest.mark.parametrize("backend", ["eager", "sdpa", "flash"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("alibi", [False, True])
def test_queries_with_no_key_to_see_stay_finite_and_leave_the_others_alone(backend, causal, alibi):
    """A row of padding only, and (causal) queries left of a left-padded row's first real key, see no key."""
    q, k, v, pos, mask = inputs(3)
    mask[1] = False
    mask[0, :5] = False
    q.requires_grad_(True)
    kwargs = dict(causal=causal, q_pos=pos, k_pos=pos, alibi=alibi_slopes(H) if alibi else None)
    out = ATTENTION[backend](q, k, v, key_mask=mask, **kwargs)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(q.grad).all()
    real = {**kwargs, "q_pos": pos[:1, 5:], "k_pos": pos[:1, 5:]}
    alone = ATTENTION["eager"](q[:1, :, 5:], k[:1, :, 5:], v[:1, :, 5:], **real)
    torch.testing.assert_close(out[:1, :, 5:], alone, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ["sdpa", "flash"])
def test_rope_inputs_match_eager(backend):
    q, k, v, pos, _ = inputs(1)
    rotary = Rotary(D, 10_000.0)
    q, k = rotary(q, pos), rotary(k, pos)
    for causal in (False, True):
        kwargs = dict(causal=causal, q_pos=pos, k_pos=pos)
        torch.testing.assert_close(
            ATTENTION[backend](q, k, v, **kwargs), ATTENTION["eager"](q, k, v, **kwargs), atol=2e-5, rtol=1e-4
        )


def test_rope_scores_depend_on_relative_position_only():
    rotary = Rotary(D, 10_000.0)
    g = torch.Generator().manual_seed(0)  # unseeded, a score near 0 once failed a purely relative tolerance
    q, k = torch.randn(1, 1, 1, D, generator=g), torch.randn(1, 1, 1, D, generator=g)

    def score(i, j):
        return float(rotary(q, torch.tensor([[i]])) @ rotary(k, torch.tensor([[j]])).transpose(-1, -2))

    assert score(5, 2) == pytest.approx(score(105, 102), rel=1e-4, abs=1e-5)


def test_alibi_slopes_follow_press_et_al():
    assert alibi_slopes(8).tolist() == pytest.approx([2 ** -(i + 1) for i in range(8)])
    assert len(alibi_slopes(12)) == 12 and alibi_slopes(12)[:8].tolist() == pytest.approx(alibi_slopes(8).tolist())


def test_chunked_causal_performer_equals_naive_in_float64():
    g = torch.Generator().manual_seed(0)
    q, k = (torch.rand(B, H, 301, 24, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, H, 301, D, generator=g, dtype=torch.float64)
    expected = naive_causal_linear_attention(q, k, v)
    for chunk in (1, 7, 64, 301, 1000):
        torch.testing.assert_close(causal_linear_attention(q, k, v, chunk), expected, atol=1e-12, rtol=1e-12)
    head, state = causal_linear_attention(q[:, :, :200], k[:, :, :200], v[:, :, :200], 64, return_state=True)
    tail = causal_linear_attention(q[:, :, 200:], k[:, :, 200:], v[:, :, 200:], 64, state=state)
    torch.testing.assert_close(torch.cat([head, tail], 2), expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_performer_error_shrinks_as_features_grow(causal):
    q, k, v, pos, _ = inputs(2, length=64)
    q, k = q * 0.5, k * 0.5
    exact = ATTENTION["eager"](q, k, v, causal=causal, q_pos=pos, k_pos=pos)
    errors = []
    for features in (16, 256, 4096):
        torch.manual_seed(0)
        performer = PerformerFeatures(D, features)
        approx = ATTENTION["performer"](q, k, v, causal=causal, q_pos=pos, k_pos=pos, performer=performer)
        errors.append(float((approx - exact).abs().mean()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.05, errors


def test_performer_padding_is_ignored_noncausal():
    q, k, v, pos, mask = inputs(3)
    torch.manual_seed(0)
    performer = PerformerFeatures(D, 64)
    full = ATTENTION["performer"](q, k, v, causal=False, q_pos=pos, k_pos=pos, key_mask=mask, performer=performer)
    real = mask[1].sum()
    alone = ATTENTION["performer"](
        q[1:, :, :real],
        k[1:, :, :real],
        v[1:, :, :real],
        causal=False,
        q_pos=pos[1:, :real],
        k_pos=pos[1:, :real],
        performer=performer,
    )
    torch.testing.assert_close(full[1:, :, :real], alone, atol=1e-5, rtol=1e-4)


def test_feature_redraw_changes_the_projection():
    performer = PerformerFeatures(D, 32)
    before = performer.fast.projection_matrix.clone()
    performer.redraw()
    assert not torch.equal(before, performer.fast.projection_matrix)


def test_relu_kernel_runs_causal_and_not():
    q, k, v, pos, _ = inputs(4)
    performer = PerformerFeatures(D, 32, kernel="relu")
    for causal in (False, True):
        out = ATTENTION["performer"](q, k, v, causal=causal, q_pos=pos, k_pos=pos, performer=performer)
        assert out.shape == v.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_fused_alibi_matches_eager_with_gradients_and_builds_no_bias(causal, padded, monkeypatch):
    """On CPU in fp32 ALiBi runs through the fused kernel (alibi_fused): outputs and the gradients of q, k and v equal
    eager's, and no (heads × L × L) bias is ever built."""
    import dnalm.models.attention as attention
    from dnalm.models import alibi_fused

    monkeypatch.setattr(alibi_fused, "SYMMETRIC_FROM", 256)  # encoders take it from 2k tokens; 300 keeps the test fast
    q, k, v, pos, mask = inputs(3, length=300)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    kwargs = dict(causal=causal, q_pos=pos, k_pos=pos, key_mask=mask if padded else None, alibi=alibi_slopes(H))
    expected = ATTENTION["eager"](q, k, v, **kwargs)
    rows = mask if padded else torch.ones_like(mask)
    weights = torch.randn_like(expected) * rows[:, None, :, None]  # padded queries' outputs are unused
    expected_grads = torch.autograd.grad((expected * weights).sum(), (q, k, v))

    def no_bias(*args, **kw):
        raise AssertionError("the fused path built an explicit ALiBi bias")

    monkeypatch.setattr(attention, "alibi_bias", no_bias)
    got = ATTENTION["flash"](q, k, v, **kwargs)
    grads = torch.autograd.grad((got * weights).sum(), (q, k, v))
    torch.testing.assert_close(got.transpose(1, 2)[rows], expected.transpose(1, 2)[rows], atol=2e-5, rtol=1e-4)
    for name, a, b in zip("qkv", grads, expected_grads):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=lambda m: f"d{name}: {m}")


def test_unpadded_encoder_alibi_reads_one_line_of_bias_per_head(monkeypatch):
    """Rows with consecutive positions (each its own offset) and no padding: one non-causal kernel pass whose mask is a
    view of 2T−1 values a head, equal to eager with gradients, at a length where the two causal halves never run."""
    import dnalm.models.attention as attention
    from dnalm.models import alibi_fused

    length = 300
    q, k, v, _, _ = inputs(5, length=length)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    pos = torch.arange(length)[None] + torch.tensor([[0], [37]])
    kwargs = dict(causal=False, q_pos=pos, k_pos=pos, alibi=alibi_slopes(H))
    expected = ATTENTION["eager"](q, k, v, **kwargs)
    weights = torch.randn_like(expected)
    expected_grads = torch.autograd.grad((expected * weights).sum(), (q, k, v))

    masks = []
    real = alibi_fused.keys_reversed_bias
    monkeypatch.setattr(alibi_fused, "keys_reversed_bias", lambda *a: masks.append(real(*a)) or masks[-1])
    monkeypatch.setattr(alibi_fused, "by_causal_passes", None)  # the two causal halves must not run
    monkeypatch.setattr(attention, "alibi_bias", None)  # nor the explicit bias
    got = ATTENTION["flash"](q, k, v, **kwargs)
    grads = torch.autograd.grad((got * weights).sum(), (q, k, v))
    assert len(masks) == 2, "forward and backward each read the view"
    assert all(
        m.shape == (1, H, length, length) and m.untyped_storage().nbytes() == H * (2 * length - 1) * 4 for m in masks
    )
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
    for name, a, b in zip("qkv", grads, expected_grads):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=lambda m: f"d{name}: {m}")


def test_alibi_with_restarting_positions_takes_the_explicit_bias():
    """Multi-view inputs restart positions per view: j ≤ i no longer means p_j ≤ p_i, so the fused path steps aside."""
    from dnalm.models import alibi_fused

    q, k, v, _, _ = inputs(4)
    pos = torch.cat([torch.arange(20), torch.arange(T - 20)]).expand(B, T)
    assert not alibi_fused.applicable(q, k, pos, pos, 0.0, causal=True)
    assert alibi_fused.applicable(q, k, *[torch.arange(T).expand(B, T)] * 2, 0.0, causal=True)
    indices, padded = torch.arange(T).expand(B, T), inputs(4)[-1]
    assert alibi_fused.applicable(q, k, indices, indices, 0.0, causal=False), "unpadded encoder: one line of bias"
    assert not alibi_fused.applicable(q, k, indices, indices, 0.0, causal=False, key_mask=padded), "short, padded"
    assert not alibi_fused.applicable(q, k, pos, pos, 0.0, causal=False)
    for causal in (False, True):
        kwargs = dict(causal=causal, q_pos=pos, k_pos=pos, alibi=alibi_slopes(H))
        torch.testing.assert_close(
            ATTENTION["flash"](q, k, v, **kwargs), ATTENTION["eager"](q, k, v, **kwargs), atol=2e-5, rtol=1e-4
        )


@pytest.mark.parametrize("alibi", [False, True])
def test_sdpa_hands_the_cpu_kernel_contiguous_heads(alibi, monkeypatch):
    """Heads arrive as strided views of the (B, T, 3·H·D) projection; the CPU kernel would read them in place,
    slower."""
    import dnalm.models.attention as attention
    from dnalm.models import alibi_fused

    seen = []
    for owner, name in ((attention.F, "scaled_dot_product_attention"), (alibi_fused, "fused_alibi")):
        real = getattr(owner, name)
        monkeypatch.setattr(
            owner, name, lambda q, k, v, _real=real, **kw: seen.append((q, k, v)) or _real(q, k, v, **kw)
        )
    projection = torch.randn(B, T, 3, H, D)
    q, k, v = projection.permute(2, 0, 3, 1, 4)
    assert not q.is_contiguous()
    pos = torch.arange(T).expand(B, T)
    kwargs = dict(causal=False, q_pos=pos, k_pos=pos, alibi=alibi_slopes(H) if alibi else None)
    torch.testing.assert_close(
        ATTENTION["sdpa"](q, k, v, **kwargs), ATTENTION["eager"](q, k, v, **kwargs), atol=2e-5, rtol=1e-4
    )
    assert len(seen) == 1 and all(x.is_contiguous() for x in seen[0])


def test_a_compiled_short_alibi_encoder_is_one_graph():
    """Under torch.compile a short ALiBi encoder is turned away from the fused paths before any check that reads
    tensor values: such a check breaks the graph, and Inductor crashed (segmentation fault) around those breaks."""
    from dnalm.models import build_model, get_config

    model = build_model(get_config("encoder-tiny", vocab_size=16))
    explained = torch._dynamo.explain(model)(torch.randint(5, 16, (2, 64)))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def _flex_cases():
    pos = torch.arange(T).expand(B, T)
    views = torch.cat([torch.arange(20), torch.arange(T - 20)]).expand(B, T)  # two tokenizers' views, restarting
    return {"encoder": (pos + torch.tensor([[0], [5]]), False), "decoder": (pos, True), "views": (views, False)}


@pytest.mark.parametrize("case", ["encoder", "decoder", "views"])
@pytest.mark.parametrize("padded", [False, True])
def test_flex_alibi_matches_eager_forward_on_cpu(case, padded):
    """FlexAttention computes ALiBi and the masks inside its kernel (CUDA's path; on CPU it has a forward only)."""
    from dnalm.models.alibi_flex import flex_alibi

    q, k, v, _, mask = inputs(4)
    pos, causal = _flex_cases()[case]
    kwargs = dict(causal=causal, key_mask=mask if padded else None)
    with torch.no_grad():
        got = flex_alibi(q, k, v, slopes=alibi_slopes(H), q_pos=pos, k_pos=pos, **kwargs)
        expected = ATTENTION["eager"](q, k, v, q_pos=pos, k_pos=pos, alibi=alibi_slopes(H), **kwargs)
    rows = mask if padded else torch.ones_like(mask)
    torch.testing.assert_close(got.transpose(1, 2)[rows], expected.transpose(1, 2)[rows], atol=2e-5, rtol=1e-4)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu/run.sh runs it)")


@CUDA
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_alibi_goes_through_flex_with_the_gradients_of_eager(causal, padded, dtype, monkeypatch):
    """On a GPU without flash-attn the sdpa backend's ALiBi is FlexAttention's, with no bias built; outputs and q/k/v
    gradients at real tokens against eager in float64. A row of padding alone gets zeros and finite gradients."""
    from dnalm.models import alibi_flex, attention

    monkeypatch.setattr(attention, "additive_mask", lambda *a, **k: pytest.fail("an explicit bias was built"))
    device, length = torch.device("cuda"), 300
    g = torch.Generator(device=device).manual_seed(5)
    q, k, v = (torch.randn(3, H, length, D, device=device, generator=g, dtype=torch.float64) for _ in range(3))
    pos = torch.arange(length, device=device).expand(3, length) + torch.tensor([[0], [2], [0]], device=device)
    mask = torch.ones(3, length, dtype=torch.bool, device=device)
    if padded:
        mask[1, -40:] = False
        mask[2] = False
    slopes = alibi_slopes(H, device)
    calls = []
    monkeypatch.setattr(
        alibi_flex, "flex_alibi", lambda *a, _f=alibi_flex.flex_alibi, **kw: calls.append(1) or _f(*a, **kw)
    )
    ours = [x.to(dtype).requires_grad_(True) for x in (q, k, v)]
    got = ATTENTION["sdpa"](*ours, causal=causal, q_pos=pos, k_pos=pos, key_mask=mask if padded else None, alibi=slopes)
    weights = torch.randn(got.shape, device=device, generator=g, dtype=torch.float64)
    real = mask[:, None, :, None]  # outputs at padded queries are unused
    (got.double() * weights * real).sum().backward()
    assert calls and torch.isfinite(got).all() and all(torch.isfinite(x.grad).all() for x in ours)
    monkeypatch.undo()
    ref = [x.clone().requires_grad_(True) for x in (q, k, v)]
    expected = ATTENTION["eager"](
        *ref, causal=causal, q_pos=pos, k_pos=pos, key_mask=mask if padded else None, alibi=slopes
    )
    (expected * weights * real).sum().backward()
    bound = 1e-3 if dtype == torch.float32 else 2e-2

    def relative(a, b):
        return float((a.double() - b).norm() / b.norm())

    assert relative(got * real, expected * real) < bound
    for mine, theirs in zip(ours, ref):
        assert relative(mine.grad * real, theirs.grad * real) < bound
    if padded:
        assert got[2].abs().max() == 0


def test_alibis_explicit_bias_stays_fp32_and_bf16_cached_decoding_matches_the_full_forward():
    """The explicit ALiBi bias is fp32 over bf16 queries (a bf16 bias rounds −slope·distance), and a bf16 decoder's
    cached logits, token by token, equal its full forward's within bf16 noise."""
    from dnalm.models import build_model, get_config
    from dnalm.models.attention import additive_mask
    from dnalm.models.positions import alibi_slopes

    q = torch.zeros(1, 4, 1, 8, dtype=torch.bfloat16)
    k = torch.zeros(1, 4, 2048, 8, dtype=torch.bfloat16)
    mask = additive_mask(
        q,
        k,
        causal=True,
        q_pos=torch.tensor([[2047]]),
        k_pos=torch.arange(2048)[None],
        key_mask=None,
        alibi=alibi_slopes(4),
    )
    assert mask.dtype == torch.float32 and float(mask[0, -1, 0, 0]) == -2047 * float(alibi_slopes(4)[-1])

    torch.manual_seed(0)
    model = build_model(get_config("decoder-tiny", positions="alibi", vocab_size=16, max_seq_len=1024))
    model = model.to(torch.bfloat16).eval()
    ids = torch.randint(5, 16, (2, 512), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids).logits[:, -32:].float()
        cache = model(ids[:, :-32], use_cache=True, logits=False).cache
        steps = []
        for t in range(ids.shape[1] - 32, ids.shape[1]):
            out = model(ids[:, t : t + 1], cache=cache, use_cache=True)
            cache = out.cache
            steps.append(out.logits[:, -1].float())
    cached = torch.stack(steps, 1)
    spread = float(full.abs().max())
    assert float((cached - full).abs().max()) <= 2**-6 * spread, (float((cached - full).abs().max()), spread)
