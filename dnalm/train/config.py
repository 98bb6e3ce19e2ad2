"""An experiment: one YAML under ``configs/train/`` plus a DeepSpeed JSON from ``configs/deepspeed/``.

Dotted overrides (``optim.lr=3e-4``) apply on top of the YAML. What the trainer knows (batch
sizes, optimizer, clipping, precision) is written into the DeepSpeed config here, never by hand.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from dnalm.utils.errors import DnalmError

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


class TrainConfigError(DnalmError):
    """An experiment configuration that cannot run, with the reason."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(_Section):
    name: str = Field("encoder-small", description="a named size or a path to a model YAML")
    overrides: dict = Field(default_factory=dict, description="ModelConfig fields to change (attention, positions, …)")
    init_from: str | None = Field(
        None,
        description="a bundle (dnalm convert) to continue pretraining from: its "
        "architecture and weights replace `name`",
    )


UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def byte_count(value):
    """A number of bytes, or a string such as "200GB" or "1.5 TiB"."""
    if not isinstance(value, str):
        return value
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", value)
    if not match or match.group(2).upper() not in UNITS:
        raise ValueError(f"{value!r} is not a size (a number of bytes, or e.g. 200GB, 1.5TiB)")
    return int(float(match.group(1)) * UNITS[match.group(2).upper()])


def compile_mode(value):
    """``compile``: true/false as before the modes, else the mode's name."""
    return {True: "model", False: "none"}.get(value, value) if isinstance(value, bool) else value


class DataSection(_Section):
    path: str = Field(
        description="a folder made by `dnalm prep`, or one in object storage: s3://bucket/prefix, http(s)://host/prefix"
    )
    train_split: str = Field("train", description="the split the stream trains on")
    val_split: str = Field("val", description="the held-out split `eval` scores (skipped when smaller than a step)")
    shuffle: bool = Field(True, description="each epoch a pseudo-random order of the whole split (False: genome order)")
    order: Literal["global", "blocks"] | None = Field(
        None,
        description="global: a permutation of every sample (each rank reads from every shard); blocks: partitions "
        "of shards shuffled in blocks, a rank reads ~1/W of the shards and opens each about once an "
        "epoch. Default: global for one process on a local path, blocks for several ranks and for "
        "s3:// and http(s)://",
    )
    partitions: int | None = Field(
        None,
        ge=1,
        description="blocks order: partitions of the shards (default: a multiple "
        "of the data-parallel world, up to 64, about 10 shards each); a multiple of every world "
        "size the run may resume at keeps each rank's share disjoint",
    )
    block_size: int | None = Field(
        None,
        ge=1,
        description="blocks order: samples shuffled together (default: ≥ 8 Mb of "
        "sequence per sample a partition gives each step, ≥ one shard)",
    )
    cache_dir: str | None = Field(
        None,
        description="remote sources: the node-local shard cache, shared by the node's "
        "ranks and workers; its filesystem must allow flock (default $DNALM_CACHE or "
        "$DNALM_CACHE_DIR, else $TMPDIR/dnalm-cache-$USER, else /tmp/dnalm-cache-$USER; never "
        "the home directory)",
    )
    cache_limit: Annotated[int | None, BeforeValidator(byte_count)] = Field(
        None,
        ge=1,
        description="remote sources: bytes the node's cache may hold, e.g. 200000000000 or 200GB (least "
        "recently used shards evicted first; none: no limit); must hold local ranks × num_workers "
        "× (prefetch_shards + 2) of the largest shards",
    )
    prefetch_shards: int = Field(
        4, ge=0, description="remote sources: shards downloaded ahead of the reader, in parallel (default 4)"
    )
    retries: int = Field(
        5, ge=0, description="remote sources: attempts after a failed request, with exponential backoff"
    )
    retry_wait_s: float = Field(
        0.5, gt=0, description="remote sources: the first wait before a retry (doubled each time)"
    )
    max_open_shards: int = Field(
        64,
        ge=1,
        description="shard files each DataLoader worker keeps open (least recently "
        "used closed first; in the blocks order a closing shard first reads what its current "
        "blocks still need)",
    )
    reverse_complement: bool = Field(
        False,
        description="read half the windows (seeded by position) on the reverse "
        "strand, instead of doubling the shards at prep",
    )
    num_workers: int = Field(1, ge=0, description="DataLoader worker processes per rank (0: read in the rank itself)")
    on_error: Literal["raise", "skip"] = Field(
        "raise",
        description="a corrupt sample or shard: stop, or read the next "
        "readable sample of the epoch's order in its place (counted)",
    )
    allow_changed: bool = Field(
        False,
        description="resume on a data folder whose plan differs from the checkpoint's "
        "(the stream restarts at epoch 0); refused otherwise",
    )

    def stream_settings(self) -> dict:
        """The GenomeStream keywords these settings stand for."""
        return self.model_dump(
            include={
                "shuffle",
                "order",
                "partitions",
                "block_size",
                "cache_dir",
                "cache_limit",
                "prefetch_shards",
                "retries",
                "retry_wait_s",
                "max_open_shards",
                "on_error",
            }
        )


