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

import json
import math
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

from dnalm.models import ModelConfig, build_model, get_config
from dnalm.train import flops
from dnalm.train.config import REPO_CONFIGS, TrainConfig, apply_override, deepspeed_config, zero_stage
from dnalm.utils.errors import DnalmError

GIB = 2**30
GPU_JSON = REPO_CONFIGS.parent / "docs" / "benchmarks" / "gpu.json"


class PlanError(DnalmError):
    """A plan that cannot be made, with the reason."""


@dataclass(frozen=True)
class Gpu:
    label: str
    memory_gib: float  # what the device holds (the vendor's GB, in GiB)
    bf16_tflops: float  # nominal dense peak, no sparsity
    link_gb_s: float  # within a node: each GPU's bandwidth in one direction, GB/s
    network_gb_s: float  # between nodes: each GPU's share, one direction, GB/s
    per_node: int  # GPUs a node holds
    runtime_gib: float  # what is not a tensor: CUDA context, NCCL's communicators, library workspaces
    fragmentation: float  # the caching allocator's reserve above its live tensors, as a share of them
    host: bool = False  # a CPU: the memory is the host's, shared by the ranks on it


# Sources: NVIDIA's datasheets. Memory: H100 SXM 80 GB HBM3, H200 SXM 141 GB HBM3e, A100 SXM 80 or 40 GB, L40S
# 48 GB GDDR6. bf16 dense peaks: dnalm.train.flops.NOMINAL's (its source there), and the L40S's 362 TFLOP/s.
# Links: NVLink 900 GB/s both ways on H100/H200 SXM, 600 on A100 SXM; the L40S has none (PCIe Gen4 x16, 64 GB/s
# both ways). Networks: the DGX reference designs' InfiniBand port a GPU (NDR 400 Gb/s on DGX H100/H200, HDR
# 200 Gb/s on DGX A100); L40S servers have no reference design, so 100 Gb/s a GPU is an assumption. The runtime
# (CUDA context ~0.5 GiB, NCCL ~1 GiB, cuBLAS workspaces) and the 5% fragmentation are assumptions, not measured.
_BF16 = {name: peak.tflops["bf16"] for name, peak in flops.NOMINAL.items()}
GPUS = {
    "h100": Gpu("H100 SXM 80GB", 80e9 / GIB, _BF16["H100 SXM"], 450.0, 50.0, 8, 2.0, 0.05),
    "h200": Gpu("H200 SXM 141GB", 141e9 / GIB, _BF16["H200 SXM"], 450.0, 50.0, 8, 2.0, 0.05),
    "a100-80g": Gpu("A100 SXM 80GB", 80e9 / GIB, _BF16["A100"], 300.0, 25.0, 8, 2.0, 0.05),
    "a100-40g": Gpu("A100 SXM 40GB", 40e9 / GIB, _BF16["A100"], 300.0, 25.0, 8, 2.0, 0.05),
    "l40s": Gpu("L40S 48GB", 48e9 / GIB, 362.0, 32.0, 12.5, 8, 2.0, 0.05),
}
# This host's CPU as the device (the validation runs, fp32): its memory is shared by the ranks on it; its "peak"
# is the fp32 matmul docs/benchmarks/train.json measured on 2 cores; each process holds the interpreter, torch,
# DeepSpeed and what the trainer loads once (~0.4 GiB, the baseline python -m dnalm.bench.plan measures from).
CPU = Gpu("CPU (this host)", 0.0, 0.28, 10.0, 1.25, 1, 0.4, 0.0, host=True)
CPU_MFU = 0.5  # assumed (docs/benchmarks/train.json: 0.58 of the measured matmul for ZeRO-2 on 2 processes)
ASSUMED_MFU = 0.30  # where docs/benchmarks/gpu.json offers no measurement
LEAN_TILE, LEAN_CHUNK = 1024, 4096  # the lean step the ladder proposes (dnalm bench context's tiles; chunks)
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


