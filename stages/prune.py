"""Pruning: remove whole channels, neurons and attention heads (a smaller dense model, not masks) until
a channel, MACs, parameter or measured-latency target is met, in rounds of prune + distillation
fine-tune from the teacher; or, as an option, zero single weights (unstructured magnitude pruning).

Every pruning step is verified before it is taken: the pruned copy must map a real batch to finite
logits, export to ONNX and match PyTorch there. A step that fails is refused, with the layer whose
removal broke the model named, and the model is left as it was.

Text data: the student's lowest-importance attention heads (Michel et al. 2019) and FFN neurons are removed
(``compress.text_pruning``), the pruned model is verified (forward, export with fused attention, parity),
then fine-tuned by distillation from the teacher and verified again."""
from __future__ import annotations

import contextlib
import copy
import gzip
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from torch import nn
from tqdm import tqdm

from compress import text_run
from compress.checkpoint import load_model, save_model
from compress.data import Dataset, batches
from compress.distillation import distill, distillation_loss
from compress.errors import CompressError
from compress.fsutil import private_tempdir, write_json, write_text
from compress.latency import Target, TimingRules, latency_summary, time_jobs
from compress.manifest import StageResult
from compress.metrics import model_stats
from compress.onnx_export import ExportConfig, export_model
from compress.onnxutil import resolve_provider
from compress.pruning import (
    IMPORTANCES,
    MAX_LAYER_RATIO,
    NEEDS_GRADIENTS,
    GroupRecord,
    channel_table,
    classifier_layer,
    find_breaking_group,
    find_unsafe_layers,
    first_layer,
    magnitude_prune,
    make_permanent,
    permanent_copy,
    prune_copy,
    removed_channel_fraction,
    weight_sparsity,
)
from compress.report import prune_markdown, text_prune_markdown
from compress.text_models import text_train_config
from compress.train import TrainConfig, evaluate, seed_everything

TARGETS = ("channels", "macs", "params", "latency", "sparsity")
LATENCY_REFERENCES = ("model", "teacher")
AUTO_CANDIDATES = ("l1", "l2", "bn_scale", "taylor")  # importance="auto" tries these, uniform and global, and keeps
# the most accurate after pruning
SEARCH_ITERATIONS = 10  # steps of the ratio search (each step shrinks the bracket to at most 90%, bisection 50%)
SEARCH_CLOSE_ENOUGH = 0.995  # ... or fewer, once a ratio's result is within 0.5% under the goal
SEARCH_GUARD = 0.1  # an interpolated ratio stays this share of the bracket away from its ends
SEARCH_RESOLUTION = 0.005  # ... or once the bracket is this narrow: channel rounding makes metrics jump between
# neighbouring ratios, so a goal may have no ratio within 0.5% of it
DENSE_NOTE = ("unstructured sparsity only zeroes weights: onnxruntime's CPU kernels (and other dense runtimes) still "
              "multiply every zero, so the model is not faster; the saving is in the compressed file size")


