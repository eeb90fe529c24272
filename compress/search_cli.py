"""The application side of ``compress search``: the real measurements and the real training for the core in
compress/search.py. Every candidate trains through ``run_pipeline`` in its own run folder,
DIR/candidates/<structure>/e<epochs>/, so a re-run of the same search (an interrupted one included) reuses
every finished stage by fingerprint. Both formats of a structure come out of one pipeline run: fp32 is the
pipeline's ``pruned`` artifact, int8 its ``int8``.

With ``search.workers`` N > 1, a rung's structures first train (teacher, distill, prune) in N spawned processes,
each with threads / N torch threads; then each run is completed here, one at a time (export, quantize and
benchmark reuse the trained stages by fingerprint), so no candidate is timed while another trains."""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from compress.data import load_dataset
from compress.errors import CompressError
from compress.fsutil import check_out_folder
from compress.latency import Target
from compress.onnxutil import make_session, predict
from compress.pipeline import run_pipeline
from compress.search import (
    TEXT_FORMATS,
    UntrainedTimer,
    check_formats,
    image_builder,
    image_feed,
    parse_budget,
    run_search,
    structure_stats,
    structures,
    text_structures,
)

ARTIFACT_OF_FORMAT = {"fp32": "pruned", **{fmt: "int8" for fmt in TEXT_FORMATS[1:]}}
# Text: the quantize stage settings that make a run's int8 artifact the format's candidate (its accuracy is the
# search's to judge, so no accuracy budget; the stage still keeps fp32 when the candidate is not faster).
TEXT_QUANTIZE = {"int8": ['quantize.mode="dynamic"'], "dynamic_int8": ['quantize.mode="dynamic"'],
                 "static_u8s8_qdq": ['quantize.mode="static"'],
                 "int4_weight_only": ['quantize.mode="auto"', 'quantize.text_candidates=["int4_weight_only"]']}


def budget_overrides(budgets: list[str]) -> list[str]:
    """--budget p50_ms=0.2 -> --set search.p50_ms=0.2 (validated first, with a one-line message)."""
    return [f"search.{key}={value!r}" for key, value in map(parse_budget, budgets)]


def run(load: Callable[[list[str]], object], out_dir: Path, budgets: list[str], reference: Path | None = None,
        log: Callable[[str], None] = print) -> dict:
    """``load(extra_overrides)`` builds the PipelineConfig (the user's config, --set, --data, --device, then the
    extra overrides); the search's own settings are its ``search`` section."""
    out_dir = Path(out_dir)
    check_out_folder(out_dir)
    extra = budget_overrides(budgets)
    cfg = load(extra)
    search_cfg = cfg.search
    data = load_dataset(cfg.data)
    text = data.kind == "text"
    check_formats(search_cfg, text)
    b = cfg.benchmark
    target = Target(b.provider, tuple(b.provider_option_values().items()), b.optimization, b.execution_mode,
                    b.threads, b.inter_op_threads)
    if text:
        from compress import text_search

        check_text_space(cfg)
        extra += text_overrides(cfg, data.train.x.shape[-1])
        space = text_structures(search_cfg)
        build = text_search.text_builder(data, search_cfg, cfg.export, cfg.prune.round_to)
        feed = text_search.text_feed(data)

        def stats(structure):
            return text_search.text_stats(structure, data, cfg.prune.round_to, search_cfg.seed)
    else:
        space = structures(search_cfg)
        build = image_builder(data.input_shape, data.num_classes, cfg.prune.target, search_cfg)
        feed = image_feed(data.input_shape, search_cfg.seed)

        def stats(structure):
            return structure_stats(structure, data.input_shape, data.num_classes, cfg.prune.target)
    timer = UntrainedTimer(out_dir / "untrained", build, feed, target, search_cfg)
    val_sessions: dict[str, float] = {}

    def val_accuracy(path: Path) -> float:
        key = str(path)
        if key not in val_sessions:  # the validation split picks the winner; the test split is only reported
            session = make_session(path, b.provider, b.threads)
            if text:
                from compress import text_run
                from compress.text_onnx import onnx_logits

                encoded = text_run.with_tokenizer_of(data, path)  # the ids this model was trained on
                logits = encoded.val.sample_logits(onnx_logits(session, text_run.samples(encoded.val)))
            else:
                logits = predict(session, data.val.x)
            val_sessions[key] = float((logits.argmax(axis=1) == data.val.sample_y).mean())
        return val_sessions[key]

    def candidate(structure, epochs: int):
        """The run folder and pipeline config of one structure trained for ``epochs``."""
        run_dir = out_dir / "candidates" / structure.name / f"e{epochs}"
        return run_dir, load([*extra, *structure.overrides(), f"{structure.epochs_key}={epochs}"])

    def train(structure, epochs: int) -> dict[str, dict]:
        run_dir, run_cfg = candidate(structure, epochs)
        manifest = run_candidate(structure.name, run_cfg, run_dir)
        out = {}
        for fmt in search_cfg.formats:
            artifact = ARTIFACT_OF_FORMAT[fmt]
            result = manifest["results"][artifact]
            # the manifest names files as the run was given its folder: relative to this process's cwd
            path = Path(result["path"]) if Path(result["path"]).exists() else run_dir / result["path"]
            out[fmt] = {"val_accuracy": val_accuracy(path), "test_accuracy": result["accuracy"],
                        "p50_ms": result["p50_ms"], "size_bytes": result["size_bytes"], "run_dir": str(run_dir),
                        "artifact": artifact,
                        "reused": all(s.get("status") == "reused" for s in manifest["stages"].values())}
            if text and fmt != "fp32":  # the stage keeps fp32 when the candidate is not faster: say so
                out[fmt]["quantized_as"] = manifest["stages"]["quantize"]["metrics"]["candidate"]
        return out

    def train_ahead(rung: list, epochs: int) -> None:
        train_in_parallel({s.name: candidate(s, epochs) for s in rung}, search_cfg.workers)

    context = {"data": data.name, "kind": data.kind}
    if reference is not None:
        context["reference"] = reference_result(Path(reference))
    return run_search(search_cfg, out_dir, stats, timer.measure, train, context, log,
                      train_ahead if search_cfg.workers > 1 else None, space)


