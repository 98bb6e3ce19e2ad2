"""Ulysses sequence parallelism, applied from outside the model: the trainer wraps every attention backend.

The S ranks of a sequence-parallel group hold the same windows, each a contiguous 1/S slice of
their tokens. Everything outside attention is per token, so it runs on the slice as it is. Each
attention layer exchanges q, k and v in one all-to-all, so that every rank holds all T positions
for its H/S heads; it attends with the model's own backend (eager, sdpa, flash, FlexAttention ALiBi,
performer), then exchanges the output back: two all-to-alls a layer. Positions are global (the
trainer slices the window's position ids), ALiBi uses the slopes of the rank's own heads, and the
window's positions and key mask are gathered once per forward for every layer and recomputation.

Groups are DeepSpeed's own ``parallel_state_sp`` (consecutive ranks form a sequence group, as in
its HF Ulysses path): handed to ``deepspeed.initialize`` as ``mpu``, it makes DeepSpeed reduce
gradients over all ranks, divide them by the data-parallel size, and partition ZeRO states over
the world. The loss of a rank is its slice's share of the window's token-weighted mean, so the sum
over the group is the loss of S = 1 and DeepSpeed's sum gives S = 1's gradients.

DeepSpeed's ``DistributedAttention`` is not used: it asserts (T, B, H, D)-style layouts, knows
nothing of positions or key masks, and its HF path refuses non-causal attention, which encoders need.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from dnalm.utils.errors import DnalmError


class SequenceParallelError(DnalmError):
    """A sequence-parallel setting that cannot run, with the reason."""


def check(size: int, world: int, model, seq_len: int) -> None:
    """Refuse settings Ulysses cannot split (``model`` a ModelConfig), naming the numbers."""
    if size <= 1:
        return
    if model.arch == "cnn":
        raise SequenceParallelError(
            f"parallel.sequence {size}: the CNN has no attention to exchange; use parallel.sequence 1"
        )
    n_heads, conv_layers = model.n_heads, model.conv_layers
    if world % size:
        raise SequenceParallelError(f"parallel.sequence {size} does not divide the world size {world}")
    if n_heads % size:
        raise SequenceParallelError(
            f"parallel.sequence {size} does not divide the model's n_heads {n_heads} "
            "(each rank attends with n_heads / S heads)"
        )
    if seq_len % size:
        raise SequenceParallelError(f"parallel.sequence {size} does not divide the window length seq_len {seq_len}")
    if conv_layers:
        raise SequenceParallelError(
            f"parallel.sequence {size}: the hybrid's convolution stem (conv_layers "
            f"{conv_layers}) would need its neighbours' tokens; train it at parallel.sequence 1"
        )


def gradient_scale(size: int, ds_config: dict) -> float:
    """The factor on a rank's loss that makes DeepSpeed's reduced gradients S = 1's.

    DeepSpeed 0.19.8 divides the summed gradients of a sequence-parallel run by world/S under ZeRO-1/2, but its
    ZeRO-3 reduce-scatter (the default path) divides by the world: measured, the gradients came out 1/S of S = 1's.
    ZeRO-3 without reduce-scatter divides by world/S for some buckets and not others, so it is refused."""
    zero = ds_config.get("zero_optimization", {})
    if size == 1 or int(zero.get("stage", 0)) != 3:
        return 1.0
    if not zero.get("reduce_scatter", True):
        raise SequenceParallelError(
            "parallel.sequence > 1 with ZeRO-3 needs zero_optimization.reduce_scatter true "
            "(DeepSpeed averages the other path's buckets inconsistently)"
        )
    return float(size)


def groups(size: int) -> SequenceGroups:
    """DeepSpeed's sequence-parallel groups, as the ``mpu`` that ``deepspeed.initialize`` takes."""
    from deepspeed.runtime.sequence_parallel import parallel_state_sp

    if parallel_state_sp._SEQUENCE_PARALLEL_GROUP is not None:
        parallel_state_sp._release_sequence_parallel_groups()  # a previous run in this process (tests run several)
    parallel_state_sp.initialize_sequence_parallel(size)
    return SequenceGroups(parallel_state_sp)


class SequenceGroups:
    """DeepSpeed's ``parallel_state_sp`` with no tensor parallelism declared. Its ZeRO optimizers already treat that
    module as model-parallel size 1, but checkpoints record its "model-parallel" size (the sequence size, through
    its Megatron-era names) as their tensor-parallel degree, and the universal conversion then refuses them. With
    the degree 1, a checkpoint does not depend on S and resumes at any S and world size."""

    def __init__(self, state):
        self._state = state

    def __getattr__(self, name):
        return getattr(self._state, name)

    @staticmethod
    def get_tensor_model_parallel_world_size() -> int:
        return 1

    @staticmethod
    def get_tensor_model_parallel_rank() -> int:
        return 0


