"""Percentile + entropy calibration: onnxruntime's one pass per method against compress's one shared pass.

    flock /tmp/compress-heavy.lock python benchmarks/histogram_calibration.py

On the real-width ViT-Ti of benchmarks/architectures.py (5.4M parameters, random weights with real-batch
statistics, 32x32 inputs: 64 tokens) with the quantize stage's defaults (256 calibration samples, 8 per run,
16 per chunk), builds the two static U8S8 QDQ models the accuracy-aware search asks for, calibrated with
percentile and with entropy: (a) as onnxruntime does it, ``quantize_static`` calibrating each method on its own;
(b) as the quantize stage does it, one pass into compress/histogram_calibration.py's shared collector, both
ranges written to onnxruntime's calibration cache, then ``quantize_static`` loading them. Rounds alternate the
two ways (a shared machine: a slow spell hits both). Reports wall seconds per way and how far the ranges agree.
Writes benchmarks/results/histogram_calibration.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import QuantFormat, quantize_static

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compress import histogram_calibration as hc  # noqa: E402
from compress.checkpoint import save_model  # noqa: E402
from compress.data import DataConfig, load_dataset  # noqa: E402
from compress.fsutil import write_json, write_text  # noqa: E402
from compress.onnx_export import ExportConfig  # noqa: E402
from compress.synthetic import calibrated_model, class_brightness_npz  # noqa: E402
from compress.zoo import ModelSpec  # noqa: E402
from stages import export  # noqa: E402
from stages import quantize as q  # noqa: E402


def build(model: Path, out: Path, method: str, reader, cache: Path, cfg: q.QuantizeConfig, stride: int) -> None:
    extra = {"CalibTensorRangeSymmetric": False, "CalibStridedMinMax": stride, "CalibPercentile": cfg.percentile}
    quantize_static(str(model), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel,
                    calibrate_method=q.METHODS[method], extra_options=extra, calibration_cache_path=str(cache))


def onnxruntime_way(model, calibration, name, cfg, stride, work: Path) -> float:
    started = time.perf_counter()
    for method in hc.SHARED_METHODS:
        build(model, work / f"ort_{method}.onnx", method, q.CalibrationReader(calibration, name, q.CALIBRATION_BATCH),
              work / f"ort_{method}.json", cfg, stride)
    return time.perf_counter() - started


def shared_way(model, calibration, name, cfg, stride, work: Path) -> float:
    started = time.perf_counter()
    collector = hc.collect(model, q.CalibrationReader(calibration, name, q.CALIBRATION_BATCH), stride, None,
                           cfg.percentile)
    for method in hc.SHARED_METHODS:
        hc.write_cache(collector, method, work / f"shared_{method}.json")
        build(model, work / f"shared_{method}.onnx", method, None, work / f"shared_{method}.json", cfg, stride)
    return time.perf_counter() - started


def agreement(work: Path, method: str) -> dict:
    def ranges(path):
        def value(entry):
            return float(np.ravel(entry["data"] if isinstance(entry, dict) else entry)[0])
        return {t: (value(e["lowest"]), value(e["highest"])) for t, e in json.loads(path.read_text())["data"].items()}

    ours, theirs = ranges(work / f"shared_{method}.json"), ranges(work / f"ort_{method}.json")
    relative = [max(abs(a - b) for a, b in zip(ours[t], theirs[t])) / max(theirs[t][1] - theirs[t][0], 1e-12)
                for t in theirs]
    return {"tensors": len(theirs), "same_tensors": ours.keys() == theirs.keys(),
            "identical_ranges": sum(ours[t] == theirs[t] for t in theirs), "max_relative_difference": max(relative)}


def markdown(doc: dict) -> str:
    lines = ["# Percentile + entropy calibration: one pass per method (onnxruntime) or one shared pass\n",
             f"Command: `{doc['command']}`  \n{doc['created']}, {doc['machine']} (a shared machine: rounds alternate "
             f"the two ways). {doc['model']}, {doc['calibration_samples']} calibration samples. Each way builds "
             "both static U8S8 QDQ models (percentile and entropy calibration), from calibration to the written "
             "model.\n",
             "| way | " + " | ".join(f"round {i + 1} s" for i in range(len(doc["rounds"]))) + " | median s |",
             "|---|" + "---|" * (len(doc["rounds"]) + 1)]
    for way in ("onnxruntime", "shared"):
        seconds = [r[way] for r in doc["rounds"]]
        lines.append(f"| {way} | " + " | ".join(f"{s:.1f}" for s in seconds) + f" | {np.median(seconds):.1f} |")
    lines += ["", "| method | tensors | same tensors | identical ranges | max difference / range width |",
              "|---|---|---|---|---|"]
    for method, a in doc["agreement"].items():
        lines.append(f"| {method} | {a['tensors']} | {a['same_tensors']} | {a['identical_ranges']} | "
                     f"{a['max_relative_difference']:.2g} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "histogram_calibration")
    args = parser.parse_args()
    torch.set_num_threads(2)
    cfg = q.QuantizeConfig()
    with tempfile.TemporaryDirectory(prefix="histogram-calibration-") as tmp:
        work = Path(tmp)
        data = load_dataset(DataConfig(source=str(class_brightness_npz(work / "rgb.npz", 32, 1200))))
        model = calibrated_model(ModelSpec("vit_tiny", 1.0, None), data, 256)
        save_model(model, work / "model.safetensors")
        export.run(ExportConfig(), {"model": work / "model.safetensors"}, data, work)
        onnx_path = work / "model.onnx"
        name = onnx.load(str(onnx_path)).graph.input[0].name
        calibration = q.calibration_samples(data, cfg.calibration_samples, cfg.seed)
        stride = q.calibration_stride(len(calibration), cfg.calibration_chunk)
        rounds = []
        for _ in range(args.rounds):
            for path in work.glob("*_*.json"):
                path.unlink()  # every round calibrates from scratch
            with q._quiet():
                rounds.append({"onnxruntime": onnxruntime_way(onnx_path, calibration, name, cfg, stride, work),
                               "shared": shared_way(onnx_path, calibration, name, cfg, stride, work)})
            print(rounds[-1], flush=True)
        doc = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
               "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "machine": f"{platform.processor() or platform.machine()}, load average {os.getloadavg()[0]:.1f}",
               "model": f"ViT-Ti at real width ({sum(p.numel() for p in model.parameters()):,} parameters, 32x32)",
               "calibration_samples": len(calibration), "rounds": rounds,
               "agreement": {method: agreement(work, method) for method in hc.SHARED_METHODS}}
    write_json(args.out.with_suffix(".json"), doc)
    write_text(args.out.with_suffix(".md"), markdown(doc))
    print(f"wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
