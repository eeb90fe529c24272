"""Every published family of compress/architectures.py through export, quantize (auto and accuracy-aware),
benchmark and prune (30% and 50% of MACs): pass/fail per stage (with the one-line error), params, MACs, the
int8/fp32 p50 ratio (timed interleaved by compress/latency.py, batch 1, one thread), and each quantize run's
wall time and peak resident memory (measured in a fresh child process per run).

    flock /tmp/compress-heavy.lock python benchmarks/architectures.py            # real widths (slow)
    python benchmarks/architectures.py --quick                                   # small widths, a smoke run

Models have random weights with BatchNorm statistics from real batches (structure, speed and memory are what is
measured; accuracy is meaningless), on synthetic 3x32x32 RGB images (class-dependent brightness) from an .npz,
as a new user would bring them. Writes benchmarks/results/architectures{_quick}.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compress.architectures import FAMILIES  # noqa: E402
from compress.checkpoint import save_model  # noqa: E402
from compress.data import DataConfig, load_dataset  # noqa: E402
from compress.errors import CompressError  # noqa: E402
from compress.fsutil import write_json, write_text  # noqa: E402
from compress.metrics import model_stats  # noqa: E402
from compress.onnx_export import ExportConfig  # noqa: E402
from compress.synthetic import calibrated_model, class_brightness_npz  # noqa: E402
from compress.train import TrainConfig  # noqa: E402
from compress.worker import peak_rss_mb  # noqa: E402
from compress.zoo import ModelSpec  # noqa: E402
from stages import benchmark, export, prune, quantize  # noqa: E402

STAGE_NAMES = ("export", "quantize_auto", "quantize_aware", "benchmark", "prune_30", "prune_50")


def quantize_child(args) -> None:
    """One quantize run in this (fresh) process; prints its wall time and peak RSS as JSON."""
    data = load_dataset(DataConfig(source=args.data))
    cfg = quantize.QuantizeConfig(**json.loads(args.config))
    started = time.perf_counter()
    result = {"ok": True}
    try:
        metrics = quantize.run(cfg, {"model": Path(args.model)}, data, Path(args.output).parent,
                               name=Path(args.output).stem).metrics
        result.update(decision=metrics["decision"], candidate=metrics["candidate"],
                      val_drop_points=metrics["val_drop_points"], fp32_nodes=len(metrics["fp32_nodes"]),
                      attempts=len(metrics["attempts"]),
                      skipped=[s["candidate"] for s in metrics["skipped_candidates"]])
    except CompressError as exc:
        result = {"ok": False, "error": str(exc)}
    result["seconds"] = time.perf_counter() - started
    result["peak_rss_mb"] = _peak_rss_mb()
    # CPU seconds (user + system) of this process and the timing worker it started: on a shared machine the
    # wall time stretches with the load, the CPU time much less
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    result["cpu_seconds"] = sum(u.ru_utime + u.ru_stime for u in usage)
    print("RESULT " + json.dumps(result))


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: ru_maxrss would carry the benchmark process's peak in through
    fork + exec), or its timing worker's if larger."""
    return max(peak_rss_mb() or 0.0, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)  # Linux: KiB


