"""Determinism, per-epoch checkpoints and --resume, the run-folder lock between two processes, and a
pipeline SIGKILLed during distillation and during quantization, resumed to an intact run identical in
configuration (and, on one machine, in results) to an uninterrupted one."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from compress import distributed
from compress.checkpoint import load_model
from compress.cli import main
from compress.config import load_config
from compress.fsutil import run_lock, sha256
from compress.onnxutil import make_session, predict
from compress.pipeline import run_pipeline
from compress.train import TrainConfig, fit, seed_everything
from compress.zoo import ModelSpec, build_model

ROOT = Path(__file__).resolve().parent.parent


def _train(data, cfg: TrainConfig, checkpoint_dir=None):
    seed_everything(cfg.seed)
    model = build_model(ModelSpec("mlp", 0.5), data.input_shape, data.num_classes)

    def loss_fn(x, y):
        logits = model(x)
        return F.cross_entropy(logits, y), logits

    return model, fit(model, data, cfg, loss_fn, "mlp", checkpoint_dir=checkpoint_dir)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


CFG = TrainConfig(epochs=4, optimizer="adamw", lr=0.003)


def test_same_seed_same_metrics_on_cpu(digits):
    first_model, first = _train(digits, CFG)
    second_model, second = _train(digits, CFG)
    assert first.history == second.history and first.best_epoch == second.best_epoch
    assert _same_weights(first_model, second_model)
    _, other_seed = _train(digits, TrainConfig(epochs=4, optimizer="adamw", lr=0.003, seed=1))
    assert other_seed.history != first.history


def _interrupt_at_epoch(monkeypatch, epoch: int) -> None:
    """Raise KeyboardInterrupt (what Ctrl-C does) when training reaches ``epoch``."""
    real = distributed.epoch_indices

    def indices(size, seed, current, ctx):
        if current == epoch:
            raise KeyboardInterrupt
        return real(size, seed, current, ctx)

    monkeypatch.setattr(distributed, "epoch_indices", indices)


@pytest.mark.slow
def test_fit_resumes_exactly_from_the_last_epoch_checkpoint(digits, tmp_path, monkeypatch):
    reference_model, reference = _train(digits, CFG)
    with monkeypatch.context() as patch:
        _interrupt_at_epoch(patch, 3)
        with pytest.raises(KeyboardInterrupt):
            _train(digits, CFG, tmp_path)
    checkpoint = torch.load(tmp_path / "mlp.pt", weights_only=True)
    assert checkpoint["epoch"] == 2 and len(checkpoint["history"]) == 2
    assert {"modules", "optimizer", "scheduler", "rng", "best_states", "best_accuracy", "best_loss", "best_epoch",
            "elapsed_s"} <= set(checkpoint)
    assert [p.name for p in tmp_path.iterdir()] == ["mlp.pt"]  # written atomically: no temporary file left

    resumed_model, resumed = _train(digits, CFG, tmp_path)
    assert resumed.resumed_after_epoch == 2
    assert resumed.history == reference.history and resumed.best_epoch == reference.best_epoch
    assert _same_weights(resumed_model, reference_model)
    # A fit of the same name and config that starts from other weights does not pick up this checkpoint ...
    torch.manual_seed(123)
    other_start = build_model(ModelSpec("mlp", 0.5), digits.input_shape, digits.num_classes)

    def other_loss(x, y):
        logits = other_start(x)
        return F.cross_entropy(logits, y), logits

    result = fit(other_start, digits, CFG, other_loss, "mlp", checkpoint_dir=tmp_path)
    assert result.resumed_after_epoch == 0 and len(result.history) == 4
    # ... nor does one with another config: training starts over.
    _, other = _train(digits, TrainConfig(epochs=4, optimizer="adamw", lr=0.002), tmp_path)
    assert other.resumed_after_epoch == 0


TEACHER_ARGS = ["teacher", "--data", "digits", "--set", 'teacher.source="train"', "--set", 'teacher.model.arch="mlp"',
                "--set", "teacher.train.epochs=4", "--set", 'teacher.train.optimizer="adamw"',
                "--set", "teacher.train.lr=0.003"]


@pytest.mark.slow
def test_cli_resume_continues_a_killed_training(tmp_path, monkeypatch):
    runner = CliRunner()
    out = tmp_path / "t"
    with monkeypatch.context() as patch:
        _interrupt_at_epoch(patch, 3)
        interrupted = runner.invoke(main, [*TEACHER_ARGS, "--out", str(out)])
    assert interrupted.exit_code == 130 and "rerun with --resume" in interrupted.output
    assert not out.exists() and (tmp_path / ".t.checkpoints" / "teacher.pt").is_file()

    again = runner.invoke(main, [*TEACHER_ARGS, "--out", str(out)])
    assert again.exit_code == 2
    assert "holds checkpoints of an unfinished run: pass --resume to continue it or --force to start over" in again.output

    resumed = runner.invoke(main, [*TEACHER_ARGS, "--out", str(out), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "teacher: resuming after epoch 2/4" in resumed.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]  # checkpoints go once the command succeeds
    reference = runner.invoke(main, [*TEACHER_ARGS, "--out", str(tmp_path / "reference")])
    assert reference.exit_code == 0
    assert _same_weights(load_model(out / "teacher.safetensors"), load_model(tmp_path / "reference" / "teacher.safetensors"))


def test_lock_refuses_a_second_process_and_outlives_a_killed_one(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\nfrom compress.fsutil import run_lock\n"
         "with run_lock(Path(sys.argv[1])):\n    print('locked', flush=True)\n    time.sleep(120)\n", str(run_dir)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = CliRunner().invoke(main, ["pipeline", "--out", str(run_dir), "--data", "digits"])
        assert result.exit_code == 2
        assert f"error: {run_dir} is in use by another compress process (pid {holder.pid})" in result.output
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The killed holder's lock file is still there; a new run sees its process is gone and takes over.
    assert (run_dir / ".lock").read_text() == str(holder.pid)
    with run_lock(run_dir):
        assert (run_dir / ".lock").read_text() == str(os.getpid())
    assert not (run_dir / ".lock").exists()


# The quick preset (PipelineConfig.quick) with enough distillation epochs to be killed in the middle.
PIPELINE_OVERRIDES = [
    "data.source=digits", "teacher.source=train", 'teacher.model.arch="mlp"', "teacher.train.epochs=4",
    'teacher.train.optimizer="adamw"', "teacher.train.lr=0.003", 'distill.student.arch="mlp"',
    "distill.student.width=0.5", "distill.train.epochs=10", "distill.train.batch_size=32",
    'distill.train.optimizer="adamw"', "distill.train.lr=0.003", "prune.finetune.epochs=2",
    'prune.finetune.optimizer="adamw"', "prune.finetune.lr=0.002", "prune.round_to=1", "prune.amount=0.3",
    "prune.protect_first=false", "quantize.calibration_samples=32", "export.parity_samples=64",
    "benchmark.min_runs=20", "benchmark.min_seconds=0.05", 'benchmark.warmup="fixed"', "benchmark.warmup_runs=5",
    "benchmark.cold_start=false", "benchmark.profile=false", "threads=1",
]
# Runs the real CLI, but stops inside the quantize stage once its int8 file is written in the stage's staging
# folder (and before the folder is swapped in), so the test can SIGKILL it there.
HANG_IN_QUANTIZE = """
import os, sys, time
from pathlib import Path
import stages.quantize as quantize_stage
real = quantize_stage.quantize
def quantize_then_wait(*args, **kwargs):
    metrics = real(*args, **kwargs)
    Path(os.environ["QUANTIZED_MARKER"]).touch()
    time.sleep(600)
    return metrics
