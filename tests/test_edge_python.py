"""edge_demo/python/classify.py, run in a virtualenv that has onnxruntime, numpy and Pillow but not
torch nor compress, on bundles shipped from the quick pipeline run and from the default (MNIST) run."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zlib
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from compress.ship import BundleConfig, preprocess_image, ship

APP = Path(__file__).resolve().parents[1] / "edge_demo" / "python" / "classify.py"


@pytest.fixture(scope="session")
def edge_python(tmp_path_factory) -> Path:
    """A fresh virtualenv with only the app's requirements.txt (pinned to the versions installed here, which pip
    finds in its local cache), shared by the whole test session."""
    venv = tmp_path_factory.mktemp("edge_venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pins = [f"onnxruntime=={version('onnxruntime')}", f"numpy=={version('numpy')}", f"pillow=={version('pillow')}"]
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "-r", str(APP.parent / "requirements.txt"), *pins], check=True, timeout=600, stdout=subprocess.DEVNULL)
    return python


@pytest.fixture(scope="module")
def bundle(quick_run, tmp_path_factory):
    """The quick run's int8 bundle: (folder, model.json)."""
    run_dir, _ = quick_run
    out = tmp_path_factory.mktemp("edge_python") / "bundle"
    return out, ship(BundleConfig(artifact="int8"), run_dir, out)


@pytest.fixture(scope="module")
def default_bundle(default_run, tmp_path_factory):
    """The bundle `compress ship` makes of the default run (the artifact the pipeline chose): (folder, model.json)."""
    run_dir, _ = default_run
    out = tmp_path_factory.mktemp("edge_python_default") / "bundle"
    return out, ship(BundleConfig(), run_dir, out)