@dataclass
class PruneConfig:
    """Prune the student to a target and fine-tune it with distillation from the teacher."""

    target: str = "macs"  # channels, macs, params, latency (p50 of the exported model), or sparsity (unstructured)
    amount: float = 0.4  # share to remove, in (0, 1): of the channels, MACs, params, p50 latency, or weights (sparsity)
    max_params: int | None = None  # target=params: keep at most this many parameters (instead of `amount`)
    max_latency_ms: float | None = None  # target=latency: reach this p50 in ms (instead of `amount`)
    latency_reference: str = "model"  # target=latency with `amount`: a share of the p50 of the model or the teacher
    provider: str = "cpu"  # onnxruntime execution provider latency is measured on
    latency_threads: int = 1  # intra-op threads when measuring latency
    latency_runs: int = 200  # timed runs per latency measurement (batch 1, after 20 warm-up runs) ...
    latency_seconds: float = 0.2  # ... and for at least this long
    importance: str = "l1"  # l1, l2, bn_scale (network slimming), taylor (first order, KD loss), random, or auto
    global_pruning: bool = False  # rank channels across layers (global) instead of the same share per layer (uniform);
    # importance=auto tries both
    round_to: int = 8  # keep channel counts multiples of this: int8 and fp32 kernels run best on multiples of 8
    protect_first: bool = True  # never prune the first layer's outputs (cheap, and sensitive)
    protected: list[str] = field(default_factory=list)  # more layer names never to prune (the classifier always is)
    rounds: int = 1  # rounds of prune + fine-tune; round r goes r/rounds of the way to the target
    steps: int = 20  # target=latency: most pruning steps per round, each followed by export and timing
    step_fraction: float = 0.1  # target=latency: each step removes this share of the current MACs
    verify_samples: int = 64  # real test samples of the ONNX parity check after every pruning step
    recalibrate_bn: bool = True  # re-estimate BatchNorm statistics on training batches after each pruning step
    temperature: float = 4.0  # distillation temperature of the fine-tune
    # Lower than distill's 0.9 because the teacher here is often the model being pruned, or one barely more
    # accurate, and a heavier soft term holds the pruned model to its outputs (docs/pruning.md, benchmark).
    alpha: float = 0.5  # soft-target weight of the fine-tune (1 - alpha weighs the hard labels)
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=4, lr=0.02))  # per round
    # Text data only (target, amount, importance, rounds, finetune above are for images):
    head_amount: float = 0.5  # share of all attention heads removed (at least one kept per layer, so counts differ)
    ffn_amount: float = 0.5  # share of every layer's FFN neurons removed (kept count a multiple of round_to)
    importance_samples: int = 256  # train samples the gradient head/neuron importance is summed over
    # Every window of every text: on bbc-news seed 0 the int8 pruned student kept 96.86% against 95.96% with one
    # random window per text and epoch (teacher 97.31%), for ~3 minutes more
    # (benchmarks/results/text_default.md against text_default_prune_one_window.md).
    text_finetune: TrainConfig = field(default_factory=lambda: text_train_config(epochs=2, lr=5e-4, windows_per_text=0))  # KD fine-tune after pruning
    text_alpha: float = 0.9  # soft-target weight of the text fine-tune (the teacher is the larger BERT)

    def __post_init__(self) -> None:
        if not (0.0 <= self.head_amount < 1.0 and 0.0 <= self.ffn_amount < 1.0):
            raise ValueError(f"prune.head_amount and prune.ffn_amount must be in [0, 1), got {self.head_amount} and "
                             f"{self.ffn_amount}")
        if not 0.0 <= self.text_alpha <= 1.0:
            raise ValueError(f"prune.text_alpha must be within [0, 1], got {self.text_alpha}")
        if self.importance_samples < 1:
            raise ValueError(f"prune.importance_samples must be >= 1, got {self.importance_samples}")
        if self.target not in TARGETS:
            raise ValueError(f"prune.target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if not 0.0 < self.amount < 1.0:
            raise ValueError(f"prune.amount must be a fraction in (0, 1), got {self.amount}")
        if self.importance not in (*IMPORTANCES, "auto"):
            raise ValueError(f"prune.importance must be one of {', '.join(IMPORTANCES)}, auto; got {self.importance!r}")
        if self.latency_reference not in LATENCY_REFERENCES:
            raise ValueError(f"prune.latency_reference must be one of {', '.join(LATENCY_REFERENCES)}, "
                             f"got {self.latency_reference!r}")
        if self.max_params is not None and self.max_params < 1:
            raise ValueError(f"prune.max_params must be a positive parameter count, got {self.max_params}")
        if self.max_latency_ms is not None and not self.max_latency_ms > 0:
            raise ValueError(f"prune.max_latency_ms must be > 0, got {self.max_latency_ms}")
        for name in ("round_to", "rounds", "steps", "latency_runs", "verify_samples", "latency_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"prune.{name} must be >= 1, got {getattr(self, name)}")
        if self.latency_seconds < 0:
            raise ValueError(f"prune.latency_seconds must be >= 0, got {self.latency_seconds}")
        if not 0.0 < self.step_fraction < 1.0:
            raise ValueError(f"prune.step_fraction must be a fraction in (0, 1), got {self.step_fraction}")
        resolve_provider(self.provider)  # a missing provider fails at config time, naming what to install


def run(cfg: PruneConfig, inputs: dict[str, Path], data: Dataset, out_dir: Path) -> StageResult:
    """Prune ``inputs['student']`` and fine-tune it from ``inputs['teacher']`` into ``out_dir/pruned.safetensors``."""
    if text_run.is_text(data):
        return run_text(cfg, inputs, data, out_dir)
    model_path, teacher_path = inputs["student"], inputs["teacher"]
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.finetune.seed)
    model = load_model(model_path)
    teacher = load_model(teacher_path)
    if isinstance(model, torch.jit.ScriptModule):
        raise CompressError(f"{model_path} is TorchScript, which cannot be pruned: give a model saved by compress "
                            "(or a factory and state_dict)")
    protected = protected_layers(model, cfg)
    auto_protected = {}
    if cfg.target != "sparsity":
        with one_thread():
            auto_protected = find_unsafe_layers(model, data.input_shape, protected, lambda m: check_runs(m, data))
        for layer, why in auto_protected.items():
            tqdm.write(f"[prune] protecting {layer}: {why}")
        protected = protected + list(auto_protected)
    with private_tempdir("prune") as tmp:
        work = Path(tmp)
        before_onnx = work / "before.onnx"
        verification = verify(model, data, before_onnx, cfg, "the unpruned model")
        before = {**snapshot(model, data), "latency": file_latency(before_onnx, data, cfg),
                  "onnx_bytes": before_onnx.stat().st_size, "parity": verification}
        if cfg.target == "sparsity":
            model, metrics = prune_unstructured(model, teacher, data, cfg, protected, before, work)
        else:
            model, metrics = prune_structured(model, teacher, data, cfg, protected, before, work)
    metrics["auto_protected"] = [{"layer": layer, "reason": why} for layer, why in auto_protected.items()]
    save_model(model, out_dir / "pruned.safetensors")
    write_json(out_dir / "prune.json", metrics)
    write_text(out_dir / "prune.md", prune_markdown(metrics, "# Pruning report"))
    return StageResult({"pruned": out_dir / "pruned.safetensors", "report": out_dir / "prune.md",
                        "metrics": out_dir / "prune.json"}, metrics)


def protected_layers(model: nn.Module, cfg: PruneConfig) -> list[str]:
    """Names of the layers whose outputs are never pruned: the classifier, the first layer unless
    ``protect_first`` is off, and ``cfg.protected``."""
    names = {module: name for name, module in model.named_modules()}
    layers = dict(model.named_modules())
    unknown = [name for name in cfg.protected if name not in layers or not name]
    if unknown:
        prunable = [n for n, m in layers.items() if isinstance(m, (nn.Conv2d, nn.Linear))]
        raise CompressError(f"prune.protected names unknown layer {unknown[0]!r}; layers are: {', '.join(prunable)[:400]}")
    protected = [names[classifier_layer(model)]] + ([names[first_layer(model)]] if cfg.protect_first else [])
    return list(dict.fromkeys(protected + list(cfg.protected)))


def snapshot(model: nn.Module, data: Dataset) -> dict:
    return {**_stats(model, data.input_shape), "channels": channel_table(model), "val_accuracy": evaluate(model, data.val)}


# ---- structured pruning ---------------------------------------------------------------------------

def prune_structured(model: nn.Module, teacher: nn.Module, data: Dataset, cfg: PruneConfig, protected: list[str],
                     before: dict, work: Path) -> tuple[nn.Module, dict]:
    target = resolve_target(cfg, before, teacher, data, work)
    start = previous_goal = target["start"]
    rounds = []
    current_p50 = before["latency"]["p50_ms"]
    for round_index in range(1, cfg.rounds + 1):
        goal = start - (start - target["goal"]) * round_index / cfg.rounds
        started = time.perf_counter()
        if cfg.target == "latency":
            model, steps, current_p50 = _latency_round(model, teacher, data, cfg, protected, goal, current_p50, target,
                                                       work, round_index)
        else:
            # channels: the share of each group's channels to cut now, so that round r keeps 1 - amount * r / rounds
            ratio = 1 - goal / previous_goal if cfg.target == "channels" else None
            try:
                model, step = prune_step(model, teacher, data, cfg, protected, goal, work, f"round {round_index}",
                                           ratio=ratio)
            except _Unreachable as exc:
                raise CompressError(f"cannot bring the model down to {goal:,.0f} {cfg.target}: {exc} (protected: "
                                    f"{', '.join(protected)}); lower prune.amount or unprotect layers") from exc
            steps, current_p50 = [step], step["p50_ms"]
        previous_goal = goal
        after_prune = {**snapshot(model, data), "p50_ms": current_p50, "prune_s": round(time.perf_counter() - started, 2)}
        result = distill(model, teacher, data, cfg.finetune, cfg.temperature, cfg.alpha,
                         desc=f"prune fine-tune {round_index}")
        check_runs(model, data)
        rounds.append({"round": round_index, "goal": goal, "steps": steps, "after_prune": after_prune,
                       "after_finetune": {"val_accuracy": result.best_val_accuracy, "best_epoch": result.best_epoch,
                                          "train_s": round(result.wall_s, 2), "history": result.history}})
    final_onnx = work / "final.onnx"
    final_parity = verify(model, data, final_onnx, cfg, "the fine-tuned model")
    final_latency = file_latency(final_onnx, data, cfg)
    after_prune = {**{k: v for k, v in rounds[-1]["after_prune"].items() if k != "prune_s"},
                   "latency": final_latency, "onnx_bytes": final_onnx.stat().st_size}
    if cfg.target == "channels":
        # every unprotected group lost `amount` of its channels (up to round_to); layers coupled to a protected
        # layer (e.g. a residual stream fed by the protected first conv) keep theirs, so the share over all is lower
        reached = 1 - removed_channel_fraction(before["channels"], after_prune["channels"], protected)
        target.update(reached=reached, met=True)
    else:
        # latency: what the pruning loop measured and stopped on; the fine-tuned model (same graph) is timed
        # again into after_prune.latency, within measurement noise of it
        reached = {"macs": after_prune["macs"], "params": after_prune["params"], "latency": current_p50}[cfg.target]
        target.update(reached=reached, met=bool(reached <= target["goal"] * (1 + 1e-9)))
    last = rounds[-1]
    metrics = {
        "method": "structured", "importance": cfg.importance,
        "allocation": "auto" if cfg.importance == "auto" else _allocation(cfg.global_pruning),
        "protected": protected, "target": target, "before": before, "after_prune": after_prune,
        "after_finetune": {"val_accuracy": last["after_finetune"]["val_accuracy"], "test_accuracy": evaluate(model, data.test),
                           "best_epoch": last["after_finetune"]["best_epoch"],
                           "train_s": round(sum(r["after_finetune"]["train_s"] for r in rounds), 2),
                           "history": last["after_finetune"]["history"], "parity": final_parity},
        "rounds": rounds,
        "macs_reduction": 1 - after_prune["macs"] / before["macs"],
        "params_reduction": 1 - after_prune["params"] / before["params"],
        "channels_removed": removed_channel_fraction(before["channels"], after_prune["channels"], protected),
        "latency_speedup": before["latency"]["p50_ms"] / final_latency["p50_ms"],
        "provider": final_latency["provider"],
    }
    return model, metrics


def resolve_target(cfg: PruneConfig, before: dict, teacher: nn.Module, data: Dataset, work: Path) -> dict:
    """Where pruning starts and must end, in the target's unit."""
    if cfg.target == "channels":
        return {"kind": "channels", "unit": "share of each unprotected group's channels kept; reached counts every "
                "unprotected layer, including those tied to a protected one, which keep theirs",
                "start": 1.0, "goal": 1 - cfg.amount}
    if cfg.target in ("macs", "params"):
        start = before[cfg.target]
        goal = cfg.max_params if cfg.target == "params" and cfg.max_params else (1 - cfg.amount) * start
        if goal >= start:
            raise CompressError(f"prune.max_params={cfg.max_params:,} is not below the model's {start:,} parameters: "
                                "nothing to prune")
        return {"kind": cfg.target, "unit": cfg.target, "start": start, "goal": goal}
    start = before["latency"]["p50_ms"]
    reference = {"source": "model", "p50_ms": start}
    if cfg.max_latency_ms:
        goal = cfg.max_latency_ms
        reference = {"source": "prune.max_latency_ms", "p50_ms": None}
    elif cfg.latency_reference == "teacher":
        teacher_onnx = work / "teacher.onnx"
        verify(teacher, data, teacher_onnx, cfg, "the teacher")
        reference = {"source": "teacher", "p50_ms": file_latency(teacher_onnx, data, cfg)["p50_ms"]}
        goal = (1 - cfg.amount) * reference["p50_ms"]
    else:
        goal = (1 - cfg.amount) * start
    floor = latency_floor(data, cfg, work)
    target = {"kind": "latency", "unit": "p50 ms", "start": start, "goal": goal, "reference": reference,
              "provider": resolve_provider(cfg.provider), "threads": cfg.latency_threads, "floor_p50_ms": floor}
    if goal <= floor:
        raise CompressError(f"cannot reach a p50 of {goal:.4f} ms on {target['provider']}: onnxruntime's own per-call "
                            f"overhead is {floor:.4f} ms (a one-operator graph with the same input), so no pruned "
                            f"model can be that fast; the model now takes {start:.4f} ms")
    if goal >= start:
        target["note"] = f"the model already runs at {start:.4f} ms, within the goal"
    return target


def _latency_round(model, teacher, data, cfg: PruneConfig, protected, goal: float, p50: float, target: dict,
                   work: Path, round_index: int):
    """Prune in steps of ``cfg.step_fraction`` of the MACs, exporting and timing after each, until the
    p50 latency is at most ``goal``."""
    steps = []
    for step_index in range(1, cfg.steps + 1):
        if p50 <= goal:
            break
        macs = _stats(model, data.input_shape)["macs"]
        try:
            model, step = prune_step(model, teacher, data, cfg, protected, macs * (1 - cfg.step_fraction), work,
                                       f"round {round_index} step {step_index}", metric="macs")
        except _Unreachable as exc:
            raise CompressError(_latency_failure(goal, p50, target, model, data, f"no layer can shrink further ({exc})")) from exc
        p50 = step["p50_ms"]
        steps.append(step)
    if p50 > goal:
        raise CompressError(_latency_failure(goal, p50, target, model, data,
                                             f"{cfg.steps} steps of {cfg.step_fraction:.0%} MACs were not enough; raise "
                                             "prune.steps or prune.step_fraction"))
    return model, steps, p50


def _latency_failure(goal: float, p50: float, target: dict, model: nn.Module, data: Dataset, why: str) -> str:
    macs_left = _stats(model, data.input_shape)["macs"]
    return (f"cannot reach a p50 of {goal:.4f} ms on {target['provider']} ({target['threads']} thread(s)): pruning "
            f"stopped at {p50:.4f} ms with {macs_left / 1e6:.2f} MMACs left because {why}; onnxruntime's per-call "
            f"overhead alone is {target['floor_p50_ms']:.4f} ms, and protected layers and per-operator costs do not "
            "shrink with the channels. Lower prune.amount, unprotect layers, or start from a smaller model")


class _Unreachable(Exception):
    """Even the largest allowed pruning ratio does not reach the goal."""


def prune_step(model: nn.Module, teacher: nn.Module, data: Dataset, cfg: PruneConfig, protected: list[str],
               goal: float | None, work: Path, label: str, metric: str | None = None, ratio: float | None = None):
    """One verified pruning step: ``ratio`` of every group's channels, or the smallest ratio that brings
    ``metric`` (default: the config's target, macs or params) down to ``goal``. Returns the pruned copy
    and a record of the step."""
    metric = metric or cfg.target
    if cfg.importance in NEEDS_GRADIENTS or cfg.importance == "auto":
        _accumulate_kd_gradients(model, teacher, data, cfg)
    if cfg.importance == "auto":
        options = [(criterion, global_) for criterion in AUTO_CANDIDATES for global_ in (False, True)]
    else:
        options = [(cfg.importance, cfg.global_pruning)]
    trials, unreachable = {}, []
    with one_thread():
        for criterion, global_ in options:
            if ratio is not None:
                trials[criterion, global_] = (*_prune(model, data, cfg, protected, min(ratio, MAX_LAYER_RATIO), criterion,
                                                      global_), ratio)
                continue
            try:
                trials[criterion, global_] = search_ratio(model, data, cfg, protected, criterion, metric, goal, global_)
            except _Unreachable as exc:  # importance=auto: another option may still reach the goal
                unreachable.append(exc)
    model.zero_grad(set_to_none=True)
    if not trials:
        raise unreachable[0]
    options = [option for option in options if option in trials]
    chosen = options[0]
    accuracies, recalibrated = {}, {}
    if len(options) > 1:  # compare the options as each would be fine-tuned from: with fresh BN statistics
        for option, (candidate, _, _) in trials.items():
            recalibrated[option] = copy.deepcopy(candidate)
            recalibrate_bn(recalibrated[option], data)
            accuracies[option] = evaluate(recalibrated[option], data.val)
        chosen = max(options, key=lambda o: accuracies[o])
    candidate, records, used_ratio = trials[chosen]
    if not records:
        raise CompressError(f"nothing to prune at {label}: at ratio {used_ratio:.3f} every group keeps all its channels "
                            f"(each layer is protected ({', '.join(protected)}) or coupled to a protected one, or "
                            f"prune.round_to={cfg.round_to} rounds the cut to zero); unprotect layers or raise prune.amount")
    if cfg.recalibrate_bn and chosen in recalibrated:
        candidate = recalibrated[chosen]
    elif cfg.recalibrate_bn:
        recalibrate_bn(candidate, data)
    onnx_path = work / f"step-{label.replace(' ', '-')}.onnx"
    parity = verify_step(model, candidate, records, data, cfg, onnx_path, label)
    stats = _stats(candidate, data.input_shape)
    step = {"label": label, "importance": chosen[0], "allocation": _allocation(chosen[1]), "ratio": used_ratio,
            **stats, "groups": len(records),
            "channels_removed": sum(len(r.indices) for r in records if r.outputs),
            "p50_ms": file_latency(onnx_path, data, cfg)["p50_ms"], "parity": parity}
    if accuracies:
        step["auto_val_accuracy"] = {f"{c} {_allocation(g)}": accuracy for (c, g), accuracy in accuracies.items()}
    return candidate, step


def _allocation(global_pruning: bool) -> str:
    return "global" if global_pruning else "uniform"


def search_ratio(model: nn.Module, data: Dataset, cfg: PruneConfig, protected: list[str], criterion: str,
                 metric: str, goal: float, global_pruning: bool) -> tuple[nn.Module, list[GroupRecord], float]:
    """The smallest pruning ratio whose pruned copy has ``metric`` (macs or params) at most ``goal``. Each pruned
    copy costs a dependency-graph build (seconds on a DenseNet), so the bracketed search interpolates instead of
    bisecting: the square root of MACs or params falls about linearly with the ratio (a layer cut by r loses r of
    its outputs and the next one r of its inputs). Every third step, or when interpolation stalls, it bisects."""
    def value(candidate: nn.Module) -> int:
        return _stats(candidate, data.input_shape)[metric]

    best = _prune(model, data, cfg, protected, MAX_LAYER_RATIO, criterion, global_pruning)
    low_value, high_value = value(model), value(best[0])
    if high_value > goal:
        reached = 1 - high_value / low_value
        raise _Unreachable(f"at most {reached:.1%} fewer {metric} with every unprotected layer cut as far as "
                           f"prune.round_to={cfg.round_to} and the {1 - MAX_LAYER_RATIO:.0%} floor per layer allow")
    low, high = 0.0, MAX_LAYER_RATIO
    for step in range(SEARCH_ITERATIONS):
        if high_value >= SEARCH_CLOSE_ENOUGH * goal or high - low < SEARCH_RESOLUTION:
            break
        share = 0.5
        if step % 3 != 2 and low_value > high_value:
            share = (low_value ** 0.5 - goal ** 0.5) / (low_value ** 0.5 - high_value ** 0.5)
            share = min(max(share, SEARCH_GUARD), 1 - SEARCH_GUARD)
        middle = low + share * (high - low)
        candidate = _prune(model, data, cfg, protected, middle, criterion, global_pruning)
        reached = value(candidate[0])
        if reached <= goal:
            high, high_value, best = middle, reached, candidate
        else:
            low, low_value = middle, reached
    return best[0], best[1], high


@contextlib.contextmanager
def one_thread():
    """The ratio search runs hundreds of one-sample forward passes: on one thread they take milliseconds,
    on two busy cores a thread hand-off per tiny op can make each take a second."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _prune(model: nn.Module, data: Dataset, cfg: PruneConfig, protected: list[str], ratio: float, criterion: str,
           global_pruning: bool):
    with torch.random.fork_rng(devices=[]):  # random importance: the same channels for the same ratio, and the
        torch.manual_seed(cfg.finetune.seed)  # fine-tune's random stream left as it was
        return prune_copy(model, data.input_shape, ratio, criterion, global_pruning, cfg.round_to, tuple(protected))


def _accumulate_kd_gradients(model: nn.Module, teacher: nn.Module, data: Dataset, cfg: PruneConfig,
                             num_batches: int = 8) -> None:
    """First-order Taylor importance needs gradients: take them of the distillation loss on real batches."""
    model.eval()  # BN statistics stay fixed while ranking
    model.zero_grad(set_to_none=True)
    rng = np.random.default_rng(cfg.finetune.seed)
    for index, (x_np, y_np) in enumerate(batches(data.train, 64, shuffle=True, rng=rng)):
        if index == num_batches:
            break
        x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
        with torch.no_grad():
            teacher_logits = teacher(x)
        distillation_loss(model(x), teacher_logits, y, cfg.temperature, cfg.alpha).backward()


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data: Dataset, num_batches: int = 16, batch_size: int = 64) -> None:
    """Re-estimate BatchNorm running statistics on training batches: after channels are removed the
    next layers' outputs change, and stale statistics hide how good a pruned model can be."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the batches
    model.train()
    for index, (x_np, _) in enumerate(batches(data.train, batch_size, shuffle=True, rng=np.random.default_rng(0))):
        if index == num_batches:
            break
        model(torch.from_numpy(x_np))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.eval()


# ---- verification and latency ---------------------------------------------------------------------

def verify(model: nn.Module, data: Dataset, onnx_path: Path, cfg: PruneConfig, what: str) -> dict:
    """Forward on a real batch, ONNX export and parity with PyTorch; raises CompressError saying which failed."""
    try:
        check_runs(model, data)
    except CompressError:
        raise
    except Exception as exc:  # any error of a broken forward pass
        raise CompressError(f"{what} fails on a real batch: {_first_line(exc)}") from exc
    try:
        return export_model(model, onnx_path, data, ExportConfig(parity_samples=cfg.verify_samples),
                            {"stage": "prune", "check": what})
    except CompressError as exc:
        raise CompressError(f"{what} fails verification: {exc}") from exc
    except Exception as exc:  # the exporter's errors come in many types
        raise CompressError(f"{what} does not export to ONNX: {_first_line(exc)}") from exc


def verify_step(model: nn.Module, candidate: nn.Module, records: list[GroupRecord], data: Dataset, cfg: PruneConfig,
                onnx_path: Path, label: str) -> dict:
    """Verify a pruned copy; if it fails, replay the step group by group to name the layer that broke it."""
    try:
        return verify(candidate, data, onnx_path, cfg, f"the model after pruning {label}")
    except CompressError as exc:
        with private_tempdir("prunereplay") as tmp:
            probe = Path(tmp) / "probe.onnx"
            found = find_breaking_group(model, data.input_shape, records,
                                        lambda m: verify(m, data, probe, cfg, "the partly pruned model"))
        if found is None:
            raise CompressError(f"pruning {label} refused: {exc}; no single layer's pruning breaks it alone. "
                                "The model was left as it was before this step") from exc
        record, error = found
        members = [m for m in record.members if m != record.layer]
        shrank = f" (with {', '.join(members[:6])}{', ...' if len(members) > 6 else ''})" if members else ""
        raise CompressError(
            f"pruning {label} refused: removing {len(record.indices)} {'output' if record.outputs else 'input'} "
            f"channel(s) of layer {record.layer!r}{shrank} breaks the model: {_first_line(error)}. The model was "
            f"left as it was before this step; add {record.layer!r} to prune.protected, or make the model read "
            "shapes from its tensors instead of fixed numbers") from exc


def check_runs(model: nn.Module, data: Dataset) -> None:
    """A pruned model must still map a real batch to finite logits of the right shape."""
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(data.val.x[:8]))
    if logits.shape != (min(8, len(data.val)), data.num_classes) or not torch.isfinite(logits).all():
        raise CompressError(f"pruned model is broken: logits of shape {tuple(logits.shape)}, finite={bool(torch.isfinite(logits).all())}")


