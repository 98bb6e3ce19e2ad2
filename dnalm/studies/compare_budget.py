"""The DNA_Performer comparison's settings: its variants, the budget every variant trains on, and the budget's checks
(``compare.py`` runs it)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dnalm.utils.errors import DnalmError, validated


@dataclass(frozen=True)
class Variant:
    name: str
    model: str
    overrides: dict = field(default_factory=dict)
    views: bool = False
    description: str = ""


VARIANTS = {
    v.name: v
    for v in (
        Variant(
            "transformer",
            "encoder-tiny",
            dict(attention="flash", positions="rope"),
            description="softmax attention (flash backend), RoPE",
        ),
        Variant(
            "alibi",
            "encoder-tiny",
            dict(attention="flash", positions="alibi"),
            description="softmax attention (flash backend), ALiBi",
        ),
        Variant(
            "performer",
            "encoder-tiny",
            dict(attention="performer", positions="rope", performer_features=128),
            description="Performer FAVOR+ (128 features), RoPE",
        ),
        Variant(
            "cnn",
            "cnn-base",
            dict(name="cnn-tiny", d_model=128, n_layers=3),
            description="cnn-tiny: 3 residual dilated convolutions of width 128 (kernel 9)",
        ),
        Variant(
            "views",
            "encoder-tiny",
            dict(attention="flash", positions="rope"),
            views=True,
            description="the transformer on nucleotide + kmer:6 views concatenated",
        ),
        Variant(
            "views-bases",
            "encoder-tiny",
            dict(attention="flash", positions="rope", mlm_target="bases"),
            views=True,
            description="the views encoder predicting each masked token's bases (a 6 × 5 head, not 4,101-way)",
        ),
    )
}


class CompareError(DnalmError):
    """A comparison that cannot run as asked."""


class Budget(BaseModel):
    """Everything that decides the numbers; a ``--work`` folder belongs to one budget."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    genome: str
    variants: tuple[str, ...] = tuple(VARIANTS)
    seeds: int = Field(2, ge=1)
    seq_len: int = Field(1024, ge=64)
    pretrain_tokens: int = Field(1_000_000, ge=1)
    processes: int = Field(2, ge=1)
    micro_batch: int = Field(4, ge=1)
    lr: float = Field(2e-3, gt=0)
    eval_windows: int = Field(128, ge=1, description="held-out windows scored for masked-base accuracy")
    lengths: tuple[int, ...] = (1024, 8192)
    tokens_per_step: int = Field(8192, ge=1, description="throughput: batch = tokens_per_step // length (at least 1)")
    tasks: dict[str, int] = Field(
        default_factory=lambda: {"prom_core_all": 5000, "prom_300_tata": 2000},
        description="GUE task → training rows used (a fixed random subset)",
    )
    finetune_epochs: int = Field(2, ge=1)
    finetune_lr: float = Field(1e-3, gt=0)
    device: Literal["cpu", "cuda"] = Field(
        "cpu",
        description="where throughput, held-out scoring and fine-tuning run (pretraining takes the GPUs when present)",
    )

    @field_validator("variants")
    @classmethod
    def _known(cls, names):
        unknown = [n for n in names if n not in VARIANTS]
        if unknown or not names:
            raise ValueError(
                f"unknown variant {unknown[0] if unknown else '(none given)'}: choose from {', '.join(VARIANTS)}"
            )
        return names

    @field_validator("tasks")
    @classmethod
    def _rows(cls, tasks):
        small = {task: rows for task, rows in tasks.items() if rows < 2}
        if small or not tasks:
            raise ValueError(f"each task needs at least 2 training rows, got {small or 'no tasks'}")
        return tasks

    @field_validator("lengths")
    @classmethod
    def _lengths(cls, lengths):
        if not lengths or min(lengths) < 8:
            raise ValueError(f"throughput lengths must be at least 8 tokens, got {list(lengths)}")
        return lengths

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.processes

    @property
    def pretrain_steps(self) -> int:
        return math.ceil(self.pretrain_tokens / (self.global_batch * self.seq_len))


def check_inputs(budget: Budget, gue: Path) -> None:
    if not Path(budget.genome).is_file():
        raise CompareError(f"--genome {budget.genome}: no such file")
    for task in budget.tasks:
        for split in ("train", "dev"):
            if not (Path(gue) / task / f"{split}.csv").is_file():
                raise CompareError(
                    f"--gue {gue}: no {task}/{split}.csv (GUE tasks are folders of train.csv and dev.csv)"
                )


def command_line(budget: Budget) -> str:
    default = Budget(genome=budget.genome)
    parts = ["dnalm bench compare", f"--genome {budget.genome}"]
    flags = {
        "variants": ",".join(budget.variants),
        "seeds": budget.seeds,
        "pretrain-tokens": budget.pretrain_tokens,
        "seq-len": budget.seq_len,
        "processes": budget.processes,
        "lengths": ",".join(map(str, budget.lengths)),
        "tasks": ",".join(f"{k}={v}" for k, v in budget.tasks.items()),
        "epochs": budget.finetune_epochs,
    }
    defaults = {
        "variants": ",".join(default.variants),
        "seeds": default.seeds,
        "pretrain-tokens": default.pretrain_tokens,
        "seq-len": default.seq_len,
        "processes": default.processes,
        "lengths": ",".join(map(str, default.lengths)),
        "tasks": ",".join(f"{k}={v}" for k, v in default.tasks.items()),
        "epochs": default.finetune_epochs,
    }
    parts += [f"--{k} {v}" for k, v in flags.items() if v != defaults[k]]
    return " ".join(parts)


def budget_from(values: dict) -> Budget:
    return validated(Budget, values, CompareError, "bench compare")
