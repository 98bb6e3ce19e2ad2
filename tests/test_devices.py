"""Device discipline: inputs and collectives follow the engine's device; --device on every command; bf16 safety."""

import json
import os
import subprocess
import sys

import pytest
import torch

from dnalm.models import build_model, get_config
from dnalm.utils import devices
from dnalm.utils.errors import DnalmError
from tests.conftest import REPO


def test_trainer_moves_inputs_and_collectives_to_the_engine_device(ecoli_prepared, tmp_path):
    """The real trainer against an engine on another device (meta): every tensor it hands the engine, and the
    first collective of a training step and of evaluation, are on that device. On a trainer that leaves batches
    on the host, the engine sees CPU inputs and the collectives get CPU tensors, and this fails."""
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "tests" / "scripts" / "device_boundary.py"),
            str(ecoli_prepared),
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={**__import__("os").environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["engine_inputs"], "the engine was never called"
    assert all(device == "meta" for call in seen["engine_inputs"] for device in call.values()), seen
    assert seen["reached"] == {"train_step": "collective", "evaluate": "collective"}, seen["reached"]
    assert seen["collectives"] == ["meta", "meta"] and seen["trainer_device"] == "meta"
    assert len(seen["engine_inputs"]) == 2 + 2  # a step's two micro-batches (its statistics reduced once, after them),
    # then two evaluation batches


def test_device_choice():
    assert devices.resolve("cpu") == torch.device("cpu")
    assert devices.resolve("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DnalmError, match="--device must be one of"):
        devices.resolve("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DnalmError, match="--device cuda: no CUDA device"):
            devices.resolve("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without CUDA gives")
@pytest.mark.parametrize(
    "command",
    [
        ("generate", "--model", "missing", "--prompt", "ACGT"),
        ("finetune", "--arch", "cnn-small", "--train", "x.csv", "--dev", "y.csv", "--out", "z"),
        ("bench", "train", "--out", "unused"),
        ("bench", "attention", "--out", "unused"),
        ("bench", "generate", "--out", "unused"),
        ("bench", "data", "--out", "unused"),
        ("bench", "compare", "--out", "unused"),
    ],
)
def test_every_model_command_takes_device_and_refuses_absent_cuda(command, tmp_path, capsys, monkeypatch):
    from dnalm.cli import main

    monkeypatch.chdir(tmp_path)
    assert main([*command, "--device", "cuda"]) == 1
    assert "--device cuda: no CUDA device" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_decoder_without_padding_attends_with_is_causal_and_no_mask(monkeypatch):
    """No padding: SDPA gets is_causal and no mask (its flash kernel can run); the logits equal the masked path's."""
    config = get_config("decoder-tiny", vocab_size=12, attention="sdpa")
    torch.manual_seed(0)
    model = build_model(config).eval()
    ids = torch.randint(5, 12, (2, 40))
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kw):
        calls.append((attn_mask is None, is_causal))
        return real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        unmasked = model(ids).logits
        assert calls and all(c == (True, True) for c in calls)
        calls.clear()
        masked = model(ids, attention_mask=torch.ones_like(ids, dtype=torch.bool)).logits
        assert calls and all(c == (False, False) for c in calls)
        eager = build_model(config.replace(attention="eager"))
        eager.load_state_dict(model.state_dict())
        reference = eager.eval()(ids).logits
    torch.testing.assert_close(unmasked, masked, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(unmasked, reference, atol=1e-5, rtol=1e-5)


def test_padding_still_goes_through_the_mask():
    """A padded row gives, at its real tokens, the logits of the same row alone without padding."""
    for name in ("decoder-tiny", "encoder-tiny"):
        torch.manual_seed(0)
        model = build_model(get_config(name, vocab_size=12, attention="sdpa")).eval()
        ids = torch.randint(5, 12, (2, 30))
        ids[1, 20:] = 0
        mask = ids != 0
        with torch.no_grad():
            padded = model(ids, attention_mask=mask).logits
            alone = model(ids[1:, :20]).logits
        torch.testing.assert_close(padded[1, :20], alone[0], atol=1e-5, rtol=1e-5)


def test_batches_without_padding_carry_no_mask():
    from dnalm.data.masking import clm_batch

    full = clm_batch({"input_ids": torch.tensor([[5, 6, 7, 8]])})
    assert full["attention_mask"] is None and full["tokens"] == 4
    padded = clm_batch({"input_ids": torch.tensor([[5, 6, 7, 0]])})
    assert padded["attention_mask"].tolist() == [[True, True, True, False]] and padded["tokens"] == 3


def test_positions_stay_fp32_in_a_bf16_model():
    """RoPE angles and ALiBi slopes come out the same from a bf16-cast model as from fp32 (no bf16 buffers)."""
    from dnalm.models.positions import Rotary, alibi_slopes

    rotary = Rotary(64, 10000.0)
    x = torch.randn(1, 2, 8, 64)
    far = torch.tensor([[4000, 4001, 4002, 4003, 4004, 4005, 4006, 4007]])
    expected = rotary(x, far)
    torch.testing.assert_close(rotary.to(torch.bfloat16)(x, far), expected)
    assert [b.dtype for b in rotary.buffers()] == []
    for heads in (8, 12):
        assert alibi_slopes(heads).dtype == torch.float32
    model = build_model(get_config("encoder-tiny", vocab_size=12, positions="alibi")).to(torch.bfloat16)
    assert not any(name.endswith("alibi") for name, _ in model.named_buffers())


def test_causal_performer_accumulates_in_fp32():
    from dnalm.models.performer import causal_linear_attention, naive_causal_linear_attention

    torch.manual_seed(0)
    q, k = torch.rand(1, 2, 2048, 16), torch.rand(1, 2, 2048, 16)
    v = torch.randn(1, 2, 2048, 8)
    reference = naive_causal_linear_attention(q.double(), k.double(), v.double())
    out, (kv, k_sum) = causal_linear_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), 128, return_state=True)
    assert out.dtype == torch.bfloat16 and kv.dtype == torch.float32 and k_sum.dtype == torch.float32
    # the running sums over 2048 tokens of the bf16 inputs: 1.5e-7 relative in fp32 (summed in bf16: 7e-3 and 1.2e-2)
    kb, vb = k.bfloat16().double(), v.bfloat16().double()
    for state, exact in ((kv, kb.transpose(-1, -2) @ vb), (k_sum, kb.sum(2))):
        assert (state.double() - exact).abs().max() / exact.abs().max() < 1e-5
    # inputs rounded to bf16 once; the sums over 2048 tokens add no further bf16 error
    rounded = naive_causal_linear_attention(q.bfloat16().double(), k.bfloat16().double(), v.bfloat16().double())
    assert (out.double() - rounded).abs().max() < 2e-2
    assert (out.double() - reference).abs().max() < 5e-2


def test_generation_follows_the_model_device_and_seed():
    from dnalm.use.generate import generate_ids

    torch.manual_seed(0)
    model = build_model(get_config("decoder-tiny", vocab_size=10)).eval()
    prompt = torch.tensor([5, 6, 7])
    first = generate_ids(model, prompt, 20, seed=3, num_samples=2)
    again = generate_ids(model, prompt, 20, seed=3, num_samples=2)
    other = generate_ids(model, prompt, 20, seed=4, num_samples=2)
    assert first.device == devices.model_device(model)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_checkpoints_carry_the_cuda_rng_state_when_cuda_is_present(monkeypatch):
    from dnalm.train import checkpoint as ckpt

    state_on_gpu = torch.arange(16, dtype=torch.uint8)
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": state_on_gpu)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append(state))
    state = ckpt.rng_state()
    assert torch.equal(state["cuda"], state_on_gpu)
    ckpt.restore_rng(state)
    assert restored and torch.equal(restored[0], state_on_gpu)


def test_deepspeed_configs_accumulate_fp32_under_bf16_and_fuse_adamw_on_gpu():
    from dnalm.train.config import TrainConfig, deepspeed_config

    config = TrainConfig(
        run_dir="r", data={"path": "d"}, budget={"steps": 1}, batch={"micro_batch": 2, "global_batch": 4}
    )
    gpu = deepspeed_config(config, 2, on_gpu=True)
    assert gpu["bf16"] == {"enabled": True, "check_grad_overflow": True}
    assert gpu["data_types"] == {"grad_accum_dtype": "fp32"}
    assert gpu["optimizer"]["params"]["torch_adam"] and gpu["optimizer"]["params"]["fused"]
    cpu = deepspeed_config(config, 2, on_gpu=False)
    assert not cpu["bf16"]["enabled"] and "data_types" not in cpu and "fused" not in cpu["optimizer"]["params"]


def test_deepspeed_is_pinned_to_the_range_its_repairs_were_written_for():
    """pyproject pins DeepSpeed (the universal load's repairs in checkpoint.load are for 0.19.8's behaviour); the
    installed
    one is inside the pin."""
    import deepspeed
    import tomllib
    from packaging.requirements import Requirement
    from packaging.version import Version

    requirements = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(Requirement(r) for r in requirements if Requirement(r).name == "deepspeed")
    assert (
        pin.specifier.contains("0.19.8")
        and not pin.specifier.contains("0.20.0")
        and not pin.specifier.contains("0.19.7")
    )
    assert Version(deepspeed.__version__) in pin.specifier


def test_safetensors_is_a_core_dependency():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert any(r.startswith("safetensors") for r in project["dependencies"])
    assert not any(r.startswith("safetensors") for r in project["optional-dependencies"]["hf"])


def test_bench_train_names_the_device_it_measured(tmp_path):
    from dnalm.bench import train

    result = train.run(
        tmp_path, models=(("encoder-tiny", 2, 64, {}),), with_distribution=False, device="cpu", with_compile=False
    )
    assert result["device"]["type"] == "cpu" and result["device"]["name"] == result["machine"]["cpu"]
    assert result["dtype"] == "fp32" and "fp32 matmul on this device" in result["peak"]["what"]
    assert "gpu" not in result


def test_no_device_sentence_is_hard_coded_in_the_benches():
    for path in (REPO / "dnalm" / "bench").glob("*.py"):
        text = path.read_text()
        for phrase in ("(CPU)", "not measured here", "CPU processes", ', fp32"'):
            assert phrase not in text, f"{path.name}: {phrase}"


FLUSH_CHECK = """
import sys, numpy as np, torch
if sys.argv[1] == "pool first":
    torch.randn(4_000_000).exp().sum()  # PyTorch's thread pool starts before the setting
    torch.set_flush_denormal(True)
else:
    import dnalm.eval.finetune  # what `dnalm finetune` and `dnalm eval gue` import before any tensor work
tiny = torch.from_numpy(np.full(4_000_000, 1 << 19, dtype=np.uint32).view(np.float32))  # a denormal, written as bits
print(torch.get_num_threads(), int(((tiny * 1.5) != 0).sum()))
"""


def test_every_thread_flushes_denormals_once_dnalm_is_imported():
    """A worker thread that keeps denormals made pretrained fine-tuning steps 4.7-6.4x slower
    (dnalm/utils/devices.py)."""

    def survivors(order: str) -> tuple[int, int]:
        done = subprocess.run(
            [sys.executable, "-c", FLUSH_CHECK, order],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "OMP_NUM_THREADS": "2"},
        )
        threads, kept = done.stdout.split()
        return int(threads), int(kept)

    threads, kept = survivors("dnalm first")
    assert threads == 2 and kept == 0
    assert survivors("pool first")[1] > 0  # the check sees a thread that does not flush