def gpu_spec(name: str, ranks: int = 1) -> Gpu:
    if name == "cpu":
        import psutil

        return replace(CPU, memory_gib=psutil.virtual_memory().total / GIB, per_node=max(ranks, 1))
    if name not in GPUS:
        raise PlanError(f"--gpu {name!r}: not a device this plan knows; choose from {', '.join([*GPUS, 'cpu'])}")
    return GPUS[name]


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


def measured_mfu(gpu: Gpu, recompute: bool) -> tuple[float, str]:
    """The best MFU docs/benchmarks/gpu.json measured (among runs with recomputation as the plan has it, if any),
    and where it comes from: this GPU, another one (an assumption), or ASSUMED_MFU."""
    try:
        record = json.loads(GPU_JSON.read_text())
    except (OSError, ValueError):
        return ASSUMED_MFU, f"assumed ({GPU_JSON} not found)"
    device = record.get("device", {}).get("name", "")
    runs = [r for r in record.get("training", []) if r.get("mfu")]
    runs = [r for r in runs if r.get("activation_recomputation") == recompute] or runs
    if not runs:
        return ASSUMED_MFU, "assumed (no measured MFU)"
    best = max(runs, key=lambda r: r["mfu"])
    how = f"{best['run']}, recomputation {'on' if best.get('activation_recomputation') else 'off'}"
    if gpu.label.split()[0] in device:
        return best["mfu"], f"measured on {device} ({how}; docs/benchmarks/gpu.json)"
    return best["mfu"], f"assumed: measured on {device} ({how}), not on this GPU"


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


# --- the plan ----------------------------------------------------------------------------------------------------
def resolve_model(config: TrainConfig, seq_len: int | None) -> tuple[ModelConfig, int, list[str]]:
    """(the model the trainer would build, the window, what was assumed). The window is ``seq_len`` or the prepared
    data's, the vocabulary the data's tokenizer's or else the model config's."""
    from dnalm.data.manifest import MANIFEST_FILE
    from dnalm.data.sources import is_remote

    if seq_len is not None and seq_len < 1:
        raise PlanError(f"--seq-len {seq_len}: give 1 or more tokens")
    folder = None if is_remote(config.data.path) else Path(config.data.path)
    if folder is not None and (folder / MANIFEST_FILE).is_file():
        from dnalm.data.manifest import Manifest
        from dnalm.train.trainer import data_tokenizer
        from dnalm.train.trainer import resolve_model as trainer_model

        manifest = Manifest.load(folder)
        model = trainer_model(config, manifest, data_tokenizer(folder, manifest))
        notes = [f"vocabulary {model.vocab_size:,}: the tokenizer of {folder}"]
        if seq_len is None:
            seq_len = manifest.seq_len
            notes.insert(0, f"window {seq_len:,} tokens: the prepared data's ({folder})")
    else:
        where = "is in object storage (not read)" if folder is None else "holds no prepared data"
        if seq_len is None:
            raise PlanError(f"data.path {config.data.path} {where}: give the window with --seq-len N")
        name = config.model.name
        if config.model.init_from:
            from dnalm.bundle import read_config

            base = ModelConfig(**read_config(config.model.init_from)["model"])
        else:
            base = ModelConfig.from_yaml(name) if name.endswith((".yaml", ".yml")) else get_config(name)
        model = base.replace(activation_checkpointing=config.activation_checkpointing, **config.model.overrides)
        notes = [f"vocabulary {model.vocab_size:,}: the model config's (data.path {config.data.path} {where})"]
    if model.arch == "cnn":
        raise PlanError(
            f"model {model.name}: dnalm plan counts a transformer's blocks; the CNN (arch cnn) is not planned"
        )
    if seq_len is not None and notes and not notes[0].startswith("window"):
        notes.insert(0, f"window {seq_len:,} tokens: --seq-len")
    return model.replace(max_seq_len=max(model.max_seq_len, seq_len)), seq_len, notes


def with_overrides(config: TrainConfig, overrides: dict) -> TrainConfig:
    """``config`` with dotted overrides applied (``{"model.overrides.mlp_tile": 1024}``)."""
    values = json.loads(config.model_dump_json())
    for key, value in overrides.items():
        apply_override(values, f"{key}={json.dumps(value)}")
    return TrainConfig(**values)


