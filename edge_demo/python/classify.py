#!/usr/bin/env python3
"""Classify images with a bundle made by `compress ship`, using only onnxruntime, numpy and Pillow.

    python classify.py BUNDLE digit.png photos/ --top-k 3
    python classify.py BUNDLE --self-test          # the bundle's own known samples must come back right
    python classify.py BUNDLE --bench 1000 --json  # latency of the model alone, as JSON
    python classify.py TEXT_BUNDLE --text "The match ended in a draw"   # text bundles: raw text in
    python classify.py TEXT_BUNDLE --text-file reviews.txt --json      # one text per line

Text bundles (model.json "task": "text-classification") also need the tokenizers package
(requirements-text.txt): the bundle's tokenizer.json turns raw text into input_ids/attention_mask.

The bundle is checked before anything runs: every file listed in model.json must be there with the
sha256 recorded at shipping time, and the model's input must have the size model.json declares.
A bad bundle, a missing image or an unreadable file ends with one line `error: ...` and exit code 2;
a failed self-test exits 1.

Copy this file into your own app: it imports nothing from compress or torch.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

try:
    import numpy as np
    import onnxruntime as ort
    from PIL import Image, UnidentifiedImageError
except ImportError as missing:
    print(f"error: classify.py needs onnxruntime, numpy and Pillow ({missing}): "
          "pip install -r edge_demo/python/requirements.txt", file=sys.stderr)
    sys.exit(2)

BUNDLE_FORMAT = "compress-bundle"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
WARMUP_RUNS = 20


def fit_to_input(image: Image.Image, short_side: int | None, center_crop: int | None, width: int,
                 height: int) -> Image.Image:
    """model.json's resize rule, as the pipeline's data path applies it (compress/lazy_data.py): the short side to
    ``short_side`` (bilinear, aspect kept), then the centre ``width`` x ``height`` crop (with ``short_side`` or
    ``center_crop``); an image that still has another size is resized to it (bilinear)."""
    if short_side:
        w, h = image.size
        scale = short_side / min(w, h)
        size = (short_side, short_side) if w == h else (max(short_side, round(w * scale)), max(short_side, round(h * scale)))
        if size != image.size:
            image = image.resize(size, Image.BILINEAR)
    w, h = image.size
    if (short_side or center_crop) and (w, h) != (width, height) and w >= width and h >= height:
        left, top = (w - width) // 2, (h - height) // 2
        image = image.crop((left, top, left + width, top + height))
    return image if image.size == (width, height) else image.resize((width, height), Image.BILINEAR)


class BundleError(Exception):
    """A problem with the bundle or the images: printed as one line, exit code 2."""


class CheckedBundle:
    """A bundle folder whose model.json and files are checked, with an onnxruntime session on its model."""

    def __init__(self, folder: Path, model_format: str = "ort", threads: int = 1):
        self.folder = Path(folder)
        self.info = read_model_json(self.folder)
        check_files(self.folder, self.info)
        self.model_path = self.folder / self.info["models"][model_format]
        started = time.perf_counter()
        self.session = open_session(self.model_path, self.info, model_format, threads)
        self.load_ms = 1000 * (time.perf_counter() - started)


class Bundle(CheckedBundle):
    """A checked image bundle, with the preprocessing it declares."""

    def __init__(self, folder: Path, model_format: str = "ort", threads: int = 1):
        super().__init__(folder, model_format, threads)
        self.input_name = check_signature(self.session, self.info, self.model_path.name)
        shape = self.info["input"]
        self.channels, self.height, self.width = shape["channels"], shape["height"], shape["width"]
        pre = self.info["preprocessing"]
        self.mean = np.asarray(pre["mean"], dtype=np.float32)[:, None, None]
        self.std = np.asarray(pre["std"], dtype=np.float32)[:, None, None]
        self.short_side = int(pre.get("resize_short_side") or 0)
        self.center_crop = int(pre.get("center_crop") or 0)
        self.background = self.info.get("drawing", {}).get("background", "mixed")
        self.classes = [str(c) for c in self.info["classes"]]

    def preprocess(self, path: Path, invert: str = "auto") -> np.ndarray:
        """Image file -> (1, C, H, W) float32, exactly as model.json's preprocessing says."""
        try:
            with Image.open(path) as img:
                image = img.convert("L" if self.channels == 1 else "RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise BundleError(f"cannot read image {path}: {exc}") from exc
        except Image.DecompressionBombError as exc:
            raise BundleError(f"image {path} is too large to decode safely ({exc}): resize it") from exc
        image = fit_to_input(image, self.short_side, self.center_crop, self.width, self.height)
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        if invert == "yes" or (invert == "auto" and needs_inversion(pixels, self.background)):
            pixels = 1.0 - pixels
        return ((pixels - self.mean) / self.std)[None].astype(np.float32)

    def run(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        """Probabilities for a batch, and the inference time in milliseconds."""
        started = time.perf_counter()
        logits = self.session.run(None, {self.input_name: x})[0]
        elapsed = 1000 * (time.perf_counter() - started)
        return softmax(logits), elapsed


def read_model_json(folder: Path) -> dict:
    path = folder / "model.json"
    if not folder.is_dir():
        raise BundleError(f"bundle folder not found: {folder} (make one with: compress ship RUN_DIR --out {folder})")
    if not path.is_file():
        raise BundleError(f"{path} is missing: {folder} is not a bundle made by `compress ship`")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}): re-create the bundle with compress ship") from exc
    if not isinstance(info, dict):
        raise BundleError(f"{path} holds a JSON {type(info).__name__}, not an object: re-create the bundle with compress ship")
    missing = [key for key in ("format", "files", "models", "input", "preprocessing", "classes") if key not in info]
    if missing or info.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path} is not a compress bundle description (missing {', '.join(missing) or 'format'}): "
                          "re-create the bundle with compress ship")
    problem = model_json_problem(folder, info)
    if problem:
        raise BundleError(f"{path} is damaged: {problem}; re-create the bundle with compress ship")
    return info