def text_overrides(cfg, length: int) -> list[str]:
    """What every text candidate run adds to the user's config: the quantize stage pinned to the searched
    format, and the benchmark's headline latency at data.max_length tokens (where the untrained ones are timed)."""
    quantized = [f for f in cfg.search.formats if f != "fp32"]
    lengths = sorted({*cfg.benchmark.seq_lengths, length})
    return [*(TEXT_QUANTIZE[quantized[0]] if quantized else []), "quantize.accuracy_aware=false",
            f"benchmark.seq_lengths={lengths}", f"benchmark.headline_seq={length}"]


def check_text_space(cfg) -> None:
    """With a teacher trained here (or the packaged one, the same shape), no searched size may exceed it."""
    if cfg.teacher.source == "file":
        return  # a user's teacher is checked when each student is made from it
    teacher = cfg.teacher.text_model
    for name, limit in (("text_layers", teacher.layers), ("text_hidden", teacher.hidden), ("text_heads", teacher.heads),
                        ("text_ffn", teacher.intermediate)):
        too_big = [v for v in getattr(cfg.search, name) if v > limit]
        if too_big:
            key = {"text_layers": "layers", "text_hidden": "hidden", "text_heads": "heads"}.get(name, "intermediate")
            raise CompressError(f"search.{name}: {too_big[0]} exceeds the teacher's {limit} (teacher.text_model.{key}); "
                                "a student is at most its teacher's size")


def run_candidate(name: str, run_cfg, run_dir: Path, train_only: bool = False) -> dict:
    """One candidate's pipeline run (resumed: what is finished is reused); its errors name the candidate."""
    try:
        return run_pipeline(run_cfg, run_dir, resume=True, train_only=train_only)
    except CompressError as exc:
        raise CompressError(f"search candidate {name} ({run_dir}): {exc}") from exc


def train_in_parallel(runs: dict[str, tuple[Path, object]], workers: int) -> None:
    """The training stages of every run (name -> (run folder, pipeline config)) in ``workers`` spawned processes,
    the configured torch threads split between them. The first failure is raised here (a CompressError keeps
    its one line); the processes still running finish their candidate, whose stages stay cached."""
    processes = min(workers, len(runs))
    context = multiprocessing.get_context("spawn")  # fork would copy this process's torch threads and locks
    with ProcessPoolExecutor(processes, mp_context=context) as pool:
        futures = {}
        for name, (run_dir, run_cfg) in runs.items():
            threaded = dataclasses.replace(run_cfg, threads=max(1, run_cfg.threads // processes))
            futures[pool.submit(run_candidate, name, threaded, run_dir, True)] = name
        try:
            for future in as_completed(futures):
                future.result()
        except BrokenProcessPool as exc:
            raise CompressError(f"a search worker process died (killed, or out of memory) while training "
                                f"{', '.join(runs)}: lower search.workers (now {workers}) and run the search again "
                                "(finished candidates are reused)") from exc
        finally:
            for future in futures:
                future.cancel()


def reference_result(run_dir: Path) -> dict:
    """The int8 result of a finished pipeline run, shown beside the winner."""
    path = run_dir / "manifest.json" if run_dir.is_dir() else run_dir
    try:
        result = json.loads(path.read_text())["results"]["int8"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CompressError(f"--reference {run_dir}: no finished pipeline run with an int8 result there ({exc}); "
                            "give a run folder of `compress pipeline`") from exc
    return {"name": f"{run_dir} int8", "accuracy": result["accuracy"], "p50_ms": result["p50_ms"],
            "size_bytes": result["size_bytes"]}