class OptimSection(_Section):
    lr: float = Field(3e-4, gt=0, description="AdamW's peak learning rate")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW's β1, β2")
    eps: float = Field(1e-8, description="AdamW's ε")
    weight_decay: float = Field(0.1, ge=0, description="on matrices only (not on norms, biases or embeddings)")
    warmup_steps: int = Field(100, ge=0, description="linear warm-up from lr/warmup_steps to lr")
    min_lr_ratio: float = Field(
        0.1, ge=0, le=1, description="cosine decay ends at lr × this, at the budget's last step"
    )
    grad_clip: float = Field(1.0, ge=0, description="global gradient-norm clipping (0: off)")


class BatchSection(_Section):
    micro_batch: int = Field(8, ge=1, description="samples per rank per forward")
    global_batch: int = Field(16, ge=1, description="samples per optimizer step over all ranks")


class BudgetSection(_Section):
    steps: int | None = Field(None, ge=1, description="optimizer steps to train (give this or tokens)")
    tokens: int | None = Field(None, ge=1, description="tokens to train on, rounded up to whole steps (or steps)")

    @model_validator(mode="after")
    def _one(self) -> BudgetSection:
        if (self.steps is None) == (self.tokens is None):
            raise ValueError("give exactly one of budget.steps and budget.tokens")
        return self

    def total_steps(self, tokens_per_step: int) -> int:
        """``steps``, or ``tokens`` rounded up to whole steps."""
        if self.steps is not None:
            return self.steps
        assert self.tokens is not None  # _one: one of them is given
        return math.ceil(self.tokens / tokens_per_step)


class EvalSection(_Section):
    interval: int = Field(100, ge=1, description="steps between held-out evaluations (and one at the end)")
    batches: int = Field(10, ge=1, description="micro-batches per rank each evaluation scores, drawn across the split")
    probes: list[str] = Field(
        default_factory=list,
        description="labelled task folders in GUE's layout (train.csv and dev.csv, columns sequence,label): every "
        "probe_interval steps (and at the last) a logistic-regression probe on the mean-pooled final hidden states "
        "logs probe/<task>/mcc and probe/<task>/accuracy on dev (docs/training.md)",
    )
    probe_interval: int = Field(
        500, ge=1, description="steps between linear probes (and one at the end); each prints its share of the time"
    )
    probe_rows: tuple[int, int] = Field(
        (2000, 1000),
        description="train and dev rows each probe reads: a fixed seeded subsample, the same rows every time",
    )

    @field_validator("probe_rows")
    @classmethod
    def _rows(cls, rows: tuple[int, int]) -> tuple[int, int]:
        if min(rows) < 1:
            raise ValueError(f"the train and dev rows a probe reads must both be at least 1, got {list(rows)}")
        return rows


class CheckpointSection(_Section):
    interval: int = Field(100, ge=1, description="steps between checkpoints (and one at the end)")
    keep_last: int = Field(
        3, ge=1, description="complete checkpoints kept; older ones are deleted once a newer is complete"
    )
    on_signal: Literal["SIGUSR1", "SIGTERM", "none"] = Field(
        "none",
        description="a signal that makes every rank save a checkpoint at the next step boundary and exit "
        "cleanly (schedulers send one ahead of preemption or the time limit: launch/slurm_train.sbatch "
        "asks for SIGUSR1); none: signals end the run at once",
    )
    convert_timeout_s: float = Field(
        4 * 3600,
        gt=0,
        description="resuming on another world size: how long the other "
        "ranks wait for rank 0's conversion to a universal checkpoint (run outside any "
        "collective's timeout); `dnalm checkpoint universal` converts ahead",
    )
    convert_workers: int | None = Field(
        None,
        ge=1,
        description="that conversion's extract and merge workers (default: the node's cores, as many as memory holds)",
    )