def model_json_problem(folder: Path, info: dict) -> str | None:
    """What is wrong with model.json's fields (None when every field this app reads has the right shape)."""
    files = info["files"]
    if not isinstance(files, dict) or not all(isinstance(r, dict) and isinstance(r.get("sha256"), str) for r in files.values()):
        return "'files' must map each file name to its sha256"
    outside = [name for name in files if not inside(folder, name)]
    if outside:
        return f"file {outside[0]!r} lies outside the bundle folder"
    models = info["models"]
    if not isinstance(models, dict) or not all(isinstance(models.get(key), str) for key in ("onnx", "ort")):
        return "'models' must name the onnx and ort files"
    for key in ("onnx", "ort"):
        if not inside(folder, models[key]):
            return f"the {key} model {models[key]!r} lies outside the bundle folder"
    if not isinstance(info["classes"], list) or not info["classes"]:
        return "'classes' must be a non-empty list"
    if info.get("task") == "text-classification":
        return None  # no image geometry; TextBundle checks the tokenizer it loads
    shape = info["input"]
    if not isinstance(shape, dict) or not all(isinstance(shape.get(k), int) and shape[k] >= 1 for k in ("channels", "height", "width")):
        return "'input' must give channels, height and width as positive integers"
    pre = info["preprocessing"]
    for key in ("mean", "std"):
        values = pre.get(key) if isinstance(pre, dict) else None
        if not isinstance(values, list) or len(values) != shape["channels"] or \
                not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return f"preprocessing {key} must be {shape['channels']} number(s), one per input channel"
    if not all(v > 0 for v in pre["std"]):
        return "preprocessing std must be positive"
    for key in ("resize_short_side", "center_crop"):
        value = pre.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            return f"preprocessing {key} must be a positive number of pixels when given"
    if not isinstance(info["classes"], list) or not info["classes"]:
        return "'classes' must be a non-empty list"
    samples = info.get("samples", [])
    if not isinstance(samples, list) or not all(isinstance(s, dict) and isinstance(s.get("file"), str) and "label" in s
                                                for s in samples):
        return "'samples' must be a list of {file, label}"
    outside = [s["file"] for s in samples if not inside(folder, s["file"])]
    if outside:
        return f"sample {outside[0]!r} lies outside the bundle folder"
    return None


