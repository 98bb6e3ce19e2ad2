"""``dnalm plan``: what a training run needs before it is launched. Pure arithmetic over the configs.

Memory per rank is counted by component, as DeepSpeed 0.19.8 and the model files allocate it (read in their
sources, and checked against measured peaks by ``python -m dnalm.bench.plan``: docs/benchmarks/training.md).
N parameters, W ranks, p bytes a weight or activation (2 in bf16 on a GPU, 4 in fp32 on a CPU):

- **model states**: ZeRO-1/2 keep the whole p·N weights on every rank, ZeRO-3 a 1/W partition. Every stage
  keeps an fp32 master copy (4N/W, a copy even in fp32) and AdamW's two fp32 moments (8N/W); gradients are
  fp32, whole at ZeRO-1 (4N), a partition at ZeRO-2/3 (4N/W). ZeRO-3's gradient bucket (``reduce_bucket_size``
  elements, 5·10⁸ by default) is made once and kept; ZeRO-2's buckets (two with ``overlap_comm``) are made for
  each backward. A GPU's allocator counts a bucket whole; on a CPU a page counts once written, so ZeRO-3's holds
  at most the gradients and ZeRO-2's are still empty at the backward's start. Offload moves the fp32 states
  (and at ZeRO-3 the weight partition) to the host.
- **ZeRO-3's gathered weights**: DeepSpeed keeps a layer whole from its forward to its backward when fewer than
  ``stage3_max_reuse_distance`` elements are used in between, and gathers its prefetch into tensors of its own.
- **activations**, per token of a rank's slice (T/S tokens at sequence-parallel size S), in elements of p
  bytes (d the width, h the MLP's). A block keeps for its backward its input, the first norm (and, RMSNorm,
  its normalised input), q, k and v as the attention kernel keeps them (3d), the output and its reshape, the
  residual sum (8d, 9d with RMSNorm, plus RoPE's cos and sin), the second norm (d or 2d) and the MLP's up
  projection, activation and product (4h for SwiGLU, 2h for GELU): 11d + 4h for a decoder block. With
  recomputation it keeps its input (d) and rebuilds the rest in its own backward; with MLP tiles the MLP's
  part exists one tile at a time. A block's backward adds its gradients in flight (about 4d; the MLP's 3d of
  them at tile size), and at S > 1 the all-to-all's send and receive buffers of q, k, v (6d). The last
  block's output and the final norm add 2d. Measured on this CPU these per-token counts land within 2% of a
  model's own forward and backward (d = 256, 384, 768).
- **LM head and loss**: 12 bytes a logit in fp32 (14 in bf16): the fp32 log-softmax kept for the backward,
  its gradient and the logits' gradient, over the whole slice, or one ``loss_chunk`` at a time.
- **the peak** is the largest of three moments: the backward's start (states, buckets, gathered weights,
  activations kept, and the larger of the head's working set and one block's backward); ZeRO-3's
  reduce-scatter of a full bucket (a send and a receive buffer of its size); the optimizer step (the
  gradient partition flattened into a copy, and on a CPU torch's AdamW's two temporaries of the partition;
  CUDA's fused AdamW makes none).

What it leaves out (every plan says so): dropout masks, a hybrid's convolution stem, Performer's features
(counted as dense attention), data-loader workers (host memory), one-off peaks of initialisation and saving.

Communication per step is counted in bytes each rank sends; the step time is FLOPs per token (the field's
6N + 12·L·d·T, ``dnalm.train.flops``) × the rank's tokens ÷ (the nominal dense bf16 peak × an MFU), plus the
communication the MFU does not hide.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

from dnalm.models import ModelConfig, build_model
from dnalm.train import flops
from dnalm.train.config import TrainConfig, deepspeed_config, zero_stage
from dnalm.train.gpus import CPU_MFU, GIB, Gpu, measured_mfu

ASSUMES = (
    "a GPU holds the tensors at the peak plus 2 GiB of runtime (CUDA context, NCCL, workspaces) and 5% "
    "allocator fragmentation, both assumed; ZeRO's collectives hide behind compute when overlap_comm is on, "
    "Ulysses' all-to-alls never; ring collectives at the link's one-way bandwidth; consecutive ranks share a "
    "node"
)
LEAVES_OUT = (
    "dropout masks, a hybrid's convolution stem, Performer's features (counted as dense attention), "
    "data-loader workers (host memory), one-off peaks of initialisation and checkpoint saving; in the time, "
    "offload's host transfers and host optimizer step"
)


# --- what the configs say --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setup:
    """Everything the arithmetic reads, resolved from a TrainConfig, its DeepSpeed JSON and its model."""

    model: ModelConfig
    seq_len: int
    micro_batch: int
    global_batch: int
    world: int
    sequence: int
    stage: int
    weight_bytes: int  # 2 (bf16) or 4 (fp32)
    recompute: bool
    offload_optimizer: bool
    offload_params: bool
    overlap_comm: bool
    reduce_bucket: int  # elements
    prefetch_bucket: int  # elements (ZeRO-3's stage3_prefetch_bucket_size)
    reuse_distance: int  # elements (ZeRO-3's stage3_max_reuse_distance)
    max_live: int  # elements (ZeRO-3's stage3_max_live_parameters)
    on_gpu: bool
    deepspeed: str

    @property
    def groups(self) -> int:
        """Data-parallel groups: world / S."""
        return self.world // self.sequence

    @property
    def accumulation(self) -> int:
        return self.global_batch // (self.micro_batch * self.groups)

    @property
    def tokens(self) -> int:
        """A rank's tokens in one micro-batch: its 1/S slice of micro_batch windows."""
        return self.micro_batch * self.seq_len // self.sequence

    @property
    def precision(self) -> str:
        return "bf16" if self.weight_bytes == 2 else "fp32"


