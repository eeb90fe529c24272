"""Hostile inputs: each gets a clear one-line error, a non-zero exit and no partial artifact.

Truncated or random-bytes ONNX, ONNX whose input rank or dtype does not match the data, image folders with
corrupt or non-image files, mixed image sizes or modes, an empty class folder, .npz files with mismatched
lengths or out-of-range labels, NaN/inf in the data, a learning rate that makes the loss NaN, a disk-full
write, and a state_dict that does not match its model."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from compress import fsutil
from compress.checkpoint import save_model
from compress.cli import main
from compress.data import DataConfig, load_dataset
from compress.errors import CompressError
from compress.train import TrainConfig, fit
from compress.zoo import MLP


def tiny_mlp() -> torch.nn.Module:
    """A factory for teacher.factory (importable as tests.test_hostile_inputs:tiny_mlp): digits in, 10 classes out."""
    model = MLP(64, 10, width=0.25)
    model.compress_spec = {"builder": "factory", "factory": "tests.test_hostile_inputs:tiny_mlp"}
    return model


def _fails(args: list[str], expected: str, *artifacts: Path) -> str:
    """Run the CLI; it must exit 2 with one 'error: ...' line containing ``expected`` and leave no ``artifacts``."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert result.stderr.rstrip().endswith(errors[0])  # the last thing printed, on one line
    for artifact in artifacts:
        assert not artifact.exists(), f"{artifact} was left behind"
        leftovers = [p.name for p in artifact.parent.iterdir() if p.name.startswith(f".{artifact.name}")]
        assert not leftovers, f"temporary files left: {leftovers}"
    return errors[0]


def _teacher_args(data, out: Path, *sets: str) -> list[str]:
    args = ["teacher", "--data", data, "--out", out, "--set", 'teacher.source="train"', "--set", 'teacher.model.arch="mlp"',
            "--set", "teacher.train.epochs=1"]
    for item in sets:
        args += ["--set", item]
    return args