def inside(folder: Path, name: str) -> bool:
    """A relative file name that stays inside ``folder`` (no absolute path, no .., no symlink out of it)."""
    if not name or Path(name).is_absolute():
        return False
    root = folder.resolve()
    return (root / name).resolve().is_relative_to(root)


def check_files(folder: Path, info: dict) -> None:
    """Every file the bundle lists must be present and unchanged since shipping."""
    for name, record in info["files"].items():
        path = folder / name
        if not path.is_file():
            raise BundleError(f"bundle file {name} is missing from {folder}: copy the whole bundle folder, "
                              "or re-create it with compress ship")
        digest = sha256(path)
        if digest != record["sha256"]:
            raise BundleError(f"bundle file {name} is corrupt: sha256 {digest[:12]}... does not match model.json's "
                              f"{record['sha256'][:12]}...; re-create the bundle with compress ship")
    for key in ("onnx", "ort"):
        if info["models"].get(key) not in info["files"]:
            raise BundleError(f"model.json names {info['models'].get(key)!r} as the {key} model but does not list it "
                              "with a sha256: re-create the bundle with compress ship")


def open_session(path: Path, info: dict, model_format: str, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if model_format == "ort" and info.get("ort_format", {}).get("replay_saved_optimizations"):
        options.add_session_config_entry("session.enable_saved_runtime_optimizations", "1")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for corrupt or unsupported models
        raise BundleError(f"onnxruntime {ort.__version__} cannot load {path.name}: {str(exc).splitlines()[0]}") from exc


def check_signature(session: ort.InferenceSession, info: dict, model_name: str) -> str:
    """The model's input must be the size model.json declares, and its output one score per class."""
    inputs = session.get_inputs()
    declared = [info["input"]["channels"], info["input"]["height"], info["input"]["width"]]
    actual = list(inputs[0].shape[1:]) if len(inputs) == 1 else None
    if actual != declared:
        shape = ", ".join(str(d) for d in inputs[0].shape) if inputs else ""
        raise BundleError(f"wrong input size: {model_name} takes input [{shape}] but model.json declares "
                          f"[N, {', '.join(map(str, declared))}]; re-create the bundle")
    classes = session.get_outputs()[0].shape[-1]
    if isinstance(classes, int) and classes != len(info["classes"]):
        raise BundleError(f"{model_name} scores {classes} classes but model.json lists {len(info['classes'])}; "
                          "re-create the bundle")
    return inputs[0].name


class TextBundle(CheckedBundle):
    """A checked text bundle, with the bundle's own tokenizer.json."""

    def __init__(self, folder: Path, model_format: str = "ort", threads: int = 1):
        super().__init__(folder, model_format, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        if self.input_names != self.info["input"].get("names"):
            raise BundleError(f"{self.model_path.name} takes inputs {self.input_names} but model.json declares "
                              f"{self.info['input'].get('names')}; re-create the bundle")
        self.classes = [str(c) for c in self.info["classes"]]
        try:
            from tokenizers import Tokenizer
        except ImportError as missing:
            raise BundleError(f"text bundles need the tokenizers package ({missing}): "
                              "pip install -r edge_demo/python/requirements-text.txt") from missing
        try:
            self.tokenizer = Tokenizer.from_file(str(self.folder / self.info["tokenizer"]["file"]))
        except Exception as exc:  # tokenizers raises a plain Exception for malformed files
            raise BundleError(f"cannot read the bundle's tokenizer: {str(exc).splitlines()[0]}") from exc
        # truncation with stride 0 keeps the rest of a long text as overflowing windows, each framed [CLS] ... [SEP]
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(int(self.info["input"]["max_length"]))
        self.max_windows = int(self.info["input"].get("max_windows", 1))  # 0: every window
        pad_id = self.tokenizer.token_to_id("[PAD]")
        self.pad_id = 0 if pad_id is None else pad_id

    def encode(self, text: str) -> dict[str, np.ndarray]:
        """One raw text -> int64 [W, L] arrays, one row per window as model.json's preprocessing says (a shorter
        last window padded with [PAD], attention_mask 0 there)."""
        encoding = self.tokenizer.encode(text)
        windows = [encoding, *encoding.overflowing][:self.max_windows or None]
        length = max(len(w.ids) for w in windows)
        columns = {"input_ids": [w.ids + [self.pad_id] * (length - len(w.ids)) for w in windows],
                   "attention_mask": [w.attention_mask + [0] * (length - len(w.ids)) for w in windows],
                   "token_type_ids": [w.type_ids + [0] * (length - len(w.ids)) for w in windows]}
        return {name: np.array(columns[name], dtype=np.int64) for name in self.input_names}

    def run(self, feed: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
        """The text's probabilities (the mean softmax of its windows) and the time it took."""
        started = time.perf_counter()
        logits = self.session.run(None, feed)[0]
        return softmax(logits).mean(axis=0), 1000 * (time.perf_counter() - started)


def is_text_bundle(folder: Path) -> bool:
    return read_model_json(folder).get("task") == "text-classification"


def classify_texts(bundle: TextBundle, texts: list[str], top_k: int) -> list[dict]:
    results = []
    for text in texts:
        feed = bundle.encode(text)
        probs, elapsed = bundle.run(feed)
        order = np.argsort(-probs)[:top_k]
        results.append({"text": text, "tokens": int(feed["attention_mask"].sum() if "attention_mask" in feed else feed["input_ids"].size),
                        "windows": len(feed["input_ids"]),
                        "top": [{"label": bundle.classes[i], "probability": float(probs[i])} for i in order],
                        "inference_ms": elapsed})
    return results


def read_texts(args: argparse.Namespace) -> list[str]:
    texts = list(args.text or [])
    if args.text_file:
        path = Path(args.text_file)
        try:
            texts += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except FileNotFoundError:
            raise BundleError(f"text file not found: {path}") from None
        except UnicodeDecodeError as exc:
            raise BundleError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}): save it as UTF-8") from None
    return texts


def text_main(args: argparse.Namespace) -> int:
    """The app for a text bundle: classify --text/--text-file, --self-test on its known texts, --bench."""
    if args.images:
        raise BundleError(f"{args.bundle} is a text bundle: give --text or --text-file instead of files")
    bundle = TextBundle(Path(args.bundle), args.model_format, args.threads)
    results = classify_texts(bundle, read_texts(args), args.top_k)
    report = {"bundle": str(bundle.folder), "artifact": bundle.info.get("artifact"), "model": bundle.model_path.name,
              "onnxruntime": ort.__version__, "threads": args.threads, "session_load_ms": bundle.load_ms,
              "results": results, "bench": None}
    correct = 0
    if args.self_test:
        samples = bundle.info.get("samples", [])
        if not samples:
            raise BundleError("model.json lists no known samples: re-create the bundle")
        checks = classify_texts(bundle, [s["text"] for s in samples], 1)
        for sample, check in zip(samples, checks):
            check.update(expected=sample["label"], ok=check["top"][0]["label"] == sample["label"])
            correct += check["ok"]
        report["self_test"] = {"correct": correct, "total": len(checks), "results": checks}
    if args.bench:
        feed = bundle.encode(results[0]["text"] if results else bundle.info["samples"][0]["text"])
        for _ in range(WARMUP_RUNS):
            bundle.run(feed)
        report["bench"] = {"warmup_runs": WARMUP_RUNS, **percentiles([bundle.run(feed)[1] for _ in range(args.bench)])}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['model']} ({report['artifact']}) on onnxruntime {report['onnxruntime']}; session loaded in "
              f"{report['session_load_ms']:.1f} ms")
        for result in results:
            top = "  ".join(f"{t['label']} {100 * t['probability']:5.1f}%" for t in result["top"])
            print(f"{result['text'][:60]!r}: {top}  ({result['tokens']} tokens in {result['windows']} window(s), {result['inference_ms']:.3f} ms)")
        if "self_test" in report:
            print(f"self-test: {correct}/{report['self_test']['total']} known samples correct")
        if report["bench"]:
            b = report["bench"]
            print(f"bench: {b['runs']} runs of one text (all its windows): p50 {b['p50_ms']:.3f} ms, p90 {b['p90_ms']:.3f} ms")
    return 1 if args.self_test and correct != report["self_test"]["total"] else 0


