"""compress/pipeline.py: resuming a run, rerunning only what a config change touches, refusing to
overwrite a finished run, and the lock against a second process in the same run folder."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from compress.checkpoint import load_model
from compress.config import PipelineConfig
from compress.errors import CompressError
from compress.pipeline import STAGES, run_pipeline


@pytest.fixture
def run_copy(quick_run, tmp_path):
    """A private copy of the session's quick run (mtimes kept), so tests may resume or rerun it."""
    run_dir = tmp_path / "run"
    shutil.copytree(quick_run[0], run_dir)
    return run_dir


def _stage_files(run_dir):
    """Every file a stage wrote, with its modification time in nanoseconds."""
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns
            for stage in STAGES for p in sorted((run_dir / stage).rglob("*")) if p.is_file()}


def test_resume_reuses_every_stage_without_rewriting_files(run_copy, quick_run):
    before = _stage_files(run_copy)
    assert len(before) >= 9
    manifest = run_pipeline(PipelineConfig.quick(), run_copy, resume=True)
    assert {name: stage["status"] for name, stage in manifest["stages"].items()} == {name: "reused" for name in STAGES}
    assert _stage_files(run_copy) == before
    assert manifest["status"] == "complete" and manifest["results"] == quick_run[1]["results"]
    assert json.loads((run_copy / "manifest.json").read_text())["stages"]["prune"]["status"] == "reused"
    assert not (run_copy / ".lock").exists()


def test_changing_prune_amount_reruns_prune_and_later_stages_only(run_copy, quick_run):
    old = quick_run[1]
    before = _stage_files(run_copy)
    cfg = PipelineConfig.quick()
    cfg = dataclasses.replace(cfg, prune=dataclasses.replace(cfg.prune, amount=0.6))
    manifest = run_pipeline(cfg, run_copy, resume=True)
    statuses = {name: stage["status"] for name, stage in manifest["stages"].items()}
    assert statuses == {"teacher": "reused", "distill": "reused", "prune": "done", "export": "done",
                        "quantize": "done", "benchmark": "done"}
    after = _stage_files(run_copy)
    for path in ("teacher/teacher.safetensors", "distill/student.safetensors"):
        assert after[path] == before[path]
    assert after["prune/pruned.safetensors"] != before["prune/pruned.safetensors"]
    assert manifest["stages"]["prune"]["outputs"]["pruned"]["sha256"] != old["stages"]["prune"]["outputs"]["pruned"]["sha256"]
    assert manifest["config"]["prune"]["amount"] == 0.6
    assert manifest["results"]["pruned"]["params"] < old["results"]["pruned"]["params"]
    pruned = load_model(run_copy / "prune" / "pruned.safetensors")
    assert sum(p.numel() for p in pruned.parameters()) == manifest["results"]["pruned"]["params"]


def test_a_finished_run_is_not_overwritten(run_copy):
    before = _stage_files(run_copy)
    manifest_text = (run_copy / "manifest.json").read_text()
    with pytest.raises(CompressError, match="already holds a finished run: pass --resume .* --force to replace it"):
        run_pipeline(PipelineConfig.quick(), run_copy)
    assert _stage_files(run_copy) == before and (run_copy / "manifest.json").read_text() == manifest_text


def test_an_unfinished_run_is_not_overwritten_either(run_copy):
    manifest = json.loads((run_copy / "manifest.json").read_text())
    manifest["status"] = "running"
    (run_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CompressError, match="already holds an unfinished run"):
        run_pipeline(PipelineConfig.quick(), run_copy)


@pytest.mark.slow
def test_force_reruns_every_stage(run_copy):
    before = _stage_files(run_copy)
    manifest = run_pipeline(PipelineConfig.quick(), run_copy, force=True)
    assert all(stage["status"] == "done" for stage in manifest["stages"].values())
    after = _stage_files(run_copy)
    assert all(after[path] != before[path] for path in ("teacher/teacher.safetensors", "export/teacher.onnx", "quantize/int8.onnx"))
    assert manifest["status"] == "complete"


def test_the_lock_refuses_a_concurrent_run(run_copy):
    # A live compress process holds the lock (a live process that is not compress would not: its lock is stale).
    other = subprocess.Popen([sys.executable, "-c", "import compress, time; time.sleep(60)"], cwd=Path(__file__).parents[1])
    try:
        (run_copy / ".lock").write_text(str(other.pid))
        with pytest.raises(CompressError, match=rf"is in use by another compress process \(pid {other.pid}\)"):
            run_pipeline(PipelineConfig.quick(), run_copy, resume=True)
        assert (run_copy / ".lock").read_text() == str(other.pid)  # the other process keeps its lock
    finally:
        other.kill()
        other.wait()
    # Once that process is gone its lock is stale: the next run takes it over and releases it at the end.
    manifest = run_pipeline(PipelineConfig.quick(), run_copy, resume=True)
    assert manifest["status"] == "complete" and not (run_copy / ".lock").exists()