def evaluate(config: TrainConfig, model: ModelConfig, seq_len: int, gpus: int, gpu: Gpu) -> tuple[Setup, dict]:
    """The Setup and memory of ``config`` (whose recomputation, tiles and chunks override ``model``'s)."""
    lean = {k: v for k, v in config.model.overrides.items() if k in ("mlp_tile", "loss_chunk")}
    model = model.replace(activation_checkpointing=config.activation_checkpointing, **lean)
    s = setup_from(config, model, seq_len, gpus, on_gpu=not gpu.host)
    return s, memory(s, gpu)


def largest_micro_batch(config: TrainConfig, model: ModelConfig, seq_len: int, gpus: int, gpu: Gpu) -> int | None:
    """The largest micro-batch up to the configured one that fits and divides the global batch, or None."""
    groups = gpus // config.parallel.sequence
    for micro in range(config.batch.micro_batch, 0, -1):
        if config.batch.global_batch % (micro * groups) == 0:
            if evaluate(with_overrides(config, {"batch.micro_batch": micro}), model, seq_len, gpus, gpu)[1]["fits"]:
                return micro
    return None


def largest_window(config: TrainConfig, model: ModelConfig, gpus: int, gpu: Gpu, unit: int = 1024) -> int | None:
    """The longest window, a multiple of ``unit`` × S tokens, that fits at micro-batch 1, or None."""
    unit *= config.parallel.sequence
    trial = with_overrides(config, {"batch.micro_batch": 1})

    def fits(units: int) -> bool:
        return evaluate(trial, model, units * unit, gpus, gpu)[1]["fits"]

    if not fits(1):
        return None
    low, high = 1, 2
    while high <= 2**20 and fits(high):
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low * unit


def rungs(config: TrainConfig, model: ModelConfig, gpus: int, gpu: Gpu) -> list[tuple[str, dict]]:
    """The out-of-memory ladder's rungs not yet taken, in order, each with the overrides that take it (the first,
    a smaller micro-batch, is tried on every rung)."""
    out: list[tuple[str, dict]] = []
    if not config.activation_checkpointing:
        out.append(("recomputation", {"activation_checkpointing": True}))
    if not (model.mlp_tile and model.loss_chunk):
        out.append(
            (
                "lean step",
                {
                    "model.overrides.mlp_tile": model.mlp_tile or LEAN_TILE,
                    "model.overrides.loss_chunk": model.loss_chunk or LEAN_CHUNK,
                },
            )
        )
    zero = deepspeed_config(config, gpus, not gpu.host).get("zero_optimization", {})
    if int(zero.get("stage", 0)) < 3:
        out.append(("ZeRO-3", {"deepspeed": "zero3"}))
    if not gpu.host and not ("offload_optimizer" in zero and "offload_param" in zero):
        out.append(("offload", {"deepspeed": "zero3-offload"}))
    size = config.parallel.sequence * 2
    while size <= min(gpus, gpu.per_node) and model.n_heads % size == 0 and gpus % size == 0:
        out.append((f"sequence parallel {size}", {"parallel.sequence": size}))
        size *= 2
    return out


def ladder(config: TrainConfig, model: ModelConfig, seq_len: int, gpus: int, gpu: Gpu) -> list[dict]:
    """Each rung taken on top of those before it, with the largest micro-batch that then fits (None: none does),
    up to the first rung where one does."""
    rows: list[dict] = []
    taken: dict = {}
    for name, overrides in rungs(config, model, gpus, gpu):
        taken = {**taken, **overrides}
        trial = with_overrides(config, taken)
        try:
            micro = largest_micro_batch(trial, model, seq_len, gpus, gpu)
        except DnalmError as exc:  # e.g. a global batch the rung's data-parallel size does not divide
            rows.append({"rung": name, "overrides": dict(taken), "refused": str(exc)})
            continue
        rows.append({"rung": name, "overrides": dict(taken), "micro_batch": micro})
        if micro is not None:
            fitted = with_overrides(trial, {"batch.micro_batch": micro})
            rows[-1]["total"] = evaluate(fitted, model, seq_len, gpus, gpu)[1]["total"]
            break
    return rows