def file_latency(onnx_path: Path, data: Dataset, cfg: PruneConfig) -> dict:
    """p50/p90 latency at batch 1 of an ONNX file on the configured provider (a real test sample), timed by
    the shared harness in a fresh worker process."""
    input_name = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].name
    feed = {input_name: np.ascontiguousarray(data.test.x[:1])}
    rules = TimingRules(warmup="fixed", warmup_runs=20, min_runs=cfg.latency_runs, min_seconds=cfg.latency_seconds)
    job = {"name": "latency", "feed": "latency", "intra_op": cfg.latency_threads, "inter_op": 1,
           "min_runs": cfg.latency_runs}
    timing = time_jobs(onnx_path, Target(cfg.provider, intra_op=cfg.latency_threads), rules, {"latency": feed},
                       [job])["latency"]
    summary = latency_summary(timing.samples_ms)
    return {"p50_ms": summary["p50_ms"], "p90_ms": summary["p90_ms"], "runs": summary["runs"],
            "provider": resolve_provider(cfg.provider), "threads": cfg.latency_threads}


def latency_floor(data: Dataset, cfg: PruneConfig, work: Path) -> float:
    """p50 of a one-operator graph (a mean over the input) on the same provider and input: onnxruntime's
    per-call overhead, below which no pruned model can go."""
    shape = ["batch", *data.input_shape]
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["logits"], axes=list(range(1, len(shape))), keepdims=0)], "floor",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch"])])
    path = work / "floor.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return file_latency(path, data, cfg)["p50_ms"]