class ObjectiveSection(_Section):
    mask_fraction: float = Field(0.15, gt=0, lt=1, description="bases masked (MLM)")
    mean_span: float = Field(3.0, ge=1, description="mean length in bases of a masked span")
    replace: tuple[float, float, float] = Field((0.8, 0.1, 0.1), description="[MASK] / random token / unchanged")
    repeat_weight: float = Field(
        1.0,
        ge=0,
        le=1,
        description="what a repeat token's loss counts (MLM and CLM): a token whose bases are mostly soft-masked in "
        "the reference; the loss is the weighted mean. 1: off; Evo 2 uses 0.1. Needs a prep of a soft-masked genome",
    )


class LoggingSection(_Section):
    wandb: Literal["offline", "online", "disabled"] = Field(
        "offline", description="wandb logging: offline (files under RUN/wandb, `wandb sync` later), online, or disabled"
    )
    project: str = Field("dnalm", description="the wandb project")
    run_name: str | None = Field(None, description="the wandb run's name (default: the run folder's)")
    interval: int = Field(10, ge=1, description="steps between records in metrics.jsonl and loss lines on the console")
    record_sample_keys: bool = Field(False, description="testing: write each rank's consumed sample keys (audits)")


class RobustSection(_Section):
    max_consecutive_skips: int = Field(
        5,
        ge=1,
        description="steps in a row with a non-finite loss or gradients "
        "that stop the run (the last good checkpoint stays)",
    )
    collective_timeout_s: int = Field(
        600,
        ge=10,
        description="a collective (or barrier) that waits longer fails the "
        "rank instead of hanging the job (gloo and NCCL)",
    )
    inject_nan_at_steps: list[int] = Field(
        default_factory=list, description="testing: make these steps' loss NaN on rank 0"
    )
    inject_nan_micro_batch: int = Field(0, ge=0, description="testing: which micro-batch of those steps goes bad")
    inject_inf_grad_at_steps: list[int] = Field(
        default_factory=list,
        description="testing: these steps' gradients become infinite on rank 0 while the loss stays finite",
    )


class ParallelSection(_Section):
    sequence: int = Field(
        1,
        ge=1,
        description="sequence-parallel group size S (Ulysses): each window is split into S "
        "contiguous slices on S ranks, which exchange q/k/v to attend over all positions for n_heads/S "
        "heads; data parallelism runs over world/S groups. A speed and memory setting: results do not "
        "depend on it",
    )