def summary(config: TrainConfig, model: ModelConfig, seq_len: int, gpus: int, gpu: Gpu, mfu: float | None) -> dict:
    s, mem = evaluate(config, model, seq_len, gpus, gpu)
    return {
        "setup": {
            "seq_len": seq_len,
            "micro_batch": s.micro_batch,
            "global_batch": s.global_batch,
            "accumulation": s.accumulation,
            "data_parallel": s.groups,
            "sequence_parallel": s.sequence,
            "zero_stage": s.stage,
            "deepspeed": s.deepspeed,
            "precision": s.precision,
            "recomputation": s.recompute,
            "mlp_tile": s.model.mlp_tile,
            "loss_chunk": s.model.loss_chunk,
            "offload": s.offload_optimizer,
        },
        "memory": mem,
        "time": timing(s, gpu, mfu),
    }


def make_plan(
    config: TrainConfig,
    gpus: int,
    gpu_name: str,
    seq_len: int | None = None,
    mfu: float | None = None,
    config_name: str = "",
) -> dict:
    """The plan of ``config`` on ``gpus`` devices of kind ``gpu_name`` (a key of GPUS, or cpu), as a dict: memory
    per rank, communication, step time, and when it does not fit, what would."""
    if gpus < 1:
        raise PlanError(f"--gpus {gpus}: give 1 or more")
    if mfu is not None and not 0 < mfu <= 1:
        raise PlanError(f"--mfu {mfu}: give a fraction in (0, 1]")
    gpu = gpu_spec(gpu_name, gpus)
    model, seq_len, notes = resolve_model(config, seq_len)
    c = counts(model)
    plan = {
        "config": config_name,
        "gpu": gpu_name,
        "device": gpu.label,
        "gpus": gpus,
        "nodes": math.ceil(gpus / gpu.per_node),
        "model": {
            "name": model.name,
            "arch": model.arch,
            "parameters": c.parameters,
            "vocab_size": model.vocab_size,
            "d_model": model.d_model,
            "n_layers": model.n_layers,
            "n_heads": model.n_heads,
            "hidden": model.hidden,
        },
        **summary(config, model, seq_len, gpus, gpu, mfu),
        "notes": notes,
        "assumes": ASSUMES,
        "leaves_out": LEAVES_OUT,
    }
    if not plan["memory"]["fits"]:
        micro = largest_micro_batch(config, model, seq_len, gpus, gpu)
        plan["largest_micro_batch"] = micro
        if micro is None:
            plan["largest_window"] = largest_window(config, model, gpus, gpu)
            plan["ladder"] = ladder(config, model, seq_len, gpus, gpu)
            fitting = plan["ladder"][-1] if plan["ladder"] and plan["ladder"][-1].get("micro_batch") else None
            overrides = {**fitting["overrides"], "batch.micro_batch": fitting["micro_batch"]} if fitting else None
        else:
            overrides = {"batch.micro_batch": micro}
        if overrides:
            fitted = summary(with_overrides(config, overrides), model, seq_len, gpus, gpu, mfu)
            plan["fits_with"] = {
                "overrides": overrides,
                "total": fitted["memory"]["total"],
                "step_s": fitted["time"]["step_s"],
                "tokens_per_s_per_gpu": fitted["time"]["tokens_per_s_per_gpu"],
            }
    return plan


# --- the table ---------------------------------------------------------------------------------------------------
def _gib(value: float) -> str:
    return f"{value / GIB:,.2f}"


def _count(value: int) -> str:
    return f"{value / 1e9:.2f} B" if value >= 1e9 else f"{value / 1e6:.1f} M"


