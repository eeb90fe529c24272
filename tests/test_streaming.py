"""compress/lazy_data.py: image folders and .npz files read lazily give the data, splits and training
results of loading them into RAM, without ever decoding the whole set."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch.nn.functional as F
from PIL import Image

from compress import lazy_data
from compress.data import DataConfig, load_dataset
from compress.errors import CompressError
from compress.lazy_data import LazyImages
from compress.train import TrainConfig, evaluate, fit, seed_everything
from compress.zoo import ModelSpec, build_model
from tests.edge_web_helpers import load_python_app

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _folder(root: Path, count: int = 40, size: tuple[int, int] = (32, 32), suffix: str = ".png", classes: int = 4) -> Path:
    """Class-dependent colour blobs plus noise: learnable, and random enough to test the arithmetic."""
    rng = np.random.default_rng(0)
    width, height = size
    for index in range(count):
        label = index % classes
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 60, (height, width, 3))
        pixels[:, :, label % 3] += 120 + 40 * (label // 3)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(folder / f"{index:03d}{suffix}")
    return root


def _config(root: Path, **overrides) -> DataConfig:
    return DataConfig(source=str(root), val_fraction=0.2, test_fraction=0.2, **overrides)


def _fit(data, workers_note: str = "cnn"):
    seed_everything(0)
    model = build_model(ModelSpec("resnet", 0.25, 8), data.input_shape, data.num_classes)

    def loss_fn(x, y):
        logits = model(x)
        return F.cross_entropy(logits, y), logits

    result = fit(model, data, TrainConfig(epochs=1, batch_size=8, optimizer="adamw", lr=0.003), loss_fn, workers_note)
    return result, model


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_lazy_folder_gives_the_eager_arrays_splits_and_statistics(tmp_path, suffix):
    root = _folder(tmp_path / "imgs", suffix=suffix)
    eager = load_dataset(_config(root, lazy="false"))
    lazy = load_dataset(_config(root, lazy="true"))
    assert isinstance(lazy.train.x, LazyImages) and isinstance(eager.train.x, np.ndarray)
    assert lazy.mean == eager.mean and lazy.std == eager.std and len(lazy.mean) == 3
    for name in ("train", "val", "test"):
        e, z = getattr(eager, name), getattr(lazy, name)
        assert np.array_equal(e.y, z.y)
        assert z.x.shape == e.x.shape and z.x.dtype == np.float32 and z.x.ndim == 4
        assert np.array_equal(z.x[:], e.x)
        assert np.array_equal(z.x[np.array([3, 0, 2])], e.x[[3, 0, 2]]) and np.array_equal(z.x[1], e.x[1])
    assert lazy.input_shape == eager.input_shape == (3, 32, 32)
    assert abs(float(eager.train.x.mean())) < 0.05  # normalized with train-split statistics


def test_lazy_data_is_never_turned_into_one_array(tmp_path):
    data = load_dataset(_config(_folder(tmp_path / "imgs"), lazy="true"))
    with pytest.raises(CompressError, match="refusing to decode all .* read it in batches"):
        np.asarray(data.train.x)
    with pytest.raises(CompressError, match="refusing"):
        np.concatenate([data.train.x, data.val.x])


def test_auto_streams_only_big_folders(tmp_path, monkeypatch):
    root = _folder(tmp_path / "imgs")
    assert isinstance(load_dataset(_config(root)).train.x, np.ndarray)  # 40 small images: in RAM
    monkeypatch.setattr(lazy_data, "LAZY_AUTO_BYTES", 1000)
    assert isinstance(load_dataset(_config(root)).train.x, LazyImages)


@pytest.mark.slow
def test_lazy_training_matches_eager_and_workers_give_the_same_batches(tmp_path):
    root = _folder(tmp_path / "imgs", size=(16, 16))
    eager_result, eager_model = _fit(load_dataset(_config(root, lazy="false")))
    lazy_data_set = load_dataset(_config(root, lazy="true"))
    lazy_result, lazy_model = _fit(lazy_data_set)
    assert lazy_result.history == eager_result.history
    workers_result, _ = _fit(load_dataset(_config(root, lazy="true", workers=2)))
    assert workers_result.history == eager_result.history
    assert evaluate(lazy_model, lazy_data_set.test) == evaluate(eager_model, load_dataset(_config(root)).test)


def test_one_epoch_and_evaluation_decode_each_image_a_bounded_number_of_times(tmp_path, monkeypatch):
    root = _folder(tmp_path / "imgs")
    calls = []
    decode = lazy_data.decode_image
    monkeypatch.setattr(lazy_data, "decode_image", lambda file, transform: calls.append(file) or decode(file, transform))
    data = load_dataset(_config(root, lazy="true"))
    assert len(calls) == len(data.train)  # the streamed statistics read the train split once
    calls.clear()
    seed_everything(0)
    model = build_model(ModelSpec("resnet", 0.25, 8), data.input_shape, data.num_classes)
    fit(model, data, TrainConfig(epochs=1, batch_size=8), lambda x, y: (F.cross_entropy(model(x), y), model(x)), "cnn")
    evaluate(model, data.test)
    # one pass over train, validation before and after the epoch, one test evaluation
    assert len(calls) == len(data.train) + 2 * len(data.val) + len(data.test)


def test_stats_samples_measure_the_statistics_on_part_of_the_train_split(tmp_path):
    root = _folder(tmp_path / "imgs")
    full = load_dataset(_config(root, lazy="true"))
    part = load_dataset(_config(root, lazy="true", stats_samples=5))
    assert part.mean != full.mean and all(0.0 < m < 1.0 for m in part.mean) and len(part.std) == 3


def test_user_mean_std_resize_and_crop_reach_the_onnx_metadata(tmp_path):
    import onnx

    from compress.onnx_export import ExportConfig, export_model
    from compress.onnxutil import metadata

    root = _folder(tmp_path / "imgs", size=(48, 40), suffix=".jpg")
    data = load_dataset(_config(root, lazy="true", image_size=36, crop_size=32, **IMAGENET))
    assert data.input_shape == (3, 32, 32) and data.mean == pytest.approx(IMAGENET["mean"])
    eager = load_dataset(_config(root, lazy="false", image_size=36, crop_size=32, **IMAGENET))
    assert np.array_equal(eager.val.x, data.val.x[:])
    model = build_model(ModelSpec("resnet", 0.25, 8), data.input_shape, data.num_classes)
    export_model(model.eval(), tmp_path / "m.onnx", data, ExportConfig(parity_samples=4), {})
    pre = metadata(onnx.load(str(tmp_path / "m.onnx")))["preprocessing"]
    assert pre["mean"] == pytest.approx(IMAGENET["mean"]) and pre["std"] == pytest.approx(IMAGENET["std"])
    assert pre["resize_short_side"] == 36 and pre["center_crop"] == 32 and pre["input_shape"] == [3, 32, 32]


def test_bad_mean_std_and_crop_are_refused(tmp_path):
    with pytest.raises(ValueError, match="data.mean and data.std"):
        DataConfig(mean=[0.5, 0.5, 0.5], std=[0.2])
    with pytest.raises(ValueError, match="crop_size"):
        DataConfig(image_size=32, crop_size=40)
    with pytest.raises(ValueError, match="data.lazy must be one of"):
        DataConfig(lazy="maybe")
    assert DataConfig(lazy=True).lazy == "true"
    root = _folder(tmp_path / "imgs")
    with pytest.raises(CompressError, match="3 channel"):
        load_dataset(_config(root, mean=[0.5], std=[0.2]))


def test_a_bad_file_in_a_lazy_folder_is_a_one_line_error(tmp_path):
    root = _folder(tmp_path / "imgs")
    (root / "class0" / "zz_truncated.png").write_bytes((root / "class0" / "000.png").read_bytes()[:60])
    data = None
    with pytest.raises(CompressError, match="cannot read image .*zz_truncated.png.*remove or replace it"):
        data = load_dataset(_config(root, lazy="true"))
        for split in (data.train, data.val, data.test):
            split.x[:]


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_memory_mapped_npz_equals_the_eager_load(tmp_path, layout):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (40, 12, 12, 3)).astype(np.uint8)
    x = x if layout == "NHWC" else x.transpose(0, 3, 1, 2).copy()
    np.savez(tmp_path / "big.npz", x=x, y=np.arange(40) % 4)
    eager = load_dataset(_config(tmp_path / "big.npz", lazy="false"))
    lazy = load_dataset(_config(tmp_path / "big.npz", lazy="true"))
    assert isinstance(lazy.train.x, LazyImages) and isinstance(lazy.train.x.reader.array, np.memmap)
    assert lazy.input_shape == eager.input_shape == (3, 12, 12) and lazy.pixel_scale == 255.0
    assert np.allclose(lazy.mean, eager.mean, atol=1e-5) and np.allclose(lazy.std, eager.std, atol=1e-5)
    assert np.allclose(lazy.train.x[:], eager.train.x, atol=1e-4) and np.array_equal(lazy.test.y, eager.test.y)


def test_compressed_npz_cannot_be_mapped_and_is_loaded_with_a_note(tmp_path, capsys):
    np.savez_compressed(tmp_path / "small.npz", x=np.zeros((20, 3, 4, 4), np.float32) + np.arange(20)[:, None, None, None],
                        y=np.arange(20) % 2)
    data = load_dataset(_config(tmp_path / "small.npz", lazy="true"))
    assert isinstance(data.train.x, np.ndarray)
    assert "cannot be memory-mapped: loading it into RAM instead" in capsys.readouterr().out


def test_224_photos_stream_and_the_edge_preprocessing_matches_the_data(tmp_path):
    from compress.ship import preprocess_image

    root = _folder(tmp_path / "photos", count=12, size=(260, 224), classes=3)
    data = load_dataset(_config(root, lazy="true", image_size=224, **IMAGENET))
    assert data.input_shape == (3, 224, 224)
    pre = data.preprocessing()
    spec = {"channels": 3, "height": 224, "width": 224, "mean": pre["mean"], "std": pre["std"],
            "resize_short_side": pre["resize_short_side"], "background": "mixed"}
    index = int(data.test.x.indices[0])
    file = data.test.x.reader.files[index]
    app = preprocess_image(file, spec)[0]
    assert np.allclose(app, data.test.x[0], atol=1e-5)
    classify = load_python_app()
    with Image.open(file) as img:
        cropped = classify.fit_to_input(img.convert("RGB"), 224, None, 224, 224)
    assert cropped.size == (224, 224)
    assert np.array_equal(np.asarray(cropped), np.asarray(lazy_data.resize_and_crop(Image.open(file).convert("RGB"), 224, 224)))
    seed_everything(0)
    model = build_model(ModelSpec("resnet", 0.25, 8), data.input_shape, data.num_classes)
    assert 0.0 <= evaluate(model, data.test) <= 1.0


def test_a_mapped_npz_pickles_as_its_location_not_its_data(tmp_path):
    import pickle

    np.savez(tmp_path / "big.npz", x=np.arange(40 * 3 * 64 * 64, dtype=np.float32).reshape(40, 3, 64, 64), y=np.arange(40) % 4)
    data = load_dataset(_config(tmp_path / "big.npz", lazy="true"))
    blob = pickle.dumps(data.train.x)
    assert len(blob) < 20_000  # the 1.9 MB of pixels stay in the file
    assert np.array_equal(pickle.loads(blob)[:3], data.train.x[:3])


@pytest.mark.slow
def test_pipeline_and_bundle_on_a_lazy_224_folder_with_imagenet_statistics(tmp_path, monkeypatch):
    """Teacher, distill, prune, export, quantize (calibrated on lazily read samples), benchmark and a bundle,
    on 224x224 crops of 260x224 JPEGs, where any conversion of a whole split into one array would fail the run (LazyImages refuses it)."""
    import json

    from compress.config import load_config
    from compress.pipeline import run_pipeline
    from compress.ship import BundleConfig, ship

    root = _folder(tmp_path / "photos", count=48, size=(260, 224), suffix=".jpg", classes=3)
    cfg = load_config(None, [
        f"data.source={json.dumps(str(root))}", "data.lazy=true", "data.workers=2", "data.image_size=232",
        "data.crop_size=224", f"data.mean={IMAGENET['mean']}", f"data.std={IMAGENET['std']}", "data.val_fraction=0.2",
        "data.test_fraction=0.2", "teacher.source=train", 'teacher.model.arch="mlp"', "teacher.model.width=0.25",
        "teacher.train.epochs=3", 'teacher.train.optimizer="adamw"', "teacher.train.lr=0.001", 'distill.student.arch="mlp"',
        "distill.student.width=0.125", "distill.train.epochs=2", 'distill.train.optimizer="adamw"', "distill.train.lr=0.001",
        "prune.finetune.epochs=1", 'prune.finetune.optimizer="adamw"', "prune.round_to=1", "prune.amount=0.3",
        "prune.protect_first=false", "quantize.calibration_samples=8", "benchmark.min_runs=5", "benchmark.min_seconds=0.01",
        "benchmark.warmup_runs=2", "benchmark.cold_start=false", "benchmark.profile=false", "export.parity_samples=8"])
    manifest = run_pipeline(cfg, tmp_path / "run")
    assert all(stage["status"] == "done" for stage in manifest["stages"].values())
    info = ship(BundleConfig(artifact="teacher", samples=3), tmp_path / "run", tmp_path / "bundle")
    pre = info["preprocessing"]
    assert info["input"]["height"] == info["input"]["width"] == 224 and pre["resize_short_side"] == 232
    assert pre["mean"] == pytest.approx(IMAGENET["mean"]) and pre["std"] == pytest.approx(IMAGENET["std"])


def test_a_lazy_fit_resumes_exactly(tmp_path, monkeypatch):
    from tests.test_resume import _interrupt_at_epoch, _same_weights, _train

    data = load_dataset(_config(_folder(tmp_path / "imgs", size=(16, 16)), lazy="true"))
    cfg = TrainConfig(epochs=3, batch_size=8, optimizer="adamw", lr=0.003)
    reference_model, reference = _train(data, cfg)
    with monkeypatch.context() as patch:
        _interrupt_at_epoch(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            _train(data, cfg, tmp_path / "ckpt")
    resumed_model, resumed = _train(data, cfg, tmp_path / "ckpt")
    assert resumed.resumed_after_epoch == 1 and resumed.history == reference.history
    assert _same_weights(resumed_model, reference_model)


def test_how_data_is_read_does_not_change_the_stage_fingerprints(tmp_path):
    from compress.runner import data_identity

    root = _folder(tmp_path / "imgs")
    eager = data_identity(_config(root, lazy="false"))
    assert data_identity(_config(root, lazy="true", workers=2)) == eager
    assert data_identity(_config(root, lazy="true", image_size=24)) != eager
