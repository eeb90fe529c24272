"""The `compress` command line through click's test runner: --help of every command, the pipeline on the
quick preset, and each per-stage command on its own files."""
from __future__ import annotations

import json
import tomllib

import onnx
import pytest
from click.testing import CliRunner

from compress.cli import main


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _json_tail(text: str) -> dict:
    """The JSON object a per-stage command prints last (progress lines may come before it)."""
    start = 0 if text.startswith("{") else text.index("\n{") + 1
    return json.loads(text[start:])


@pytest.mark.parametrize("command", [None, *sorted(main.commands)])
def test_every_command_has_help_with_an_example(command):
    result = invoke(*([command] if command else []), "--help")
    assert result.exit_code == 0
    assert "Example" in result.output
    assert f"compress {command or 'pipeline'} " in result.output


def test_config_prints_a_config_that_loads_back(quick_toml):
    result = invoke("config", "--config", quick_toml, "--set", "distill.temperature=2", "--set", "prune.amount=0.25")
    assert result.exit_code == 0
    config = tomllib.loads(result.output)
    assert config["distill"]["temperature"] == 2.0 and config["prune"]["amount"] == 0.25
    assert config["data"]["source"] == "digits" and config["distill"]["train"]["epochs"] == 15


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, quick_toml):
    """`compress pipeline` on the quick preset from a config file, with --set overrides and --baseline."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    result = invoke("pipeline", "--config", quick_toml, "--out", run_dir, "--data", "digits", "--baseline",
                    "--set", "distill.temperature=3", "--set", "ship.accuracy_budget=2.0")
    return run_dir, result


def test_pipeline_runs_from_a_config_file_with_overrides(cli_run):
    run_dir, result = cli_run
    assert result.exit_code == 0, result.output
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["config"]["distill"]["temperature"] == 3.0 and manifest["config"]["distill"]["baseline"] is True
    assert manifest["config"]["ship"]["accuracy_budget"] == 2.0 and manifest["config"]["distill"]["train"]["epochs"] == 15
    assert set(manifest["results"]) == {"teacher", "student_baseline", "student", "pruned", "int8"}
    # The printed summary is the measured table, then the ship choice and where the report is.
    for name, r in manifest["results"].items():
        assert f"| {name} | {100 * r['accuracy']:.2f}% |" in result.stdout
    assert f"ship: {manifest['ship']['artifact']} ({manifest['ship']['path']})" in result.stdout
    assert f"report: {run_dir / 'report.md'}" in result.stdout


def test_pipeline_baseline_is_in_the_report(cli_run):
    run_dir, _ = cli_run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    distill = manifest["stages"]["distill"]["metrics"]
    assert (run_dir / "distill" / "student_baseline.safetensors").is_file() and (run_dir / "export" / "student_baseline.onnx").is_file()
    text = (run_dir / "report.md").read_text()
    base = distill["student_baseline"]
    assert (f"| without distillation (hard labels) | {100 * base['val_accuracy']:.2f}% | "
            f"{100 * base['test_accuracy']:.2f}% |") in text
    assert f"| distilled (T=3.0, alpha=0.9, offline) | {100 * distill['student']['val_accuracy']:.2f}% |" in text
    assert f"| student_baseline | {100 * manifest['results']['student_baseline']['accuracy']:.2f}% |" in text


def test_pipeline_refuses_a_finished_run_then_resumes_it(cli_run, quick_toml):
    run_dir, _ = cli_run
    args = ["pipeline", "--config", quick_toml, "--out", run_dir, "--data", "digits", "--baseline",
            "--set", "distill.temperature=3", "--set", "ship.accuracy_budget=2.0"]
    refused = invoke(*args)
    assert refused.exit_code == 2
    assert refused.stderr.strip().splitlines() == [
        f"error: {run_dir} already holds a finished run: pass --resume to continue it (unchanged stages are reused), "
        "--force to replace it, or choose another --out"]
    resumed = invoke(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    for stage in ("teacher", "distill", "prune", "export", "quantize", "benchmark"):
        assert f"[{stage}] unchanged since the last run: reused" in resumed.stdout


def test_per_stage_commands_chain_on_their_own_files(tmp_path):
    teacher = invoke("teacher", "--data", "digits", "--set", "teacher.source=train", "--set", "teacher.model.arch=mlp",
                     "--set", "teacher.train.epochs=3", "--set", "teacher.train.optimizer=adamw",
                     "--set", "teacher.train.lr=0.003", "--out", tmp_path / "t")
    assert teacher.exit_code == 0, teacher.output
    assert _json_tail(teacher.stdout)["test_accuracy"] >= 0.8
    student = invoke("distill", "--teacher", tmp_path / "t" / "teacher.safetensors", "--data", "digits",
                     "--set", "distill.student.arch=mlp", "--set", "distill.student.width=0.5",
                     "--set", "distill.train.epochs=2", "--set", "distill.train.optimizer=adamw",
                     "--set", "distill.train.lr=0.003", "--out", tmp_path / "s")
    assert student.exit_code == 0, student.output
    assert _json_tail(student.stdout)["student"]["test_accuracy"] >= 0.8
    pruned = invoke("prune", tmp_path / "s" / "student.safetensors", "--teacher", tmp_path / "t" / "teacher.safetensors",
                    "--data", "digits", "--set", "prune.amount=0.3", "--set", "prune.round_to=1",
                    "--set", "prune.protect_first=false", "--set", "prune.finetune.epochs=1", "--out", tmp_path / "p")
    assert pruned.exit_code == 0, pruned.output
    metrics = _json_tail(pruned.stdout)
    assert 0.2 < metrics["params_reduction"] < 1 and metrics["test_accuracy"] >= 0.5
    assert (tmp_path / "p" / "pruned.safetensors").is_file() and (tmp_path / "p" / "prune.md").is_file()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, mlp_teacher_path):
    out = tmp_path_factory.mktemp("cli_export") / "model.onnx"
    result = invoke("export", mlp_teacher_path, "--data", "digits", "--out", out, "--set", "export.parity_samples=64")
    return out, result


def test_export_command(exported, mlp_teacher_path):
    out, result = exported
    assert result.exit_code == 0, result.output
    parity = _json_tail(result.stdout)
    assert parity["samples"] == 64 and parity["max_abs_diff"] <= 1e-3 and parity["top1_agreement"] >= 0.995
    onnx.checker.check_model(onnx.load(str(out)))
    again = invoke("export", mlp_teacher_path, "--data", "digits", "--out", out)
    assert again.exit_code == 2 and "already exists: pass --force to replace it" in again.stderr
    assert invoke("export", mlp_teacher_path, "--data", "digits", "--out", out, "--force").exit_code == 0


def test_quantize_command(exported, tmp_path):
    out = tmp_path / "q.onnx"
    result = invoke("quantize", exported[0], "--data", "digits", "--out", out,
                    "--set", "quantize.calibration_samples=32", "--set", "quantize.method=percentile")
    assert result.exit_code == 0, result.output
    metrics = _json_tail(result.stdout)
    assert metrics["calibration_samples"] == 32 and metrics["method"] == "percentile"
    assert metrics["int8_accuracy"] >= metrics["fp32_accuracy"] - 0.03
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_benchmark_command(exported, tmp_path):
    out = tmp_path / "bench"
    result = invoke("benchmark", exported[0], "--data", "digits", "--set", "benchmark.min_runs=20", "--set", "benchmark.min_seconds=0",
                    "--set", "benchmark.warmup=fixed", "--set", "benchmark.warmup_runs=2", "--set", "benchmark.profile=false",
                    "--set", "benchmark.cold_start=false", "--out", out)
    assert result.exit_code == 0, result.output
    document = json.loads((out / "benchmark.json").read_text())
    r = document["results"]["model"]
    assert 0.9 <= r["accuracy"] <= 1.0 and 0 < r["p50_ms"] <= r["p99_ms"] and r["size_bytes"] == exported[0].stat().st_size
    assert "model" in result.stdout and f"wrote {out}" in result.stdout
    assert (out / "benchmark.md").is_file()