def setup_from(config: TrainConfig, model: ModelConfig, seq_len: int, world: int, on_gpu: bool) -> Setup:
    """The Setup of ``config`` on ``world`` ranks, its DeepSpeed JSON read and checked as the trainer does."""
    from dnalm.train import sequence_parallel

    sequence_parallel.check(config.parallel.sequence, world, model, seq_len)
    ds = deepspeed_config(config, world, on_gpu)
    zero = ds.get("zero_optimization", {})
    stage = zero_stage(ds)
    return Setup(
        model=model,
        seq_len=seq_len,
        micro_batch=config.batch.micro_batch,
        global_batch=config.batch.global_batch,
        world=world,
        sequence=config.parallel.sequence,
        stage=stage,
        weight_bytes=2 if ds["bf16"]["enabled"] else 4,
        recompute=model.activation_checkpointing,
        offload_optimizer="offload_optimizer" in zero,
        offload_params="offload_param" in zero,
        overlap_comm=bool(zero.get("overlap_comm", stage == 3)),
        reduce_bucket=int(zero.get("reduce_bucket_size", 5e8)),
        prefetch_bucket=int(zero.get("stage3_prefetch_bucket_size", 5e7)),
        reuse_distance=int(zero.get("stage3_max_reuse_distance", 1e9)),
        max_live=int(zero.get("stage3_max_live_parameters", 1e9)),
        on_gpu=on_gpu,
        deepspeed=config.deepspeed,
    )


@dataclass(frozen=True)
class Counts:
    parameters: int
    matmul: int  # parameters in matmuls: all but the embedding lookups (a tied head counts)
    largest: int  # the largest parameter tensor
    block: int  # one block's parameters
    lookups: int  # the embeddings (token, segment, learned position)


def counts(model: ModelConfig) -> Counts:
    """The model's parameters, from its modules built on the meta device (no memory); cached by architecture."""
    key = model.replace(
        activation_checkpointing=False,
        mlp_tile=0,
        loss_chunk=0,
        max_seq_len=model.max_seq_len if model.positions == "learned" else 8,
    )
    return _counts(key.model_dump_json())


@lru_cache(maxsize=32)
def _counts(model_json: str) -> Counts:
    config = ModelConfig.model_validate_json(model_json)
    model = build_model(config, device="meta")
    unique = {id(p): (name, p) for name, p in model.named_parameters()}.values()
    total = sum(p.numel() for _, p in unique)
    lookups = sum(p.numel() for name, p in unique if name.startswith(("embed.", "segments.", "positions.")))
    matmul = round(flops.flops_per_token(model, config, 0) / 6)  # 6·N at T = 0
    blocks = getattr(model, "blocks", None) or []
    block = sum(p.numel() for p in blocks[0].parameters()) if blocks else 0
    return Counts(total, matmul, max(p.numel() for _, p in unique), block, lookups)