quantize_stage.quantize = quantize_then_wait
from compress.cli import main
main()
"""


def _pipeline_args(run_dir: Path, resume: bool) -> list[str]:
    args = ["pipeline", "--out", str(run_dir)] + [item for o in PIPELINE_OVERRIDES for item in ("--set", o)]
    return args + (["--resume"] if resume else [])


def _start(script: Path, run_dir: Path, resume: bool, log: Path, marker: Path) -> subprocess.Popen:
    with open(log, "w") as handle:
        return subprocess.Popen([sys.executable, str(script), *_pipeline_args(run_dir, resume)], cwd=ROOT,
                                stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, "QUANTIZED_MARKER": str(marker)})


def _kill_when(process: subprocess.Popen, ready, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"the pipeline ended (exit {process.returncode}) before the moment to kill it:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting for the moment to kill the pipeline:\n{log.read_text()[-3000:]}")
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()


def _snapshot(run_dir: Path, stages: list[str]) -> dict[str, tuple[int, str]]:
    """mtime (ns) and sha256 of every file of the given stage folders."""
    return {str(path.relative_to(run_dir)): (path.stat().st_mtime_ns, sha256(path))
            for stage in stages for path in sorted((run_dir / stage).rglob("*")) if path.is_file()}


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


@pytest.mark.slow
def test_pipeline_killed_in_distillation_and_in_quantization_resumes_intact(tmp_path, digits):
    run_dir, marker = tmp_path / "run", tmp_path / "quantized"
    script = tmp_path / "compress_hanging_in_quantize.py"
    script.write_text(HANG_IN_QUANTIZE)

    # 1. SIGKILL during distillation, as soon as its first epoch checkpoint exists.
    first = _start(script, run_dir, False, tmp_path / "first.log", marker)
    _kill_when(first, lambda: (run_dir / ".checkpoints" / "distill" / "distill.pt").is_file(), tmp_path / "first.log")
    assert list(_manifest(run_dir)["stages"]) == ["teacher"] and not (run_dir / "distill").exists()
    teacher_files = _snapshot(run_dir, ["teacher"])
    refused = CliRunner().invoke(main, _pipeline_args(run_dir, resume=False))  # the killed run's lock is stale
    assert refused.exit_code == 2 and "already holds an unfinished run: pass --resume to continue it" in refused.output

    # 2. --resume reuses the teacher, continues distillation from its checkpoint; SIGKILL inside quantization.
    second = _start(script, run_dir, True, tmp_path / "second.log", marker)
    _kill_when(second, marker.exists, tmp_path / "second.log")
    log = (tmp_path / "second.log").read_text()
    assert "[teacher] unchanged since the last run: reused" in log
    assert "distill: resuming after epoch" in log and "distill epoch 1/10" not in log
    assert list(_manifest(run_dir)["stages"]) == ["teacher", "distill", "prune", "export"]
    assert not (run_dir / "quantize").exists() and list(run_dir.glob(".quantize.*"))  # int8 written, never swapped in
    assert _snapshot(run_dir, ["teacher"]) == teacher_files
    finished = _snapshot(run_dir, ["teacher", "distill", "prune", "export"])

    # 3. --resume again, with the real CLI: only quantize and benchmark run.
    third = subprocess.run([sys.executable, "-m", "compress", *_pipeline_args(run_dir, True)], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert _snapshot(run_dir, ["teacher", "distill", "prune", "export"]) == finished  # same mtime and sha256
    manifest = _manifest(run_dir)
    assert manifest["status"] == "complete"
    assert {name: stage["status"] for name, stage in manifest["stages"].items()} == {
        "teacher": "reused", "distill": "reused", "prune": "reused", "export": "reused", "quantize": "done",
        "benchmark": "done"}
    leftovers = sorted(p.name for p in run_dir.iterdir() if p.name.startswith("."))
    assert leftovers == []  # no lock, checkpoints, staging folders or temporary files
    for stage in manifest["stages"].values():
        for record in stage["outputs"].values():
            assert sha256(run_dir / record["path"]) == record["sha256"]
    for name in ("teacher", "student", "pruned", "int8"):  # valid ONNX that scores what the manifest says
        session = make_session(run_dir / manifest["results"][name]["path"])
        accuracy = float((predict(session, digits.test.x).argmax(1) == digits.test.y).mean())
        assert accuracy == pytest.approx(manifest["results"][name]["accuracy"], abs=1e-9), name

    # 4. Against an uninterrupted run: the same config, and on this machine bit-identical training.
    reference = run_pipeline(load_config(None, PIPELINE_OVERRIDES), tmp_path / "reference")
    assert manifest["config"] == reference["config"]
    for stage in ("teacher", "distill", "prune", "export"):
        # The fingerprint hashes the stage's config and its input files: equal means identical inputs.
        assert manifest["stages"][stage]["fingerprint"] == reference["stages"][stage]["fingerprint"], stage
    for name in ("teacher", "student", "pruned", "int8"):
        assert manifest["results"][name]["accuracy"] == reference["results"][name]["accuracy"], name