class TrainConfig(_Section):
    run_dir: str = Field(description="the run's folder: config, metrics.jsonl, checkpoints/ (one job at a time)")
    model: ModelSection = ModelSection()
    data: DataSection
    optim: OptimSection = OptimSection()
    batch: BatchSection = BatchSection()
    budget: BudgetSection
    eval: EvalSection = EvalSection()
    checkpoint: CheckpointSection = CheckpointSection()
    objective: ObjectiveSection = ObjectiveSection()
    logging: LoggingSection = LoggingSection()
    robust: RobustSection = RobustSection()
    parallel: ParallelSection = ParallelSection()
    deepspeed: str = Field("zero2", description="zero1 | zero2 | zero3 | zero3-offload, or a path to a DeepSpeed JSON")
    precision: Literal["auto", "bf16", "fp32", "fp8"] = Field(
        "auto",
        description="auto: bf16 on GPU, fp32 on CPU; fp8: "
        "float8 linear layers (torchao), the rest bf16, on GPUs of "
        "compute capability 8.9+ (refused elsewhere)",
    )
    activation_checkpointing: bool = Field(
        False,
        description="recompute each block's activations in the backward pass: less memory, about a third more compute",
    )
    compile: Annotated[Literal["none", "model", "blocks"], BeforeValidator(compile_mode)] = Field(
        "none",
        description="torch.compile: none; model (DeepSpeed's engine.compile, the whole model); blocks (each "
        "block compiled in place, one graph all blocks reuse; embedding, head and loss eager). true "
        "means model. The first step pays the compilation: see `dnalm bench train` for what it gains",
    )
    seed: int = Field(0, description="weights, masks and the data order are drawn from it")

    def to_yaml(self) -> str:
        return yaml.safe_dump(json.loads(self.model_dump_json()), sort_keys=False)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """The YAML at ``path`` with ``key.sub=value`` overrides (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise TrainConfigError(f"{path}: no such training config")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise TrainConfigError(f"{path}: not YAML ({exc})") from None
    except UnicodeDecodeError:
        from dnalm.utils.files import binary_kind

        raise TrainConfigError(
            f"{path}: {binary_kind(path)}, not a training config (YAML); `dnalm config new my.yaml` writes one"
        ) from None
    _refuse_unknown_keys(TrainConfig, values, str(path))
    for item in overrides:
        apply_override(values, item)
        _refuse_unknown_keys(TrainConfig, values, f"override '{item}'")
    from pydantic import ValidationError

    try:
        return TrainConfig(**values)
    except ValidationError as exc:  # named where the value was written: the file, or the command line's override
        first = exc.errors()[0]
        field = ".".join(map(str, first["loc"])) or "config"
        reason = first["msg"].removeprefix("Value error, ")
        keys = [(item, item.split("=", 1)[0].strip()) for item in overrides]
        given = [item for item, key in keys if field == key or f"{field}.".startswith(f"{key}.")]
        where = f"{given[-1]} (command line)" if given and first["loc"] else f"{path}: {field}"
        raise TrainConfigError(f"{where}: {reason}") from None


def _refuse_unknown_keys(model: type[BaseModel], values: dict, where: str, prefix: str = "") -> None:
    """A key no section has, named where it was written (the YAML file or the override), with the nearest known key."""
    import difflib

    if not isinstance(values, dict):
        return
    for key, value in values.items():
        field = model.model_fields.get(key)
        if field is None:
            near = difflib.get_close_matches(str(key), model.model_fields, n=1)
            hint = f" (did you mean {prefix}{near[0]}?)" if near else f" (known: {', '.join(model.model_fields)})"
            raise TrainConfigError(f"{where}: unknown key {prefix}{key}{hint}")
        section = field.annotation
        if isinstance(section, type) and issubclass(section, _Section):
            _refuse_unknown_keys(section, value, where, f"{prefix}{key}.")


def apply_override(values: dict, item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise TrainConfigError(f"override '{item}': expected key.sub=value")
    *parents, leaf = key.split(".")
    node = values
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise TrainConfigError(f"override '{item}': {part} is not a section")
    node[leaf] = yaml.safe_load(raw)


def deepspeed_config(config: TrainConfig, world_size: int, on_gpu: bool) -> dict:
    """The DeepSpeed JSON named by ``config.deepspeed`` with what the trainer knows filled in; ``world_size`` counts
    processes, of which each sequence-parallel group of ``parallel.sequence`` reads one share of the windows."""
    name = config.deepspeed
    path = Path(name) if name.endswith(".json") else REPO_CONFIGS / "deepspeed" / f"{name}.json"
    if not path.is_file():
        raise TrainConfigError(f"deepspeed: {path} not found (use zero1, zero2, zero3, zero3-offload or a JSON path)")
    ds = json.loads(path.read_text())
    groups = world_size // config.parallel.sequence
    per_step = config.batch.micro_batch * groups
    if config.batch.global_batch % per_step:
        shares = (
            f"{world_size} processes"
            if groups == world_size
            else f"{groups} data-parallel groups ({world_size} processes / parallel.sequence "
            f"{config.parallel.sequence})"
        )
        raise TrainConfigError(
            f"batch.global_batch {config.batch.global_batch} is not a multiple of micro_batch "
            f"{config.batch.micro_batch} × {shares}: set batch.global_batch to a multiple of {per_step}, e.g. "
            f"batch.global_batch={-(-config.batch.global_batch // per_step) * per_step}"
        )
    optim = config.optim
    bf16 = config.precision in ("bf16", "fp8") or (config.precision == "auto" and on_gpu)
    # offloading from a GPU steps the host's copy with DeepSpeedCPUAdam (SIMD, compiled on first use); a CPU-only run
    # has no device to offload from, and torch's AdamW does the same step without that minute of g++
    adam = {
        "lr": optim.lr,
        "betas": list(optim.betas),
        "eps": optim.eps,
        "weight_decay": optim.weight_decay,
        "torch_adam": not (_offloads(ds) and on_gpu),
    }
    if on_gpu and adam["torch_adam"]:
        adam["fused"] = True  # PyTorch's fused CUDA AdamW: one kernel for all parameters
    ds.update(
        {
            "train_micro_batch_size_per_gpu": config.batch.micro_batch,
            "gradient_accumulation_steps": config.batch.global_batch // per_step,
            "train_batch_size": config.batch.global_batch,
            "gradient_clipping": optim.grad_clip,
            "optimizer": {"type": "AdamW", "params": adam},
            # bf16 weights and activations, but gradients accumulate in fp32, and a step whose gradient norm is not
            # finite is skipped (the trainer counts it)
            "bf16": {"enabled": bf16, "check_grad_overflow": True},
        }
    )
    if bf16:
        ds["data_types"] = {"grad_accum_dtype": "fp32"}
    return ds


def _offloads(ds: dict) -> bool:
    zero = ds.get("zero_optimization", {})
    return "offload_optimizer" in zero or "offload_param" in zero


def zero_stage(ds: dict) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))