def _stats(model: nn.Module, input_shape: tuple[int, ...]) -> dict:
    with one_thread():
        return model_stats(model, input_shape)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---- unstructured pruning -------------------------------------------------------------------------

def prune_unstructured(model: nn.Module, teacher: nn.Module, data: Dataset, cfg: PruneConfig, protected: list[str],
                       before: dict, work: Path) -> tuple[nn.Module, dict]:
    """Zero the smallest-magnitude weights (one global threshold) in rounds with a distillation fine-tune
    that keeps the zeros; report sparsity, compressed size and latency, which does not improve."""
    rounds = []
    for round_index in range(1, cfg.rounds + 1):
        sparsity = cfg.amount * round_index / cfg.rounds
        info = magnitude_prune(model, sparsity, tuple(protected))
        permanent = permanent_copy(model)
        parity = verify(permanent, data, work / f"sparse-{round_index}.onnx", cfg, f"the model after sparsity round {round_index}")
        after_prune = {"val_accuracy": evaluate(model, data.val), **weight_sparsity(permanent, tuple(protected)), **info,
                       "parity": parity}
        result = distill(model, teacher, data, cfg.finetune, cfg.temperature, cfg.alpha,
                         desc=f"sparse fine-tune {round_index}")
        rounds.append({"round": round_index, "goal": sparsity, "after_prune": after_prune,
                       "after_finetune": {"val_accuracy": result.best_val_accuracy, "best_epoch": result.best_epoch,
                                          "train_s": round(result.wall_s, 2), "history": result.history}})
    make_permanent(model)
    final_onnx = work / "final.onnx"
    parity = verify(model, data, final_onnx, cfg, "the fine-tuned sparse model")
    latency = file_latency(final_onnx, data, cfg)
    sparse = weight_sparsity(model, tuple(protected))
    overall = weight_sparsity(model)
    sizes = {"dense_onnx_bytes": before["onnx_bytes"], "dense_gzip_bytes": _gzip_size(work / "before.onnx"),
             "sparse_onnx_bytes": final_onnx.stat().st_size, "sparse_gzip_bytes": _gzip_size(final_onnx)}
    after_prune = {**snapshot(model, data), "latency": latency, "onnx_bytes": final_onnx.stat().st_size, **sparse,
                   "overall_sparsity": overall["sparsity"]}
    last = rounds[-1]
    metrics = {
        "method": "unstructured", "importance": "magnitude (global threshold)", "protected": protected,
        "target": {"kind": "sparsity", "unit": "share of the unprotected layers' weights zeroed", "start": 0.0,
                   "goal": cfg.amount,
                   "reached": sparse["sparsity"], "met": True},
        "before": before, "after_prune": after_prune,
        "after_finetune": {"val_accuracy": last["after_finetune"]["val_accuracy"], "test_accuracy": evaluate(model, data.test),
                           "best_epoch": last["after_finetune"]["best_epoch"],
                           "train_s": round(sum(r["after_finetune"]["train_s"] for r in rounds), 2),
                           "history": last["after_finetune"]["history"], "parity": parity},
        "rounds": rounds, "sparsity": sparse["sparsity"], "overall_sparsity": overall["sparsity"], "compressed": sizes,
        "gzip_reduction": 1 - sizes["sparse_gzip_bytes"] / sizes["dense_gzip_bytes"],
        "macs_reduction": 0.0, "params_reduction": 0.0,
        "latency_speedup": before["latency"]["p50_ms"] / latency["p50_ms"], "provider": latency["provider"],
        "note": (f"{DENSE_NOTE}: p50 {before['latency']['p50_ms']:.4f} ms dense vs {latency['p50_ms']:.4f} ms at "
                 f"{sparse['sparsity']:.0%} sparsity on {latency['provider']}; gzip size "
                 f"{sizes['dense_gzip_bytes'] / 1024:.1f} KB -> {sizes['sparse_gzip_bytes'] / 1024:.1f} KB"),
    }
    return model, metrics


