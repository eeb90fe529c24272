"""``compress search``: the most accurate student that meets a latency and/or size budget, found by
measurement, cheap before expensive.

1. Enumerate structures (images: arch x width x depth x prune amount; text: layers x hidden size x heads x FFN
   width x prune amount) and formats (fp32, int8; for text also the named text quantize candidates).
2. Time every *untrained* structure at batch 1 on the target (export, int8 with random calibration; text:
   see compress/text_search.py), interleaved against one fixed reference model so machine drift cancels; record its file size.
3. After the first ``probe`` structures, fit p50 ~ MACs + params by least squares (per format) and skip
   timing structures the fit predicts far over budget.
4. Drop over-budget candidates, keep the ``keep`` largest (by MACs) of the rest.
5. Successive halving: train survivors for ``min_epochs``, keep the best 1/eta by validation accuracy among
   those whose *measured* p50 and size still meet the budget, multiply the epochs by eta, repeat.

Training is a callable (the application layer passes one that runs the real pipeline into a run folder per
structure and rung, so it is cached by fingerprint, and optionally one that trains a whole rung ahead in
parallel processes); this module never imports the stages."""
from __future__ import annotations

import itertools
import json
import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, astuple, dataclass, field
from pathlib import Path

import numpy as np

from compress.errors import CompressError
from compress.fsutil import private_tempdir, write_json, write_text
from compress.latency import Target, TimingRules, time_interleaved
from compress.zoo import ARCHITECTURES

FORMATS = ("fp32", "int8")
# Text: int8 is the usual dynamic int8; the others pin one of the text quantize stage's candidates.
TEXT_FORMATS = ("fp32", "int8", "dynamic_int8", "static_u8s8_qdq", "int4_weight_only")
BUDGET_KEYS = ("p50_ms", "size_kb")


@dataclass
class SearchConfig:
    """What ``compress search`` looks through, under which budget, and how it spends training."""

    p50_ms: float | None = None  # latency budget: batch-1 p50 in ms on the benchmark's provider (none = no limit)
    size_kb: float | None = None  # size budget: the ONNX file in KiB (1024 bytes) (none = no limit)
    archs: list[str] = field(default_factory=lambda: ["resnet", "mobilenet"])  # student architectures from the zoo
    widths: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0])  # student width multipliers
    depths: list[int] = field(default_factory=lambda: [0])  # student depths; 0 = the architecture's default
    prune_amounts: list[float] = field(default_factory=lambda: [0.2, 0.5])  # prune.amount values, each in (0, 1)
    formats: list[str] = field(default_factory=lambda: ["fp32", "int8"])  # shipped formats: fp32 (pruned) and/or int8 (text: see TEXT_FORMATS)
    # Text data only (archs, widths and depths above are for images; prune_amounts is the share of heads and of
    # FFN neurons the prune stage removes):
    text_layers: list[int] = field(default_factory=lambda: [1, 2])  # student transformer layers (at most the teacher's)
    text_hidden: list[int] = field(default_factory=lambda: [128, 256])  # student hidden sizes (at most the teacher's)
    text_heads: list[int] = field(default_factory=lambda: [4])  # student attention heads (must divide every hidden size)
    text_ffn: list[int] = field(default_factory=lambda: [512, 1024])  # student FFN inner sizes (at most the teacher's)
    keep: int = 6  # candidates kept after the latency pre-filter (the most MACs first: more capacity, more accuracy)
    probe: int = 4  # structures timed before the latency model may skip any
    skip_factor: float = 2.0  # skip timing a structure predicted above this many times the p50 budget
    rounds: int = 5  # interleaved timing rounds per untrained structure
    round_seconds: float = 0.05  # timed seconds per model per round
    min_epochs: int = 1  # distillation epochs of the first successive-halving rung
    eta: int = 3  # each rung keeps 1/eta of the candidates and trains eta times as many epochs
    max_epochs: int = 9  # the last rung trains at most this many epochs
    seed: int = 0  # random calibration and timing inputs of the untrained structures
    workers: int = 1  # processes training a rung's candidates side by side (each gets threads / workers torch threads)

    def __post_init__(self) -> None:
        for name in BUDGET_KEYS:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"search.{name} must be > 0, got {value}")
        for name in ("archs", "widths", "depths", "prune_amounts", "formats", *TEXT_SPACE):
            if not getattr(self, name):
                raise ValueError(f"search.{name} is empty: give at least one value")
        for name in TEXT_SPACE:
            if any(value < 1 for value in getattr(self, name)):
                raise ValueError(f"search.{name} must all be >= 1, got {getattr(self, name)}")
        for hidden, heads in itertools.product(self.text_hidden, self.text_heads):
            if hidden % heads:
                raise ValueError(f"search.text_hidden {hidden} is not a multiple of search.text_heads {heads}: every "
                                 "hidden size must split evenly into every head count")
        unknown = [a for a in self.archs if a not in ARCHITECTURES]
        if unknown:
            raise ValueError(f"search.archs: unknown architecture {unknown[0]!r}; choose from {', '.join(ARCHITECTURES)}")
        if any(not w > 0 for w in self.widths):
            raise ValueError(f"search.widths must all be > 0, got {self.widths}")
        if any(d < 0 for d in self.depths):
            raise ValueError(f"search.depths must all be >= 0 (0 = default depth), got {self.depths}")
        if any(not 0 < a < 1 for a in self.prune_amounts):
            raise ValueError(f"search.prune_amounts must all be fractions in (0, 1), got {self.prune_amounts}")
        bad = [f for f in self.formats if f not in TEXT_FORMATS]
        if bad:
            raise ValueError(f"search.formats: unknown format {bad[0]!r}; choose from {', '.join(FORMATS)} (text also "
                             f"{', '.join(TEXT_FORMATS[2:])})")
        for name in ("keep", "probe", "rounds", "min_epochs", "max_epochs", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"search.{name} must be >= 1, got {getattr(self, name)}")
        if self.eta < 2:
            raise ValueError(f"search.eta must be >= 2, got {self.eta}")
        if self.max_epochs < self.min_epochs:
            raise ValueError(f"search.max_epochs ({self.max_epochs}) must be >= search.min_epochs ({self.min_epochs})")
        if not self.skip_factor >= 1:
            raise ValueError(f"search.skip_factor must be >= 1, got {self.skip_factor}")
        if not self.round_seconds > 0:
            raise ValueError(f"search.round_seconds must be > 0, got {self.round_seconds}")

    def rungs(self) -> list[int]:
        """The epochs of each successive-halving rung: min_epochs, x eta, ..., capped at max_epochs."""
        epochs = [self.min_epochs]
        while epochs[-1] < self.max_epochs:
            epochs.append(min(epochs[-1] * self.eta, self.max_epochs))
        return epochs


