"""Compare our int8 quantization with onnxruntime's defaults and PyTorch's own post-training quantization.

    flock /tmp/compress-heavy.lock python benchmarks/quantize_compare.py

On the zoo models trained briefly on mnist (MLP, MobileNet-style, a narrow ResNet-14) and the default
pipeline's pruned ResNet-style student, the model the pipeline quantizes (from --run-dir, which must hold
a finished default run): fp32, our int8 (plain static U8S8 QDQ,
and the default: auto format choice + accuracy-aware), onnxruntime's quantize_static with default
arguments, and PyTorch PT2E with the X86InductorQuantizer (torchao), compiled by Inductor. Test accuracy,
p50 latency at batch 1 and 32 on 1 and 2 threads, and the speed-up as a fraction of int8's ~4x compute
limit. With --pipeline-run, also reads a finished pipeline run and checks its int8 against its fp32
export (issue 5's "done when"). Writes benchmarks/results/quantize_compare.{json,md}.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import shlex
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compress.checkpoint import load_model  # noqa: E402
from compress.data import DataConfig, load_dataset  # noqa: E402
from compress.fsutil import write_json, write_text  # noqa: E402
from compress.metrics import onnx_stats  # noqa: E402
from compress.onnx_export import ExportConfig, export_model  # noqa: E402
from compress.onnxutil import make_session, predict  # noqa: E402
from compress.quant_analysis import cpu_int8_support  # noqa: E402
from compress.report import markdown_table  # noqa: E402
from compress.train import TrainConfig  # noqa: E402
from compress.zoo import BasicBlock, ModelSpec  # noqa: E402
from stages.quantize import CalibrationReader, QuantizeConfig, calibration_samples, quantize  # noqa: E402
from stages.teacher import TeacherConfig, train_teacher  # noqa: E402

BATCHES, THREADS = (1, 32), (1, 2)
INT8_LIMIT = 4.0  # int8 moves and multiplies 4x fewer bytes than fp32: the ideal compute speed-up
# name -> (spec, epochs, optimizer, lr) of the models trained here; "resnet" is the default run's pruned student
ZOO = {"mlp": (ModelSpec("mlp", 1.0), 8, "adamw", 0.003),
       "mobilenet": (ModelSpec("mobilenet", 1.0, 6), 2, "adamw", 0.003),
       "resnet14_w0.5": (ModelSpec("resnet", 0.5, 14), 3, "sgd", 0.05),
       "resnet": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "default",
                        help="finished default run whose pruned student is the ResNet-style model")
    parser.add_argument("--pipeline-run", type=Path, default=None,
                        help="a finished pipeline run to check int8 against its fp32 export")
    parser.add_argument("--models", nargs="+", default=list(ZOO), choices=list(ZOO))
    parser.add_argument("--seconds", type=float, default=0.4, help="timed seconds per latency cell")
    parser.add_argument("--no-pt2e", action="store_true", help="skip PyTorch PT2E")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quantize_compare")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    started = time.perf_counter()
    data = load_dataset(DataConfig(source="mnist"))
    calibration = calibration_samples(data, 256, 0)
    results = {"command": "flock /tmp/compress-heavy.lock python benchmarks/quantize_compare.py " + shlex.join(sys.argv[1:]),
               "machine": {"cpu": platform.processor() or platform.machine(), **cpu_int8_support()},
               "torch": torch.__version__, "models": {}}
    with tempfile.TemporaryDirectory(prefix="quantize-compare.") as tmp:
        for name in args.models:
            print(f"== {name}", flush=True)
            results["models"][name] = compare_model(name, data, calibration, Path(tmp), args)
    if args.pipeline_run:
        results["pipeline_check"] = pipeline_check(args.pipeline_run)
    results["wall_s"] = time.perf_counter() - started
    write_json(args.out.with_suffix(".json"), results)
    write_text(args.out.with_suffix(".md"), markdown(results))
    print(markdown(results))


def compare_model(name: str, data, calibration: np.ndarray, tmp: Path, args) -> dict:
    model, source = trained_model(name, data, args.run_dir)
    fp32_path = tmp / f"{name}_fp32.onnx"
    export_model(model, fp32_path, data, ExportConfig(), {"source": "benchmarks/quantize_compare.py"})
    entry = {"source": source, "macs": onnx_stats(__import__("onnx").load(str(fp32_path)))["macs"], "variants": {}}
    variants = entry["variants"]

    def onnx_variant(label: str, path: Path, extra: dict | None = None) -> None:
        session = make_session(path, "cpu", 0)
        accuracy = float((predict(session, data.test.x).argmax(1) == data.test.y).mean())
        variants[label] = {"accuracy": accuracy, "latency_ms": ort_latency(path, data, args.seconds), **(extra or {})}

    onnx_variant("fp32 (onnxruntime)", fp32_path)
    plain = tmp / f"{name}_plain.onnx"
    started = time.perf_counter()
    quantize(QuantizeConfig.fast(), fp32_path, data, plain)
    onnx_variant("ours: static U8S8 QDQ", plain, {"quantize_s": time.perf_counter() - started})
    ours = tmp / f"{name}_int8.onnx"
    started = time.perf_counter()
    metrics = quantize(QuantizeConfig(), fp32_path, data, ours)
    onnx_variant("ours: default (auto + accuracy-aware)", ours, {
        "quantize_s": time.perf_counter() - started, "decision": metrics["decision"], "candidate": metrics["candidate"],
        "fp32_nodes": [n["node"] for n in metrics["fp32_nodes"]], "val_drop_points": metrics["val_drop_points"],
        "candidates": metrics["candidates"], "attempts": metrics["attempts"]})
    ort_default = tmp / f"{name}_ort_default.onnx"
    from onnxruntime.quantization import quantize_static

    started = time.perf_counter()
    quantize_static(str(fp32_path), str(ort_default), CalibrationReader(calibration, "input"))
    onnx_variant("onnxruntime quantize_static defaults", ort_default, {"quantize_s": time.perf_counter() - started})
    if not args.no_pt2e:
        variants.update(pt2e_variants(model, data, calibration, args.seconds))
    methods = {}
    for method in ("minmax", "entropy", "percentile", "distribution"):
        m = quantize(QuantizeConfig(mode="static", method=method, accuracy_aware=False, layer_report=False),
                     fp32_path, data, tmp / f"{name}_{method}.onnx")
        methods[method] = {"test_accuracy": m["int8_accuracy"], "val_drop_points": m["val_drop_points"]}
    entry["calibration_methods"] = methods
    return entry


def trained_model(name: str, data, run_dir: Path) -> tuple[torch.nn.Module, str]:
    if name == "resnet":
        pruned = run_dir / "prune" / "pruned.safetensors"
        if not pruned.is_file():
            raise SystemExit(f"{pruned} not found: run `compress pipeline --out {run_dir}` first, or pass --run-dir")
        config = json.loads((run_dir / "manifest.json").read_text())["config"]
        student, prune = config["distill"]["student"], config["prune"]
        return load_model(pruned).eval(), (
            f"the default run's student ({student['arch']} width {student['width']} depth {student['depth']}, "
            f"distilled, then {prune['amount']:.0%} of its {prune['target']} pruned)")
    spec, epochs, optimizer, lr = ZOO[name]
    torch.manual_seed(0)
    model, _ = train_teacher(TeacherConfig(source="train", model=spec,
                                           train=TrainConfig(epochs=epochs, optimizer=optimizer, lr=lr)), data)
    return model.eval(), f"{spec.arch} width {spec.width}" + (f" depth {spec.depth}" if spec.arch != "mlp" else "") + \
        f", trained {epochs} epochs here"


def timed(run, seconds: float, repeats: int = 3) -> float:
    """Latency of ``run()`` in ms: the median of at least 20 runs over ``seconds / repeats``, measured
    ``repeats`` times after a warm-up, keeping the lowest median: the machine is shared, and a burst of
    someone else's work should not land in one cell of the table."""
    for _ in range(5):
        run()
    medians = []
    for _ in range(repeats):
        times, begin = [], time.perf_counter()
        while len(times) < 20 or time.perf_counter() - begin < seconds / repeats:
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        medians.append(float(np.median(times)))
    return 1e3 * min(medians)