class _AllToAll(torch.autograd.Function):
    """(B, H, T/S, D) slices of all heads ⇄ (B, H/S, T, D) all positions of a share of the heads.

    ``to_heads`` True goes from sequence slices to head shares; the backward is the other direction."""

    @staticmethod
    def forward(ctx, x, group, to_heads: bool):
        ctx.group, ctx.to_heads = group, to_heads
        return _exchange(x, group, to_heads)

    @staticmethod
    def backward(ctx, grad):
        return _exchange(grad.contiguous(), ctx.group, not ctx.to_heads), None, None


def _exchange(x: torch.Tensor, group, to_heads: bool) -> torch.Tensor:
    size = dist.get_world_size(group)
    batch, heads, length, dim = x.shape
    if to_heads:  # send head share j to rank j; receive every rank's slice of my share, in rank order
        send = x.reshape(batch, size, heads // size, length, dim).transpose(0, 1).contiguous()
        received = torch.empty_like(send)
        dist.all_to_all_single(received, send, group=group)
        return received.permute(1, 2, 0, 3, 4).reshape(batch, heads // size, size * length, dim)
    send = x.reshape(batch, heads, size, length // size, dim).permute(2, 0, 1, 3, 4).contiguous()
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group)
    return received.permute(1, 0, 2, 3, 4).reshape(batch, size * heads, length // size, dim)


def gather_sequence(x: torch.Tensor | None, group) -> torch.Tensor | None:
    """(B, T/S) position ids or key masks of every rank's slice → (B, T); no gradient."""
    if x is None:
        return None
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=1)


class WindowGather:
    """The whole window's positions and key mask, gathered once per forward and shared by every layer's wrapper
    (the model hands each layer the same tensors; recomputation hands them again)."""

    def __init__(self, group):
        self.group, self.seen, self.whole = group, (None, None), (None, None)

    def __call__(self, q_pos, key_mask):
        if self.seen[0] is not q_pos or self.seen[1] is not key_mask:
            self.seen = (q_pos, key_mask)
            self.whole = (gather_sequence(q_pos, self.group), gather_sequence(key_mask, self.group))
        return self.whole


class UlyssesAttention:
    """An attention backend of the registry's signature that runs ``local`` over the whole window for H/S heads:
    one all-to-all for q, k and v together, one for the output."""

    def __init__(self, local, group, window: WindowGather | None = None):
        self.local, self.group, self.window = local, group, window or WindowGather(group)
        self.size, self.rank = dist.get_world_size(group), dist.get_rank(group)

    def __call__(self, q, k, v, *, causal, q_pos, k_pos, key_mask=None, alibi=None, dropout=0.0, performer=None):
        if q.shape[2] != k.shape[2]:
            raise SequenceParallelError(
                "sequence parallelism splits training windows; incremental decoding runs at S = 1"
            )
        if q.shape == k.shape == v.shape:
            q, k, v = _AllToAll.apply(torch.cat((q, k, v)), self.group, True).chunk(3)
        else:
            q, k, v = (_AllToAll.apply(x, self.group, True) for x in (q, k, v))
        positions, key_mask = self.window(q_pos, key_mask)
        if alibi is not None:
            share = alibi.shape[0] // self.size
            alibi = alibi[self.rank * share : (self.rank + 1) * share]
        out = self.local(
            q,
            k,
            v,
            causal=causal,
            q_pos=positions,
            k_pos=positions,
            key_mask=key_mask,
            alibi=alibi,
            dropout=dropout,
            performer=performer,
        )
        return _AllToAll.apply(out, self.group, False)


def wrap_attention(model: torch.nn.Module, group) -> int:
    """Replace every attention module's backend by its Ulysses form; the number of modules wrapped."""
    from dnalm.models.transformer import Attention

    wrapped, window = 0, WindowGather(group)
    for module in model.modules():
        if isinstance(module, Attention) and not isinstance(module.backend, UlyssesAttention):
            module.backend = UlyssesAttention(module.backend, group, window)
            wrapped += 1
    return wrapped


def shard(inputs: dict, rank: int, size: int) -> dict:
    """This rank's contiguous 1/S slice of every per-token tensor of a micro-batch (B, T, …); positions are made
    explicit first, so that RoPE, ALiBi and learned positions see global ones."""
    ids = inputs["input_ids"]
    length = ids.shape[1]
    out = dict(inputs)
    if "positions" not in out:
        out["positions"] = torch.arange(length, device=ids.device).expand(ids.shape[0], length)
    piece = length // size
    for key in ("input_ids", "labels", "attention_mask", "segment_ids", "positions", "repeats", "loss_weights"):
        if out.get(key) is not None:
            out[key] = out[key][:, rank * piece : (rank + 1) * piece]
    return out
