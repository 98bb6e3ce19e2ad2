"""Training under the real launchers (deepspeed; torchrun where the launcher is not the subject) on CPU (gloo,
2 processes) on E. coli shards.

ZeRO-2 and ZeRO-3 runs whose loss falls; a ZeRO-3 run killed while saving resumes with the same
losses step for step; 2 → 1 → 2 processes (with a kill mid-conversion) continue the data with
nothing repeated; NaN injection; two torchrun "nodes"; decoder-1.5b constructed partitioned under
ZeRO-3. The other faults are in test_faults.py.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dnalm.data.manifest import Manifest
from dnalm.train import checkpoint as ckpt
from tests.conftest import PROBE_TASK, REPO, prep_folder, probe_settings, refused_by_cli
from tests.launching import (
    CONFIG,
    ENV,
    LAUNCHERS,
    deepspeed_cmd,
    free_port,
    launch_cmd,
    losses,
    metrics,
    overrides,
    run,
    run_spec,
    torchrun_cmd,
    train_runs,
)


@pytest.fixture(scope="module")
def data(ecoli128) -> Path:
    return ecoli128


# the ZeRO-3 decoder's linear probe (GUE prom_core_tata, where the team's data is) at steps 10, 20 and 30: ~1 s each
ZERO3_PROBES = probe_settings(rows="[200,100]", **{"eval.probe_interval": 10})


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """Uninterrupted 30-step runs, 2 processes: ZeRO-2 (encoder, MLM) under deepspeed, ZeRO-3 (decoder, CLM, with
    linear probes) under torchrun."""
    runs, ports = {}, []
    for stage, model, wandb, launcher in (
        ("zero2", "encoder-tiny", "disabled", "deepspeed"),
        ("zero3", "decoder-tiny", "offline", "torchrun"),
    ):
        folder = tmp_path_factory.mktemp(f"ref-{stage}") / "run"
        settings = {"model.name": model, "logging.wandb": wandb} | (ZERO3_PROBES if stage == "zero3" else {})
        cmd = launch_cmd(launcher, 2, data, folder, deepspeed=stage, **settings)
        done = run(cmd)
        runs[stage], runs[f"{stage}-console"] = folder, done.stdout + done.stderr
        ports.append(cmd[cmd.index("--master_port") + 1])
    # these runs' buffers, named deepspeed_*_ADDR_PORT_RANK (other workers' runs may hold theirs meanwhile)
    runs["shm_left"] = {p for p in Path("/dev/shm").glob("deepspeed_*") if p.name.split("_")[-2] in ports}
    return runs


def test_runs_leave_no_shared_memory_behind(reference):
    """DeepSpeed's CPU all-reduce buffers (66 MB a rank in /dev/shm) are removed when a run ends."""
    assert reference["shm_left"] == set()


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_loss_falls_and_checkpoints_are_complete(reference, stage):
    folder = reference[stage]
    curve = losses(folder)
    assert len(curve) == 30
    assert sum(list(curve.values())[-5:]) / 5 < 0.85 * sum(list(curve.values())[:3]) / 3
    records = metrics(folder)
    assert any("val_loss" in r for r in records)
    assert {r["val_windows"] for r in records if "val_loss" in r} == {8 * 4 * 2}  # eval.batches × micro_batch × ranks
    assert ("val_masked_accuracy" in records[-1]) == (stage == "zero2")
    trained = [r for r in records if "loss" in r]
    if stage == "zero2":  # MLM: the share of (nucleotide) tokens that were targets, per view; 512 tokens a step
        rates = [r["target_rate"][0] for r in trained if len(r["target_rate"]) == 1]
        assert len(rates) == len(trained) and 0.10 < sum(rates) / len(rates) < 0.17 and max(rates) < 0.3
    else:
        assert not any("target_rate" in r for r in trained)
    complete = ckpt.complete_checkpoints(folder)
    assert [p.name for p in complete] == ["step-10", "step-20", "step-30"]
    meta = ckpt.read_meta(complete[-1])
    assert meta["world_size"] == 2 and meta["stream"]["index"] == 240
    for name in ("config.yaml", "model.yaml", "tokenizer", "rng-rank0.pt", "rng-rank1.pt", "state"):
        assert (complete[-1] / name).exists()
    assert torch.load(complete[-1] / "rng-rank1.pt", weights_only=True)["torch"].dtype == torch.uint8
    if stage == "zero3":  # wandb logged offline: no network, no login
        assert list((folder / "wandb").glob("offline-run-*"))


