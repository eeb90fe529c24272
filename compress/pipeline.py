"""``compress pipeline``: teacher -> distill -> prune -> export -> quantize -> benchmark -> report.

Each stage builds its folder in a hidden staging folder that is swapped in only when the stage
succeeds, then the manifest is rewritten atomically. With ``resume``, a stage whose config and
input files are unchanged (and whose outputs are intact) is reused instead of run again."""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from compress import distributed
from compress.config import PipelineConfig, to_dict
from compress.data import load_dataset
from compress.errors import CompressError
from compress.fsutil import run_lock, sha256
from compress.manifest import StageResult, file_record, load_manifest, new_manifest, save_manifest
from compress.report import results_table, write_report
from compress.train import checkpoint_files, checkpointing
from stages import benchmark, distill, export, prune, quantize, teacher

STAGES = ("teacher", "distill", "prune", "export", "quantize", "benchmark")
CHECKPOINTS = ".checkpoints"  # run_dir/.checkpoints/<stage>/: per-epoch training checkpoints of the stage in progress


def run_pipeline(cfg: PipelineConfig, run_dir: Path, resume: bool = False, force: bool = False) -> dict:
    run_dir = Path(run_dir)
    # Under torchrun every process runs this function: all train (teacher, distill, prune), rank 0 alone
    # locks the folder, decides what to reuse, writes, and runs export/quantize/benchmark.
    is_main = distributed.context().is_main
    with run_lock(run_dir) if is_main else contextlib.nullcontext():
        old_stages = _previous_stages(run_dir, resume, force) if is_main else None
        old_stages = distributed.broadcast_object(old_stages)
        manifest = new_manifest(to_dict(cfg))
        manifest["training_processes"] = distributed.context().world_size
        torch.set_num_threads(distributed.threads_per_process(cfg.threads))
        data = load_dataset(cfg.data)
        manifest["data"] = {"name": data.name, "train": len(data.train), "val": len(data.val), "test": len(data.test),
                            "classes": data.class_names, "preprocessing": data.preprocessing()}
        run_info = {"run_dir": str(run_dir.resolve()), "created": manifest["created"]}

        def stage(name: str, stage_cfg, inputs: dict[str, Path], work: Callable[[Path], StageResult]) -> dict[str, Path]:
            return _run_stage(run_dir, manifest, old_stages, name, stage_cfg, cfg.data, inputs, work)

        t = stage("teacher", cfg.teacher, _teacher_inputs(cfg),
                  lambda out: teacher.run(cfg.teacher, cfg.data, data, out))
        d = stage("distill", cfg.distill, {"teacher": t["teacher"]},
                  lambda out: distill.run(cfg.distill, t["teacher"], data, out))
        p = stage("prune", cfg.prune, {"student": d["student"], "teacher": t["teacher"]},
                  lambda out: prune.run(cfg.prune, d["student"], t["teacher"], data, out))
        if not is_main:
            return manifest
        distributed.teardown()  # export, quantize and benchmark run in rank 0 alone: timings must not share the CPU
        checkpoints = {"teacher": t["teacher"], "student": d["student"], "pruned": p["pruned"]}
        if "student_baseline" in d:
            checkpoints["student_baseline"] = d["student_baseline"]
        e = stage("export", cfg.export, checkpoints,
                  lambda out: export.run(cfg.export, checkpoints, data, out, run_info))
        q = stage("quantize", cfg.quantize, {"pruned": e["pruned"]},
                  lambda out: quantize.run(cfg.quantize, e["pruned"], data, out))
        artifacts = {**{name: e[name] for name in checkpoints}, "int8": q["int8"]}
        stage("benchmark", cfg.benchmark, artifacts, lambda out: benchmark.run(cfg.benchmark, artifacts, data, out))

        manifest["results"] = {name: _result_entry(r) for name, r in manifest["stages"]["benchmark"]["metrics"].items()}
        manifest["ship"] = choose_artifact(manifest["results"], cfg.ship.candidates, cfg.ship.accuracy_budget, artifacts, run_dir)
        manifest["status"] = "complete"
        manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        save_manifest(run_dir, manifest)
        write_report(run_dir, manifest)
        shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)
        return manifest


def _previous_stages(run_dir: Path, resume: bool, force: bool) -> dict:
    """The stages a --resume may reuse; refuses to touch an earlier run without --resume or --force."""
    previous = load_manifest(run_dir)
    interrupted = any(checkpoint_files(folder) for folder in (run_dir / CHECKPOINTS).glob("*"))
    if (previous is not None or interrupted) and not (resume or force):
        state = "a finished run" if previous and previous.get("status") == "complete" else "an unfinished run"
        raise CompressError(f"{run_dir} already holds {state}: pass --resume to continue it (unchanged stages are "
                            "reused), --force to replace it, or choose another --out")
    if not resume:
        shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)
    # A killed run leaves its stage's hidden staging folder and temporary files: nothing in them is kept.
    for leftover in run_dir.glob(".*"):
        if leftover.is_dir() and leftover.name.split(".")[1] in STAGES:
            shutil.rmtree(leftover, ignore_errors=True)
        elif leftover.is_file() and leftover.name.endswith(".tmp"):
            leftover.unlink(missing_ok=True)
    return previous["stages"] if previous is not None and resume else {}