def flops_per_token(model: ModelConfig, seq_len: int) -> float:
    """6·N + 12·L·d·T (PaLM appendix B, llm-foundry), as dnalm.train.flops counts it."""
    return 6 * counts(model).matmul + 12 * model.n_layers * model.d_model * seq_len


# --- memory ------------------------------------------------------------------------------------------------------
@dataclass
class Part:
    name: str
    bytes: float
    note: str = ""
    where: str = "device"  # or "host" (offloaded)


def model_states(s: Setup) -> list[Part]:
    """What a rank holds from step to step: weights, gradients, optimizer states, ZeRO-3's bucket."""
    n, w, p = counts(s.model).parameters, s.world, s.weight_bytes
    share = f"1/{w} partition" if w > 1 else "whole (1 rank)"
    host = "host" if s.offload_optimizer and s.on_gpu else "device"
    if s.stage == 3:
        weights = Part(
            "weights", p * n / w, f"{s.precision}, {share}", "host" if s.offload_params and s.on_gpu else "device"
        )
    else:
        weights = Part("weights", p * n, f"{s.precision}, whole on every rank")
    whole = s.stage <= 1
    parts = [
        weights,
        Part("gradients", 4 * n if whole else 4 * n / w, f"fp32, {'whole' if whole else share}", host),
        Part("optimizer states", 12 * n / w, f"fp32 master copy + AdamW's m and v, {share}", host),
    ]
    if s.stage == 3:
        elements = s.reduce_bucket if s.on_gpu else min(s.reduce_bucket, n)
        parts.append(
            Part(
                "ZeRO-3 gradient bucket",
                elements * p,
                f"{s.reduce_bucket:,} elements" + ("" if s.on_gpu else ", the pages written"),
            )
        )
    return parts


def zero2_buckets(s: Setup) -> Part | None:
    """ZeRO-2's buckets at the backward's start: whole on a GPU, not yet written on a CPU."""
    if s.stage != 2 or not s.on_gpu:
        return None
    copies = 2 if s.overlap_comm else 1
    return Part(
        "ZeRO-2 gradient buckets", copies * s.reduce_bucket * s.weight_bytes, f"{copies} × {s.reduce_bucket:,} elements"
    )


def zero3_gathered(s: Setup) -> Part | None:
    """Weights ZeRO-3 holds whole at the backward's start: the layers whose reuse (the layers after them, forward,
    backward and recomputed) comes within stage3_max_reuse_distance, up to stage3_max_live_parameters, and the
    prefetch."""
    if s.stage != 3:
        return None
    c, m = counts(s.model), s.model
    visits = 3 if s.recompute else 2
    kept = after = c.parameters - c.lookups - m.n_layers * c.block  # the head and the final norm come last
    for _ in range(m.n_layers):
        if visits * after >= s.reuse_distance:
            break
        kept, after = kept + c.block, after + c.block
    if visits * after < s.reuse_distance:
        kept += c.lookups
    kept = min(max(kept, c.block), c.parameters, s.max_live)  # at least the layer at work
    prefetch = min(s.prefetch_bucket, c.parameters)
    return Part(
        "gathered weights (ZeRO-3)",
        (kept + prefetch) * s.weight_bytes,
        f"{kept / c.parameters:.0%} of the weights kept whole for their backward, and the prefetch",
    )


def per_token(m: ModelConfig) -> dict[str, int]:
    """Elements a token costs in one block (the module docstring says which tensors)."""
    d, h = m.d_model, m.hidden
    norm = d if m.norm == "rmsnorm" else 0  # torch's RMSNorm keeps its normalised input beside its output
    rope = m.head_dim if m.positions == "rope" else 0  # RoPE's cos and sin
    return {
        "attention": 8 * d + norm + rope,
        "mlp": d + norm + (4 * h if m.mlp == "swiglu" else 2 * h),
        "in_flight": d,
        "mlp_in_flight": 3 * d,
        "final": 2 * d,
        "exchange": 6 * d,
    }


@dataclass(frozen=True)
class Activations:
    kept: float  # bytes kept for the backward, all layers
    block: float  # one block's backward working set, without the all-to-all buffers
    exchange: float  # the all-to-all buffers at S > 1
    head: float  # the LM head's and loss's working set
    kept_without_recompute: float
    kept_with_recompute: float