def test_a_run_says_what_it_does_once_and_nothing_else(reference):
    """The console of a 2-process run under the deepspeed launcher (stderr is a pipe, so lines, not a bar): rank 0's
    start line, a loss line a logged step, each checkpoint, and where the run went; no DeepSpeed or torch chatter."""
    console = reference["zero2-console"]
    lines = console.splitlines()
    start = [line for line in lines if line.startswith("dnalm: training ")]
    assert (
        len(start) == 1
        and "encoder-tiny (0.4M parameters)" in start[0]
        and "8 windows x 128 tokens = 1,024 "
        "tokens a step, steps 1-30; 2 processes, ZeRO-2, sequence parallel 1, fp32; fresh start"
        in start[0]
    ), start
    steps = [line for line in lines if line.startswith("step ")]
    assert [int(line.split()[1].split("/")[0]) for line in steps] == list(range(1, 31)) and "| loss " in steps[-1]
    assert "| eta " in steps[1] and "val_loss" in steps[9]
    folder = reference["zero2"]
    assert [line for line in lines if line.startswith("dnalm: saved step")] == [
        f"dnalm: saved step {n}: {folder / 'checkpoints' / f'step-{n}'}" for n in (10, 20, 30)
    ]
    final = [line for line in lines if line.startswith("dnalm: finished step 30 of 30")]
    assert len(final) == 1 and f"loss plot {folder / 'loss.png'}" in final[0] and (folder / "loss.png").is_file()
    for chatter in ("built successfully", "is deprecated", "return func(*args"):
        assert chatter not in console, chatter


def test_a_refusal_under_the_launcher_is_said_once_and_leaves_no_run_folder(data, tmp_path):
    done = run(deepspeed_cmd(2, data, tmp_path / "run", **{"parallel.sequence": 3}), expect_ok=False)
    said = [line for line in (done.stdout + done.stderr).splitlines() if "dnalm: error" in line]
    assert done.returncode != 0 and said == ["dnalm: error: parallel.sequence 3 does not divide the world size 2"], said
    assert not (tmp_path / "run").exists()


def test_offload_trains_and_resumes(data, tmp_path):
    """ZeRO-3 with the optimizer offloaded: 6 steps, then a second training in the same launch resumes its checkpoint
    for 6 more (the state comes from disk: each training builds its own engine)."""
    folder = tmp_path / "run"
    settings = {"deepspeed": "zero3-offload", "checkpoint.interval": 6, "eval.interval": 6}
    steps = [run_spec(data, folder, **settings, **{"budget.steps": n}) for n in (6, 12)]
    done = train_runs(2, steps, tmp_path / "runs.json")
    assert f"; resuming step 6 from {folder / 'checkpoints' / 'step-6'};" in done.stderr
    curve = losses(folder)
    assert sorted(curve) == list(range(1, 13)) and curve[12] < curve[1]
    assert ckpt.read_meta(ckpt.complete_checkpoints(folder)[-1])["step"] == 12


def test_zero3_killed_while_saving_resumes_with_the_same_losses(reference, data, tmp_path):
    """SIGKILL of every rank and the launcher once each rank's ZeRO-3 shard of step 20 is written. The resumed run
    logs the uninterrupted run's linear probes too: the same rows and weights, the same dev MCC and accuracy."""
    folder = tmp_path / "run"
    cmd = deepspeed_cmd(2, data, folder, deepspeed="zero3", **{"model.name": "decoder-tiny"}, **ZERO3_PROBES)
    assert run(cmd, expect_ok=False, faults="kill@save.written:20").returncode == -9
    assert (folder / "checkpoints" / ".step-20.tmp" / "state").is_dir()
    assert [p.name for p in ckpt.complete_checkpoints(folder)] == ["step-10"]
    done = run(cmd)
    assert f"; resuming step 10 from {folder / 'checkpoints' / 'step-10'};" in done.stderr
    assert losses(folder) == losses(reference["zero3"])
    assert probe_scores(folder) == probe_scores(reference["zero3"])
    assert sorted(probe_scores(folder)) == ([10, 20, 30] if PROBE_TASK.exists() else [])
    assert "dnalm: probe at step 20: prom_core_tata dev MCC" in done.stderr or not PROBE_TASK.exists()
    assert [p.name for p in ckpt.complete_checkpoints(folder)] == ["step-10", "step-20", "step-30"]
    assert not list((folder / "checkpoints").glob(".step-*"))