# The edge virtualenv must see only what it installed, not a developer's PYTHONPATH pointing at compress.
EDGE_ENV = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def run_app(python: Path, *args, cwd: Path) -> subprocess.CompletedProcess:
    # From a folder outside the repository, so nothing of compress can be picked up by accident.
    return subprocess.run([str(python), str(APP), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120,
                          env=EDGE_ENV)


def spec_of(info: dict) -> dict:
    return {**info["input"], **info["preprocessing"], "background": info["drawing"]["background"]}


def test_the_virtualenv_has_neither_torch_nor_compress(edge_python, tmp_path):
    for module in ("torch", "compress"):
        result = subprocess.run([str(edge_python), "-c", f"import {module}"], capture_output=True, cwd=tmp_path,
                                env=EDGE_ENV)
        assert result.returncode != 0, f"{module} is importable in the edge virtualenv"
    assert subprocess.run([str(edge_python), "-c", "import onnxruntime, numpy, PIL"], cwd=tmp_path,
                          env=EDGE_ENV).returncode == 0


@pytest.mark.parametrize("model_format", ["ort", "onnx"])
def test_self_test_passes(edge_python, bundle, tmp_path, model_format):
    folder, info = bundle
    result = run_app(edge_python, folder, "--self-test", "--format", model_format, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"self-test: {len(info['samples'])}/{len(info['samples'])} known samples correct" in result.stdout
    assert f"model.{model_format} (int8)" in result.stdout


def test_folder_top_k_matches_onnxruntime_in_python(edge_python, bundle, tmp_path):
    folder, info = bundle
    result = run_app(edge_python, folder, folder / "samples", "--top-k", "3", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [Path(r["file"]).name for r in report["results"]] == sorted(Path(s["file"]).name for s in info["samples"])
    session = ort.InferenceSession(str(folder / "model.ort"), providers=["CPUExecutionProvider"])
    for entry in report["results"]:
        logits = session.run(None, {"input": preprocess_image(Path(entry["file"]), spec_of(info))})[0][0]
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        top = [info["classes"][i] for i in np.argsort(-probs)[:3]]
        assert [t["label"] for t in entry["top"]] == top
        assert [t["probability"] for t in entry["top"]] == pytest.approx(sorted(probs, reverse=True)[:3], abs=1e-6)
        assert entry["top"][0]["label"] == Path(entry["file"]).stem.split("_", 1)[1]
    latency = report["latency"]
    assert latency["images"] == len(info["samples"]) and 0 < latency["inference"]["p50_ms"] <= latency["inference"]["p99_ms"]
    assert report["session_load_ms"] > 0 and report["onnxruntime"] == version("onnxruntime")


def test_text_report_and_bench(edge_python, bundle, tmp_path):
    folder, info = bundle
    image = folder / info["samples"][0]["file"]
    result = run_app(edge_python, folder, image, "--bench", "50", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{image}: {info['samples'][0]['label']} " in result.stdout
    assert "latency: 1 image(s), inference p50" in result.stdout
    assert "bench: 50 runs at batch 1 after 20 warm-up: p50" in result.stdout


def test_dark_ink_on_white_is_inverted_automatically(edge_python, bundle, tmp_path):
    folder, info = bundle
    sample = info["samples"][0]
    with Image.open(folder / sample["file"]) as img:
        Image.eval(img, lambda v: 255 - v).save(tmp_path / "inverted.png")
    auto = json.loads(run_app(edge_python, folder, tmp_path / "inverted.png", "--json", cwd=tmp_path).stdout)
    plain = json.loads(run_app(edge_python, folder, tmp_path / "inverted.png", "--json", "--invert", "no",
                               cwd=tmp_path).stdout)
    original = json.loads(run_app(edge_python, folder, folder / sample["file"], "--json", cwd=tmp_path).stdout)
    assert auto["results"][0]["top"] == original["results"][0]["top"]
    assert plain["results"][0]["top"] != original["results"][0]["top"]


def _missing_file(folder: Path, info: dict) -> None:
    (folder / "model.ort").unlink()


def _hash_mismatch(folder: Path, info: dict) -> None:
    with open(folder / "model.onnx", "ab") as handle:
        handle.write(b"\0")


def _wrong_input_size(folder: Path, info: dict) -> None:
    info["input"].update(height=28, width=28)
    (folder / "model.json").write_text(json.dumps(info))


def _no_model_json(folder: Path, info: dict) -> None:
    (folder / "model.json").unlink()


def _tampered(change):
    """A damage that edits model.json (it is not hashed: the app must check its shape itself)."""
    def damage(folder: Path, info: dict) -> None:
        (folder / "model.json").write_text(json.dumps(change(info)))
    return damage


def _model_outside_the_bundle(info: dict) -> dict:
    info["models"]["ort"] = "../elsewhere/model.ort"
    info["files"]["../elsewhere/model.ort"] = info["files"]["model.ort"]
    return info


@pytest.mark.parametrize("damage, message", [
    (_missing_file, r"^error: bundle file model\.ort is missing from .*: copy the whole bundle folder"),
    (_hash_mismatch, r"^error: bundle file model\.onnx is corrupt: sha256 [0-9a-f]{12}\.\.\. does not match"),
    (_wrong_input_size, r"^error: wrong input size: model\.ort takes input \[batch, 1, 8, 8\] but model\.json "
                        r"declares \[N, 1, 28, 28\]"),
    (_no_model_json, r"^error: .*model\.json is missing: .* is not a bundle made by `compress ship`"),
    (_tampered(lambda info: [info]), r"^error: .*model\.json holds a JSON list, not an object"),
    (_tampered(lambda info: {**info, "files": {k: {"bytes": 1} for k in info["files"]}}),
     r"^error: .*model\.json is damaged: 'files' must map each file name to its sha256"),
    (_tampered(lambda info: {k: v for k, v in info.items() if k != "input"}),
     r"^error: .*model\.json is not a compress bundle description \(missing input\)"),
    (_tampered(lambda info: {**info, "preprocessing": {**info["preprocessing"], "mean": [0.1, 0.2, 0.3]}}),
     r"^error: .*model\.json is damaged: preprocessing mean must be 1 number\(s\), one per input channel"),
    (_tampered(lambda info: {**info, "preprocessing": {**info["preprocessing"], "center_crop": "16"}}),
     r"^error: .*model\.json is damaged: preprocessing center_crop must be a positive number of pixels when given"),
    (_tampered(_model_outside_the_bundle), r"^error: .*model\.json is damaged: file '\.\./elsewhere/model\.ort' lies "
                                           r"outside the bundle folder"),
])
def test_bad_bundles_get_one_clear_line(edge_python, bundle, tmp_path, damage, message):
    folder, info = bundle
    copy = tmp_path / "bundle"
    shutil.copytree(folder, copy)
    damage(copy, json.loads(json.dumps(info)))
    result = run_app(edge_python, copy, "--self-test", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), result.stderr


def _bomb_png(path: Path, side: int = 20000) -> Path:
    """A PNG whose header claims side x side pixels: Pillow refuses it on open, before decoding anything."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) +
                     chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_image_is_one_line(edge_python, bundle, tmp_path):
    folder, _ = bundle
    result = run_app(edge_python, folder, _bomb_png(tmp_path / "huge.png"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert re.fullmatch(r"error: image .*huge\.png is too large to decode safely \(.*\): resize it", result.stderr.strip())


def test_missing_image_and_failed_self_test(edge_python, bundle, tmp_path):
    folder, info = bundle
    missing = run_app(edge_python, folder, tmp_path / "nope.png", cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.strip() == f"error: image not found: {tmp_path / 'nope.png'}"
    copy = tmp_path / "bundle"
    shutil.copytree(folder, copy)
    wrong = json.loads(json.dumps(info))
    wrong["samples"][0]["label"] = "5" if wrong["samples"][0]["label"] != "5" else "6"
    (copy / "model.json").write_text(json.dumps(wrong))  # model.json is not hashed: the self-test must catch it
    result = run_app(edge_python, copy, "--self-test", cwd=tmp_path)
    assert result.returncode == 1
    assert f"MISS {copy / info['samples'][0]['file']}: expected {wrong['samples'][0]['label']}" in result.stdout
    assert f"self-test: {len(info['samples']) - 1}/{len(info['samples'])} known samples correct" in result.stdout


@pytest.mark.parametrize("model_format", ["ort", "onnx"])
def test_default_run_bundle_classifies_mnist_test_images_like_onnxruntime(edge_python, default_bundle, tmp_path,
                                                                           model_format):
    """The default run's bundle: self-test, then 100 test-split images (not the bundle's samples) saved as
    PNG files, classified by the app exactly as onnxruntime in Python classifies them, and mostly right."""
    from compress.data import DataConfig, load_dataset
    from compress.ship import to_unit_range

    folder, info = default_bundle
    assert info["input"]["height"] == info["input"]["width"] == 28 and info["chosen_by_pipeline"]
    selftest = run_app(edge_python, folder, "--self-test", "--format", model_format, cwd=tmp_path)
    assert selftest.returncode == 0, selftest.stderr
    assert f"self-test: {len(info['samples'])}/{len(info['samples'])} known samples correct" in selftest.stdout
    test = load_dataset(DataConfig(source="mnist")).test
    used = {s["test_index"] for s in info["samples"]}
    images = tmp_path / "images"
    images.mkdir()
    labels = {}
    for index in [i for i in range(len(test)) if i not in used][:100]:
        pixels = np.clip(np.rint(to_unit_range(test.x[index:index + 1], spec_of(info)) * 255), 0, 255).astype(np.uint8)
        name = f"{index:03d}.png"
        Image.fromarray(pixels[0, 0], mode="L").save(images / name)
        labels[name] = info["classes"][int(test.y[index])]
    result = run_app(edge_python, folder, images, "--format", model_format, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    session = ort.InferenceSession(str(folder / f"model.{model_format}"), providers=["CPUExecutionProvider"])
    predicted = {}
    for entry in report["results"]:
        logits = session.run(None, {"input": preprocess_image(Path(entry["file"]), spec_of(info))})[0][0]
        assert entry["top"][0]["label"] == info["classes"][int(logits.argmax())]
        predicted[Path(entry["file"]).name] = entry["top"][0]["label"]
    assert set(predicted) == set(labels)
    assert np.mean([predicted[name] == label for name, label in labels.items()]) >= 0.95
