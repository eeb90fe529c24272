"""``compress ship``: turn a finished run into a bundle an edge app can use without torch or compress.

A bundle holds the artifact the pipeline chose (or another one on request) as ONNX and as ORT format
(with the required-operators config for onnxruntime's reduced builds, made by onnxruntime's own
converter), a handful of known test images, and ``model.json``: the input signature, the
preprocessing, the class labels, the run's measured accuracy and latency, and the sha256 of every
file. It is verified before it is swapped into place: the .ort model must predict exactly what the
.onnx model predicts on the whole test split, and every stored sample must come back with its label.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from compress.data import DataConfig, Dataset, load_dataset
from compress.errors import CompressError
from compress.fsutil import check_out_folder, private_tempdir, sha256, staging_dir, working_directory, write_json
from compress.lazy_data import is_lazy, resize_and_crop
from compress.manifest import manifest_problem
from compress.metrics import softmax
from compress.onnxutil import load_onnx, metadata

BUNDLE_FORMAT, BUNDLE_VERSION = "compress-bundle", 1
OPTIMIZATION_STYLES = ("fixed", "runtime")
LAZY_CHECK_SAMPLES = 512  # test images a streamed split's pixel range is checked on
HINT_BYTES = 256 << 20  # decoded train images the drawing hints are measured on, at most
TARGET_PLATFORMS = ("arm", "amd64")
METRIC_KEYS = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "p50_ms", "p90_ms", "p99_ms", "mean_ms",
               "throughput_sps", "size_bytes", "params", "macs")


@dataclass
class BundleConfig:
    """What goes into a bundle and how the ORT-format copy is made."""

    artifact: str | None = None  # artifact of the run to bundle; None = the one the pipeline chose to ship
    samples: int = 10  # known test images stored with their labels so apps can self-test (one per class first)
    optimization_style: str = "fixed"  # ORT format: fixed (optimizations baked in) or runtime (for NNAPI/CoreML)
    target_platform: str | None = None  # None = portable .ort; arm or amd64 bakes in that platform's optimizations
    type_reduction: bool = False  # also record each operator's types in the config (smaller reduced builds)
    threads: int = 1  # onnxruntime intra-op threads while verifying

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if self.optimization_style not in OPTIMIZATION_STYLES:
            raise ValueError(f"optimization_style must be one of {', '.join(OPTIMIZATION_STYLES)}, "
                             f"got {self.optimization_style!r}")
        if self.target_platform is not None and self.target_platform not in TARGET_PLATFORMS:
            raise ValueError(f"target_platform must be one of {', '.join(TARGET_PLATFORMS)} or None, "
                             f"got {self.target_platform!r}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0 = onnxruntime's default), got {self.threads}")


def ship(cfg: BundleConfig, run_dir: Path, out_dir: Path, force: bool = False) -> dict:
    """Build, verify and write the bundle of ``run_dir`` into ``out_dir``; returns its model.json.
    An existing ``out_dir`` is replaced only with ``force`` (and only once the new bundle is verified)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.resolve() == run_dir.resolve() or out_dir.resolve() in run_dir.resolve().parents:
        raise CompressError(f"--out {out_dir} would replace the run folder {run_dir}: choose another --out "
                            f"(e.g. {run_dir / 'bundle'})")
    check_out_folder(out_dir)
    if out_dir.exists() and not force:
        raise CompressError(f"{out_dir} already exists: pass --force to replace it, or choose another --out")
    manifest = _finished_manifest(run_dir)
    name, source, chosen = _pick_artifact(manifest, run_dir, cfg.artifact)
    model = load_onnx(source)
    props = metadata(model)
    if props.get("task") == "text-classification":
        return _ship_text(cfg, manifest, run_dir, out_dir, name, source, chosen, force)
    spec = _image_spec(props, source)
    data = _run_dataset(manifest)
    _check_dataset(data, spec, source)
    with staging_dir(out_dir, bundle_files(out_dir)) as tmp:
        shutil.copyfile(source, tmp / "model.onnx")
        ort_name, config_name = convert_to_ort(tmp / "model.onnx", cfg)
        onnx_session = bundle_session(tmp / "model.onnx", cfg)
        ort_session = bundle_session(tmp / ort_name, cfg)
        input_spec = _input_signature(onnx_session, spec, source)
        parity = ort_parity(onnx_session, ort_session, data)
        _check_recorded_accuracy(parity["onnx_accuracy"], manifest["results"][name]["accuracy"], len(data.test), name)
        drawing = drawing_hints(data, spec)
        spec["background"] = drawing["background"]
        samples = write_samples(data, spec, onnx_session, ort_session, tmp, cfg.samples)
        bundle = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "artifact": name,
            "chosen_by_pipeline": chosen,
            "ship_reason": manifest["ship"]["reason"] if chosen else f"requested with --artifact {name}",
            "models": {"onnx": "model.onnx", "ort": ort_name, "required_operators": config_name},
            "input": input_spec,
            "output": _output_signature(onnx_session),
            "classes": list(spec["classes"]),
            "preprocessing": _preprocessing(spec),
            "drawing": drawing,
            "metrics": _run_metrics(manifest, name),
            "verification": {**parity, "samples_verified": len(samples), "threads": cfg.threads,
                             "onnxruntime": ort.__version__},
            "ort_format": {"optimization_style": cfg.optimization_style, "target_platform": cfg.target_platform,
                           "type_reduction": cfg.type_reduction,
                           "converter": "python -m onnxruntime.tools.convert_onnx_models_to_ort",
                           "replay_saved_optimizations": cfg.optimization_style == "runtime"},
            "ship_config": asdict(cfg),
            "source": {"run_dir": str(run_dir.resolve()), "artifact_path": str(source.relative_to(run_dir)),
                       "artifact_sha256": sha256(source), "manifest_sha256": sha256(run_dir / "manifest.json"),
                       "dataset": props.get("dataset", data.name), "test_samples": len(data.test)},
            "samples": samples,
        }
        bundle["files"] = {path.relative_to(tmp).as_posix(): {"sha256": sha256(path), "bytes": path.stat().st_size}
                           for path in sorted(tmp.rglob("*")) if path.is_file()}
        write_json(tmp / "model.json", bundle)
    return bundle