def probe_scores(run_dir: Path) -> dict[int, tuple[float, float]]:
    key = "probe/prom_core_tata"
    return {r["step"]: (r[f"{key}/mcc"], r[f"{key}/accuracy"]) for r in metrics(run_dir) if f"{key}/mcc" in r}


def test_world_size_change_continues_the_data(data, tmp_path):
    """2 processes for 10 steps, 1 for the next 10 (dnalm train), 2 again: every sample once, in order. The last change
    waits 20 s for rank 0's conversion with a collective timeout of 10 s: rank 1 polls for it outside any collective.
    (Masks are drawn per data-parallel rank, so losses across world sizes are not comparable step for step; across S
    they are: tests/test_sequence_parallel.py.)"""
    folder = tmp_path / "run"
    keys = {"logging.record_sample_keys": "true"}
    run(torchrun_cmd(2, data, folder, **keys, **{"budget.steps": 10}))
    one_process = [sys.executable, "-m", "dnalm", "train", "--config", str(CONFIG), *overrides(data, folder, **keys)]
    # killed half-way through the conversion to a universal checkpoint: nothing there is trusted later
    assert run(one_process + ["budget.steps=20"], expect_ok=False, faults="kill@universal.converting").returncode == -9
    step10 = folder / "checkpoints" / "step-10"
    assert (
        any((step10 / f".{ckpt.UNIVERSAL_TAG}.tmp" / "zero").iterdir()) and not (step10 / ckpt.UNIVERSAL_TAG).exists()
    )
    run(one_process + ["budget.steps=20"])
    run(
        torchrun_cmd(2, data, folder, **keys, **{"robust.collective_timeout_s": 10}),
        faults="sleep=20@universal.converted",
    )
    records = metrics(folder)
    assert [r["data_index"] for r in records] == [8 * s for s in range(1, 31)]
    assert [r["step"] for r in records] == list(range(1, 31))
    consumed = [
        line.split("\t")[1] for r in (0, 1) for line in (folder / f"sample-keys-rank{r}.txt").read_text().splitlines()
    ]
    assert len(consumed) == 240 and len(set(consumed)) == 240
    assert ckpt.read_meta(folder / "checkpoints" / "step-20")["world_size"] == 1
    assert (step10 / ckpt.UNIVERSAL_TAG / ckpt.MARKER).is_file() and not (
        step10 / f".{ckpt.UNIVERSAL_TAG}.tmp"
    ).exists()
    assert all(r["loss"] < 2.5 for r in records)


