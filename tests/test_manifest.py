"""The run manifest of a whole quick pipeline: config, stages with hashed inputs/outputs, wall time,
package versions, measured results per artifact, and the choice of what to ship."""
from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path

import onnx
import pytest

from compress.config import PipelineConfig, to_dict
from compress.data import DataConfig, load_dataset
from compress.errors import CompressError
from compress.fsutil import sha256
from compress.manifest import MANIFEST_VERSION, load_manifest
from compress.metrics import classification_metrics, onnx_stats
from compress.onnxutil import make_session, predict
from compress.pipeline import STAGES, choose_artifact
from stages.quantize import QuantizeConfig, quantize

ARTIFACT_FILES = {"teacher": "export/teacher.onnx", "student": "export/student.onnx",
                  "pruned": "export/pruned.onnx", "int8": "quantize/int8.onnx"}


def test_top_level(quick_run):
    run_dir, manifest = quick_run
    assert json.loads((run_dir / "manifest.json").read_text()) == manifest
    assert manifest["manifest_version"] == MANIFEST_VERSION and manifest["status"] == "complete"
    assert set(manifest) >= {"created", "finished", "config", "packages", "stages", "results", "data", "ship"}
    assert manifest["config"] == to_dict(PipelineConfig.quick())
    assert manifest["data"]["train"] + manifest["data"]["val"] + manifest["data"]["test"] == 1797
    assert manifest["data"]["classes"] == [str(i) for i in range(10)]


def test_package_versions(quick_run):
    packages = quick_run[1]["packages"]
    for name in ("torch", "onnx", "onnxruntime", "numpy", "torch-pruning", "scikit-learn"):
        assert packages[name] == metadata.version(name)
    assert re.fullmatch(r"3\.\d+\.\d+", packages["python"])


def test_stages_record_config_hashes_and_time(quick_run):
    run_dir, manifest = quick_run
    assert list(manifest["stages"]) == list(STAGES)
    for name, stage in manifest["stages"].items():
        assert stage["status"] == "done"
        assert stage["config"] == manifest["config"][name]
        assert re.fullmatch(r"[0-9a-f]{64}", stage["fingerprint"])
        assert isinstance(stage["wall_s"], float) and stage["wall_s"] >= 0
        assert stage["outputs"], f"{name} recorded no outputs"
        for record in [*stage["inputs"].values(), *stage["outputs"].values()]:
            path = run_dir / record["path"]
            assert not Path(record["path"]).is_absolute()
            assert record["sha256"] == sha256(path) and record["bytes"] == path.stat().st_size
        for record in stage["outputs"].values():
            assert record["path"].startswith(f"{name}/")


def test_each_stage_consumes_what_the_previous_one_made(quick_run):
    stages = quick_run[1]["stages"]

    def out(stage, key):
        return stages[stage]["outputs"][key]["sha256"]

    assert stages["distill"]["inputs"]["teacher"]["sha256"] == out("teacher", "teacher")
    assert stages["prune"]["inputs"]["student"]["sha256"] == out("distill", "student")
    assert {k: v["sha256"] for k, v in stages["export"]["inputs"].items()} == {
        "teacher": out("teacher", "teacher"), "student": out("distill", "student"), "pruned": out("prune", "pruned")}
    assert stages["quantize"]["inputs"]["model"]["sha256"] == out("export", "pruned")
    bench_inputs = {k: v["path"] for k, v in stages["benchmark"]["inputs"].items()}
    assert bench_inputs == ARTIFACT_FILES


def test_results_per_artifact(quick_run):
    run_dir, manifest = quick_run
    results = manifest["results"]
    assert set(results) == set(ARTIFACT_FILES)
    for name, r in results.items():
        assert 0.0 <= r["accuracy"] <= 1.0
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["size_bytes"] == (run_dir / ARTIFACT_FILES[name]).stat().st_size
        assert isinstance(r["params"], int) and isinstance(r["macs"], int) and r["params"] > 0 and r["macs"] > 0
    # The compression is real: fewer parameters at each step, and int8 stores the pruned model in fewer bytes.
    assert results["pruned"]["params"] < results["student"]["params"] < results["teacher"]["params"]
    assert results["pruned"]["macs"] < results["student"]["macs"] < results["teacher"]["macs"]
    assert results["int8"]["params"] == results["pruned"]["params"] and results["int8"]["macs"] == results["pruned"]["macs"]
    assert results["int8"]["size_bytes"] < results["pruned"]["size_bytes"]
    assert results["teacher"]["accuracy"] >= 0.9 and results["int8"]["accuracy"] >= results["teacher"]["accuracy"] - 0.03


