"""The typed model config and the named sizes (``get_config("decoder-1.5b")``).

A config validates itself on construction and says why a combination cannot work. It
serialises to YAML/JSON; ``configs/model/*.yaml`` hold the named sizes.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dnalm.utils.errors import DnalmError, validated

BASE_CLASSES = 5  # A C G T N, as dnalm.tokenizers.BASES


class ModelConfigError(DnalmError):
    """A model configuration that cannot be built, with the reason."""


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = Field("custom", description="the named size it came from, or custom")
    arch: Literal["encoder", "decoder", "cnn"] = Field(
        "encoder", description="encoder (masked LM), decoder (causal LM) or cnn (residual dilated convolutions)"
    )
    vocab_size: int = Field(4096, ge=6, description="token ids the embedding holds (the tokenizer's vocab_size)")
    d_model: int = Field(256, ge=8, description="the width of every token's vector")
    n_layers: int = Field(4, ge=1, description="transformer blocks (CNN: residual blocks)")
    n_heads: int = Field(4, ge=1, description="attention heads; d_model must divide by it")
    mlp: Literal["swiglu", "gelu"] = Field("swiglu", description="the blocks' feed-forward layer")
    mlp_hidden: int | None = Field(
        None, ge=8, description="MLP width; default 8/3·d (SwiGLU) or 4·d (GELU), rounded up to 64"
    )
    norm: Literal["rmsnorm", "layernorm"] = Field("rmsnorm", description="pre-norm kind")
    norm_eps: float = Field(1e-5, description="the norms' ε")
    dropout: float = Field(0.0, ge=0, lt=1, description="on attention weights and block outputs while training")
    attention: Literal["eager", "sdpa", "flash", "performer"] = Field(
        "sdpa",
        description="the backend (dnalm.models.attention): eager reference, PyTorch SDPA, flash-attn when "
        "installed (else SDPA's flash kernel), Performer's FAVOR+",
    )
    positions: Literal["alibi", "rope", "learned", "none"] = Field(
        "rope", description="ALiBi biases, rotary, a learned table (up to max_seq_len), or none"
    )
    max_seq_len: int = Field(2048, ge=8, description="longest input for learned positions (ALiBi and RoPE extrapolate)")
    rope_theta: float = Field(
        10_000.0, gt=0, description="RoPE base; raised for longer context (continued pretraining)"
    )
    rope_scale: float = Field(
        1.0,
        ge=1,
        description="RoPE position interpolation: positions divided by this factor, "
        "so a window this many times longer keeps the trained angles",
    )
    linear_bias: bool = Field(
        False,
        description="biases in every linear layer of the transformer (ESM's and Nucleotide "
        "Transformer v1's layout, for imported checkpoints)",
    )
    tie_embeddings: bool = Field(False, description="the output head shares the input embedding's weights")
    lm_head: Literal["linear", "transform"] = Field(
        "linear",
        description="transform: dense, GELU and a norm before the output projection (BERT's and ESM's MLM head)",
    )
    num_segments: int = Field(1, ge=1, description="views of a concatenated multi-tokenizer input (segment embeddings)")
    mlm_target: Literal["tokens", "bases"] = Field(
        "tokens",
        description="what a masked token predicts: its id (a vocab-wide head), or the bases it spells "
        "(bases_per_token × 5 outputs: a factorised head, cheap for k-mer vocabularies)",
    )
    bases_per_token: int = Field(
        1, ge=1, description="the longest token in bases (mlm_target bases; set from the tokenizer)"
    )
    activation_checkpointing: bool = Field(
        False,
        description="recompute each block in the backward pass (set by the training config's key of the same name)",
    )
    mlp_tile: int = Field(
        0,
        ge=0,
        description="training: run each MLP over tiles of this many positions, each "
        "recomputed in the backward (0: whole windows); memory, not results",
    )
    loss_chunk: int = Field(
        0,
        ge=0,
        description="training: the LM head and its loss over chunks of this many "
        "positions, recomputed in the backward, so no (T, vocab) fp32 logits exist (0: whole)",
    )
    performer_features: int = Field(256, ge=8, description="random features of FAVOR+")
    performer_kernel: Literal["softmax", "relu"] = Field("softmax", description="FAVOR+ feature map")
    performer_chunk: int = Field(128, ge=1, description="chunk length of the causal prefix sums")
    cnn_kernel: int = Field(9, ge=1, description="the CNN's (and the hybrid stem's) convolution width")
    conv_layers: int = Field(
        0,
        ge=0,
        description="residual dilated convolutions (kernel cnn_kernel) between the embedding "
        "and the attention blocks of an encoder: a hybrid convolution + attention model",
    )
    init_std: float = Field(0.02, description="the normal initialisation's standard deviation")

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.arch != "cnn" and self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.positions == "alibi" and self.attention == "performer":
            raise ValueError(
                "ALiBi adds a bias to explicit attention scores, which Performer never forms; "
                "use rope, learned or none with performer"
            )
        if self.arch == "decoder" and self.num_segments > 1:
            raise ValueError("a decoder reads one view (causal LM on one tokenizer); multi-view input is for encoders")
        if self.positions == "rope" and (self.d_model // self.n_heads) % 2:
            raise ValueError(f"RoPE needs an even head dimension, got {self.d_model // self.n_heads}")
        if self.arch == "cnn" and self.linear_bias:
            raise ValueError("linear_bias is a transformer option; the CNN's layers are its own")
        if self.arch == "cnn" and self.lm_head != "linear":
            raise ValueError("lm_head transform is a transformer option; the CNN's head is linear")
        if self.mlm_target == "bases" and self.arch == "decoder":
            raise ValueError("mlm_target bases is a masked-LM head; a decoder predicts the next token's id")
        if self.mlm_target == "bases" and self.tie_embeddings:
            raise ValueError("mlm_target bases has its own output head: it cannot be tied to the token embeddings")
        if self.conv_layers and self.arch != "encoder":
            raise ValueError(
                f"conv_layers is a stem for an encoder's attention blocks; arch {self.arch} "
                + (
                    "would see the future through its convolutions"
                    if self.arch == "decoder"
                    else "is convolutions throughout (n_layers)"
                )
            )
        if (self.arch == "cnn" or self.conv_layers) and self.cnn_kernel % 2 == 0:
            raise ValueError(f"cnn_kernel must be odd (same-length convolution), got {self.cnn_kernel}")
        return self

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def head_size(self) -> int:
        """Outputs of the LM head per token: the vocabulary, or 5 classes (A C G T N) for each base of a token."""
        return self.vocab_size if self.mlm_target == "tokens" else self.bases_per_token * BASE_CLASSES

    def shape_logits(self, logits):
        """(…, head_size) → (…, bases_per_token, 5) for mlm_target bases."""
        return logits if self.mlm_target == "tokens" else logits.unflatten(-1, (self.bases_per_token, BASE_CLASSES))

    @property
    def causal(self) -> bool:
        return self.arch == "decoder"

    @property
    def hidden(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        width = 8 * self.d_model / 3 if self.mlp == "swiglu" else 4 * self.d_model
        return int(-(-width // 64) * 64)

    def replace(self, **changes) -> ModelConfig:
        return checked({**self.model_dump(), **changes})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(exclude_defaults=False), sort_keys=False)

    @classmethod
    def from_yaml(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        if not path.is_file():
            raise ModelConfigError(f"{path}: no such model config")
        try:
            return checked(yaml.safe_load(path.read_text()) or {}, where=str(path))
        except yaml.YAMLError as exc:
            raise ModelConfigError(f"{path}: not YAML ({exc})") from None


def checked(values: dict, where: str = "model config") -> ModelConfig:
    return validated(ModelConfig, values, ModelConfigError, where)


_ENCODER = dict(arch="encoder", positions="alibi", attention="sdpa", mlp="swiglu", norm="layernorm", max_seq_len=1024)
_DECODER = dict(arch="decoder", positions="rope", attention="sdpa", mlp="swiglu", norm="rmsnorm", max_seq_len=2048)

NAMED_CONFIGS: dict[str, dict] = {
    "encoder-tiny": _ENCODER | dict(d_model=128, n_layers=2, n_heads=4),
    "encoder-small": _ENCODER | dict(d_model=256, n_layers=4, n_heads=4),
    # Nucleotide Transformer v1's design (rotary, LayerNorm, GELU, ESM's LM head): exports to EsmForMaskedLM
    "encoder-small-esm": _ENCODER
    | dict(d_model=256, n_layers=4, n_heads=4, positions="rope", mlp="gelu", lm_head="transform"),
    "encoder-base": _ENCODER | dict(d_model=768, n_layers=12, n_heads=12, mlp_hidden=3072),  # DNABERT-2 scale
    "encoder-large": _ENCODER | dict(d_model=1024, n_layers=24, n_heads=16),
    "decoder-tiny": _DECODER | dict(d_model=128, n_layers=2, n_heads=4),
    "decoder-small": _DECODER | dict(d_model=384, n_layers=6, n_heads=6),
    "decoder-medium": _DECODER | dict(d_model=1024, n_layers=24, n_heads=16),
    "decoder-1.5b": _DECODER | dict(d_model=2048, n_layers=30, n_heads=16, mlp_hidden=5504, max_seq_len=8192),
    # the pretraining CNN: 8 residual dilated convolutions of width 256 (6.8M); `finetune --arch cnn-small` and the
    # DNA_Performer comparison's `cnn-tiny` are smaller ones
    "cnn-base": dict(arch="cnn", d_model=256, n_layers=8, cnn_kernel=9, positions="none", norm="layernorm"),
}
RENAMED = {"cnn": "cnn-base"}  # 0.1's names, accepted for one more release


def get_config(name: str, **overrides) -> ModelConfig:
    """A named size (see ``NAMED_CONFIGS``) with optional field overrides."""
    if name in RENAMED:
        warnings.warn(
            f"model '{name}' is now called '{RENAMED[name]}'; the old name goes in the next release",
            FutureWarning,
            stacklevel=2,
        )
        name = RENAMED[name]
    if name not in NAMED_CONFIGS:
        raise ModelConfigError(f"unknown model '{name}': one of {', '.join(NAMED_CONFIGS)}")
    return checked({"name": name, **NAMED_CONFIGS[name], **overrides}, where=name)
