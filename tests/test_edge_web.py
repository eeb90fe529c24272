"""edge_demo/web: the page runs a bundle with onnxruntime-web (WebAssembly) in headless Chromium and
predicts what onnxruntime predicts in Python; bad bundles get one clear error line.

Needs Debian's chromium and chromium-driver, selenium, and `npm ci --prefix edge_demo/web`. Under CI
(env CI set) a missing piece fails the test; elsewhere it is skipped with the reason."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from compress.data import DataConfig, load_dataset
from compress.ship import BundleConfig, preprocess_image, ship, to_unit_range
from tests.edge_web_helpers import load_web_module, probability_atol

pytestmark = pytest.mark.browser


serve, headless = load_web_module("serve"), load_web_module("headless")


@pytest.fixture(scope="module")
def bundles(quick_run, default_run, tmp_path_factory):
    """Bundles served side by side: the quick run's choice and its int8, the default (MNIST) run's choice, and
    three damaged copies."""
    run_dir, _ = quick_run
    root = tmp_path_factory.mktemp("edge_web")
    info = {"bundle": ship(BundleConfig(), run_dir, root / "bundle"),
            "int8": ship(BundleConfig(artifact="int8"), run_dir, root / "int8"),
            "default": ship(BundleConfig(), default_run[0], root / "default")}
    for name in ("bad-hash", "bad-missing", "bad-size"):
        shutil.copytree(root / "int8", root / name)
    with open(root / "bad-hash" / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    (root / "bad-missing" / "model.ort").unlink()
    wrong = json.loads(json.dumps(info["int8"]))
    wrong["input"].update(height=28, width=28)
    (root / "bad-size" / "model.json").write_text(json.dumps(wrong))
    (root / "empty").mkdir()
    return root, info


@pytest.fixture(scope="module")
def site(bundles):
    root, _ = bundles
    server, url = serve.serve_in_thread({p.name: p for p in root.iterdir()})
    yield url
    server.shutdown()


def open_page(driver, url: str, query: str) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{url}?{query}")
    WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "status").get_attribute("data-state") != "loading")
    status = driver.find_element(By.ID, "status")
    return status.get_attribute("data-state"), status.text


def wait_for_source(driver, prefix: str) -> dict:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(
        lambda d: d.find_element(By.ID, "prediction").get_attribute("data-source").startswith(prefix))
    return driver.execute_script("return window.edgeDemo.lastResult")


def python_probabilities(model: Path, x: np.ndarray) -> np.ndarray:
    logits = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0][0]
    return np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()


def known_test_image(info: dict, model: Path, path: Path) -> tuple[Path, np.ndarray]:
    """A test-split image of a 3, not one of the bundle's samples, saved as the PNG a user would upload; the
    first one that onnxruntime in Python gets right. Returns it and Python's probabilities."""
    test = load_dataset(DataConfig(source=info["source"]["dataset"])).test
    spec = {**info["input"], **info["preprocessing"], "background": info["drawing"]["background"]}
    used = {s["test_index"] for s in info["samples"]}
    for index in (i for i in range(len(test)) if i not in used and test.y[i] == 3):
        pixels = np.clip(np.rint(to_unit_range(test.x[index:index + 1], spec) * 255), 0, 255).astype(np.uint8)
        Image.fromarray(pixels[0, 0], mode="L").save(path)
        probs = python_probabilities(model, preprocess_image(path, spec))
        if probs.argmax() == 3:
            return path, probs
    raise AssertionError("the bundled model gets no test image of a 3 right")


@pytest.mark.parametrize("mount, model_format", [("bundle", "ort"), ("int8", "ort"), ("int8", "onnx"),
                                                  ("default", "ort"), ("default", "onnx")])
def test_uploaded_image_is_predicted_like_python(browser, site, bundles, tmp_path, mount, model_format):
    from selenium.webdriver.common.by import By

    root, infos = bundles
    info = infos[mount]
    state, text = open_page(browser, site, f"bundle={mount}/&model={model_format}&bench=30")
    assert state == "ready", text
    assert f"self-test {len(info['samples'])}/{len(info['samples'])}" in text
    assert browser.find_element(By.ID, "selftest").get_attribute("data-correct") == str(len(info["samples"]))

    image, probs = known_test_image(info, root / mount / f"model.{model_format}", tmp_path / "known.png")
    browser.find_element(By.ID, "file").send_keys(str(image))
    result = wait_for_source(browser, "upload:known.png")

    spec = {**info["input"], **info["preprocessing"], "background": info["drawing"]["background"]}
    x = preprocess_image(image, spec)
    np.testing.assert_array_equal(np.float32(browser.execute_script("return window.edgeDemo.lastInput")), x.ravel())
    assert result["label"] == info["classes"][int(probs.argmax())] == "3"
    np.testing.assert_allclose(result["probabilities"], probs, atol=probability_atol(info["artifact"] == "int8"))
    assert browser.find_element(By.ID, "prediction").get_attribute("data-label") == result["label"]
    latency = browser.find_element(By.ID, "latency").text
    assert re.search(r"p50 \d+\.\d{3} ms · p90 \d+\.\d{3} ms over 30 runs", latency), latency
    shot = tmp_path / f"edge_web_{mount}_{model_format}.png"
    assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("mount", ["int8", "default"])
def test_drawing_is_classified_live(browser, site, bundles, mount):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    root, infos = bundles
    info = infos[mount]
    state, text = open_page(browser, site, f"bundle={mount}/&bench=5")
    assert state == "ready", text
    pad = browser.find_element(By.ID, "pad")
    ActionChains(browser).move_to_element_with_offset(pad, -40, -90).click_and_hold().move_by_offset(60, 0) \
        .move_by_offset(-30, 90).move_by_offset(-20, 90).release().perform()  # a 7
    result = wait_for_source(browser, "drawing")
    shape = (1, info["input"]["channels"], info["input"]["height"], info["input"]["width"])
    drawn = np.float32(browser.execute_script("return window.edgeDemo.lastInput")).reshape(shape)
    assert drawn.max() > drawn.min()  # ink reached the model's input
    probs = python_probabilities(root / mount / "model.ort", drawn)
    assert result["label"] == info["classes"][int(probs.argmax())]
    np.testing.assert_allclose(result["probabilities"], probs, atol=probability_atol(info["artifact"] == "int8"))


@pytest.mark.parametrize("mount, message", [
    ("bad-hash", "error: bundle file model.onnx is corrupt: sha256 "),
    ("bad-missing", "error: bundle file model.ort is missing from /bad-missing/ (HTTP 404)"),
    ("bad-size", "error: wrong input size: model.ort takes input [batch, 1, 8, 8] but model.json declares [N, 1, 28, 28]"),
    ("empty", "error: /empty/model.json is missing (HTTP 404): /empty/ is not a bundle made by `compress ship`"),
])
def test_bad_bundles_show_one_clear_error(browser, site, mount, message):
    state, text = open_page(browser, site, f"bundle={mount}/")
    assert state == "error"
    assert text.startswith(message) and "\n" not in text, text