def test_checkpoint_universal_converts_ahead_of_a_relaunch(reference, tmp_path):
    """`dnalm checkpoint universal RUN --workers 2`: DeepSpeed's parallel extract and merge, marked complete; `dnalm
    bench universal` times it with 1 and 2 workers; a folder that is no run or checkpoint is refused in one line."""
    done = run([sys.executable, "-m", "dnalm", "checkpoint", "universal", str(reference["zero2"]), "--workers", "2"])
    step30 = reference["zero2"] / "checkpoints" / "step-30"
    assert (
        step30 / ckpt.UNIVERSAL_TAG / ckpt.MARKER
    ).is_file() and f"wrote {step30 / ckpt.UNIVERSAL_TAG}" in done.stdout
    assert f"converting {step30} with 2 workers" in done.stderr
    assert any((step30 / ckpt.UNIVERSAL_TAG / "zero").iterdir())
    # the bench's measurement, on this checkpoint: each worker count converts it afresh
    bench = run(
        [
            sys.executable,
            "-m",
            "dnalm",
            "bench",
            "universal",
            "--checkpoint",
            str(reference["zero2"]),
            "--workers",
            "1,2",
            "--repeats",
            "1",
            "--out",
            str(tmp_path / "bench"),
        ]
    )
    result = json.loads((tmp_path / "bench" / "universal.json").read_text())
    assert [r["workers"] for r in result["rows"]] == [1, 2] and all(r["seconds"] > 0 for r in result["rows"])
    assert all(r["peak_resident_gb"] > 0 for r in result["rows"]) and (tmp_path / "bench" / "universal.png").is_file()
    assert result["decoder_1_5b_extrapolated"][0]["seconds"] > result["rows"][0]["seconds"], bench.stdout
    assert (step30 / ckpt.UNIVERSAL_TAG / ckpt.MARKER).is_file()
    (tmp_path / "empty").mkdir()
    refused = refused_by_cli("checkpoint", "universal", tmp_path / "empty")
    assert refused.returncode == 1 and "neither a run folder (no checkpoints/) nor a checkpoint" in refused.stderr
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    refused = refused_by_cli("checkpoint", "universal", tmp_path / "run")
    assert refused.returncode == 1 and "the run has no complete checkpoint yet" in refused.stderr


def test_nan_steps_are_skipped_then_the_run_stops(data, tmp_path):
    folder = tmp_path / "run"
    done = run(
        torchrun_cmd(
            2, data, folder, **{"robust.inject_nan_at_steps": "[5,12,13,14]", "robust.max_consecutive_skips": 3}
        ),
        expect_ok=False,
    )
    assert done.returncode != 0
    assert "3 steps in a row had a non-finite loss" in done.stdout + done.stderr
    records = {r["step"]: r for r in metrics(folder)}
    assert records[5].get("skipped") and "loss" not in records[5] and "loss" in records[6]
    assert records[14]["skipped_steps"] == 4
    assert [p.name for p in ckpt.complete_checkpoints(folder)] == ["step-10"], "the last good checkpoint stays"


def test_a_window_lost_mid_accumulation_trains_like_one_lost_at_its_start(data, tmp_path, stage="zero3"):
    """With 2 micro-batches per step, NaN at the second must discard the first's gradients completely; a step whose
    gradients (not loss) are infinite is skipped the same way. On ZeRO-3, whose partitioned gradient buffers are the
    harder case (the NaN-step test covers the discard on ZeRO-2). Two runs that must train alike:

    - lost at the start: NaN at the first micro-batch of step 5; a finite loss with infinite gradients at step 8
      (rank 0, every micro-batch), which DeepSpeed's grad-norm check must drop;
    - lost midway: NaN at the second micro-batch of steps 5 and 8.
    """
    common = {"batch.global_batch": 16, "budget.steps": 9}
    runs = {
        "start": {
            "robust.inject_nan_at_steps": "[5]",
            "robust.inject_nan_micro_batch": 0,
            "robust.inject_inf_grad_at_steps": "[8]",
        },
        "midway": {"robust.inject_nan_at_steps": "[5,8]", "robust.inject_nan_micro_batch": 1},
    }
    train_runs(
        2,
        [run_spec(data, tmp_path / name, deepspeed=stage, **common, **faults) for name, faults in runs.items()],
        tmp_path / "runs.json",
    )
    start, midway = losses(tmp_path / "start"), losses(tmp_path / "midway")
    assert sorted(start) == [1, 2, 3, 4, 6, 7, 9]
    assert start == midway
    records = {r["step"]: r for r in metrics(tmp_path / "start")}
    assert records[5]["skipped"] and records[8]["skipped"] and records[8]["skip_reason"] == "non-finite gradients"
    assert records[9]["skipped_steps"] == 2