def _seconds(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _override_text(overrides: dict) -> str:
    return " ".join(
        f"{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in overrides.items()
    )


def render(plan: dict) -> str:
    """The plan as the command prints it."""
    m, st, mem, t = plan["model"], plan["setup"], plan["memory"], plan["time"]
    unit = "rank" if plan["gpu"] == "cpu" else "GPU"
    zero = f"ZeRO-{st['zero_stage']} ({st['deepspeed']}{', offload' if st['offload'] else ''})"
    lean = ", ".join(f"{k} {st[k]}" for k in ("mlp_tile", "loss_chunk") if st[k])
    nodes = f"{plan['nodes']} node{'s' * (plan['nodes'] > 1)}"
    lines = [
        f"dnalm plan {plan['config']}: {plan['gpus']} × {plan['device']} ({nodes})",
        f"  model  {m['name']} ({m['arch']}): {_count(m['parameters'])} parameters, d {m['d_model']}, "
        f"{m['n_layers']} layers, {m['n_heads']} heads, MLP {m['hidden']}",
        *(f"         {note}" for note in plan["notes"]),
        f"  step   {st['seq_len']:,}-token windows: micro-batch {st['micro_batch']} × {st['data_parallel']} "
        f"data-parallel × {st['accumulation']} accumulated = global batch {st['global_batch']}; "
        f"sequence parallel {st['sequence_parallel']}",
        f"         {st['precision']}, {zero}, recomputation {'on' if st['recomputation'] else 'off'}"
        + (f", {lean}" if lean else ""),
        "",
        f"  memory per rank at its peak ({mem['peak_moment']})".ljust(58) + "GiB",
    ]
    for part in mem["parts"]:
        lines.append(f"    {part['name']:<52}{_gib(part['bytes']):>8}   {part['note']}")
    lines += [
        f"    {'tensors':<52}{_gib(mem['tensors_at_peak']):>8}",
        f"    {'runtime and allocator headroom':<52}{_gib(mem['headroom']):>8}",
        f"    {'total':<52}{_gib(mem['total']):>8}   of {_gib(mem['device_memory'])}: "
        + ("fits" if mem["fits"] else "DOES NOT FIT"),
        "    other moments: "
        + ", ".join(f"{name} {_gib(total)}" for name, total in mem["moments"].items() if name != mem["peak_moment"]),
        f"    activations kept: {_gib(mem['activations_with_recompute'])} with recomputation, "
        f"{_gib(mem['activations_without_recompute'])} without",
    ]
    if mem["host_per_rank"]:
        lines.append(f"    offloaded to the host: {_gib(mem['host_per_rank'])} a rank")
    lines += ["", "  communication per step per rank".ljust(58) + "GB"]
    for row in t["communication"] or [{"what": "none (one rank)", "bytes": 0}]:
        lines.append(f"    {row['what']:<52}{row['bytes'] / 1e9:>8.2f}")
    lines += [
        "",
        f"  time   compute {_seconds(t['compute_s'])} s + communication not hidden "
        f"{_seconds(t['exposed_comm_s'])} s = {_seconds(t['step_s'])} s a step: "
        f"{t['tokens_per_s_per_gpu']:,.0f} tokens/s per {unit}",
        f"         MFU {t['mfu']:.2f}: {t['mfu_source']}; links {t['zero_link_gb_s']:g} GB/s for ZeRO, "
        f"{t['sequence_link_gb_s']:g} GB/s for Ulysses",
    ]
    if not mem["fits"]:
        lines.append("")
        micro, window = plan.get("largest_micro_batch"), plan.get("largest_window")
        if micro:
            lines.append(f"  fits at micro-batch {micro} (batch.micro_batch={micro})")
        else:
            longest = (
                f"the longest window that fits at micro-batch 1: {window:,} tokens"
                if window
                else "no window of 1,024 tokens fits either"
            )
            lines.append(f"  no micro-batch fits; {longest}")
            for row in plan.get("ladder", []):
                outcome = row.get("refused") or (
                    f"fits at micro-batch {row['micro_batch']}: {_gib(row['total'])} GiB"
                    if row.get("micro_batch")
                    else "still does not fit"
                )
                lines.append(f"  ladder: + {row['rung']:<22} {outcome}")
        if plan.get("fits_with"):
            fitted = plan["fits_with"]
            lines.append(
                f"  next: {_override_text(fitted['overrides'])} → {_gib(fitted['total'])} GiB, "
                f"{fitted['tokens_per_s_per_gpu']:,.0f} tokens/s per {unit}"
            )
    lines += ["", f"  assumes: {plan['assumes']}", f"  leaves out: {plan['leaves_out']}"]
    return "\n".join(lines)