def _run_stage(run_dir: Path, manifest: dict, old_stages: dict, name: str, stage_cfg, data_cfg,
               inputs: dict[str, Path], work: Callable[[Path], StageResult]) -> dict[str, Path]:
    input_records = {key: file_record(path, run_dir) for key, path in inputs.items()}
    config = {"stage": asdict(stage_cfg), "data": asdict(data_cfg)}
    fingerprint = hashlib.sha256(json.dumps({"config": config, "inputs": {k: v["sha256"] for k, v in input_records.items()}},
                                            sort_keys=True).encode()).hexdigest()
    old = old_stages.get(name)
    is_main = distributed.context().is_main
    if old and old.get("fingerprint") == fingerprint and _outputs_intact(run_dir, old):
        if is_main:
            manifest["stages"][name] = {**old, "status": "reused"}
            save_manifest(run_dir, manifest)
            print(f"[{name}] unchanged since the last run: reused")
        return {key: run_dir / record["path"] for key, record in old["outputs"].items()}
    if is_main:
        print(f"[{name}] running")
    started = time.perf_counter()
    final_dir = run_dir / name
    # Training checkpoints live outside the staging folder, which a killed run loses, and go once the stage is done.
    checkpoint_dir = run_dir / CHECKPOINTS / name
    with checkpointing(checkpoint_dir, key=fingerprint), distributed.output_dir(final_dir) as tmp_dir:
        result = work(tmp_dir)
        # Outputs were written inside the staging folder: record them at their final place.
        relative = {key: Path(path).relative_to(tmp_dir) for key, path in result.outputs.items()}
    outputs = {key: final_dir / rel for key, rel in relative.items()}
    if is_main:
        manifest["stages"][name] = {
            "status": "done", "config": config["stage"], "fingerprint": fingerprint, "inputs": input_records,
            "outputs": {key: file_record(path, run_dir) for key, path in outputs.items()},
            "metrics": result.metrics, "wall_s": round(time.perf_counter() - started, 2),
        }
        save_manifest(run_dir, manifest)
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            checkpoint_dir.parent.rmdir()  # when no other stage's checkpoints are left
    distributed.barrier()  # the other processes read this stage's outputs next
    return outputs


def _outputs_intact(run_dir: Path, record: dict) -> bool:
    for output in record.get("outputs", {}).values():
        path = run_dir / output["path"]
        if not path.is_file() or sha256(path) != output["sha256"]:
            return False
    return True


def _teacher_inputs(cfg: PipelineConfig) -> dict[str, Path]:
    """The teacher's own files take part in its fingerprint, so a changed file reruns the stage."""
    if cfg.teacher.source == "file":
        return {"teacher_file": Path(cfg.teacher.path)} if Path(cfg.teacher.path).is_file() else {}
    if cfg.teacher.source in ("auto", "pretrained"):
        weights = teacher.pretrained_path(cfg.teacher.model, cfg.data)
        return {"pretrained": weights} if weights.is_file() else {}
    return {}


RESULT_KEYS = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "p50_ms", "p90_ms", "p99_ms", "mean_ms",
               "throughput_sps", "size_bytes", "params", "macs", "path")


def _result_entry(benchmark_result: dict) -> dict:
    return {key: benchmark_result[key] for key in RESULT_KEYS if key in benchmark_result}


def choose_artifact(results: dict, candidates: list[str], budget_points: float, paths: dict[str, Path],
                    run_dir: Path) -> dict:
    """The fastest candidate (p50) whose accuracy is within ``budget_points`` of the teacher's."""
    teacher_accuracy = results["teacher"]["accuracy"]
    floor = teacher_accuracy - budget_points / 100
    eligible = [n for n in candidates if n in results and results[n]["accuracy"] >= floor - 1e-12]
    rejected = [n for n in candidates if n in results and n not in eligible]
    if not eligible:
        best = max((n for n in candidates if n in results), key=lambda n: results[n]["accuracy"])
        return {"artifact": best, "path": str(paths[best].relative_to(run_dir)),
                "reason": f"no candidate is within {budget_points:g} points of the teacher "
                          f"({100 * teacher_accuracy:.2f}%); shipping the most accurate one"}
    chosen = min(eligible, key=lambda n: results[n]["p50_ms"])
    r = results[chosen]
    reason = (f"fastest of {', '.join(eligible)} within {budget_points:g} points of the teacher's "
              f"{100 * teacher_accuracy:.2f}%: {100 * r['accuracy']:.2f}% at p50 {r['p50_ms']:.3f} ms "
              f"({results['teacher']['p50_ms'] / r['p50_ms']:.1f}x faster and "
              f"{results['teacher']['size_bytes'] / r['size_bytes']:.1f}x smaller than the teacher)")
    slower = [n for n in eligible if n != chosen]
    if slower:
        reason += "; " + ", ".join(f"{n} p50 {results[n]['p50_ms']:.3f} ms" for n in slower)
    if rejected:
        reason += "; over the accuracy budget: " + ", ".join(f"{n} {100 * results[n]['accuracy']:.2f}%" for n in rejected)
    return {"artifact": chosen, "path": str(paths[chosen].relative_to(run_dir)), "reason": reason}


def summary(manifest: dict) -> str:
    return results_table(manifest["results"])