def run_quantize(model: Path, output: Path, data_path: Path, cfg: dict) -> dict:
    command = [sys.executable, __file__, "--child", "--data", str(data_path), "--model", str(model),
               "--output", str(output), "--config", json.dumps(cfg)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        return {"ok": False, "error": (done.stderr.strip().splitlines() or ["no output"])[-1][:300],
                "traceback": "Traceback" in done.stderr}
    return json.loads(lines[-1].removeprefix("RESULT "))


def one_family(arch: str, args, data, data_path: Path, work: Path) -> dict:
    row = {"family": arch, "stages": {}}
    folder = work / arch
    folder.mkdir()
    # DenseNet-121 with one layer per block is mostly its protected 7x7 stem: keep its published depth
    depth = None if args.quick and arch == "densenet121" else args.depth
    model = calibrated_model(ModelSpec(arch, args.width, depth), data, 256)
    row.update(model_stats(model, data.input_shape))
    checkpoint = folder / "model.safetensors"
    save_model(model, checkpoint)

    def stage(name: str, function):
        if name not in args.stages:
            return
        started = time.perf_counter()
        try:
            row["stages"][name] = {"ok": True, **(function() or {})}
        except CompressError as exc:
            row["stages"][name] = {"ok": False, "error": str(exc)}
        except Exception as exc:  # a traceback a user would see: the thing this benchmark exists to catch
            row["stages"][name] = {"ok": False, "error": f"TRACEBACK {type(exc).__name__}: {exc}"[:400]}
        row["stages"][name].setdefault("seconds", round(time.perf_counter() - started, 2))
        print(f"{arch:16s} {name:15s} {'ok' if row['stages'][name]['ok'] else 'FAILED ' + row['stages'][name]['error'][:160]}",
              flush=True)

    onnx_path = folder / "model.onnx"
    stage("export", lambda: export.run(ExportConfig(), {"model": checkpoint}, data, folder).metrics["model"])
    for name, cfg in (("quantize_auto", {}), ("quantize_aware", {"mode": "static", "max_accuracy_drop": 0.0})):
        stage(name, lambda cfg=cfg, name=name: _checked(run_quantize(onnx_path, folder / f"{name}.onnx", data_path, cfg)))

    def bench():
        cfg = benchmark.BenchmarkConfig(min_runs=args.runs, min_seconds=args.seconds, profile=False, cold_start=False)
        metrics = benchmark.run(cfg, {"fp32": onnx_path, "int8": folder / "quantize_auto.onnx"}, data,
                                folder / "bench").metrics
        ratio = metrics["latency_ratios"]["int8/fp32"]
        return {"fp32_p50_ms": metrics["fp32"]["p50_ms"], "int8_p50_ms": metrics["int8"]["p50_ms"],
                "int8_fp32_ratio": ratio["ratio"], "ratio_spread": ratio["spread"]}

    stage("benchmark", bench)
    for amount in (0.3, 0.5):
        def pruned(amount=amount):
            cfg = prune.PruneConfig(amount=amount, round_to=args.round_to, finetune=TrainConfig(epochs=1))
            metrics = prune.run(cfg, {"student": checkpoint, "teacher": checkpoint}, data,
                                folder / f"prune_{int(amount * 100)}").metrics
            return {"macs_reduction": metrics["macs_reduction"], "params_reduction": metrics["params_reduction"],
                    "auto_protected": [entry["layer"] for entry in metrics["auto_protected"]],
                    "relative_parity": metrics["after_finetune"]["parity"]["relative_diff"]}

        stage(f"prune_{int(amount * 100)}", pruned)
    return row


def _checked(result: dict) -> dict:
    if not result["ok"]:
        raise CompressError(result["error"])
    return result


def _cell(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(document: dict) -> str:
    quick = document["quick"]
    lines = [f"# Architectures through every stage{' (QUICK smoke run: small widths, not the real-width table)' if quick else ''}\n",
             f"Command: `{document['command']}`  \n{document['created']}, {document['machine']} (a shared machine: "
             "times are pessimistic), torch "
             f"{document['torch']}. Width {document['width']}, depth {document['depth'] or 'published'}, "
             f"{document['image_size']}x{document['image_size']} RGB, random weights (BatchNorm statistics from real "
             "batches), synthetic .npz data: accuracy is meaningless here; structure, speed and memory are not. "
             "int8/fp32: p50 ratio at batch 1, one thread, timed interleaved (below 1 = int8 faster). Quantize time "
             "and peak RSS: the auto-mode run (default config, 256 calibration samples) in a fresh process; CPU s: its "
             "user + system CPU time (with its timing worker); attempts: the int8 models it built and scored (more "
             "than one per candidate when the accuracy-aware search ran).\n",
             "| family | params | MMACs | " + " | ".join(STAGE_NAMES) + " | int8/fp32 | quantize s | quantize CPU s | quantize peak MB | attempts |",
             "|---|---|---|" + "---|" * len(STAGE_NAMES) + "---|---|---|---|---|"]
    for row in document["results"]:
        stages, auto = row["stages"], row["stages"].get("quantize_auto", {})
        ratio = stages.get("benchmark", {}).get("int8_fp32_ratio")
        cells = ["-" if name not in stages else "pass" if stages[name]["ok"] else "**FAIL**" for name in STAGE_NAMES]
        lines.append(f"| {row['family']} | {row['params']:,} | {row['macs'] / 1e6:.1f} | " + " | ".join(cells) +
                     f" | {'-' if ratio is None else f'{ratio:.2f}'} | {auto.get('seconds', 0):.1f} | "
                     f"{_cell(auto.get('cpu_seconds'), '.1f')} | {auto.get('peak_rss_mb', 0):.0f} | "
                     f"{_cell(auto.get('attempts'), 'd')} |")
    failures = [(row["family"], name, s["error"]) for row in document["results"] for name, s in row["stages"].items()
                if not s["ok"]]
    if failures:
        lines += ["", "Failures:", *[f"- {family} {name}: {error}" for family, name, error in failures]]
    protected = [(row["family"], name, s["auto_protected"]) for row in document["results"]
                 for name, s in row["stages"].items() if s.get("auto_protected")]
    if protected:
        lines += ["", "Layers pruning protected automatically:",
                  *[f"- {family} {name}: {', '.join(layers)}" for family, name, layers in protected]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small widths (0.25, one block per stage), fewer runs")
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--stages", nargs="*", default=list(STAGE_NAMES), choices=list(STAGE_NAMES),
                        help="stages to run (benchmark needs quantize_auto)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--samples", type=int, default=1200, help="synthetic images (80%% train, 10%% val, 10%% test)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        quantize_child(args)
        return
    args.width, args.depth = (0.25, 1) if args.quick else (1.0, None)
    args.runs, args.seconds = (20, 0.2) if args.quick else (200, 2.0)
    args.round_to = 1 if args.quick else 8  # small widths have layers of 8 channels: round_to=8 cannot cut them
    out = args.out or ROOT / "benchmarks" / "results" / ("architectures_quick" if args.quick else "architectures")
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="architectures-") as tmp:
        work = Path(tmp)
        data_path = class_brightness_npz(work / "rgb.npz", args.image_size, args.samples)
        data = load_dataset(DataConfig(source=str(data_path)))
        results = []
        for arch in args.families:  # written after every family: a long run that is stopped keeps what it measured
            results.append(one_family(arch, args, data, data_path, work))
            document = {"quick": args.quick, "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
                        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
                                   f"threads, load average {os.getloadavg()[0]:.1f}",
                        "torch": torch.__version__, "width": args.width, "depth": args.depth,
                        "image_size": args.image_size, "samples": args.samples, "results": results}
            write_json(out.with_suffix(".json"), document)
            write_text(out.with_suffix(".md"), markdown(document))
    print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