def activations(s: Setup) -> Activations:
    m, p, tokens, rows = s.model, s.weight_bytes, s.tokens, s.micro_batch
    e = per_token(m)
    slice_length = s.seq_len // s.sequence
    tile = rows * m.mlp_tile if 0 < m.mlp_tile < slice_length else tokens  # tokens the MLP works on at once
    scores = 2 * rows * (m.n_heads // s.sequence) * s.seq_len**2 if m.attention == "eager" else 0  # (T, T) twice
    block_kept = tokens * e["attention"] + scores + (tokens * e["mlp"] if tile == tokens else 0)
    tile_work = tile * e["mlp"] if tile != tokens else 0  # one tile rebuilt in the backward
    in_flight = tokens * e["in_flight"] + tile * e["mlp_in_flight"]
    final = tokens * e["final"]
    kept_plain = m.n_layers * block_kept + final
    kept_recompute = m.n_layers * tokens * m.d_model + final
    kept, block = (
        (kept_recompute, block_kept + tile_work + in_flight) if s.recompute else (kept_plain, tile_work + in_flight)
    )
    exchange = tokens * e["exchange"] if s.sequence > 1 else 0
    chunk = rows * m.loss_chunk if 0 < m.loss_chunk < slice_length else tokens
    head = chunk * m.head_size * (12 if p == 4 else 14)
    return Activations(p * kept, p * block, p * exchange, head, p * kept_plain, p * kept_recompute)


def moments(s: Setup) -> dict[str, list[Part]]:
    """The tensors on a rank's device at each moment that can be its peak."""
    n, w, m = counts(s.model).parameters, s.world, s.model
    resident = [part for part in model_states(s) if part.where == "device"]
    act = activations(s)
    slice_length = s.seq_len // s.sequence
    how = "recomputation on: each block's input" if s.recompute else "recomputation off: every block's tensors"
    if 0 < m.mlp_tile < slice_length:
        how += f"; the MLP in tiles of {m.mlp_tile}"
    if s.sequence > 1:
        how += f"; 1/{s.sequence} of the window"
    backward = [
        *resident,
        zero2_buckets(s),
        zero3_gathered(s),
        Part("activations kept for the backward", act.kept, how),
    ]
    if act.head >= act.block + act.exchange:
        chunked = f"chunks of {m.loss_chunk}" if 0 < m.loss_chunk < slice_length else "the whole slice"
        backward.append(Part("LM head and loss", act.head, f"{chunked} × {m.head_size} outputs"))
    else:
        rebuilt = "rebuilt, " if s.recompute else ""
        backward.append(Part("one block's backward", act.block, f"{rebuilt}gradients in flight"))
        if s.sequence > 1:
            backward.append(Part("all-to-all buffers", act.exchange, f"S = {s.sequence}: q, k, v sent and received"))
    out = {"backward": [part for part in backward if part is not None]}
    if s.stage == 3:
        full = min(s.reduce_bucket, n) * s.weight_bytes
        out["gradient reduce-scatter"] = [*resident, Part("reduce-scatter buffers", 2 * full, "2 × a full bucket")]
    if not (s.offload_optimizer and s.on_gpu):
        step = list(resident)
        if not (s.stage == 1 and s.weight_bytes == 2):  # DeepSpeed's ZeRO optimizers flatten the partition's grads
            step.append(Part("flattened gradient partition", 4 * n / w, "a copy, for the optimizer step"))
        if not s.on_gpu:  # torch's single-tensor AdamW: sqrt(v) and its quotient (CUDA's fused AdamW makes none)
            step.append(Part("AdamW temporaries", 2 * 4 * n / w, "torch's CPU AdamW: two of the partition's size"))
        out["optimizer step"] = step
    return out


def memory(s: Setup, gpu: Gpu) -> dict:
    """Per-rank memory at each moment, the peak, the runtime and headroom, and whether it fits the device."""
    by_moment = moments(s)
    totals = {name: sum(part.bytes for part in parts) for name, parts in by_moment.items()}
    peak = max(totals, key=lambda name: totals[name])
    tensors = totals[peak]
    headroom = gpu.runtime_gib * GIB + gpu.fragmentation * tensors
    per_rank = gpu.memory_gib * GIB / (gpu.per_node if gpu.host else 1)
    act = activations(s)
    return {
        "peak_moment": peak,
        "parts": [asdict(part) for part in by_moment[peak]],
        "moments": totals,
        "tensors_at_peak": tensors,
        "headroom": headroom,
        "total": tensors + headroom,
        "device_memory": per_rank,
        "fits": tensors + headroom <= per_rank,
        "host_per_rank": sum(part.bytes for part in model_states(s) if part.where == "host"),
        "activations_without_recompute": act.kept_without_recompute,
        "activations_with_recompute": act.kept_with_recompute,
    }


# --- communication and time ------------------------------------------------------------------------------------
def communication(s: Setup) -> list[dict]:
    """Bytes a rank sends per optimizer step: (k−1)/k of the data for a ring gather or reduce-scatter over k ranks,
    twice that for an all-reduce, (S−1)/S of it for an all-to-all."""
    n, p, w, micro = counts(s.model).parameters, s.weight_bytes, s.world, s.accumulation
    share = (w - 1) / w
    rows = []
    if w > 1 and s.stage <= 1:
        rows += [
            {"what": "ZeRO-1 gradient all-reduce (fp32, once a step)", "bytes": 2 * share * 4 * n},
            {"what": "ZeRO-1 weight all-gather after the step", "bytes": share * p * n},
        ]
    elif w > 1 and s.stage == 2:
        rows += [
            {"what": f"ZeRO-2 gradient reduce-scatter ({_times(micro)})", "bytes": micro * share * p * n},
            {"what": "ZeRO-2 weight all-gather after the step", "bytes": share * p * n},
        ]
    elif w > 1:
        rows += [
            {"what": f"ZeRO-3 weight all-gathers (2 × {_times(micro)})", "bytes": 2 * micro * share * p * n},
            {"what": f"ZeRO-3 gradient reduce-scatter ({_times(micro)})", "bytes": micro * share * p * n},
        ]
    if s.sequence > 1:
        passes = 3 if s.recompute else 2  # forward, backward, and the recomputed forward
        per_layer = 4 * s.tokens * s.model.d_model * p * (s.sequence - 1) / s.sequence  # q, k, v out, the output back
        rows.append(
            {
                "what": f"Ulysses all-to-alls ({passes} × {s.model.n_layers} layers × {_times(micro)})",
                "bytes": micro * passes * s.model.n_layers * per_layer,
            }
        )
    return rows


def _times(micro: int) -> str:
    return f"{micro} micro-batch{'es' * (micro > 1)}"


def timing(s: Setup, gpu: Gpu, mfu: float | None) -> dict:
    if mfu is not None:
        source = "given (--mfu)"
    elif gpu.host:
        mfu, source = CPU_MFU, "assumed for a CPU"
    else:
        mfu, source = measured_mfu(gpu, s.recompute)
    peak = gpu.bf16_tflops * 1e12 / (gpu.per_node if gpu.host else 1)  # a host's cores are shared by its ranks
    tokens = s.global_batch * s.seq_len / s.world  # a rank's share of a step
    compute = flops_per_token(s.model, s.seq_len) * tokens / (peak * mfu)
    rows = communication(s)
    zero_link = gpu.network_gb_s if s.world > gpu.per_node else gpu.link_gb_s
    sp_link = gpu.network_gb_s if s.sequence > gpu.per_node else gpu.link_gb_s
    zero_s = sum(r["bytes"] for r in rows if r["what"].startswith("ZeRO")) / (zero_link * 1e9)
    ulysses_s = sum(r["bytes"] for r in rows if r["what"].startswith("Ulysses")) / (sp_link * 1e9)
    # ZeRO's collectives run beside the compute with overlap_comm (the measured MFU, one GPU, had none to hide);
    # Ulysses' all-to-alls sit between a layer's projections and its attention
    exposed = (max(0.0, zero_s - compute) if s.overlap_comm else zero_s) + ulysses_s
    seconds = compute + exposed
    return {
        "mfu": mfu,
        "mfu_source": source,
        "flops_per_token": flops_per_token(s.model, s.seq_len),
        "tokens_per_rank": tokens,
        "compute_s": compute,
        "zero_comm_s": zero_s,
        "ulysses_comm_s": ulysses_s,
        "exposed_comm_s": exposed,
        "step_s": seconds,
        "tokens_per_s_per_gpu": tokens / seconds,
        "zero_link_gb_s": zero_link,
        "sequence_link_gb_s": sp_link,
        "communication": rows,
    }