@pytest.mark.parametrize("quant_format", ["qdq", "qoperator"])
def test_int8_params_and_macs_equal_the_fp32_sources(quick_run, digits, tmp_path, quant_format):
    """Quantizing changes how weights are stored, not how many there are nor the MACs; QOperator graphs use
    com.microsoft ops (QGemm, QLinearAdd, ...) that onnx's shape inference does not know."""
    run_dir, manifest = quick_run
    cfg = QuantizeConfig(mode="static", format=quant_format, calibration_samples=16, layer_report=False)
    quantize(cfg, run_dir / "export" / "pruned.onnx", digits, tmp_path / "int8.onnx")
    stats = onnx_stats(onnx.load(str(tmp_path / "int8.onnx")))
    pruned = manifest["results"]["pruned"]
    assert stats == {"params": pruned["params"], "macs": pruned["macs"]}


def test_onnx_macs_count_attention_matmuls(tmp_path):
    """A ViT's attention computes its Reshape targets from Shape ops: its MatMuls only get shapes (and MACs)
    through onnx's data propagation. The ONNX count adds q.k and attn.v to the layers' MACs PyTorch counts."""
    from compress.metrics import model_stats
    from compress.onnx_export import ExportConfig, export_model
    from compress.synthetic import class_brightness_npz
    from compress.zoo import ModelSpec, build_model

    data = load_dataset(DataConfig(source=str(class_brightness_npz(tmp_path / "rgb.npz", 32, 60))))
    model = build_model(ModelSpec("vit_tiny", 0.25, 1), data.input_shape, data.num_classes).eval()
    export_model(model, tmp_path / "vit.onnx", data, ExportConfig(), {"source": "test"})
    tokens, dim, heads = 65, 48, 3  # (32 / 4)^2 patches + the class token, width 0.25 of 192, 48 / 16
    attention = 2 * heads * tokens * tokens * (dim // heads)
    torch_macs = model_stats(model, data.input_shape)["macs"]
    assert onnx_stats(onnx.load(str(tmp_path / "vit.onnx")))["macs"] >= torch_macs + 0.9 * attention


def test_accuracy_is_measured_on_the_test_split(quick_run):
    run_dir, manifest = quick_run
    data = load_dataset(DataConfig(**manifest["config"]["data"]))
    for name, path in ARTIFACT_FILES.items():
        logits = predict(make_session(run_dir / path), data.test.x)
        assert manifest["results"][name]["accuracy"] == classification_metrics(logits, data.test.y)["accuracy"]
    quant = manifest["stages"]["quantize"]["metrics"]
    assert quant["int8_accuracy"] == manifest["results"]["int8"]["accuracy"]
    assert quant["fp32_accuracy"] == manifest["results"]["pruned"]["accuracy"]


def test_ship_choice_follows_the_rule(quick_run):
    run_dir, manifest = quick_run
    results, ship, cfg = manifest["results"], manifest["ship"], manifest["config"]["ship"]
    floor = results["teacher"]["accuracy"] - cfg["accuracy_budget"] / 100
    eligible = [n for n in cfg["candidates"] if results[n]["accuracy"] >= floor - 1e-12]
    assert ship["artifact"] == min(eligible, key=lambda n: results[n]["p50_ms"])
    assert ship["path"] == ARTIFACT_FILES[ship["artifact"]] and (run_dir / ship["path"]).is_file()
    assert ship["reason"].startswith("fastest of ")


def _result(accuracy, p50, size=1000):
    return {"accuracy": accuracy, "p50_ms": p50, "size_bytes": size}


def test_choose_artifact_fastest_within_budget(tmp_path):
    results = {"teacher": _result(0.98, 1.0, 8000), "student": _result(0.975, 0.5), "pruned": _result(0.95, 0.2),
               "int8": _result(0.972, 0.3, 500)}
    paths = {name: tmp_path / f"{name}.onnx" for name in results}
    ship = choose_artifact(results, ["teacher", "student", "pruned", "int8"], 1.0, paths, tmp_path)
    assert ship["artifact"] == "int8" and ship["path"] == "int8.onnx"
    assert "over the accuracy budget: pruned 95.00%" in ship["reason"] and "16.0x smaller" in ship["reason"]
    # A tighter budget leaves only the teacher and the student.
    assert choose_artifact(results, list(results), 0.5, paths, tmp_path)["artifact"] == "student"


def test_choose_artifact_when_nothing_is_within_budget(tmp_path):
    results = {"teacher": _result(0.98, 1.0), "student": _result(0.90, 0.5), "int8": _result(0.93, 0.3)}
    paths = {name: tmp_path / f"{name}.onnx" for name in results}
    ship = choose_artifact(results, ["student", "int8"], 1.0, paths, tmp_path)
    assert ship["artifact"] == "int8" and "shipping the most accurate one" in ship["reason"]


def test_load_manifest(tmp_path):
    assert load_manifest(tmp_path) is None
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(CompressError, match="manifest.json is not valid JSON"):
        load_manifest(tmp_path)
