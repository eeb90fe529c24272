"""``compress pipeline``: teacher -> distill -> prune -> export -> quantize -> benchmark -> report.

Each stage builds its folder in a hidden staging folder that is swapped in only when the stage
succeeds, then the manifest is rewritten atomically. With ``resume``, a stage whose config and
input files are unchanged (and whose outputs are intact) is reused instead of run again."""
from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

import torch

from compress import distributed
from compress.config import PipelineConfig, to_dict
from compress.data import load_dataset
from compress.errors import CompressError
from compress.fsutil import check_out_folder, foreign_files, run_lock
from compress.manifest import MANIFEST_VERSION, load_manifest, manifest_problem, new_manifest, save_manifest
from compress.report import results_table, write_report
from compress.runner import (
    data_identity,
    is_run_folder,
    output_paths,
    owned_files,
    refuse_foreign_folder,
    remove_staging_leftovers,
    remove_temporary_files,
    run_stage,
)
from compress.train import checkpoint_files
from stages import STAGES
from stages.teacher import teacher_data, teacher_inputs

CHECKPOINTS = ".checkpoints"  # run_dir/.checkpoints/<stage>/: per-epoch training checkpoints of the stage in progress


def run_pipeline(cfg: PipelineConfig, run_dir: Path, resume: bool = False, force: bool = False,
                 train_only: bool = False) -> dict:
    """``train_only`` stops after the training stages (teacher, distill, prune), leaving an unfinished run that
    a later call with ``resume`` completes: a parallel search trains candidates side by side this way, then
    times them one at a time."""
    run_dir = Path(run_dir)
    # Under torchrun every process runs this function: all train (teacher, distill, prune), rank 0 alone
    # locks the folder, decides what to reuse, writes, and runs export/quantize/benchmark.
    is_main = distributed.context().is_main
    if is_main:
        check_out_folder(run_dir)
        refuse_foreign_folder(run_dir, force)
    was_run_folder = is_main and is_run_folder(run_dir)
    with run_lock(run_dir) if is_main else contextlib.nullcontext():
        old_stages = _previous_stages(run_dir, resume, force, was_run_folder) if is_main else None
        old_stages = distributed.broadcast_object(old_stages)
        manifest = new_manifest(to_dict(cfg))
        manifest["training_processes"] = distributed.context().world_size
        torch.set_num_threads(distributed.threads_per_process(cfg.threads))
        data = teacher_data(cfg.teacher, load_dataset(cfg.data))  # text: encoded by the teacher's own tokenizer
        identity = data_identity(cfg.data)
        manifest["data"] = {"name": data.name, "train": data.train.num_samples, "val": data.val.num_samples,
                            "test": data.test.num_samples, "classes": data.class_names,
                            "preprocessing": data.preprocessing(), "content": identity["content"]}
        if data.test.groups is not None:  # text in windows: rows of the splits, as the stages see them
            manifest["data"]["windows"] = {"train": len(data.train), "val": len(data.val), "test": len(data.test)}

        def stage(name: str, inputs: dict[str, Path]) -> dict[str, Path]:
            spec, stage_cfg = STAGES[name], getattr(cfg, name)
            try:
                record = run_stage(name, stage_cfg, identity, inputs,
                                   lambda out: spec.run(stage_cfg, inputs, data, out), run_dir / name, run_dir,
                                   run_dir / CHECKPOINTS / name, old_stages.get(name), reuse=resume)
            finally:
                for folder in (run_dir / CHECKPOINTS / name, run_dir / CHECKPOINTS):
                    with contextlib.suppress(OSError):
                        folder.rmdir()  # only when empty: a killed stage keeps its checkpoints for --resume
            if is_main:
                manifest["stages"][name] = record
                save_manifest(run_dir, manifest)
            return output_paths(record, run_dir)

        t = stage("teacher", teacher_inputs(cfg.teacher, cfg.data))
        d = stage("distill", {"teacher": t["teacher"]})
        p = stage("prune", {"student": d["student"], "teacher": t["teacher"]})
        if not is_main or train_only:
            return manifest
        distributed.teardown()  # export, quantize and benchmark run in rank 0 alone: timings must not share the CPU
        checkpoints = {"teacher": t["teacher"], "student": d["student"], "pruned": p["pruned"]}
        if "student_baseline" in d:
            checkpoints["student_baseline"] = d["student_baseline"]
        e = stage("export", checkpoints)
        q = stage("quantize", {"model": e["pruned"]})
        artifacts = {**{name: e[name] for name in checkpoints}, "int8": q["int8"]}
        stage("benchmark", artifacts)

        manifest["results"] = {name: _result_entry(r) for name, r in manifest["stages"]["benchmark"]["metrics"].items()
                               if name in artifacts}
        manifest["latency_ratios"] = manifest["stages"]["benchmark"]["metrics"].get("latency_ratios", {})
        if data.kind == "text":
            bench = manifest["stages"]["benchmark"]["metrics"]
            manifest["baselines"] = {"tfidf_lr": bench["tfidf_baseline"],
                                     "tfidf_lr_model_input": bench["tfidf_baseline_model_input"]}
            manifest["fusion"] = {name: {"fused_operators": m["fused_operators"], "attention_fused": m["attention_fused"]}
                                  for name, m in manifest["stages"]["export"]["metrics"].items()}
        manifest["ship"] = choose_artifact(manifest["results"], cfg.ship.candidates, cfg.ship.accuracy_budget, artifacts, run_dir)
        manifest["status"] = "complete"
        manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        save_manifest(run_dir, manifest)
        write_report(run_dir, manifest)
        shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)
        return manifest