def _gzip_size(path: Path) -> int:
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=9))


# ---- text: attention heads and FFN neurons ------------------------------------------------------------

def run_text(cfg: PruneConfig, inputs: dict[str, Path], data: Dataset, out_dir: Path) -> StageResult:
    """Remove heads and FFN neurons of the text student ``inputs['student']``, verify, fine-tune by KD from
    ``inputs['teacher']``, verify again, into ``out_dir/pruned.safetensors``."""
    from compress.text_models import check_inputs, distill_text
    from compress.text_pruning import prune_heads, summary

    model_path, teacher_path = inputs["student"], inputs["teacher"]
    out_dir.mkdir(parents=True, exist_ok=True)
    data = text_run.with_tokenizer_of(data, model_path)
    model, teacher = load_model(model_path), load_model(teacher_path)
    check_inputs(model, data)
    seed_everything(cfg.text_finetune.seed)
    with private_tempdir("prune") as tmp:
        work = Path(tmp)
        before = {**_stats(model, data.input_shape), "val_accuracy": evaluate(model, data.val),
                  "parity": _verify_text(model, data, cfg, work / "before.onnx", "the unpruned student")}
        started = time.perf_counter()
        result = prune_heads(model, cfg.head_amount, data, ffn_amount=cfg.ffn_amount, teacher=teacher,
                             samples=cfg.importance_samples, round_to=cfg.round_to)
        after_prune = {**_stats(model, data.input_shape), "val_accuracy": evaluate(model, data.val),
                       "prune_s": round(time.perf_counter() - started, 2),
                       "parity": _verify_text(model, data, cfg, work / "pruned.onnx", "the pruned student")}
        finetune = distill_text(model, teacher, data, cfg.text_finetune, cfg.temperature, cfg.text_alpha,
                                desc="prune fine-tune")
        final_parity = _verify_text(model, data, cfg, work / "final.onnx", "the fine-tuned pruned student")
    metrics = {
        "method": "heads+ffn", "importance": "gradient (Michel et al. 2019), KD loss", **summary(result),
        "head_amount": cfg.head_amount, "ffn_amount": cfg.ffn_amount, "before": before, "after_prune": after_prune,
        "after_finetune": {"val_accuracy": finetune.best_val_accuracy, "test_accuracy": evaluate(model, data.test),
                           "best_epoch": finetune.best_epoch, "train_s": round(finetune.wall_s, 2),
                           "history": finetune.history, "parity": final_parity},
        "macs_reduction": 1 - after_prune["macs"] / before["macs"],
        "params_reduction": 1 - after_prune["params"] / before["params"],
    }
    save_model(model, out_dir / "pruned.safetensors")
    write_json(out_dir / "prune.json", metrics)
    write_text(out_dir / "prune.md", text_prune_markdown(metrics, "# Pruning report (attention heads and FFN neurons)"))
    return StageResult({"pruned": out_dir / "pruned.safetensors", "report": out_dir / "prune.md",
                        "metrics": out_dir / "prune.json", "tokenizer": text_run.write_tokenizer(data, out_dir)},
                       metrics)


def _verify_text(model: nn.Module, data: Dataset, cfg: PruneConfig, path: Path, what: str) -> dict:
    """Forward on real samples, export with the transformer optimizer (attention must fuse in every layer,
    per-layer head counts included) and parity against PyTorch; an error names ``what`` failed."""
    from compress.text_onnx import TextExportConfig, export_text_model

    samples = text_run.export_inputs(model, data, cfg.verify_samples)
    check_runs(model, data)
    try:
        report = export_text_model(model, path, samples, TextExportConfig(parity_samples=cfg.verify_samples),
                                   data.class_names, data.train.x.shape[-1])
    except CompressError as exc:
        raise CompressError(f"{what} failed verification: {exc}") from exc
    return {"optimized_parity": report["optimized_parity"], "fused_operators": report["fusion"]["fused_operators"],
            "heads_per_layer": report["fusion"].get("heads_per_layer")}
