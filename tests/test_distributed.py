"""compress/distributed.py and data-parallel training: disjoint epoch shards, 2-process gloo distillation
on CPU against the single-process run, DDP keeping every process's student and online teacher in step,
rank-0-only writing, and a diverging loss stopping every process with the same error."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from click.testing import CliRunner

from compress.checkpoint import load_model
from compress.cli import main
from compress.data import DataConfig, load_dataset
from compress.distillation import distill
from compress.distributed import Context, epoch_indices, teardown, without_option
from compress.errors import CompressError
from compress.train import TrainConfig, checkpointing, evaluate, fit, seed_everything
from compress.zoo import ModelSpec, build_model

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("size", [10, 1437])
def test_epoch_shards_are_disjoint_and_cover_the_split(size):
    shards = [epoch_indices(size, seed=0, epoch=3, ctx=Context(rank, 2)) for rank in range(2)]
    assert len(shards[0]) == len(shards[1]) == -(-size // 2)  # equal shards: every process runs the same steps
    combined = np.concatenate(shards)
    assert set(combined.tolist()) == set(range(size))  # together they cover the split ...
    assert len(combined) - len(set(combined.tolist())) == size % 2  # ... overlapping only by DistributedSampler's padding
    single = epoch_indices(size, seed=0, epoch=3, ctx=Context())
    assert sorted(single.tolist()) == list(range(size))
    # rank r takes every 2nd sample of the single-process order: step k's two half-batches are its batch k
    np.testing.assert_array_equal(shards[0][: size // 2], single[0::2][: size // 2])
    np.testing.assert_array_equal(shards[1][: size // 2], single[1::2][: size // 2])
    assert not np.array_equal(single, epoch_indices(size, seed=0, epoch=4, ctx=Context()))  # reshuffled every epoch
    np.testing.assert_array_equal(single, epoch_indices(size, seed=0, epoch=3, ctx=Context()))


def test_without_option_drops_nproc_and_its_value():
    args = ["distill", "--nproc", "2", "--out", "s", "--nproc=4", "--set", "distill.train.epochs=1"]
    assert without_option(args, "--nproc") == ["distill", "--out", "s", "--set", "distill.train.epochs=1"]


def test_nproc_must_be_positive(tmp_path):
    result = CliRunner().invoke(main, ["distill", "--teacher", "t.pt", "--data", "digits", "--out", str(tmp_path / "s"),
                                       "--nproc", "0"])
    assert result.exit_code == 2 and "error: --nproc must be >= 1, got 0" in result.output


DISTILL_SETTINGS = ["--data", "digits", "--set", 'distill.student.arch="mlp"', "--set", "distill.student.width=0.5",
                    "--set", "distill.train.epochs=6", "--set", 'distill.train.optimizer="adamw"',
                    "--set", "distill.train.lr=0.003", "--set", "distill.train.augment=false"]


@pytest.mark.slow
def test_two_process_gloo_distillation_matches_single_process(tmp_path, mlp_teacher_path, digits):
    args = ["distill", "--teacher", str(mlp_teacher_path), *DISTILL_SETTINGS]
    two = subprocess.run([sys.executable, "-m", "compress", *args, "--out", str(tmp_path / "two"), "--nproc", "2"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    single = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "one")])
    assert single.exit_code == 0, single.output

    assert "distill: data-parallel over 2 processes (gloo)" in two.stdout + two.stderr
    two_metrics = json.loads(two.stdout[two.stdout.index("{"):])  # rank 0 alone prints the metrics ...
    one_metrics = json.loads(single.stdout[single.stdout.index("{"):])
    assert two.stdout.count('"init"') == 1
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["manifest.json", "student.safetensors"]  # ... and writes the artifact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # no staging or checkpoint folder left
    # Each process took half of every batch: the same optimisation as one process, up to BN-free float rounding.
    two_student, one_student = two_metrics["student"], one_metrics["student"]
    assert abs(two_student["test_accuracy"] - one_student["test_accuracy"]) <= 0.03
    assert abs(two_student["val_accuracy"] - one_student["val_accuracy"]) <= 0.03
    for two_epoch, one_epoch in zip(two_student["history"], one_student["history"]):
        assert two_epoch["loss"] == pytest.approx(one_epoch["loss"], rel=0.1)
    # The validation accuracy summed over the two shards equals the saved student's accuracy on the whole split.
    saved = load_model(tmp_path / "two" / "student.safetensors")
    assert evaluate(saved, digits.val) == pytest.approx(two_student["val_accuracy"], abs=1e-12)
    assert evaluate(saved, digits.test) == pytest.approx(two_student["test_accuracy"], abs=1e-12)
    assert two_student["test_accuracy"] > 0.85


def _ddp_worker(rank: int, store: str, out_dir: str) -> None:
    """One process of a 2-process gloo group: online distillation of a BatchNorm CNN student with an MLP
    teacher (both trained, both DDP-wrapped), then a learning rate that makes the loss diverge."""
    out = Path(out_dir)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        data = load_dataset(DataConfig(source="digits"))
        seed_everything(rank)  # different initial weights per process: DDP must start both from rank 0's
        student = build_model(ModelSpec("resnet", 0.25, 8), data.input_shape, data.num_classes)
        teacher = build_model(ModelSpec("mlp", 0.5), data.input_shape, data.num_classes)
        torch.save(student.state_dict(), out / f"init{rank}.pt")
        train = TrainConfig(epochs=2, batch_size=64, lr=0.05)
        with checkpointing(out / "checkpoints", key="ddp-test"):
            result = distill(student, teacher, data, train, 4.0, 0.9, mode="online")
        torch.save({"student": student.state_dict(), "teacher": teacher.state_dict(), "result": asdict(result)},
                   out / f"rank{rank}.pt")

        def loss_fn(x, y):
            logits = student(x)
            return F.cross_entropy(logits, y), logits

        try:
            fit(student, data, TrainConfig(epochs=1, lr=1e12, grad_clip=0.0), loss_fn, "diverge")
        except CompressError as exc:
            (out / f"diverged{rank}.txt").write_text(str(exc))
    except BaseException:
        teardown(synchronize=False)
        raise
    teardown()


@pytest.mark.slow
def test_ddp_keeps_processes_in_step_and_stops_them_together_on_nan(tmp_path):
    spawned = mp.start_processes(_ddp_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + 240
    while not spawned.join(timeout=5):
        if time.monotonic() > deadline:  # a process waiting forever in a collective is the bug this test catches
            for process in spawned.processes:
                process.kill()
            pytest.fail("the data-parallel processes did not finish: one is stuck in a collective")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    init1 = torch.load(tmp_path / "init1.pt", weights_only=True)
    for part in ("student", "teacher"):
        for name, tensor in ranks[0][part].items():
            assert torch.equal(tensor, ranks[1][part][name]), f"{part}.{name} differs between processes"
    assert any(not torch.equal(init1[name], ranks[1]["student"][name]) for name in init1)
    assert ranks[0]["result"] == {**ranks[1]["result"], "wall_s": ranks[0]["result"]["wall_s"]}
    assert ranks[0]["result"]["processes"] == 2 and len(ranks[0]["result"]["history"]) == 2
    # Rank 0 alone wrote the checkpoint; it holds every process's RNG states.
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["distill.pt"]
    checkpoint = torch.load(tmp_path / "checkpoints" / "distill.pt", weights_only=True)
    assert checkpoint["world_size"] == 2 and len(checkpoint["rng"]) == 2 and checkpoint["epoch"] == 2
    for rank in range(2):
        message = (tmp_path / f"diverged{rank}.txt").read_text()
        assert "training stopped; lower the learning rate" in message and "epoch 1" in message