def _previous_stages(run_dir: Path, resume: bool, force: bool, was_run_folder: bool) -> dict:
    """The previous run's stage records: reused with --resume, and with --force the record of what compress
    wrote (the only files it replaces). Refuses to touch an earlier run without --resume or --force."""
    previous = load_manifest(run_dir)
    interrupted = any(checkpoint_files(folder) for folder in (run_dir / CHECKPOINTS).glob("*"))
    if (previous is not None or interrupted) and not (resume or force):
        state = "a finished run" if isinstance(previous, dict) and previous.get("status") == "complete" else "an unfinished run"
        raise CompressError(f"{run_dir} already holds {state}: pass --resume to continue it (unchanged stages are "
                            "reused), --force to replace it, or choose another --out")
    problem = manifest_problem(previous) if previous is not None else None
    if problem and resume:
        raise CompressError(f"{run_dir / 'manifest.json'} {problem}: it was not written by this compress; rerun with "
                            "--force, or choose another --out")
    if resume and previous is not None and previous.get("manifest_version") != MANIFEST_VERSION:
        raise CompressError(f"{run_dir} was made by an older compress (manifest version "
                            f"{previous.get('manifest_version')}, this one writes {MANIFEST_VERSION}): re-run it with "
                            "--force, or choose another --out")
    if previous is None or problem:
        for name in RUN_FILES:
            if (run_dir / name).exists():
                raise CompressError(f"{run_dir / name} was not written by compress and would be replaced: move it away, "
                                    "or choose another --out")
    records = {} if previous is None or problem else previous["stages"]
    for name in STAGES:  # a stage folder is compress's alone: anything else in it is refused before any training
        foreign = foreign_files(run_dir / name, owned_files(records.get(name), run_dir / name, run_dir)) \
            if (run_dir / name).is_dir() else []
        if foreign:
            raise CompressError(f"{run_dir / name} holds files compress did not write ({', '.join(foreign[:3])}): move "
                                "them away, or choose another --out")
    if not resume:
        shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)
    if was_run_folder:
        # A killed run leaves its stages' hidden staging folders and temporary files: nothing in them is kept.
        for name in STAGES:
            remove_staging_leftovers(run_dir / name)
        remove_temporary_files(run_dir)
    return records


RUN_FILES = ("manifest.json", "report.md", "accuracy_vs_latency.png")  # what the pipeline writes beside the stage folders


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