def ort_latency(path: Path, data, seconds: float) -> dict:
    cells = {}
    for threads in THREADS:
        session = make_session(path, "cpu", threads)
        for batch in BATCHES:
            feed = {"input": np.ascontiguousarray(data.val.x[:batch])}
            cells[f"b{batch}_t{threads}"] = timed(lambda session=session, feed=feed: session.run(None, feed), seconds)
    return cells


def pt2e_variants(model: torch.nn.Module, data, calibration: np.ndarray, seconds: float) -> dict:
    """PyTorch fp32 and PT2E int8 (X86InductorQuantizer), both compiled by Inductor with freezing. The
    quantized graph is exported, calibrated and compiled once per batch size with static shapes
    (Inductor failed on the dynamic-batch quantized graph here: a stride assertion)."""
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError as exc:
        return {"PT2E int8 (X86InductorQuantizer)": {"error": f"torchao is not installed ({exc}): "
                                                             "pip install -e '.[bench]'"}}
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    fp32 = _unshared_relus(copy.deepcopy(model).eval())
    labels = ("fp32 (PyTorch, Inductor)", "PT2E int8 (X86InductorQuantizer)")
    out = {label: {"latency_ms": {}} for label in labels}
    started = time.perf_counter()
    try:
        for batch in BATCHES:
            exported = torch.export.export(fp32, (torch.tensor(data.val.x[:batch]),)).module()
            quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
            prepared = prepare_pt2e(exported, quantizer)
            with torch.no_grad():
                for start in range(0, len(calibration) - batch + 1, batch):
                    prepared(torch.tensor(calibration[start:start + batch]))
            int8 = convert_pt2e(prepared)
            for label, module in zip(labels, (fp32, int8)):
                compiled = torch.compile(module, dynamic=False)
                x = torch.tensor(data.val.x[:batch])
                with torch.no_grad():
                    compiled(x)
                    for threads in THREADS:
                        torch.set_num_threads(threads)
                        out[label]["latency_ms"][f"b{batch}_t{threads}"] = timed(lambda compiled=compiled, x=x: compiled(x), seconds)
                    if batch == 1:
                        predictions = [compiled(torch.tensor(data.test.x[i:i + 1])).argmax(1).item()
                                       for i in range(len(data.test.x))]
                        out[label]["accuracy"] = float((np.array(predictions) == data.test.y).mean())
    except Exception as exc:  # say why PT2E could not run, rather than dropping the row
        out = {labels[1]: {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"}}
    finally:
        torch.set_num_threads(2)
    for entry in out.values():
        entry["export_compile_measure_s"] = time.perf_counter() - started
    return out


def _unshared_relus(model: torch.nn.Module) -> torch.nn.Module:
    """The zoo's BasicBlock calls one ReLU module twice; PT2E's X86 quantizer cannot annotate a module
    partition with two outputs ("Input partition has more than one output node"), so give the second
    call its own ReLU. The function computed is unchanged."""
    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu_out(out + self.shortcut(x))

    for module in model.modules():
        if isinstance(module, BasicBlock):
            module.relu_out = torch.nn.ReLU()
            module.forward = types.MethodType(forward, module)
    return model


def pipeline_check(run_dir: Path) -> dict:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    results, quant = manifest["results"], manifest["stages"]["quantize"]
    source = "pruned"
    return {"run": str(run_dir), "status": manifest.get("status"),
            "stages": {name: stage["status"] for name, stage in manifest["stages"].items()},
            "fp32_export": source, "fp32_accuracy": results[source]["accuracy"], "int8_accuracy": results["int8"]["accuracy"],
            "drop_points": 100 * (results[source]["accuracy"] - results["int8"]["accuracy"]),
            "fp32_p50_ms": results[source]["p50_ms"], "int8_p50_ms": results["int8"]["p50_ms"],
            "speedup": results[source]["p50_ms"] / results["int8"]["p50_ms"], "fp32_macs": results[source]["macs"],
            "quantize_decision": quant["metrics"].get("decision"), "quantize_reason": quant["metrics"].get("decision_reason"),
            "ship": manifest.get("ship", {}).get("artifact")}


def markdown(results: dict) -> str:
    flags = ", ".join(results["machine"]["int8_instructions"]) or "none"
    parts = [
        "# Quantization: ours vs onnxruntime defaults vs PyTorch PT2E\n",
        f"Command: `{results['command']}` ({results.get('wall_s', 0):.0f} s). CPU: {results['machine']['cpu']} "
        f"(int8 instructions: {flags}); torch {results['torch']}. Accuracy on the mnist test split (500 images); "
        "latency = ms per call (lowest of 3 medians, each of >= 20 calls); speed-up = fp32 latency / int8 "
        "latency in the same framework, thread count and batch (the PyTorch fp32 row: against onnxruntime "
        f"fp32); *of 4x* = speed-up / {INT8_LIMIT:g} "
        "(int8's compute limit).\n",
    ]
    for name, entry in results["models"].items():
        parts.append(f"## {name}: {entry['source']}, {entry['macs'] / 1e6:.2f} MMACs\n")
        headers = ["variant", "accuracy"] + [f"b{b} t{t} ms" for t in THREADS for b in BATCHES] + \
                  ["speed-up b1 t1", "of 4x", "speed-up b32 t1", "of 4x"]
        rows, errors = [], []
        for label, v in entry["variants"].items():
            if "error" in v:
                errors.append(f"- **{label}** could not run: {v['error']}")
                continue
            base = entry["variants"]["fp32 (PyTorch, Inductor)" if label.startswith("PT2E") else "fp32 (onnxruntime)"]
            row = [label, f"{100 * v['accuracy']:.2f}%"] + [f"{v['latency_ms'][f'b{b}_t{t}']:.3f}" for t in THREADS for b in BATCHES]
            for batch in BATCHES:
                speedup = base["latency_ms"][f"b{batch}_t1"] / v["latency_ms"][f"b{batch}_t1"]
                row += [f"{speedup:.2f}x", f"{100 * speedup / INT8_LIMIT:.0f}%"]
            rows.append(row)
        parts.append(markdown_table(headers, rows))
        parts += errors
        ours = entry["variants"].get("ours: default (auto + accuracy-aware)", {})
        if ours:
            measured = ", ".join(f"{c['candidate']} {c['p50_ms']:.3f} ms ({100 * c['val_accuracy']:.1f}% val)"
                                 for c in ours.get("candidates", []))
            parts.append(f"\nOur default chose **{ours['candidate']}** (decision: {ours['decision']}; fp32 nodes: "
                         f"{', '.join(ours['fp32_nodes']) or 'none'}; val drop {ours['val_drop_points']:.2f} points; "
                         f"{ours['quantize_s']:.1f} s). Candidates measured in the stage (batch 1, 1 thread): {measured}.\n")
        methods = entry.get("calibration_methods", {})
        if methods:
            parts.append("Calibration methods (our static U8S8 QDQ, no accuracy-aware fallback): " + "; ".join(
                f"{m} {100 * r['test_accuracy']:.2f}% test ({r['val_drop_points']:+.2f} val points lost)"
                for m, r in methods.items()) + ".\n")
    check = results.get("pipeline_check")
    if check:
        ok_accuracy = check["drop_points"] <= 0.5
        parts += ["## Default pipeline: int8 against its fp32 export\n",
                  f"Run `{check['run']}` (stages: {', '.join(f'{k} {v}' for k, v in check['stages'].items())}): "
                  f"{check['fp32_export']} fp32 {100 * check['fp32_accuracy']:.2f}% -> int8 "
                  f"{100 * check['int8_accuracy']:.2f}% ({check['drop_points']:+.2f} points: "
                  f"{'within' if ok_accuracy else 'OVER'} the 0.5-point budget); p50 {check['fp32_p50_ms']:.3f} -> "
                  f"{check['int8_p50_ms']:.3f} ms ({check['speedup']:.2f}x, {check['fp32_macs'] / 1e6:.1f} MMACs, "
                  f"pipeline benchmark stage, batch 1). Quantize stage decision: {check['quantize_decision']} "
                  f"({check['quantize_reason']}). Shipped: {check['ship']}.\n"]
    checks = [(name, entry) for name, entry in results["models"].items()
              if name.startswith("resnet") and entry["macs"] >= 20e6]
    if checks:
        parts.append("## Done-when check: ResNet-style students of >= 20 MMACs, batch 1, 1 thread\n")
    for name, entry in checks:
        v = entry["variants"]
        fp32, ours = v["fp32 (onnxruntime)"], v["ours: default (auto + accuracy-aware)"]
        speedup = fp32["latency_ms"]["b1_t1"] / ours["latency_ms"]["b1_t1"]
        drop = 100 * (fp32["accuracy"] - ours["accuracy"])
        parts.append(f"- {name} ({entry['source']}, {entry['macs'] / 1e6:.1f} MMACs): our default int8 is "
                     f"**{speedup:.2f}x** faster than its fp32 export ({'meets' if speedup >= 2 else 'MISSES'} the 2x "
                     f"goal) and loses {drop:+.2f} test points ({'within' if drop <= 0.5 else 'OVER'} 0.5).")
    return "\n".join(parts)


if __name__ == "__main__":
    main()