def needs_inversion(pixels: np.ndarray, background: str) -> bool:
    """Dark ink on a light page fed to a model trained on light ink on black (or the reverse)."""
    border = np.concatenate([pixels[:, 0], pixels[:, -1], pixels[:, :, 0], pixels[:, :, -1]], axis=1).mean()
    return (background == "dark" and border > 0.5) or (background == "light" and border < 0.5)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def image_files(paths: list[str]) -> list[Path]:
    """Image files given directly, and every image file under given folders (sorted)."""
    files = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise BundleError(f"no image files in folder {path} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise BundleError(f"image not found: {path}")
    return files


def percentiles(values_ms: list[float]) -> dict:
    values = np.asarray(values_ms, dtype=np.float64)
    return {"runs": len(values), "p50_ms": float(np.percentile(values, 50)), "p90_ms": float(np.percentile(values, 90)),
            "p99_ms": float(np.percentile(values, 99)), "mean_ms": float(values.mean())}


def classify(bundle: Bundle, files: list[Path], top_k: int, invert: str) -> tuple[list[dict], dict]:
    results, pre_ms, infer_ms = [], [], []
    for path in files:
        started = time.perf_counter()
        x = bundle.preprocess(path, invert)
        pre_ms.append(1000 * (time.perf_counter() - started))
        probs, elapsed = bundle.run(x)
        infer_ms.append(elapsed)
        order = np.argsort(-probs[0])[:top_k]
        results.append({"file": str(path), "top": [{"label": bundle.classes[i], "probability": float(probs[0, i])}
                                                    for i in order], "inference_ms": elapsed})
    return results, {"images": len(files), "inference": percentiles(infer_ms), "preprocess": percentiles(pre_ms)}


def self_test(bundle: Bundle) -> tuple[list[dict], int]:
    """Run the bundle's known samples; returns their results and how many came back with their label."""
    samples = bundle.info.get("samples", [])
    if not samples:
        raise BundleError("model.json lists no known samples: re-create the bundle with compress ship")
    results, _ = classify(bundle, [bundle.folder / s["file"] for s in samples], 1, "auto")
    correct = 0
    for sample, result in zip(samples, results):
        result["expected"] = sample["label"]
        result["ok"] = result["top"][0]["label"] == sample["label"]
        correct += result["ok"]
    return results, correct


def bench(bundle: Bundle, x: np.ndarray, runs: int) -> dict:
    """Latency of the model alone at batch 1: warm-up, then ``runs`` timed runs."""
    for _ in range(WARMUP_RUNS):
        bundle.run(x)
    return {"warmup_runs": WARMUP_RUNS, **percentiles([bundle.run(x)[1] for _ in range(runs)])}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Classify images with a bundle made by `compress ship` (onnxruntime, numpy and Pillow only).",
        epilog="examples:\n  python classify.py runs/default/bundle digit.png scans/ --top-k 3\n"
               "  python classify.py runs/default/bundle --self-test\n"
               "  python classify.py runs/default/bundle --bench 1000 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", help="bundle folder (holds model.json)")
    parser.add_argument("images", nargs="*", help="image files or folders of images")
    parser.add_argument("--top-k", type=int, default=3, help="classes shown per image (default 3)")
    parser.add_argument("--format", dest="model_format", choices=["ort", "onnx"], default="ort",
                        help="which bundled model runs: ort (default, what reduced builds load) or onnx")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    parser.add_argument("--invert", choices=["auto", "yes", "no"], default="auto",
                        help="invert image colours: auto (when the background is the opposite of the training "
                             "images'), yes or no (default auto)")
    parser.add_argument("--self-test", action="store_true", help="classify the bundle's known samples; exit 1 on a miss")
    parser.add_argument("--bench", type=int, metavar="RUNS", default=0,
                        help="also time RUNS inferences at batch 1 (after a warm-up) and report percentiles")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument("--text", action="append", metavar="TEXT", help="text bundles: a text to classify (repeatable)")
    parser.add_argument("--text-file", metavar="FILE", help="text bundles: a UTF-8 file of texts, one per line")
    args = parser.parse_args(argv)
    if not args.images and not args.self_test and not args.bench and not args.text and not args.text_file:
        parser.error("give images or folders to classify (--text/--text-file for text bundles), --self-test, "
                     "or --bench RUNS")
    if args.top_k < 1 or args.threads < 0 or args.bench < 0:
        parser.error("--top-k must be >= 1, --threads >= 0 and --bench >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if is_text_bundle(Path(args.bundle)):
            return text_main(args)
        if args.text or args.text_file:
            raise BundleError(f"{args.bundle} is an image bundle: give image files, not --text")
        bundle = Bundle(Path(args.bundle), args.model_format, args.threads)
        files = image_files(args.images)
        results, latency = classify(bundle, files, args.top_k, args.invert) if files else ([], None)
        checks, correct = self_test(bundle) if args.self_test else ([], 0)
        timing = None
        if args.bench:
            first = files[0] if files else bundle.folder / bundle.info["samples"][0]["file"]
            timing = bench(bundle, bundle.preprocess(first, args.invert), args.bench)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = {"bundle": str(bundle.folder), "artifact": bundle.info.get("artifact"), "model": bundle.model_path.name,
              "onnxruntime": ort.__version__, "threads": args.threads, "session_load_ms": bundle.load_ms,
              "results": results, "latency": latency, "bench": timing}
    if args.self_test:
        report["self_test"] = {"correct": correct, "total": len(checks), "results": checks}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 1 if args.self_test and correct != len(checks) else 0


def print_report(report: dict) -> None:
    print(f"{report['model']} ({report['artifact']}) on onnxruntime {report['onnxruntime']}, "
          f"{report['threads']} thread(s); session loaded in {report['session_load_ms']:.1f} ms")
    for result in report["results"]:
        top = "  ".join(f"{t['label']} {100 * t['probability']:5.1f}%" for t in result["top"])
        print(f"{result['file']}: {top}  ({result['inference_ms']:.3f} ms)")
    if report["latency"]:
        lat = report["latency"]
        print(f"latency: {lat['images']} image(s), inference p50 {lat['inference']['p50_ms']:.3f} ms, "
              f"p90 {lat['inference']['p90_ms']:.3f} ms; preprocessing mean {lat['preprocess']['mean_ms']:.3f} ms")
    if "self_test" in report:
        test = report["self_test"]
        for result in test["results"]:
            if not result["ok"]:
                print(f"MISS {result['file']}: expected {result['expected']}, got {result['top'][0]['label']}")
        print(f"self-test: {test['correct']}/{test['total']} known samples correct")
    if report["bench"]:
        b = report["bench"]
        print(f"bench: {b['runs']} runs at batch 1 after {b['warmup_runs']} warm-up: p50 {b['p50_ms']:.3f} ms, "
              f"p90 {b['p90_ms']:.3f} ms, p99 {b['p99_ms']:.3f} ms, mean {b['mean_ms']:.3f} ms")


if __name__ == "__main__":
    sys.exit(main())