def test_two_torchrun_nodes_read_disjoint_data_and_write_one_checkpoint(data, tmp_path):
    folder, port = tmp_path / "run", free_port()
    args = [
        "--config",
        str(CONFIG),
        *overrides(
            data,
            folder,
            **{
                "budget.steps": 10,
                "logging.record_sample_keys": "true",
                "checkpoint.interval": 5,
                "checkpoint.keep_last": 1,
            },
        ),
    ]
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--node_rank",
                str(rank),
                "--nproc_per_node",
                "1",
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                str(port),
                str(REPO / "launch" / "train.py"),
                *args,
            ],
            env=ENV,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), outputs[0][-2000:] + outputs[1][-2000:]
    first, second = (
        {line.split("\t")[1] for line in (folder / f"sample-keys-rank{r}.txt").read_text().splitlines()} for r in (0, 1)
    )
    assert len(first) == len(second) == 40 and not first & second
    kept = ckpt.complete_checkpoints(folder)
    assert [p.name for p in kept] == ["step-10"], "keep_last 1 keeps the newest complete checkpoint only"
    final = kept[-1]
    assert ckpt.read_meta(final)["world_size"] == 2
    assert (final / "rng-rank0.pt").exists() and (final / "rng-rank1.pt").exists()


# an encoder under ZeRO-2 compiled whole (DeepSpeed's engine.compile), a decoder under ZeRO-3 compiled block by block
# (the mode made for ZeRO-3's hooks): each Inductor compilation costs ~15 s on this CPU, so one case of each
COMPILED = [
    {"name": "encoder-zero2", "model": "encoder-tiny", "deepspeed": "zero2", "compile": "model"},
    {"name": "decoder-zero3", "model": "decoder-tiny", "deepspeed": "zero3", "compile": "blocks", "resume": True},
]


