"""The training loop around the DeepSpeed engine: one code path for one process, many ranks or many nodes.

The model is built from its config (partitioned at construction under ZeRO-3) and handed to
``deepspeed.initialize``; the stream feeds each rank its share of every global step; masks are
drawn from a generator seeded by (seed, step, rank, micro-batch), so a resumed run replays
exactly. Under sequence parallelism (``parallel.sequence`` S) the S ranks of a group read the same windows and each
trains on its slice (``sequence_parallel``); masks are drawn per data-parallel rank, so S changes no mask, label or
loss. A step whose loss is not finite on any rank, or whose gradients are not (DeepSpeed's global grad norm), is
skipped on every rank and counted; too many in a row stop the run, leaving the last good checkpoint as it was.

Device discipline: batches are built on the host and moved to the engine's device; every tensor
handed to a collective lives there too (NCCL takes only CUDA tensors, gloo CPU ones), and a step
needs one collective and one read of its statistics, after the optimizer step.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from dnalm.data.cache import data_folder
from dnalm.data.manifest import Manifest
from dnalm.data.masking import IGNORE, base_targets, clm_batch, mlm_batch, next_token_labels, view_ranges
from dnalm.data.stream import GenomeStream, StreamLoader
from dnalm.models import build_model
from dnalm.models.transformer import check_learned_positions
from dnalm.tokenizers import ViewTokenizer
from dnalm.train import checkpoint as ckpt
from dnalm.train import compiled, console, fp8, held_out, losses, probes, sequence_parallel
from dnalm.train import universal as universal_form
from dnalm.train.config import TrainConfig, TrainConfigError, deepspeed_config, zero_stage
from dnalm.train.distributed import init_distributed, launched, release_shared_memory  # noqa: F401 (re-exported)
from dnalm.train.losses import GenomeTally
from dnalm.train.metrics import MetricsLog
from dnalm.train.ownership import RunLock
from dnalm.train.setup import (
    PoisonGradient,
    data_tokenizer,
    load_bundle_weights,
    lr_lambda,
    nominal_mfu_per_token,
    parameter_groups,
    resolve_model,
)
from dnalm.train.spawn import free_port  # noqa: F401 (re-exported)
from dnalm.train.stopping import StopRequests
from dnalm.utils import faults
from dnalm.utils.devices import move
from dnalm.utils.errors import DnalmError
from dnalm.utils.memory import allocator_peak_mb


class TrainingStopped(DnalmError):
    """The run stopped on purpose (too many non-finite steps); the last good checkpoint is intact."""


class Trainer:
    def __init__(self, config: TrainConfig, resume: str | None = "auto", lock: RunLock | None = None):
        self.config = config
        self.rank, self.world = init_distributed(config.robust.collective_timeout_s)
        import deepspeed

        self.run_dir = Path(config.run_dir)
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        self.stop = StopRequests(
            config.checkpoint.on_signal,
            watch_launcher=launched(),
            exit_now=lambda why: lock.release() if lock is not None else None,
        )
        self.stopping = False
        self.data_folder = data_folder(
            config.data.path, config.data.cache_dir, config.data.retries, config.data.retry_wait_s
        )
        self.manifest = Manifest.load(self.data_folder)
        self.tokenizer = data_tokenizer(self.data_folder, self.manifest)
        self.model_config = resolve_model(config, self.manifest, self.tokenizer)
        self.causal = self.model_config.causal
        self.sp_size = config.parallel.sequence
        sequence_parallel.check(self.sp_size, self.world, self.model_config, self.manifest.seq_len)
        self.probe_tasks = self._load_probes()
        # consecutive ranks form a sequence-parallel group (DeepSpeed's parallel_state_sp); groups are data-parallel
        # ranks
        self.sp_rank, self.dp_rank, self.dp_world = (
            self.rank % self.sp_size,
            self.rank // self.sp_size,
            self.world // self.sp_size,
        )
        mpu = sequence_parallel.groups(self.sp_size) if self.sp_size > 1 else None
        on_gpu = torch.cuda.is_available()
        if config.precision == "fp8":
            fp8.check(torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu"))
        self.ds_config = deepspeed_config(config, self.world, on_gpu)
        self.accumulation = self.ds_config["gradient_accumulation_steps"]
        self.gradient_scale = sequence_parallel.gradient_scale(self.sp_size, self.ds_config)
        tokens_per_step = config.batch.global_batch * self.manifest.seq_len
        self.total_steps = config.budget.total_steps(tokens_per_step)

        self.resume_from, aside = ckpt.decide_resume(self.run_dir, resume)  # rank 0's listing, for every rank
        if aside is not None:
            self._say(
                f"starting from step {ckpt.step_of(self.resume_from) if self.resume_from else 0}: the newer "
                f"checkpoints were moved to {aside} (never resumed by --resume auto, never deleted)"
            )
        if self.resume_from is not None:
            ckpt.check_model(self.resume_from, self.model_config)
        self.data_continues = self.resume_from is None or ckpt.check_data(
            self.resume_from, config.data.path, self.manifest.plan_fingerprint, config.data.allow_changed
        )
        universal = False  # resumed on another number of ranks: through DeepSpeed's universal checkpoint
        if self.resume_from is not None and ckpt.read_meta(self.resume_from)["world_size"] != self.world:
            universal = True
            universal_form.ensure_universal(
                self.resume_from, config.checkpoint.convert_timeout_s, config.checkpoint.convert_workers
            )
            self.ds_config["checkpoint"] = {"load_universal": True}

        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        if zero_stage(self.ds_config) == 3:
            with deepspeed.zero.Init(config_dict_or_path=self.ds_config, mpu=mpu):
                model = build_model(self.model_config)
        else:
            model = build_model(self.model_config)
        if config.model.init_from and self.resume_from is None:
            load_bundle_weights(model, config.model.init_from, partitioned=zero_stage(self.ds_config) == 3)
        if config.precision == "fp8":
            self._say(f"precision fp8: {fp8.convert(model)} linear layers in float8")
        compiled.prepare(model, config.compile)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model,
            model_parameters=parameter_groups(model, config.optim.weight_decay),
            config=self.ds_config,
            mpu=mpu,
            lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(
                optimizer, lr_lambda(config, self.total_steps)
            ),
        )
        if mpu is not None:
            sequence_parallel.wrap_attention(self.engine.module, mpu.get_sequence_parallel_group())
        compiled.compile_engine(self.engine, config.compile)

        # MFU by the field's formula where the device has a nominal peak (H100, H200, A100); CPUs have none
        self.mfu_per_token = nominal_mfu_per_token(
            model, self.model_config, self.manifest.seq_len, self.ds_config, config.precision
        )

        self.stream = GenomeStream(
            config.data.path,
            config.data.train_split,
            batch_size=config.batch.micro_batch,
            rank=self.dp_rank,
            world_size=self.dp_world,
            seed=config.seed,
            epochs=None,
            tokenizer=self.tokenizer,
            reverse_complement=config.data.reverse_complement,
            **config.data.stream_settings(),
        )
        self.loader = StreamLoader(self.stream, num_workers=config.data.num_workers)
        self.ranges = view_ranges([t.vocab_size for t in self.manifest.tokenizers])
        self.base_table = base_targets(self.tokenizer.vocab) if self.model_config.mlm_target == "bases" else None
        self.step, self.tokens_seen, self.skipped_steps, self.stream_skipped_before = 0, 0, 0, 0
        genome_tokens = None
        if self.resume_from is not None:
            ckpt.load(self.engine, self.resume_from, universal)
            ckpt.verify_loaded(self.resume_from)
            meta = ckpt.read_meta(self.resume_from)
            self.step, self.tokens_seen, self.skipped_steps = meta["step"], meta["tokens_seen"], meta["skipped_steps"]
            genome_tokens = meta.get("genome_tokens")
            if self.data_continues:
                self.loader.load_state_dict(meta["stream"])
                self.stream_skipped_before = meta.get("stream_skipped", 0)
            else:
                self._say(
                    f"data.allow_changed: {config.data.path} is not the data {self.resume_from} was trained on; "
                    "the data stream restarts at epoch 0"
                )
        # per-genome loss and tokens in the log, for a corpus of several genomes
        names = losses.genome_names(self.manifest)
        self.genome_tally = GenomeTally(names, self.device, genome_tokens) if len(names) > 1 else None
        if config.objective.repeat_weight != 1 and not self.manifest.repeats:
            self._say(
                f"objective.repeat_weight {config.objective.repeat_weight}: {config.data.path} marks no repeats (no "
                "genome of it is soft-masked, or it was prepared before repeat flags), so every token counts 1"
            )
        self._write_run_files()
        self._say(self.start_line())

    def _say(self, message: str) -> None:
        if self.rank == 0:
            console.say(message)

    def start_line(self) -> str:
        from dnalm.models import count_parameters

        parameters = count_parameters(build_model(self.model_config, device="meta"))
        per_step = self.config.batch.global_batch * self.manifest.seq_len
        precision = (
            self.config.precision
            if self.config.precision != "auto"
            else ("bf16" if self.ds_config["bf16"]["enabled"] else "fp32")
        )
        start = f"resuming step {self.step} from {self.resume_from}" if self.resume_from else "fresh start"
        steps = (
            f"steps {self.step + 1}-{self.total_steps}"
            if self.step < self.total_steps
            else f"nothing to train: the run is at step {self.step} of {self.total_steps} (raise budget.steps or "
            "budget.tokens to go on)"
        )
        return (
            f"training {self.model_config.name} ({parameters / 1e6:,.1f}M parameters) on {self.config.data.path}: "
            f"{self.config.batch.global_batch} windows x {self.manifest.seq_len:,} tokens = {per_step:,} tokens a "
            "step, "
            f"{steps}; {self.world} process{'es' * (self.world > 1)}, ZeRO-"
            f"{zero_stage(self.ds_config)}, sequence parallel {self.sp_size}, {precision}; {start}; run folder "
            f"{self.run_dir}"
        )

    @property
    def device(self) -> torch.device:
        """Where the engine's parameters live: every input and every collective tensor goes there."""
        return torch.device(self.engine.device)

    # --- one step ------------------------------------------------------------------------
    def _inputs(self, batch: dict, micro: int, salt: int = 0) -> dict:
        """The model inputs of one micro-batch, built on the host and moved to the engine's device: labels aligned
        with the logits, ``targets`` counted over the whole windows, and under sequence parallelism this rank's
        slice."""
        if self.causal:
            inputs = clm_batch(batch)
            inputs["labels"] = next_token_labels(inputs["labels"])
        else:
            rng = np.random.default_rng([self.config.seed, salt, self.step, self.dp_rank, micro])
            objective = self.config.objective
            inputs = mlm_batch(
                batch,
                self.ranges,
                rng,
                self.base_table,
                mask_fraction=objective.mask_fraction,
                mean_span=objective.mean_span,
                replace=objective.replace,
            )
        inputs["targets"] = int((inputs["labels"] != IGNORE).sum())
        inputs = losses.prepare(inputs, batch, self.causal, self.config.objective.repeat_weight)
        if self.model_config.positions == "learned":  # on the host batch: the model would need a device sync
            check_learned_positions(
                int(inputs["positions"].max()) if "positions" in inputs else inputs["input_ids"].shape[1] - 1,
                self.model_config.max_seq_len,
            )
        if self.sp_size > 1:
            inputs = sequence_parallel.shard(inputs, self.sp_rank, self.sp_size)
        if self.device.type == "cuda":  # page-locked, so the copy to the GPU is asynchronous
            inputs = {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in inputs.items()}
        return move(inputs, self.device)

    def _forward(self, inputs: dict):
        """The model's output with its loss sum over this rank's tokens (in chunks when ``loss_chunk`` is set)."""
        extra = {k: inputs[k] for k in ("segment_ids", "positions") if k in inputs}
        return self.engine(
            inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=inputs["labels"], **extra
        )

    def train_step(self, batches) -> dict:
        """One optimizer step (``accumulation`` micro-batches); skipped on every rank if any loss is not finite.

        Nothing is read back per micro-batch: a non-finite loss makes non-finite gradients, which DeepSpeed's own
        overflow check drops from the step on every rank, with the window's earlier micro-batches (tested against a
        window lost at its start). The step's statistics (non-finite micro-batches, loss sum, tokens, stop votes)
        stay on the device and take one collective and one read per step, after the optimizer step, where DeepSpeed
        has already synchronized for that check.
        """
        started, tokens, target_rates = time.perf_counter(), 0, []  # target rates: this rank's, per view (MLM)
        stats = torch.zeros(2, dtype=torch.float64, device=self.device)  # (non-finite losses, finite loss sum)
        robust = self.config.robust
        inject_nan = self.rank == 0 and (self.step + 1) in robust.inject_nan_at_steps
        inject_inf_grad = self.rank == 0 and (self.step + 1) in robust.inject_inf_grad_at_steps
        faults.strike("train.step", self.step + 1, self.rank)
        for micro in range(self.accumulation):
            batch = next(batches)
            self._record_keys(batch)
            inputs = self._inputs(batch, micro)
            if "target_rate" in inputs:
                target_rates.append(inputs["target_rate"])
            # this rank's share of the micro-batch's token mean: a sequence group's shares add up to it
            out = self._forward(inputs)
            loss = losses.step_loss(out, inputs)
            if self.genome_tally is not None:
                self.genome_tally.add(out, inputs)
            if inject_nan and micro == robust.inject_nan_micro_batch:
                loss = loss * float("nan")
            if inject_inf_grad:
                loss = PoisonGradient.apply(loss)
            finite = torch.isfinite(loss.detach())
            stats += torch.stack([(~finite).to(torch.float64), torch.where(finite, loss.detach(), 0).to(torch.float64)])
            tokens += inputs["tokens"]
            self.engine.backward(loss * self.gradient_scale if self.gradient_scale != 1 else loss)
            self.engine.step()
        # (non-finite losses, loss sum, real tokens, a stop asked for) over every rank: each sees the same stop vote,
        # so all stop after the same step
        votes = torch.tensor([tokens, float(self.stop.reason is not None)], dtype=torch.float64, device=self.device)
        totals = torch.cat([stats, votes])
        dist.all_reduce(totals)
        nonfinite, loss_sum, window_tokens, stop_votes = totals.tolist()
        self.stopping = self.stopping or stop_votes > 0
        tokens = round(window_tokens / self.sp_size)  # every rank of a sequence group counted its windows
        bad_loss = nonfinite > 0
        bad = (
            bad_loss or not self.engine.was_step_applied()
        )  # a finite loss, non-finite gradients: DeepSpeed skipped it
        self.step += 1
        self.tokens_seen += tokens
        seconds = time.perf_counter() - started
        position = self.loader.state_dict()
        record = {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "tokens_per_s": round(tokens / seconds, 1),
            "skipped_steps": self.skipped_steps + int(bad),
            "stream_skipped": self.stream_skipped,
            "data_epoch": position["epoch"],
            "data_index": position["index"],
        }
        if self.mfu_per_token:  # tokens/s per device × FLOPs per token ÷ the nominal peak
            record["mfu"] = round(tokens / seconds / self.world * self.mfu_per_token, 4)
        if (peak := allocator_peak_mb(self.device)) is not None:  # the allocator's high-water mark on a GPU so far
            record["peak_memory_mb"] = round(peak)
        if bad:
            self.skipped_steps += 1
            return record | {"skipped": True, "skip_reason": "non-finite loss" if bad_loss else "non-finite gradients"}
        grad_norm = self.engine.get_global_grad_norm()
        if target_rates:
            record["target_rate"] = [round(float(r), 4) for r in np.mean(target_rates, axis=0)]
        return record | {
            "loss": loss_sum / self.accumulation / self.dp_world,
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
        }

    def _record_keys(self, batch: dict) -> None:
        if self.config.logging.record_sample_keys:
            with open(self.run_dir / f"sample-keys-rank{self.rank}.txt", "a") as fh:
                fh.writelines(f"{self.step + 1}\t{key}\n" for key in batch["key"])

    # --- linear probes (eval.probes) -----------------------------------------------------
    def _load_probes(self) -> list[probes.ProbeTask]:
        """The probe tasks' fixed rows, tokenized with the data's tokenizer; a bad folder, file or row is refused
        here, before the model is built."""
        settings = self.config.eval
        self.probe_clock, self.probe_warned = time.perf_counter(), False  # run() sets the clock again
        return probes.load_tasks(
            settings.probes,
            self.tokenizer,
            settings.probe_rows,
            max_tokens=self.model_config.max_seq_len,
            error=TrainConfigError,
            where="eval.probes",
        )

    def probe(self) -> dict:
        """Every probe task on the current weights, in eval mode (no masking, no dropout), every rank taking part (the
        rows sharded over data-parallel ranks, sliced over a sequence group); one line on rank 0, and the record's
        ``probe/…`` keys."""
        began = time.perf_counter()
        self.engine.eval()
        try:
            results = probes.probe(
                self.probe_tasks,
                probes.model_hidden(self.engine),
                self.device,
                isinstance(self.tokenizer, ViewTokenizer),
                shard=(self.dp_rank, self.dp_world),
                sequence=(self.sp_rank, self.sp_size),
            )
        finally:
            self.engine.train()
        seconds = time.perf_counter() - began
        share = seconds / max(began - self.probe_clock, 1e-9)
        self.probe_clock = time.perf_counter()
        rows = sum(t.rows for t in self.probe_tasks)
        self._say(probes.line(self.step, results, rows, seconds, share))
        interval = self.config.eval.probe_interval
        if share > probes.BUDGET and self.step % interval == 0 and not self.probe_warned:
            self.probe_warned = True
            self._say(
                f"probes cost {100 * share:.1f}% of the training time at eval.probe_interval {interval}; an interval "
                f"of {math.ceil(interval * share / probes.BUDGET):,} or more keeps them under "
                f"{100 * probes.BUDGET:.0f}% (or fewer eval.probe_rows)"
            )
        return probes.record(results, seconds, share)

    # --- the run -------------------------------------------------------------------------
    def run(self) -> dict:
        config = self.config
        log = MetricsLog(self.run_dir, config, self.total_steps, self.step, enabled=self.rank == 0)
        self._trim_keys()
        batches, consecutive, last = iter(self.loader), 0, {}
        self.probe_clock = time.perf_counter()  # a probe's cost: against the time since the last one (or this start)
        notes = {} if self.data_continues else {"data_restarted": True}  # on the first record after resuming
        try:
            while self.step < self.total_steps:
                record = self.train_step(batches) | notes
                consecutive = consecutive + 1 if record.get("skipped") else 0
                if consecutive >= config.robust.max_consecutive_skips:
                    log.log(record)
                    kept = ckpt.complete_checkpoints(self.run_dir)
                    raise TrainingStopped(
                        f"{consecutive} steps in a row had a non-finite loss or gradients (last: step {self.step}); "
                        f"stopping. Last good checkpoint: {kept[-1] if kept else 'none'}"
                    )
                if self.step % config.eval.interval == 0 or self.step == self.total_steps:
                    record |= held_out.evaluate(self)
                if self.probe_tasks and (self.step % config.eval.probe_interval == 0 or self.step == self.total_steps):
                    record |= self.probe()
                if (
                    self.step % config.logging.interval == 0
                    or record.get("skipped")
                    or "val_loss" in record
                    or "probe/seconds" in record
                    or self.step == 1
                    or notes
                ):
                    if self.genome_tally is not None:  # every rank logs at the same steps: one all-reduce
                        record |= self.genome_tally.record("genome")
                    log.log(record)
                notes = {}
                log.advance()
                last = record
                if self.step % config.checkpoint.interval == 0 or self.step == self.total_steps or self.stopping:
                    saved = self.save()
                if self.stopping and self.step < self.total_steps:
                    self._say(
                        f"{self.stop.reason or 'a stop asked for on another rank'}: saved step {self.step} to "
                        f"{saved} and stopped; the same command with --resume auto continues it"
                    )
                    return last | {"stopped": self.stop.reason or "signal"}
        finally:
            log.close()
        return last

    @property
    def stream_skipped(self) -> int:
        """Corrupt samples read around (``data.on_error=skip``) since the run began."""
        return self.stream_skipped_before + self.loader.skipped

    def _genome_tokens(self) -> list[int] | None:
        if self.genome_tally is None:
            return None
        self.genome_tally.flush()  # every rank saves at the same step
        return self.genome_tally.tokens

    def save(self) -> Path:
        meta = {
            "tokens_seen": self.tokens_seen,
            "skipped_steps": self.skipped_steps,
            "stream": self.loader.state_dict(),
            "stream_skipped": self.stream_skipped,
            "genome_tokens": self._genome_tokens(),
            "data": {
                "path": self.config.data.path,
                "plan_fingerprint": self.manifest.plan_fingerprint,
                "seq_len": self.manifest.seq_len,
            },
            "model": self.model_config.model_dump(),
        }
        files = {
            "config.yaml": self.run_dir / "config.yaml",
            "model.yaml": self.run_dir / "model.yaml",
            "tokenizer": self.run_dir / "tokenizer",
        }
        saved = ckpt.save(self.engine, self.run_dir, self.step, meta, files, self.config.checkpoint.keep_last)
        self._say(f"saved step {self.step}: {saved}")
        return saved

    def _write_run_files(self) -> None:
        if self.rank == 0:
            import json

            (self.run_dir / "config.yaml").write_text(self.config.to_yaml())
            (self.run_dir / "model.yaml").write_text(self.model_config.to_yaml())
            (self.run_dir / "deepspeed.json").write_text(json.dumps(self.ds_config, indent=1))
            if not (self.run_dir / "tokenizer").exists():
                self.tokenizer.save(self.run_dir / "tokenizer")
        dist.barrier()

    def _trim_keys(self) -> None:
        path = self.run_dir / f"sample-keys-rank{self.rank}.txt"
        if self.config.logging.record_sample_keys and path.exists():
            kept = [line for line in path.read_text().splitlines() if int(line.split("\t")[0]) <= self.step]
            path.write_text("".join(line + "\n" for line in kept))
