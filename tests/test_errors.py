"""Each error case of the CLI: exit code 2, one line "error: ..." on stderr naming the problem, and no
half-written artifact left behind."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from compress.checkpoint import load_model
from compress.cli import main
from compress.data import DataConfig, load_dataset
from compress.errors import CompressError
from compress.onnxutil import load_onnx, resolve_provider
from compress.train import TrainConfig
from compress.zoo import ModelSpec
from stages.teacher import TeacherConfig, train_teacher


@pytest.fixture(scope="module")
def files(tmp_path_factory, cnn_onnx_path):
    """A good ONNX model, random bytes, a truncated copy, and a model built for 28x28 (mnist) inputs."""
    root = tmp_path_factory.mktemp("bad_inputs")
    good = cnn_onnx_path.read_bytes()
    (root / "random.onnx").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (root / "truncated.onnx").write_bytes(good[:len(good) // 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval(), (torch.zeros(1, 1, 28, 28),),
                          str(root / "mnist.onnx"), dynamo=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return {"good": cnn_onnx_path, "random": root / "random.onnx", "truncated": root / "truncated.onnx",
            "mnist": root / "mnist.onnx", "missing": root / "missing.onnx", "root": root}


def _fails(args, message: str):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0], lines[0]
    return result


BENCH_FAST = ["--set", "benchmark.min_runs=5", "--set", "benchmark.min_seconds=0", "--set", "benchmark.warmup=fixed",
              "--set", "benchmark.warmup_runs=1", "--set", "benchmark.profile=false", "--set", "benchmark.cold_start=false"]

CASES = {
    "benchmark missing file": (["benchmark", "{missing}", "--data", "digits"], "file not found: {missing}"),
    "quantize missing file": (["quantize", "{missing}", "--data", "digits", "--out", "{out}"], "file not found"),
    "export missing checkpoint": (["export", "{root}/nope.pt", "--data", "digits", "--out", "{out}"], "file not found"),
    "benchmark random bytes": (["benchmark", "{random}"], "is not a valid ONNX model"),
    "benchmark truncated": (["benchmark", "{truncated}"], "is not a valid ONNX model"),
    "quantize truncated": (["quantize", "{truncated}", "--data", "digits", "--out", "{out}"], "is not a valid ONNX model"),
    "quantize random bytes": (["quantize", "{random}", "--data", "digits", "--out", "{out}"], "is not a valid ONNX model"),
    "unknown dataset": (["quantize", "{good}", "--data", "imagenet", "--out", "{out}"],
                        "unknown dataset 'imagenet': use one of mnist, digits"),
    "unknown provider": (["benchmark", "{good}", "--provider", "tpu"], "unknown execution provider 'tpu'"),
    "missing provider": (["benchmark", "{good}", "--provider", "cuda"],
                         "CUDAExecutionProvider is not available: install onnxruntime-gpu"),
    "unknown config key": (["pipeline", "--out", "{out}", "--set", "distill.tempreature=2"],
                           "unknown config key distill.tempreature: valid keys of distill are student, temperature"),
    "bad config value": (["pipeline", "--out", "{out}", "--set", "prune.amount=2"], "prune.amount must be a fraction"),
    "missing config file": (["pipeline", "--config", "{root}/nope.toml", "--out", "{out}"], "config file not found"),
    "wrong input shape quantize": (["quantize", "{mnist}", "--data", "digits", "--out", "{out}"],
                                   "wrong input shape: the model expects [batch, 1, 28, 28] but dataset digits gives [N, 1, 8, 8]"),
    "wrong input shape benchmark": (["benchmark", "{mnist}", "--data", "digits", *BENCH_FAST], "wrong input shape"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cli_error(case, files, tmp_path):
    args, message = CASES[case]
    names = {**{k: str(v) for k, v in files.items()}, "out": str(tmp_path / "out" / "result.onnx")}
    _fails([arg.format(**names) for arg in args], message.format(**names))
    assert not (tmp_path / "out").exists()  # nothing written, not even a temporary file


def test_nan_loss_in_the_pipeline_leaves_nothing_behind(quick_toml, tmp_path):
    run_dir = tmp_path / "run"
    result = _fails(["pipeline", "--config", quick_toml, "--out", run_dir, "--set", "teacher.train.lr=1e30"],
                    "teacher: loss became")
    assert "lower the learning rate" in result.stderr
    leftovers = sorted(p.name for p in run_dir.iterdir()) if run_dir.exists() else []
    assert leftovers == []  # no stage folder, no staging folder, no manifest, no lock


def test_nan_loss_in_a_later_stage_keeps_the_finished_stages_only(quick_toml, tmp_path):
    run_dir = tmp_path / "run"
    _fails(["pipeline", "--config", quick_toml, "--out", run_dir, "--set", "teacher.train.epochs=2",
            "--set", "distill.train.lr=1e30"], "distill: loss became")
    assert sorted(p.name for p in run_dir.iterdir()) == ["manifest.json", "teacher"]  # no distill/ nor a staging folder
    assert (run_dir / "teacher" / "teacher.safetensors").is_file()


def test_nan_loss_in_the_teacher_command(tmp_path):
    out = tmp_path / "t"
    _fails(["teacher", "--data", "digits", "--set", "teacher.source=train", "--set", "teacher.model.arch=mlp",
            "--set", "teacher.train.lr=1e30", "--out", out], "loss became")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output folder, staging folder or checkpoints


def test_nan_loss_raises_from_python(digits):
    cfg = TeacherConfig(source="train", model=ModelSpec("mlp", 0.25), train=TrainConfig(epochs=1, lr=1e30))
    with pytest.raises(CompressError, match=r"teacher: loss became (nan|inf) at epoch 1 step \d+ .* lower the learning rate"):
        train_teacher(cfg, digits)


def test_errors_from_python(files):
    for name in ("random", "truncated"):
        with pytest.raises(CompressError, match="is not a valid ONNX model .*: re-export it"):
            load_onnx(files[name])
    with pytest.raises(CompressError, match="file not found"):
        load_onnx(files["missing"])
    with pytest.raises(CompressError, match="is not a model file compress can read"):
        load_model(files["random"])
    with pytest.raises(CompressError, match="unknown execution provider 'gpu0'"):
        resolve_provider("gpu0")
    with pytest.raises(CompressError, match="unknown dataset 'fashion'"):
        load_dataset(DataConfig(source="fashion"))