def _ship_text(cfg: BundleConfig, manifest: dict, run_dir: Path, out_dir: Path, name: str, source: Path, chosen: bool,
               force: bool) -> dict:
    """A text run's bundle (compress.text_ship): the model, its .ort, the run's tokenizer.json and the labels,
    verified on the run's test texts."""
    from compress.text_data import load_text_dataset
    from compress.text_ship import ship_text_bundle

    tokenizer = source.parent / "tokenizer.json"
    if not tokenizer.is_file():
        raise CompressError(f"{tokenizer} is missing from the run: restore it with compress pipeline --out {run_dir} --resume")
    try:
        data_cfg = DataConfig(**manifest["config"]["data"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CompressError(f"the run's manifest has no usable data config ({exc}): rerun the pipeline") from exc
    data = load_text_dataset(data_cfg, tokenizer=tokenizer)
    bundle = ship_text_bundle(source, tokenizer, out_dir, data.test.texts, data.test.sample_y, cfg, artifact=name,
                              metrics=_run_metrics(manifest, name), force=force)
    _check_recorded_accuracy(bundle["verification"]["onnx_accuracy"], manifest["results"][name]["accuracy"],
                             data.test.num_samples, name)
    bundle["chosen_by_pipeline"] = chosen
    bundle["verification"].update(test_samples=data.test.num_samples, samples_verified=len(bundle["samples"]))
    return bundle


def bundle_files(folder: Path) -> list[str]:
    """The files an earlier ``compress ship`` wrote into ``folder`` (its model.json lists them): the only ones
    ``--force`` replaces."""
    try:
        bundle = json.loads((folder / "model.json").read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT or not isinstance(bundle.get("files"), dict):
        return []
    return [*map(str, bundle["files"]), "model.json"]


def _finished_manifest(run_dir: Path) -> dict:
    path = run_dir / "manifest.json"
    if not run_dir.is_dir():
        raise CompressError(f"run folder not found: {run_dir} (make one with: compress pipeline --out {run_dir})")
    if not path.is_file():
        raise CompressError(f"{run_dir} has no manifest.json: it is not a compress run folder "
                            f"(make one with: compress pipeline --out {run_dir})")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CompressError(f"{path} is not valid JSON ({exc}): rerun the pipeline into a fresh folder") from exc
    if not isinstance(manifest, dict):
        raise CompressError(f"{path} {manifest_problem(manifest)}: rerun the pipeline into a fresh folder")
    if manifest.get("status") != "complete" or "ship" not in manifest or "results" not in manifest:
        raise CompressError(f"{run_dir} holds an unfinished run: finish it with "
                            f"compress pipeline --out {run_dir} --resume")
    problem = manifest_problem(manifest, finished=True)
    if problem:
        raise CompressError(f"{path} {problem}: it was not written by this compress; rerun the pipeline into a fresh folder")
    return manifest


def _artifact_records(manifest: dict) -> dict[str, dict]:
    """Every ONNX file the run made, by artifact name, with the sha256 the run recorded."""
    records = {}
    for stage in ("export", "quantize"):
        records.update(manifest["stages"].get(stage, {}).get("outputs", {}))
    return {name: record for name, record in records.items() if name in manifest["results"]}


def _pick_artifact(manifest: dict, run_dir: Path, requested: str | None) -> tuple[str, Path, bool]:
    records = _artifact_records(manifest)
    chosen = manifest["ship"]["artifact"]
    name = requested or chosen
    if name not in records:
        raise CompressError(f"unknown artifact {name!r}: this run has {', '.join(records)} "
                            f"(the pipeline chose {chosen})")
    path = run_dir / records[name]["path"]
    if not path.is_file():
        raise CompressError(f"{path} is missing from the run: restore it with "
                            f"compress pipeline --out {run_dir} --resume")
    if sha256(path) != records[name]["sha256"]:
        raise CompressError(f"{path} changed since the run recorded it (sha256 mismatch): restore it with "
                            f"compress pipeline --out {run_dir} --resume")
    return name, path, name == chosen


def _image_spec(props: dict, source: Path) -> dict:
    """Classes and preprocessing from the model's own metadata (written by the export stage)."""
    pre, classes = props.get("preprocessing"), props.get("class_labels")
    if not isinstance(pre, dict) or not isinstance(classes, list):
        raise CompressError(f"{source} lacks the class_labels/preprocessing metadata that compress export writes: "
                            "re-export it with compress")
    if pre.get("layout") != "NCHW" or len(pre.get("input_shape", [])) != 3 or pre["input_shape"][0] not in (1, 3):
        raise CompressError(f"{source} takes {pre.get('layout')} input of shape {pre.get('input_shape')}: a bundle "
                            "is for image classifiers with 1 (gray) or 3 (RGB) channels in NCHW layout")
    channels = pre["input_shape"][0]
    mean = pre.get("mean") or [0.0] * channels
    std = pre.get("std") or [1.0] * channels
    if len(mean) != channels or len(std) != channels:
        raise CompressError(f"{source}: preprocessing has {len(mean)} mean and {len(std)} std values for "
                            f"{channels} channel(s); re-export it with compress")
    return {"channels": channels, "height": pre["input_shape"][1], "width": pre["input_shape"][2],
            "mean": [float(v) for v in mean], "std": [float(v) for v in std], "classes": [str(c) for c in classes],
            "pixel_scale": float(pre.get("pixel_scale", 1.0)), "resize_short_side": pre.get("resize_short_side"), "center_crop": pre.get("center_crop")}


def _run_dataset(manifest: dict) -> Dataset:
    try:
        cfg = DataConfig(**manifest["config"]["data"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CompressError(f"the run's manifest has no usable data config ({exc}): rerun the pipeline") from exc
    return load_dataset(cfg)


def _check_dataset(data: Dataset, spec: dict, source: Path) -> None:
    shape = (spec["channels"], spec["height"], spec["width"])
    if data.input_shape != shape:
        raise CompressError(f"wrong input size: {source} takes {list(shape)} but the run's data gives "
                            f"{list(data.input_shape)}; the run folder and its data do not match")
    if data.class_names != spec["classes"]:
        raise CompressError(f"{source} labels its classes {spec['classes'][:5]}... but the run's data has "
                            f"{data.class_names[:5]}...; the run folder and its data do not match")
    raw = to_unit_range(data.test.x[:LAZY_CHECK_SAMPLES] if is_lazy(data.test.x) else data.test.x, spec)
    low, high = float(raw.min()), float(raw.max())
    if low < -0.01 or high > 1.01:
        raise CompressError(f"the model's inputs are not images: before normalization they span {low:.3g}..{high:.3g}, "
                            "not 0..1, so they cannot be stored or read as 8-bit pixels")


def convert_to_ort(onnx_path: Path, cfg: BundleConfig) -> tuple[str, str]:
    """onnxruntime's own converter: ``model.ort`` plus the required-operators config beside it."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    style = OptimizationStyle.Fixed if cfg.optimization_style == "fixed" else OptimizationStyle.Runtime
    onnx_path = onnx_path.resolve()
    folder = onnx_path.parent
    before = {p.name for p in folder.iterdir()}
    log = io.StringIO()
    logger = logging.getLogger("ort_format_model.utils")  # it logs an INFO line per config file it writes
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(log), private_tempdir("ort") as scratch, \
                working_directory(Path(scratch)):
            convert_onnx_models_to_ort(onnx_path, output_dir=folder, optimization_styles=[style],
                                       target_platform=cfg.target_platform, enable_type_reduction=cfg.type_reduction)
    except Exception as exc:
        last = (log.getvalue().strip().splitlines() or [""])[-1]
        raise CompressError(f"onnxruntime's ORT-format converter failed on {onnx_path.name}: "
                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__} {last}".strip()) from exc
    finally:
        logger.setLevel(level)
    made = sorted({p.name for p in folder.iterdir()} - before)
    ort_files = [n for n in made if n.endswith(".ort")]
    configs = [n for n in made if n.endswith(".config")]
    if len(ort_files) != 1 or len(configs) != 1:
        raise CompressError(f"onnxruntime's converter made {made}, expected one .ort and one .config file")
    # One fixed name for the apps; the config keeps the converter's name, which says what it holds.
    if ort_files[0] != "model.ort":
        (folder / ort_files[0]).rename(folder / "model.ort")
    config = folder / configs[0]  # its header names the staging folder's path: name the bundled file instead
    config.write_text("".join("# - model.ort\n" if line.startswith("# - ") else line
                              for line in config.read_text().splitlines(keepends=True)))
    return "model.ort", configs[0]


def bundle_session(path: Path, cfg: BundleConfig) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = cfg.threads
    options.inter_op_num_threads = 1
    if path.suffix == ".ort" and cfg.optimization_style == "runtime":
        options.add_session_config_entry("session.enable_saved_runtime_optimizations", "1")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise CompressError(f"onnxruntime cannot load the bundled {path.name}: {str(exc).splitlines()[0]}") from exc


def _input_signature(session: ort.InferenceSession, spec: dict, source: Path) -> dict:
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)":
        raise CompressError(f"{source} must have one float input to be bundled, it has "
                            f"{[(i.name, i.type) for i in inputs]}")
    shape = list(inputs[0].shape)
    expected = [spec["channels"], spec["height"], spec["width"]]
    if len(shape) != 4 or shape[1:] != expected:
        raise CompressError(f"wrong input size: {source} declares input {shape} but its metadata says "
                            f"[N, {', '.join(map(str, expected))}]; re-export it")
    return {"name": inputs[0].name, "dtype": "float32", "shape": [d if isinstance(d, int) else (d or "batch") for d in shape],
            "layout": "NCHW", "channels": spec["channels"], "height": spec["height"], "width": spec["width"]}


def _output_signature(session: ort.InferenceSession) -> dict:
    output = session.get_outputs()[0]
    return {"name": output.name, "shape": [d if isinstance(d, int) else (d or "batch") for d in output.shape],
            "kind": "logits", "postprocessing": "probabilities = softmax(logits)"}


def _preprocessing(spec: dict) -> dict:
    short_side, crop = spec.get("resize_short_side"), spec.get("center_crop")
    if short_side:
        resize = (f"bilinear (Pillow's), short side to resize_short_side ({short_side}) keeping the aspect ratio, then the "
                  "centre width x height crop")
    elif crop:
        resize = "the centre width x height crop (center_crop); a smaller image is resized to width x height (bilinear)"
    else:
        resize = "bilinear (Pillow's) to width x height when the image has another size"
    return {
        "color": "L" if spec["channels"] == 1 else "RGB",
        "resize": resize,
        **({"resize_short_side": short_side} if short_side else {}),
        **({"center_crop": crop} if crop else {}),
        "pixel_divisor": 255.0,
        "mean": spec["mean"],
        "std": spec["std"],
        "formula": "x[c] = (pixel[c] / 255 - mean[c]) / std[c], pixel in 0..255, NCHW float32",
        "auto_invert": "pixel = 255 - pixel when the mean of the image's outer ring of pixels is above 127.5 and "
                       "drawing.background is dark (below 127.5 when it is light)",
        "dataset_pixel_scale": spec["pixel_scale"],
    }


def to_unit_range(x: np.ndarray, spec: dict) -> np.ndarray:
    """Undo the normalization: model inputs back to pixel values in 0..1."""
    mean = np.asarray(spec["mean"], dtype=np.float32)[None, :, None, None]
    std = np.asarray(spec["std"], dtype=np.float32)[None, :, None, None]
    return x * std + mean


def preprocess_image(path: Path, spec: dict) -> np.ndarray:
    """The bundle's preprocessing contract, as the edge apps implement it: (1, C, H, W) float32."""
    from PIL import Image

    with Image.open(path) as img:
        image = img.convert("L" if spec["channels"] == 1 else "RGB")
    image = fit_to_input(image, spec)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    if needs_inversion(pixels, spec.get("background", "mixed")):
        pixels = 1.0 - pixels
    mean = np.asarray(spec["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(spec["std"], dtype=np.float32)[:, None, None]
    return ((pixels - mean) / std)[None].astype(np.float32)


def fit_to_input(image, spec: dict):
    """The bundle's resize rule (model.json's preprocessing.resize): the data path's short-side resize and centre
    crop (compress.lazy_data.resize_and_crop); an image that still has another size is resized to the model's."""
    from PIL import Image

    short_side, size = spec.get("resize_short_side"), (spec["width"], spec["height"])
    if short_side:
        image = resize_and_crop(image, short_side, None)
    if (short_side or spec.get("center_crop")) and image.size != size and image.width >= size[0] and image.height >= size[1]:
        left, top = (image.width - size[0]) // 2, (image.height - size[1]) // 2
        image = image.crop((left, top, left + size[0], top + size[1]))
    return image if image.size == size else image.resize(size, Image.BILINEAR)


def needs_inversion(pixels: np.ndarray, background: str) -> bool:
    """Dark ink on a light page fed to a model trained on light ink on black (or the reverse)."""
    border = np.concatenate([pixels[:, 0], pixels[:, -1], pixels[:, :, 0], pixels[:, :, -1]], axis=1).mean()
    return (background == "dark" and border > 0.5) or (background == "light" and border < 0.5)


def ort_parity(onnx_session: ort.InferenceSession, ort_session: ort.InferenceSession, data: Dataset) -> dict:
    """The .ort model must predict exactly what the .onnx model predicts on the whole test split."""
    onnx_logits = _logits(onnx_session, data.test.x)
    ort_logits = _logits(ort_session, data.test.x)
    onnx_pred, ort_pred = onnx_logits.argmax(1), ort_logits.argmax(1)
    differ = int((onnx_pred != ort_pred).sum())
    if differ:
        raise CompressError(f"the .ort model predicts differently from the .onnx model on {differ} of {len(onnx_pred)} "
                            "test samples: try --optimization-style runtime or another onnxruntime version")
    return {"test_samples": len(onnx_pred), "ort_onnx_top1_agreement": 1.0,
            "ort_onnx_max_abs_diff": float(np.abs(onnx_logits - ort_logits).max()),
            "onnx_accuracy": float((onnx_pred == data.test.y).mean()),
            "ort_accuracy": float((ort_pred == data.test.y).mean())}


def _check_recorded_accuracy(measured: float, recorded: float, test_samples: int, name: str) -> None:
    if abs(measured - recorded) > 1.0 / test_samples + 1e-9:
        raise CompressError(f"the bundled {name} scores {100 * measured:.2f}% on the run's test split but the run "
                            f"recorded {100 * recorded:.2f}%: the data changed since the run; rerun the pipeline")


def _logits(session: ort.InferenceSession, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)])


def write_samples(data: Dataset, spec: dict, onnx_session, ort_session, out_dir: Path, count: int) -> list[dict]:
    """Store test images as PNG, one per class first, keeping only those both models get right after the
    8-bit round trip (the apps read the PNG, not the float array), with the expected label and probability."""
    from PIL import Image

    folder = out_dir / "samples"
    folder.mkdir()
    samples: list[dict] = []

    def keep(index: int) -> bool:
        label = spec["classes"][int(data.test.y[index])]
        name = f"samples/{len(samples):02d}_{_safe(label)}.png"
        # One image at a time: a streamed test split is never decoded whole.
        pixels = np.clip(np.rint(to_unit_range(data.test.x[index:index + 1], spec)[0] * 255.0), 0, 255).astype(np.uint8)
        array = pixels[0] if spec["channels"] == 1 else pixels.transpose(1, 2, 0)
        Image.fromarray(array, mode="L" if spec["channels"] == 1 else "RGB").save(out_dir / name)
        x = preprocess_image(out_dir / name, spec)
        probs = softmax(_logits(onnx_session, x))[0]
        if int(probs.argmax()) != int(data.test.y[index]) or int(_logits(ort_session, x).argmax()) != int(probs.argmax()):
            (out_dir / name).unlink()
            return False
        samples.append({"file": name, "label": label, "test_index": int(index),
                        "probability": round(float(probs.max()), 6)})
        return True

    by_class = [np.flatnonzero(data.test.y == label).tolist() for label in range(len(spec["classes"]))]
    used = set()
    for indices in by_class:  # one per class while there is room, then the rest in test-split order
        for index in indices:
            if len(samples) == count:
                break
            used.add(index)
            if keep(index):
                break
    for index in range(len(data.test)):
        if len(samples) == count:
            break
        if index not in used:
            keep(index)
    if not samples:
        raise CompressError("the bundled model gets none of the test images right after saving them as PNG: "
                            "check the run's accuracy before shipping it")
    return samples


def drawing_hints(data: Dataset, spec: dict) -> dict:
    """How training images look, measured on the train split, so a drawing canvas can imitate them:
    background shade, and how much of the frame the ink's bounding box fills (MNIST: about 20 of 28 pixels)."""
    count = max(1, min(2000, HINT_BYTES // (4 * int(np.prod(data.input_shape)))))  # 2000 MNIST digits, fewer big photos
    images = to_unit_range(data.train.x[:count], spec).mean(axis=1)  # (N, H, W), gray
    border = np.concatenate([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], axis=1).mean()
    background = "dark" if border < 0.25 else "light" if border > 0.75 else "mixed"
    ink = images > 0.5 if background != "light" else images < 0.5
    fills = []
    for mask in ink:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if len(rows):
            fills.append(max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) / max(spec["height"], spec["width"]))
    return {"background": background, "ink": {"dark": "light", "light": "dark"}.get(background, "any"),
            "fit_fraction": round(float(np.median(fills)), 3) if fills else 1.0, "center": "center_of_mass",
            "measured_on": f"{len(images)} training images"}


def _run_metrics(manifest: dict, name: str) -> dict:
    results = manifest["results"][name]
    bench = manifest["stages"].get("benchmark", {})
    teacher = manifest["results"].get("teacher", {})
    metrics = {key: results[key] for key in METRIC_KEYS if key in results}
    metrics["latency_batch"] = 1
    metrics["provider"] = bench.get("metrics", {}).get(name, {}).get("provider", "CPUExecutionProvider")
    metrics["threads"] = bench.get("config", {}).get("threads")
    metrics["measured_on"] = manifest.get("packages", {}).get("platform")
    if teacher:
        metrics["teacher"] = {key: teacher[key] for key in ("accuracy", "p50_ms", "size_bytes") if key in teacher}
    return metrics


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", label).strip("-") or "class"