def _export_onnx(model: torch.nn.Module, path: Path, example: torch.Tensor) -> Path:
    torch.onnx.export(model.eval(), (example,), str(path), dynamo=False, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


@pytest.fixture(scope="module")
def good_onnx(tmp_path_factory) -> Path:
    return _export_onnx(tiny_mlp(), tmp_path_factory.mktemp("onnx") / "mlp.onnx", torch.zeros(2, 1, 8, 8))


@pytest.mark.parametrize("damage", ["truncated", "random bytes"])
def test_truncated_or_random_onnx(tmp_path, good_onnx, damage):
    bad = tmp_path / "bad.onnx"
    content = good_onnx.read_bytes()
    bad.write_bytes(content[: len(content) // 2] if damage == "truncated" else np.random.default_rng(0).bytes(4096))
    out = tmp_path / "q.onnx"
    _fails(["quantize", bad, "--data", "digits", "--out", out], f"{bad} is not a valid ONNX model", out)
    _fails(["benchmark", bad, "--data", "digits", "--json", tmp_path / "b.json"], "is not a valid ONNX model",
           tmp_path / "b.json")


class _FlatInput(torch.nn.Module):
    """Takes (N, 64) rows instead of the (N, 1, 8, 8) images the digits data gives."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.linear(x)


@pytest.mark.parametrize("mismatch", ["rank", "dtype"])
def test_onnx_whose_input_does_not_match_the_data(tmp_path, mismatch):
    if mismatch == "rank":
        model, example, expected = _FlatInput(), torch.zeros(2, 64), "wrong input shape: the model expects [batch, 64]"
    else:
        model, example, expected = tiny_mlp().double(), torch.zeros(2, 1, 8, 8, dtype=torch.float64), "tensor(double)"
    path = _export_onnx(model, tmp_path / f"{mismatch}.onnx", example)
    out = tmp_path / "q.onnx"
    message = _fails(["quantize", path, "--data", "digits", "--out", out], expected, out)
    assert "digits" in message
    _fails(["benchmark", path, "--data", "digits", "--json", tmp_path / "b.json"], expected, tmp_path / "b.json")


def _image_folder(root: Path, per_class: int = 4, size=(8, 8), mode="L") -> Path:
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
            Image.fromarray(rng.integers(0, 255, shape).astype(np.uint8), mode=mode).save(root / label / f"{i}.png")
    return root


@pytest.mark.parametrize("bad_file", ["corrupt.png", "notes.txt"])
def test_image_folder_with_corrupt_or_non_image_files(tmp_path, bad_file):
    root = _image_folder(tmp_path / "images")
    (root / "b" / bad_file).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40 if bad_file.endswith(".png") else b"hello")
    expected = "cannot read image" if bad_file.endswith(".png") else "is not an image file"
    message = _fails(_teacher_args(root, tmp_path / "t"), expected, tmp_path / "t")
    assert bad_file in message and "remove" in message


@pytest.mark.parametrize("odd_one", ["size", "mode"])
def test_image_folder_with_mixed_sizes_or_modes(tmp_path, odd_one):
    root = _image_folder(tmp_path / "images")
    if odd_one == "size":
        Image.fromarray(np.zeros((12, 12), np.uint8), mode="L").save(root / "a" / "big.png")
        expected, fix = "mixed sizes (8x8, 12x12", "data.image_size=8"
    else:
        Image.fromarray(np.zeros((8, 8, 3), np.uint8), mode="RGB").save(root / "a" / "colour.png")
        expected, fix = "mix grayscale (8, e.g. 0.png) and colour (1, e.g. colour.png): set data.image_mode", 'data.image_mode="RGB"'
    _fails(_teacher_args(root, tmp_path / "t"), expected, tmp_path / "t")
    key, _, value = fix.partition("=")
    fixed = load_dataset(DataConfig(source=str(root), **{key.split(".")[1]: int(value) if value.isdigit() else value.strip('"')},
                                    val_fraction=0.2, test_fraction=0.2))
    assert fixed.input_shape == ((1, 8, 8) if odd_one == "size" else (3, 8, 8))


def test_empty_class_folder(tmp_path):
    root = _image_folder(tmp_path / "images")
    (root / "c").mkdir()
    _fails(_teacher_args(root, tmp_path / "t"), f"class folder {root / 'c'} is empty", tmp_path / "t")


@pytest.mark.parametrize("problem", ["lengths", "negative label", "label beyond class_names", "one-hot labels"])
def test_npz_with_mismatched_lengths_or_labels_out_of_range(tmp_path, problem):
    x, y = np.random.default_rng(0).random((30, 6)).astype(np.float32), np.repeat(np.arange(3), 10)
    extra = {}
    if problem == "lengths":
        y, expected = y[:-2], "x has 30 samples but y has 28"
    elif problem == "negative label":
        y = y.copy()
        y[0], expected = -1, "labels outside 0..2 (found -1..2)"
    elif problem == "label beyond class_names":
        extra, expected = {"class_names": np.array(["a", "b"])}, "labels outside 0..1 (found 0..2)"
    else:
        y, expected = np.eye(3, dtype=np.int64)[y], "y must be one class index per sample"
    np.savez(tmp_path / "data.npz", x=x, y=y, **extra)
    _fails(_teacher_args(tmp_path / "data.npz", tmp_path / "t"), expected, tmp_path / "t")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_in_data(tmp_path, value):
    x = np.random.default_rng(0).random((30, 6)).astype(np.float32)
    x[[3, 17], 2] = value
    np.savez(tmp_path / "data.npz", x=x, y=np.repeat(np.arange(3), 10))
    _fails(_teacher_args(tmp_path / "data.npz", tmp_path / "t"), "has NaN or inf values in 2 samples", tmp_path / "t")


def test_learning_rate_that_makes_the_loss_nan(tmp_path):
    out = tmp_path / "t"
    message = _fails(_teacher_args("digits", out, "teacher.train.lr=1e12", "teacher.train.grad_clip=0.0",
                                   "teacher.train.epochs=5"), "teacher: loss became nan at epoch 1 step", out)
    assert "training stopped; lower the learning rate" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no checkpoint folder either: no epoch finished


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_write_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    model_path = tmp_path / "model.pt"
    save_model(tiny_mlp(), model_path)
    out = tmp_path / "model.onnx"
    # The file is fully written beside its target, then moving it into place fails: disk full.
    monkeypatch.setattr(fsutil.os, "replace", _disk_full)
    message = _fails(["export", model_path, "--data", "digits", "--out", out], f"no space left on the device while writing {out}", out)
    assert "free some space" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_disk_full_while_writing_a_training_checkpoint(tmp_path, monkeypatch, digits):
    model = tiny_mlp()

    def loss_fn(x, y):
        logits = model(x)
        return torch.nn.functional.cross_entropy(logits, y), logits

    real_save = torch.save

    def half_written_then_full(obj, handle, *args, **kwargs):
        real_save(obj, handle, *args, **kwargs)
        handle.truncate(100)  # part of the checkpoint reached the disk, then it filled up
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", half_written_then_full)
    with pytest.raises(CompressError, match="no space left on the device while writing .*mlp.pt"):
        fit(model, digits, TrainConfig(epochs=1), loss_fn, "mlp", checkpoint_dir=tmp_path / "checkpoints")
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_state_dict_that_does_not_match_the_model(tmp_path):
    other = tmp_path / "other.pt"
    torch.save(MLP(64, 10, width=0.5).state_dict(), other)  # hidden sizes 64-32, the factory's are 32-16
    factory = "teacher.factory=\"tests.test_hostile_inputs:tiny_mlp\""
    out = tmp_path / "t"
    message = _fails(["teacher", "--data", "digits", "--out", out, "--set", 'teacher.source="file"',
                      "--set", f'teacher.path="{other}"', "--set", factory],
                     f"state_dict {other} does not match the model from tests.test_hostile_inputs:tiny_mlp", out)
    assert "shape mismatch(es): features.1.weight is (64, 64) in the file but (32, 64) in the model" in message
    junk = tmp_path / "junk.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(1000))
    _fails(["teacher", "--data", "digits", "--out", out, "--set", 'teacher.source="file"',
            "--set", f'teacher.path="{junk}"', "--set", factory], f"cannot read {junk} as a state_dict", out)
