"""edge_demo/web on photo-style bundles (an image folder trained with data.image_size and data.crop_size): an
uploaded image of another shape is resized on its short side and centre-cropped, pixel for pixel as the
pipeline's data path (compress/lazy_data.py) and the Python app (edge_demo/python/classify.py) do it with Pillow,
for RGB and grayscale bundles; the page then predicts what onnxruntime predicts in Python.

Needs what tests/test_edge_web.py needs (chromium, chromedriver, selenium, npm ci)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from compress import lazy_data
from compress.config import load_config
from compress.pipeline import run_pipeline
from compress.ship import BundleConfig, ship
from tests.edge_web_helpers import load_python_app, load_web_module
from tests.test_edge_web import open_page, wait_for_source

pytestmark = pytest.mark.browser

serve = load_web_module("serve")
IMAGE_SIZE, CROP_SIZE = 18, 16  # short side 18, then the centre 16 x 16: what the model takes
COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]  # one per class


def training_folder(root: Path, count: int = 60) -> Path:
    """36x24 RGB images, a class colour in the middle and noise around it: learnable in a few epochs."""
    rng = np.random.default_rng(0)
    for index in range(count):
        label = index % len(COLOURS)
        pixels = rng.integers(0, 80, (24, 36, 3))
        pixels[4:20, 10:26] = np.asarray(COLOURS[label]) + rng.integers(-20, 20, (16, 16, 3))
        (root / f"class{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(root / f"class{label}" / f"{index:03d}.png")
    return root


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """One quick run per colour mode on the same folder, each shipped: {"RGB": (folder, model.json), "L": ...}."""
    root = tmp_path_factory.mktemp("edge_web_crop")
    folder = training_folder(root / "images")
    shipped = {}
    for mode in ("RGB", "L"):
        cfg = load_config(None, [
            f"data.source={json.dumps(str(folder))}", f"data.image_size={IMAGE_SIZE}", f"data.crop_size={CROP_SIZE}",
            f'data.image_mode="{mode}"', "data.val_fraction=0.2", "data.test_fraction=0.2", "teacher.source=train",
            'teacher.model.arch="mlp"', "teacher.train.epochs=10", 'teacher.train.optimizer="adamw"',
            "teacher.train.lr=0.003", 'distill.student.arch="mlp"', "distill.student.width=0.5", "distill.train.epochs=5",
            'distill.train.optimizer="adamw"', "distill.train.lr=0.003", "prune.finetune.epochs=2",
            'prune.finetune.optimizer="adamw"', "prune.round_to=1", "prune.amount=0.3", "prune.protect_first=false",
            "quantize.calibration_samples=8", "benchmark.min_runs=5", "benchmark.min_seconds=0.01",
            "benchmark.warmup_runs=2", "benchmark.cold_start=false", "benchmark.profile=false",
            "export.parity_samples=8"])
        run_pipeline(cfg, root / f"run-{mode}")
        shipped[mode] = (root / mode, ship(BundleConfig(artifact="teacher", samples=3), root / f"run-{mode}", root / mode))
    return root, shipped


@pytest.fixture(scope="module")
def site(bundles):
    root, shipped = bundles
    server, url = serve.serve_in_thread({mode: folder for mode, (folder, _) in shipped.items()})
    yield url
    server.shutdown()


def photo(path: Path, width: int, height: int) -> Path:
    """Class 1's colour in the centre square; in the margins that the centre crop cuts away, white and black
    stripes that a stretched (not cropped) image would squeeze in."""
    rng = np.random.default_rng(width * height)
    pixels = rng.integers(0, 80, (height, width, 3))
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    pixels[top + side // 6:top + 5 * side // 6, left + side // 6:left + 5 * side // 6] = COLOURS[1]
    along = np.arange(width)[None, :] if width > height else np.arange(height)[:, None]
    stripes = np.broadcast_to(np.where((along // 4) % 2 == 0, 255, 0), (height, width))
    margin = np.ones((height, width), bool)
    margin[top:top + side, left:left + side] = False
    pixels[margin] = stripes[margin][:, None]
    Image.fromarray(pixels.astype(np.uint8), "RGB").save(path)
    return path


def data_path_input(path: Path, mode: str, info: dict) -> np.ndarray:
    """The pipeline's own preprocessing of a file (what the model was trained and tested on)."""
    raw = lazy_data.decode_image(path, lazy_data.ImageTransform(mode, IMAGE_SIZE, CROP_SIZE))[None]
    mean, std = (np.asarray(info["preprocessing"][key], np.float32) for key in ("mean", "std"))
    return lazy_data.normalize(raw, 255.0, mean, std)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_non_square_upload_is_resized_and_centre_cropped_exactly_like_python(browser, site, bundles, tmp_path, mode):
    from selenium.webdriver.common.by import By

    _, shipped = bundles
    folder, info = shipped[mode]
    pre = info["preprocessing"]
    assert pre["resize_short_side"] == IMAGE_SIZE and pre["center_crop"] == CROP_SIZE
    assert (info["input"]["channels"], info["input"]["height"]) == ({"RGB": 3, "L": 1}[mode], CROP_SIZE)
    state, text = open_page(browser, site, f"bundle={mode}/&model=onnx&bench=5")
    assert state == "ready", text
    invert = browser.find_element(By.ID, "invert")
    if invert.is_selected():
        invert.click()  # the data path never inverts: compare like with like
    app = load_python_app().Bundle(folder, "onnx")
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    for width, height in ((300, 200), (200, 300), (301, 203)):
        image = photo(tmp_path / f"photo_{width}x{height}.png", width, height)
        browser.find_element(By.ID, "file").send_keys(str(image))
        result = wait_for_source(browser, f"upload:{image.name}")
        python = app.preprocess(image, invert="no")
        np.testing.assert_array_equal(python, data_path_input(image, mode, info))
        web = np.float32(browser.execute_script("return window.edgeDemo.lastInput")).reshape(python.shape)
        np.testing.assert_array_equal(web, python)
        with Image.open(image) as img:
            stretched = np.asarray(img.convert(mode).resize((CROP_SIZE, CROP_SIZE), Image.BILINEAR), np.float32) / 255
        unnormalized = python * np.float32(pre["std"])[:, None, None] + np.float32(pre["mean"])[:, None, None]
        assert np.abs(stretched.reshape(python.shape) - unnormalized).max() > 0.3  # the stripes would show
        logits = session.run(None, {info["input"]["name"]: python})[0][0]
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert result["label"] == info["classes"][int(probs.argmax())]
        np.testing.assert_allclose(result["probabilities"], probs, atol=1e-4)