TEXT_SPACE = ("text_layers", "text_hidden", "text_heads", "text_ffn")


def check_formats(cfg: SearchConfig, text: bool) -> None:
    """The formats a search over this kind of data can build, or a one-line CompressError."""
    if not text:
        bad = [f for f in cfg.formats if f not in FORMATS]
        if bad:
            raise CompressError(f"search.formats: {bad[0]!r} is a text format; image searches build "
                                f"{' and '.join(FORMATS)}")
        return
    quantized = [f for f in cfg.formats if f != "fp32"]
    if len(quantized) > 1:
        raise CompressError(f"search.formats {cfg.formats}: a text search builds one quantized format per candidate run; "
                            f"keep fp32 and one of {', '.join(TEXT_FORMATS[1:])}")


def parse_budget(text: str) -> tuple[str, float]:
    """'p50_ms=0.2' -> ('p50_ms', 0.2); a one-line CompressError otherwise."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or key not in BUDGET_KEYS:
        raise CompressError(f"--budget {text!r} must be p50_ms=MS or size_kb=KB (e.g. --budget p50_ms=0.2)")
    try:
        number = float(value)
    except ValueError:
        raise CompressError(f"--budget {key}: {value.strip()!r} is not a number (e.g. --budget {key}=0.2)") from None
    if not (math.isfinite(number) and number > 0):
        raise CompressError(f"--budget {key} must be a positive number, got {value.strip()}")
    return key, number


@dataclass(frozen=True)
class Structure:
    """One student structure; both formats come out of the same pipeline run."""

    arch: str
    width: float
    depth: int  # 0 = the architecture's default
    prune: float

    @property
    def name(self) -> str:
        return f"{self.arch}-w{self.width:g}-d{self.depth}-p{self.prune:g}"

    epochs_key = "distill.train.epochs"  # the pipeline key of the student's training epochs

    def overrides(self) -> list[str]:
        """--set overrides that make the pipeline train this structure."""
        depth = str(self.depth) if self.depth else '"none"'
        return [f'distill.student.arch="{self.arch}"', f"distill.student.width={float(self.width)}",
                f"distill.student.depth={depth}", f"prune.amount={float(self.prune)}"]


@dataclass(frozen=True)
class TextStructure:
    """One text student structure (a BERT-style encoder); both formats come out of the same pipeline run."""

    layers: int
    hidden: int
    heads: int
    ffn: int  # FFN inner size
    prune: float  # share of the attention heads and of every layer's FFN neurons the prune stage removes

    epochs_key = "distill.text_train.epochs"

    @property
    def name(self) -> str:
        return f"bert-l{self.layers}-h{self.hidden}-a{self.heads}-f{self.ffn}-p{self.prune:g}"

    def overrides(self) -> list[str]:
        return [f"distill.student_layers={self.layers}", f"distill.student_hidden={self.hidden}",
                f"distill.student_heads={self.heads}", f"distill.student_ffn={self.ffn}",
                f"prune.head_amount={float(self.prune)}", f"prune.ffn_amount={float(self.prune)}"]


def structures(cfg: SearchConfig) -> list[Structure]:
    return [Structure(a, float(w), int(d), float(p))
            for a, w, d, p in itertools.product(cfg.archs, cfg.widths, cfg.depths, cfg.prune_amounts)]


def text_structures(cfg: SearchConfig) -> list[TextStructure]:
    return [TextStructure(int(n), int(h), int(a), int(f), float(p)) for n, h, a, f, p in
            itertools.product(cfg.text_layers, cfg.text_hidden, cfg.text_heads, cfg.text_ffn, cfg.prune_amounts)]


def structure_of(fields: dict) -> Structure | TextStructure:
    """A structure back from its ``asdict`` form in search.json."""
    return TextStructure(**fields) if "heads" in fields else Structure(**fields)


def pruned_width(width: float, amount: float, target: str) -> float:
    """The width multiplier whose untrained model stands in for ``width`` pruned by ``amount``: removing a share
    of the channels scales every layer's channels by (1 - amount); removing a share of MACs or params (both ~
    channels squared) scales them by sqrt(1 - amount). An approximation, for timing only: the real pruning
    (importance-ranked, rounded to round_to) runs in the pipeline, whose measured p50 decides."""
    return width * ((1 - amount) if target == "channels" else math.sqrt(1 - amount))


# ---- measuring untrained structures -------------------------------------------------------------------------

def structure_stats(structure: Structure, input_shape: tuple[int, ...], num_classes: int, prune_target: str) -> dict:
    """MACs and params of the untrained stand-in model (cheap: no export)."""
    from compress.metrics import model_stats

    return model_stats(_stand_in(structure, input_shape, num_classes, prune_target), input_shape)


def _stand_in(structure: Structure, input_shape, num_classes, prune_target):
    from compress.zoo import ModelSpec, build_model

    spec = ModelSpec(structure.arch, pruned_width(structure.width, structure.prune, prune_target), structure.depth or None)
    return build_model(spec, tuple(input_shape), num_classes).eval()


def export_untrained(model, path: Path, input_shape: tuple[int, ...], opset: int = 17) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, *input_shape),), str(path), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def quantize_random(fp32: Path, int8: Path, input_shape: tuple[int, ...], seed: int, samples: int = 8) -> None:
    """Static U8S8 QDQ int8 calibrated on random inputs: the weights are untrained anyway, only the graph's
    structure (which ops become int8) matters for timing it."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class RandomReader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(seed)
            self.batches = iter([{"input": rng.standard_normal((1, *input_shape)).astype(np.float32)}
                                 for _ in range(samples)])

        def get_next(self):
            return next(self.batches, None)

    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = int8.with_name(f"{int8.stem}.pre.onnx")
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # the quantizer's advice to pre-process (done) and its bias notes
    try:
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=False)
        quantize_static(str(prepared), str(int8), RandomReader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    finally:
        logger.setLevel(level)
        prepared.unlink(missing_ok=True)


Builder = Callable[[object, Path], dict[str, Path]]  # (structure, folder) -> format -> its untrained ONNX file


def image_builder(input_shape: tuple[int, ...], num_classes: int, prune_target: str, cfg: SearchConfig) -> Builder:
    """Untrained image structures as ONNX: the stand-in exported to fp32, and int8 with random calibration."""
    def build(structure: Structure, folder: Path) -> dict[str, Path]:
        files = {"fp32": folder / "fp32.onnx"}
        export_untrained(_stand_in(structure, input_shape, num_classes, prune_target), files["fp32"], input_shape)
        if "int8" in cfg.formats:
            files["int8"] = folder / "int8.onnx"
            quantize_random(files["fp32"], files["int8"], input_shape, cfg.seed)
        return files
    return build


def image_feed(input_shape: tuple[int, ...], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input": rng.standard_normal((1, *input_shape)).astype(np.float32)}


class UntrainedTimer:
    """Times untrained structures against one fixed reference model (the first structure's fp32), so a
    structure's p50 is (its p50 / the reference's p50 in the same rounds) x the reference's median p50 over
    every measurement: drift of the machine between structures cancels. ``build`` writes a structure's ONNX
    files; every model is timed on the same batch-1 ``feed``."""

    def __init__(self, work: Path, build: Builder, feed: dict[str, np.ndarray], target: Target,
                 cfg: SearchConfig) -> None:
        self.work, self.build, self.feed, self.target, self.cfg = Path(work), build, feed, target, cfg
        self.reference: Path | None = None
        self.reference_p50: list[float] = []
        self.rules = TimingRules(warmup="fixed", warmup_runs=10, min_runs=10, min_seconds=0.0)

    def measure(self, structure) -> dict[str, dict]:
        folder = self.work / structure.name
        folder.mkdir(parents=True, exist_ok=True)
        files = self.build(structure, folder)
        if self.reference is None:
            self.reference = self.work / "reference.onnx"
            self.reference.write_bytes(files["fp32"].read_bytes())
        paths = {"reference": self.reference, **{f: files[f] for f in self.cfg.formats}}
        timings = time_interleaved(paths, {name: self.feed for name in paths}, self.target, self.rules,
                                   rounds=self.cfg.rounds, round_seconds=self.cfg.round_seconds)
        reference = timings["reference"].round_medians_ms
        self.reference_p50.append(float(np.median(timings["reference"].samples_ms)))
        scale = float(np.median(self.reference_p50))
        return {f: {"p50_ms": float(np.median(np.array(timings[f].round_medians_ms) / np.array(reference))) * scale,
                    "raw_p50_ms": float(np.median(timings[f].samples_ms)), "size_bytes": files[f].stat().st_size}
                for f in self.cfg.formats}


# ---- the latency model ---------------------------------------------------------------------------------------

def fit_latency_model(points: list[tuple[float, float, float]]) -> dict | None:
    """Least squares p50 ~ a + b * MMACs + c * Mparams over (macs, params, p50) points, with its R²;
    None with fewer than 3 points (three coefficients)."""
    if len(points) < 3:
        return None
    data = np.array(points, dtype=float)
    x = np.column_stack([np.ones(len(data)), data[:, 0] / 1e6, data[:, 1] / 1e6])
    y = data[:, 2]
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    residual = float(((y - x @ coef) ** 2).sum())
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - residual / total if total > 0 else 1.0
    return {"intercept_ms": float(coef[0]), "ms_per_mmac": float(coef[1]), "ms_per_mparam": float(coef[2]),
            "r2": r2, "points": len(points)}


def predict_p50(model: dict, macs: float, params: float) -> float:
    return model["intercept_ms"] + model["ms_per_mmac"] * macs / 1e6 + model["ms_per_mparam"] * params / 1e6


def over_budget(cfg: SearchConfig, p50_ms: float, size_bytes: float) -> str | None:
    """Why a measurement misses the budget, or None when it meets it."""
    reasons = []
    if cfg.p50_ms is not None and p50_ms > cfg.p50_ms:
        reasons.append(f"p50 {p50_ms:.4f} ms > budget {cfg.p50_ms:g} ms")
    if cfg.size_kb is not None and size_bytes / 1024 > cfg.size_kb:
        reasons.append(f"size {size_bytes / 1024:.1f} KiB > budget {cfg.size_kb:g} KiB")
    return "; ".join(reasons) or None


def prefilter(cfg: SearchConfig, space: list[Structure], stats: Callable[[Structure], dict],
              measure: Callable[[Structure], dict[str, dict]], log: Callable[[str], None] = print) -> dict:
    """Steps 2-4: every candidate (structure x format) with its stats, predicted and measured untrained p50,
    size and, when dropped, why; the survivors are those without a ``dropped`` reason."""
    space = sorted(space, key=astuple)
    info = {s.name: stats(s) for s in space}
    # Time from both ends of the MACs range first, so the model is fitted over the whole range it predicts.
    by_macs = sorted(space, key=lambda s: info[s.name]["macs"])
    order = [s for pair in itertools.zip_longest(by_macs, reversed(by_macs)) for s in pair if s is not None]
    order = list(dict.fromkeys(order))[:len(space)]
    candidates: dict[str, dict] = {}
    points: dict[str, list] = {f: [] for f in cfg.formats}
    models: dict[str, dict | None] = {f: None for f in cfg.formats}
    for index, structure in enumerate(order):
        macs, params = info[structure.name]["macs"], info[structure.name]["params"]
        predicted = {f: predict_p50(models[f], macs, params) if models[f] else None for f in cfg.formats}
        skip = (cfg.p50_ms is not None and index >= cfg.probe
                and all(p is not None and p > cfg.skip_factor * cfg.p50_ms for p in predicted.values()))
        measured = {} if skip else measure(structure)
        for f in cfg.formats:
            entry = {"name": f"{structure.name}-{f}", "structure": asdict(structure), "format": f, "macs": macs,
                     "params": params, "predicted_p50_ms": predicted[f], "untrained": measured.get(f), "rungs": []}
            if skip:
                entry["dropped"] = (f"not timed: the latency model predicts {predicted[f]:.4f} ms, over "
                                    f"{cfg.skip_factor:g}x the {cfg.p50_ms:g} ms budget")
            else:
                points[f].append((macs, params, measured[f]["p50_ms"]))
                reason = over_budget(cfg, measured[f]["p50_ms"], measured[f]["size_bytes"])
                if reason:
                    entry["dropped"] = f"untrained {reason}"
            candidates[entry["name"]] = entry
        if not skip:
            models = {f: fit_latency_model(points[f]) for f in cfg.formats}
        shown = ", ".join(f"{f} {measured[f]['p50_ms']:.4f} ms" for f in measured) or "skipped (predicted over budget)"
        log(f"[search] {structure.name}: {macs / 1e6:.2f} MMACs, {shown}")
    alive = sorted((c for c in candidates.values() if "dropped" not in c), key=lambda c: -c["macs"])
    for entry in alive[cfg.keep:]:
        entry["dropped"] = f"not among the {cfg.keep} largest (by MACs) candidates within budget"
    return {"candidates": candidates, "latency_model": models}


# ---- successive halving --------------------------------------------------------------------------------------

Trainer = Callable[[Structure, int], dict[str, dict]]  # (structure, epochs) -> format -> val/test accuracy, p50, size, run
RungTrainer = Callable[[list[Structure], int], None]  # (a rung's structures, epochs): train them ahead, side by side


def successive_halving(cfg: SearchConfig, candidates: dict[str, dict], train: Trainer,
                       on_rung: Callable[[], None] = lambda: None, log: Callable[[str], None] = print,
                       train_ahead: RungTrainer | None = None) -> str | None:
    """Step 5: train the survivors rung by rung; returns the winner's name (None when no trained candidate met
    the budget). ``train`` is called once per structure and rung (both formats share its run); ``train_ahead``,
    when given, is first called with all of a rung's structures (to train them in parallel processes, so that
    ``train`` then finds their training cached and only measures them, one at a time)."""
    alive = [name for name, c in candidates.items() if "dropped" not in c]
    rungs = cfg.rungs()
    for number, epochs in enumerate(rungs):
        if len(alive) == 1 and number < len(rungs) - 1:
            continue  # nothing left to compare: the one candidate trains only at the last rung's epochs
        rung = list(dict.fromkeys(structure_of(candidates[name]["structure"]) for name in alive))
        if train_ahead is not None and len(rung) > 1:
            log(f"[search] rung {number + 1}/{len(rungs)}: training {len(rung)} structures, {epochs} epoch(s), "
                f"in {min(cfg.workers, len(rung))} processes")
            train_ahead(rung, epochs)
        runs: dict[Structure, dict] = {}
        for structure in rung:
            log(f"[search] rung {number + 1}/{len(rungs)}: {structure.name}, {epochs} epoch(s)")
            runs[structure] = train(structure, epochs)
        scored = []
        for name in alive:
            entry = candidates[name]
            result = runs[structure_of(entry["structure"])][entry["format"]]
            entry["rungs"].append({"epochs": epochs, **result})
            reason = over_budget(cfg, result["p50_ms"], result["size_bytes"])
            if reason:
                entry["dropped"] = f"trained ({epochs} epochs) {reason}"
            else:
                scored.append(name)
        # Ties go to the faster candidate: same accuracy, more headroom under the budget.
        scored.sort(key=lambda n: (-candidates[n]["rungs"][-1]["val_accuracy"], candidates[n]["rungs"][-1]["p50_ms"]))
        kept = scored[:max(1, math.ceil(len(scored) / cfg.eta))] if number < len(rungs) - 1 else scored[:1]
        for name in scored[len(kept):]:
            entry = candidates[name]
            entry["dropped"] = (f"rung {number + 1} ({epochs} epochs): validation accuracy "
                                f"{100 * entry['rungs'][-1]['val_accuracy']:.2f}% not in the top {len(kept)}")
        alive = kept
        on_rung()
        if not alive:
            return None
    return alive[0]


# ---- the search, its files -----------------------------------------------------------------------------------

def run_search(cfg: SearchConfig, out_dir: Path, space_stats: Callable[[Structure], dict],
               measure: Callable[[Structure], dict[str, dict]], train: Trainer, context: dict | None = None,
               log: Callable[[str], None] = print, train_ahead: RungTrainer | None = None,
               space: list | None = None) -> dict:
    """The whole search over ``space`` (default: the image structures of ``cfg``) into ``out_dir``: search.json (rewritten after the pre-filter and every rung, so an
    interrupted search shows how far it got), search.md and pareto.png. Raises CompressError when no candidate
    meets the budget, naming the fastest one found."""
    if cfg.p50_ms is None and cfg.size_kb is None:
        raise CompressError("no budget: pass --budget p50_ms=MS and/or --budget size_kb=KB (or set search.p50_ms)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    found = prefilter(cfg, structures(cfg) if space is None else space, space_stats, measure, log)
    state = {"config": asdict(cfg), "context": context or {}, "rungs": cfg.rungs(),
             "latency_model": found["latency_model"], "candidates": found["candidates"], "winner": None,
             "status": "pre-filtered"}
    write_json(out_dir / "search.json", state)
    candidates = found["candidates"]
    if not any("dropped" not in c for c in candidates.values()):
        raise CompressError(no_candidate_message(cfg, candidates))
    winner = successive_halving(cfg, candidates, train, lambda: write_json(out_dir / "search.json", state), log,
                                train_ahead)
    if winner is None:
        raise CompressError(no_candidate_message(cfg, candidates))
    state["winner"] = {"name": winner, **candidates[winner]["rungs"][-1]}
    state["status"] = "complete"
    write_json(out_dir / "search.json", state)
    write_report(out_dir, state)
    return state


def no_candidate_message(cfg: SearchConfig, candidates: dict[str, dict]) -> str:
    """One line: the budget cannot be met, and the fastest candidate measured (trained if any was, else untrained)."""
    budget = " and ".join(f"{k} {getattr(cfg, k):g}" for k in BUDGET_KEYS if getattr(cfg, k) is not None)
    measured = [(c["rungs"][-1] if c["rungs"] else c["untrained"], c["name"], "trained" if c["rungs"] else "untrained")
                for c in candidates.values() if c["rungs"] or c["untrained"]]
    if not measured:
        return f"no candidate meets the budget ({budget}): none was measured; search smaller students or raise the budget"
    figure, name, kind = min(measured, key=lambda m: m[0]["p50_ms"])
    return (f"no candidate meets the budget ({budget}): the fastest found is {name} at p50 {figure['p50_ms']:.4f} ms, "
            f"{figure['size_bytes'] / 1024:.1f} KiB ({kind}); raise the budget or search smaller students")


def pareto_front(points: list[tuple[str, float, float]]) -> list[str]:
    """Names of (name, cost, accuracy) points that no other point beats on both (lower cost, higher accuracy)."""
    front, best = [], -math.inf
    for name, _, accuracy in sorted(points, key=lambda p: (p[1], -p[2])):
        if accuracy > best:
            front.append(name)
            best = accuracy
    return front


def write_report(out_dir: Path, state: dict) -> None:
    trained = {n: c["rungs"][-1] for n, c in state["candidates"].items() if c["rungs"]}
    fronts = {cost: pareto_front([(n, r[cost], r["val_accuracy"]) for n, r in trained.items()])
              for cost in ("p50_ms", "size_bytes")}
    _plot(out_dir / "pareto.png", trained, fronts)
    w = state["winner"]
    cfg = state["config"]
    budget = ", ".join(f"{k} <= {cfg[k]:g}" for k in BUDGET_KEYS if cfg[k] is not None)
    lines = ["# Search", "", f"Budget: {budget}. Rungs (epochs): {', '.join(map(str, state['rungs']))}.", "",
             f"**Winner: {w['name']}**: validation accuracy {100 * w['val_accuracy']:.2f}%, test accuracy "
             f"{100 * w['test_accuracy']:.2f}%, p50 {w['p50_ms']:.4f} ms, {w['size_bytes'] / 1024:.1f} KiB; run folder "
             f"`{w['run_dir']}` (ship it with `compress ship {w['run_dir']} --artifact {w['artifact']} --out BUNDLE`).", ""]
    if state["context"].get("reference"):
        ref = state["context"]["reference"]
        lines += [f"Reference ({ref['name']}): test accuracy {100 * ref['accuracy']:.2f}%, p50 {ref['p50_ms']:.4f} ms.", ""]
    for f, model in state["latency_model"].items():
        if model:
            lines.append(f"Latency model ({f}, untrained): p50 = {model['intercept_ms']:.4f} + {model['ms_per_mmac']:.4f}"
                         f" x MMACs + {model['ms_per_mparam']:.4f} x Mparams ms, R² {model['r2']:.3f} over "
                         f"{model['points']} structures.")
    lines += ["", "![Pareto front](pareto.png)", "", "## Pareto front (trained, last rung)", "",
              "| candidate | val acc | p50 ms | KiB | front |", "|---|---|---|---|---|"]
    for name, r in sorted(trained.items(), key=lambda item: item[1]["p50_ms"]):
        marks = "/".join(k for k, label in (("p50_ms", "latency"), ("size_bytes", "size")) if name in fronts[k])
        marks = marks.replace("p50_ms", "latency").replace("size_bytes", "size")
        lines.append(f"| {name} | {100 * r['val_accuracy']:.2f}% | {r['p50_ms']:.4f} | {r['size_bytes'] / 1024:.1f} | "
                     f"{marks} |")
    lines += ["", "## Every candidate", "",
              "| candidate | MMACs | params | predicted p50 | untrained p50 | KiB | val acc per rung | dropped |",
              "|---|---|---|---|---|---|---|---|"]
    for name, c in state["candidates"].items():
        u = c["untrained"]
        predicted = f"{c['predicted_p50_ms']:.4f}" if c["predicted_p50_ms"] is not None else "-"
        accuracies = ", ".join(f"{r['epochs']}e {100 * r['val_accuracy']:.1f}%" for r in c["rungs"]) or "-"
        lines.append(f"| {name} | {c['macs'] / 1e6:.3g} | {c['params']} | {predicted} | "
                     f"{u['p50_ms']:.4f} | {u['size_bytes'] / 1024:.1f} | {accuracies} | {c.get('dropped', '')} |"
                     if u else f"| {name} | {c['macs'] / 1e6:.3g} | {c['params']} | {predicted} | - | - | - | "
                     f"{c.get('dropped', '')} |")
    write_text(out_dir / "search.md", "\n".join(lines) + "\n")


def _plot(path: Path, trained: dict[str, dict], fronts: dict[str, list[str]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, cost, scale, label in ((axes[0], "p50_ms", 1, "p50 (ms)"), (axes[1], "size_bytes", 1 / 1024, "size (KiB)")):
        xs = [r[cost] * scale for r in trained.values()]
        ys = [100 * r["val_accuracy"] for r in trained.values()]
        axis.scatter(xs, ys, color="0.6")
        front = sorted(fronts[cost], key=lambda n: trained[n][cost])
        axis.plot([trained[n][cost] * scale for n in front], [100 * trained[n]["val_accuracy"] for n in front], "o-")
        axis.set_xlabel(label)
        axis.set_ylabel("validation accuracy (%)")
    figure.tight_layout()
    with private_tempdir("plot") as tmp:
        temp = Path(tmp) / "pareto.png"
        figure.savefig(temp, dpi=100)
        path.write_bytes(temp.read_bytes())
    plt.close(figure)


def load_state(out_dir: Path) -> dict | None:
    path = Path(out_dir) / "search.json"
    return json.loads(path.read_text()) if path.is_file() else None
