"""compress ship: the bundle's contents, its verification on creation, and its errors."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from compress.cli import main
from compress.data import DataConfig, load_dataset
from compress.errors import CompressError
from compress.fsutil import sha256
from compress.ship import BundleConfig, _image_spec, preprocess_image, ship


@pytest.fixture(scope="module")
def chosen_bundle(quick_run, tmp_path_factory):
    """The quick run's bundle with the pipeline's choice: (folder, model.json)."""
    run_dir, _ = quick_run
    out = tmp_path_factory.mktemp("ship") / "bundle"
    return out, ship(BundleConfig(), run_dir, out)


@pytest.fixture(scope="module")
def int8_bundle(quick_run, tmp_path_factory):
    run_dir, _ = quick_run
    out = tmp_path_factory.mktemp("ship") / "int8"
    return out, ship(BundleConfig(artifact="int8"), run_dir, out)


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_bundle_carries_the_artifact_the_pipeline_chose(quick_run, chosen_bundle):
    run_dir, manifest = quick_run
    folder, info = chosen_bundle
    chosen = manifest["ship"]["artifact"]
    assert info["artifact"] == chosen and info["chosen_by_pipeline"] is True
    assert sha256(folder / "model.onnx") == sha256(run_dir / manifest["ship"]["path"])
    assert info["ship_reason"] == manifest["ship"]["reason"]
    assert json.loads((folder / "model.json").read_text()) == info


def test_model_json_describes_inputs_labels_metrics_and_hashes(quick_run, chosen_bundle):
    _, manifest = quick_run
    folder, info = chosen_bundle
    assert info["input"] == {"name": "input", "dtype": "float32", "shape": ["batch", 1, 8, 8], "layout": "NCHW",
                             "channels": 1, "height": 8, "width": 8}
    assert info["classes"] == [str(i) for i in range(10)]
    assert info["preprocessing"]["mean"] == pytest.approx(manifest["data"]["preprocessing"]["mean"])
    assert info["preprocessing"]["std"] == pytest.approx(manifest["data"]["preprocessing"]["std"])
    run_result = manifest["results"][info["artifact"]]
    for key in ("accuracy", "p50_ms", "p90_ms", "p99_ms", "size_bytes", "params", "macs"):
        assert info["metrics"][key] == run_result[key]
    assert info["drawing"]["background"] == "dark"
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {"model.json"}
    assert set(info["files"]) == on_disk
    assert {"model.onnx", "model.ort", "model.required_operators.config"} <= on_disk
    for name, record in info["files"].items():
        assert record["sha256"] == sha256(folder / name) and record["bytes"] == (folder / name).stat().st_size


def test_required_operators_config_names_the_bundled_model(chosen_bundle):
    folder, info = chosen_bundle
    lines = (folder / info["models"]["required_operators"]).read_text().splitlines()
    assert "# - model.ort" in lines  # not the staging folder's path
    ops = [line.split(";") for line in lines if line and not line.startswith("#")]
    assert ops and all(len(parts) == 3 and parts[1].isdigit() and parts[2] for parts in ops)
    assert any(domain == "ai.onnx" for domain, _, _ in ops)


@pytest.mark.parametrize("which", ["chosen", "int8"])
def test_ort_model_predicts_like_onnx_on_the_test_split(which, quick_run, chosen_bundle, int8_bundle):
    _, manifest = quick_run
    folder, info = chosen_bundle if which == "chosen" else int8_bundle
    test = load_dataset(DataConfig(**manifest["config"]["data"])).test
    onnx_logits = _session(folder / "model.onnx").run(None, {"input": test.x})[0]
    ort_logits = _session(folder / "model.ort").run(None, {"input": test.x})[0]
    assert len(test) == info["verification"]["test_samples"] == 179
    np.testing.assert_array_equal(onnx_logits.argmax(1), ort_logits.argmax(1))
    accuracy = float((ort_logits.argmax(1) == test.y).mean())
    assert accuracy == pytest.approx(manifest["results"][info["artifact"]]["accuracy"])
    assert info["verification"]["ort_accuracy"] == pytest.approx(accuracy)


def test_stored_samples_come_back_with_their_labels(chosen_bundle):
    folder, info = chosen_bundle
    assert len(info["samples"]) == 10
    assert sorted(s["label"] for s in info["samples"]) == info["classes"]  # one per class when room allows
    spec = {**info["input"], **info["preprocessing"], "background": info["drawing"]["background"]}
    session = _session(folder / "model.ort")
    for sample in info["samples"]:
        x = preprocess_image(folder / sample["file"], spec)
        assert x.shape == (1, 1, 8, 8)
        assert info["classes"][int(session.run(None, {"input": x})[0].argmax())] == sample["label"]


def test_artifact_option_ships_another_artifact(quick_run, int8_bundle):
    run_dir, manifest = quick_run
    folder, info = int8_bundle
    assert info["artifact"] == "int8"
    assert info["chosen_by_pipeline"] is (manifest["ship"]["artifact"] == "int8")
    assert sha256(folder / "model.onnx") == manifest["stages"]["quantize"]["outputs"]["int8"]["sha256"]
    assert any(node.op_type == "QuantizeLinear" for node in onnx.load(str(folder / "model.onnx")).graph.node)


def test_cli_ship_writes_a_bundle_and_refuses_to_overwrite(quick_run, tmp_path):
    run_dir, manifest = quick_run
    out = tmp_path / "bundle"
    result = CliRunner().invoke(main, ["ship", str(run_dir), "--out", str(out), "--samples", "3"])
    assert result.exit_code == 0, result.output
    assert f"bundled {manifest['ship']['artifact']} (the pipeline's choice)" in result.output
    assert len(json.loads((out / "model.json").read_text())["samples"]) == 3
    again = CliRunner().invoke(main, ["ship", str(run_dir), "--out", str(out)])
    assert again.exit_code == 2 and "already exists: pass --force" in again.output
    forced = CliRunner().invoke(main, ["ship", str(run_dir), "--out", str(out), "--force", "--artifact", "pruned"])
    assert forced.exit_code == 0 and json.loads((out / "model.json").read_text())["artifact"] == "pruned"
    assert "Example" in CliRunner().invoke(main, ["ship", "--help"]).output


def test_unknown_artifact_names_the_choices(quick_run, tmp_path):
    run_dir, _ = quick_run
    with pytest.raises(CompressError, match=r"unknown artifact 'best': this run has teacher, student, pruned, int8"):
        ship(BundleConfig(artifact="best"), run_dir, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_missing_or_unfinished_run_is_refused(quick_run, tmp_path):
    run_dir, manifest = quick_run
    with pytest.raises(CompressError, match="run folder not found"):
        ship(BundleConfig(), tmp_path / "nowhere", tmp_path / "b")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompressError, match="has no manifest.json"):
        ship(BundleConfig(), tmp_path / "empty", tmp_path / "b")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run_dir, unfinished)
    (unfinished / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    with pytest.raises(CompressError, match="unfinished run: finish it with .*--resume"):
        ship(BundleConfig(), unfinished, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_changed_artifact_is_refused_and_nothing_is_written(quick_run, tmp_path):
    run_dir, manifest = quick_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    with open(copy / manifest["ship"]["path"], "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(CompressError, match=r"changed since the run recorded it \(sha256 mismatch\)"):
        ship(BundleConfig(), copy, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_non_image_models_are_refused(tmp_path):
    props = {"class_labels": ["a", "b"], "preprocessing": {"layout": "ND", "input_shape": [64]}}
    with pytest.raises(CompressError, match="takes ND input of shape \\[64\\]: a bundle is for image classifiers"):
        _image_spec(props, tmp_path / "m.onnx")
    with pytest.raises(CompressError, match="lacks the class_labels/preprocessing metadata"):
        _image_spec({}, tmp_path / "m.onnx")


@pytest.mark.parametrize("field, value, match", [
    ("samples", 0, "samples must be >= 1, got 0"),
    ("optimization_style", "eager", "optimization_style must be one of fixed, runtime, got 'eager'"),
    ("target_platform", "x86", "target_platform must be one of arm, amd64 or None, got 'x86'"),
    ("threads", -1, "threads must be >= 0"),
])
def test_config_rejects_bad_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        BundleConfig(**{field: value})