def test_compiled_training_matches_eager_and_resumes_uncompiled(data, tmp_path):
    """An encoder under ZeRO-2 compiled whole (compile=model) and a decoder under ZeRO-3 compiled block by block
    (compile=blocks: each block's forward, ZeRO-3 gathering a block's parameters around it, one graph for all blocks)
    train 3 steps to eager's losses; the compiled decoder's checkpoint resumes uncompiled with its next loss."""
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps(COMPILED))
    done = subprocess.run(
        [sys.executable, str(REPO / "tests" / "scripts" / "compiled_step.py"), str(data), str(tmp_path), str(cases)],
        env=ENV,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for case in COMPILED:
        runs = result[case["name"]]
        assert runs["eager"]["compiled"] == {"engine": False, "blocks": False, "graphs": 0}, case
        assert runs["compiled"]["compiled"]["engine" if case["compile"] == "model" else "blocks"], case
        assert 1 <= runs["compiled"]["compiled"]["graphs"] <= 4, (case, "one block graph, not a graph per layer")
        eager, compiled = runs["eager"]["losses"], runs["compiled"]["losses"]
        assert sorted(compiled) == ["1", "2", "3"] and list(compiled.values()) == pytest.approx(
            list(eager.values()), rel=1e-4
        )
        if case.get("resume"):
            resumed = runs["resumed_uncompiled"]
            assert resumed["compiled"]["graphs"] == 0 and resumed["losses"]["3"] == pytest.approx(
                compiled["3"], rel=1e-4
            )


def test_zero3_builds_the_same_initial_weights_as_a_plain_build():
    """Every initialisation reaches ZeRO-3's partitioned parameters (none is lost to an empty partitioned tensor)."""
    done = subprocess.run(
        [sys.executable, str(REPO / "tests" / "scripts" / "zero3_init.py"), "encoder-tiny", "decoder-tiny", "cnn-base"],
        env=ENV,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "encoder-tiny": 0.0,
        "decoder-tiny": 0.0,
        "cnn-base": 0.0,
    }


def test_decoder_1_5b_is_built_partitioned_under_zero3(tmp_path):
    out = tmp_path / "partition"
    run([*LAUNCHERS["torchrun"](2), "-m", "dnalm.train.partition", "decoder-1.5b", str(out)])
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank in ranks:
        assert 1.4e9 < rank["total_parameters"] < 1.6e9
        assert abs(rank["held_fraction"] - 0.5) < 0.01
        assert rank["rss_gb"] < 0.8 * rank["full_fp32_gb"], "no rank holds a full copy"
    assert sum(r["held_parameters"] for r in ranks) == ranks[0]["total_parameters"]


def test_bad_configs_say_what_is_wrong(data, tmp_path, capsys):
    from dnalm.cli import main

    # settings refused while the config is read: in this process, before anything starts
    for extra, pattern in [
        (["optim.lr=-1"], "optim.lr=-1 (command line)"),
        (["budget.tokens=1000"], "exactly one of budget.steps and budget.tokens"),
        (["optim.lr"], "expected key.sub=value"),
        (["data.cache_limit=lots"], "data.cache_limit=lots (command line): 'lots' is not a size"),
        (["data.order=random"], "data.order=random (command line): Input should be 'global' or 'blocks'"),
    ]:
        assert main(["train", "--config", str(CONFIG), *overrides(data, tmp_path / "a"), *extra]) == 1
        assert pattern in capsys.readouterr().err, pattern
    # settings refused once the run starts: another process, the exit status `python -m dnalm` would have, one after
    # another (tests/scripts/refusals.py)
    cli = ["train", "--config", str(CONFIG)]
    damaged = tmp_path / "damaged"  # every training shard cut short: the first step fails, in its worker
    shutil.copytree(data, damaged)
    for shard in Manifest.load(damaged).splits["train"].shards:
        (damaged / shard.path).write_bytes((damaged / shard.path).read_bytes()[:5_000])
    probe_task = tmp_path / "probe-task"  # a probe task without its dev.csv
    probe_task.mkdir()
    (probe_task / "train.csv").write_text("sequence,label\nACGTACGT,0\nTTTTAAAA,1\n")
    cases = [
        (
            overrides(data, tmp_path / "h", **{"eval.probes": f"[{probe_task}]"}),
            f"dnalm: error: eval.probes: {probe_task / 'dev.csv'}: no such file",
        ),
        (overrides(data, tmp_path / "b", **{"batch.global_batch": 6}), "not a multiple of micro_batch"),
        (overrides(data, tmp_path / "c", deepspeed="zero9"), "zero9.json not found"),
        (overrides(damaged, tmp_path / "i"), "does not match its checksum (5,000 bytes"),
        (overrides(tmp_path / "nodata", tmp_path / "d"), "no manifest"),
        (
            overrides(data, tmp_path / "e", **{"parallel.sequence": 3}),
            "parallel.sequence 3 does not divide the world size 1",
        ),
        (
            overrides(data, tmp_path / "g", precision="fp8"),
            "precision fp8: float8 training needs an NVIDIA GPU of compute "
            "capability 8.9 or newer (Ada, Hopper); this run is on cpu",
        ),
    ]
    cases.append((overrides(data, tmp_path / "f") + ["--resume", str(tmp_path)], "incomplete checkpoint"))
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps([cli + extra for extra, _ in cases]))
    done = run([sys.executable, str(REPO / "tests" / "scripts" / "refusals.py"), str(spec)])
    for (extra, pattern), (status, stderr) in zip(cases, json.loads(done.stdout.strip().splitlines()[-1]), strict=True):
        assert status == 1 and pattern in stderr, (pattern, stderr[-1500:])
        assert "Traceback" not in stderr and "Caught" not in stderr, stderr[-1500:]
        run_dir = next(x.split("=", 1)[1] for x in extra if x.startswith("run_dir="))
        assert not Path(run_dir).exists(), (pattern, "a failed start left its run folder")


def test_a_decoder_on_multi_view_data_is_refused(tmp_path, ecoli):
    fasta = tmp_path / "slice.fa"
    fasta.write_text(f">slice\n{ecoli.sequence[:200_000]}\n")
    views = prep_folder(tmp_path / "views", [fasta], ("nucleotide", "kmer:6"), seq_len=128, views=True)
    done = run(
        [
            sys.executable,
            "-m",
            "dnalm",
            "train",
            "--config",
            str(CONFIG),
            *overrides(views, tmp_path / "run", **{"model.name": "decoder-tiny"}),
        ],
        expect_ok=False,
    )
    assert done.returncode == 1 and "a decoder reads one view" in done.stderr


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "train").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_training_configs_are_valid(path):
    """Every experiment under configs/train/ validates, names a DeepSpeed JSON that exists and a model that builds."""
    from dnalm.models import build_model, get_config
    from dnalm.train.config import deepspeed_config, load_config

    config = load_config(path)
    deepspeed_config(config, world_size=2, on_gpu=False)
    build_model(get_config(config.model.name, **config.model.overrides), device="meta")
