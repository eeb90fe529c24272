"""A text-classifier bundle: the model as ONNX and ORT format, its ``tokenizer.json``, the labels, known
sample texts and ``model.json`` (input names, tokenizer contract, sha256 of every file), verified before it
is swapped into place: the .ort model must predict exactly what the .onnx model predicts on the given texts.
The same layout as ``compress ship``'s image bundles (compress/ship.py), so the edge apps read both."""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

from compress.errors import CompressError
from compress.fsutil import sha256, staging_dir, write_json
from compress.metrics import softmax
from compress.onnxutil import load_onnx, metadata
from compress.ship import BUNDLE_FORMAT, BUNDLE_VERSION, BundleConfig, bundle_session, convert_to_ort
from compress.text_data import load_tokenizer
from compress.text_onnx import copy_tokenizer, encode_text_windows, onnx_logits
from compress.text_windows import text_scores

TASK = "text-classification"


def ship_text_bundle(model_path: Path, tokenizer_path: Path, out_dir: Path, texts: list[str],
                     labels: list[int] | np.ndarray | None = None, cfg: BundleConfig = BundleConfig(),
                     artifact: str = "int8", metrics: dict | None = None, force: bool = False) -> dict:
    """Build, verify and write the bundle of a text ONNX model (from compress.text_onnx) into ``out_dir``;
    ``texts`` (with their ``labels`` when known) verify the .ort copy and give the known samples."""
    model_path, tokenizer_path, out_dir = Path(model_path), Path(tokenizer_path), Path(out_dir)
    if out_dir.exists() and not force:
        raise CompressError(f"{out_dir} already exists: pass --force to replace it, or choose another --out")
    props = metadata(load_onnx(model_path))
    spec = _text_spec(props, model_path)
    if not texts:
        raise CompressError("no texts to verify the bundle with: give at least one (the test split's texts)")
    if labels is not None and len(labels) != len(texts):
        raise CompressError(f"{len(texts)} texts but {len(labels)} labels: give one label per text")
    tokenizer_info = describe_tokenizer(tokenizer_path)
    with staging_dir(out_dir) as tmp:
        shutil.copyfile(model_path, tmp / "model.onnx")
        copy_tokenizer(tokenizer_path, model_path, tmp / "tokenizer.json")
        ort_name, config_name = convert_to_ort(tmp / "model.onnx", cfg)
        onnx_session, ort_session = bundle_session(tmp / "model.onnx", cfg), bundle_session(tmp / ort_name, cfg)
        names = [i.name for i in onnx_session.get_inputs()]
        if names != spec["input_names"]:
            raise CompressError(f"{model_path} takes inputs {names} but its metadata says {spec['input_names']}; re-export it")
        encoded, groups = encode_text_windows(load_tokenizer(tmp / "tokenizer.json"), list(texts), spec["max_length"],
                                              spec["max_windows"])
        # one row per text: the log of its windows' mean softmax, as the apps compute it
        onnx_out = text_scores(onnx_logits(onnx_session, encoded), groups)
        ort_out = text_scores(onnx_logits(ort_session, encoded), groups)
        differ = int((onnx_out.argmax(1) != ort_out.argmax(1)).sum())
        if differ:
            raise CompressError(f"the .ort model predicts differently from the .onnx model on {differ} of {len(texts)} "
                                "texts: try optimization_style=runtime or another onnxruntime version")
        verification = {"texts": len(texts), "windows": len(groups), "ort_onnx_top1_agreement": 1.0,
                        "ort_onnx_max_abs_diff": float(np.abs(onnx_out - ort_out).max()), "threads": cfg.threads,
                        "onnxruntime": ort.__version__}
        if labels is not None:
            verification["onnx_accuracy"] = float((onnx_out.argmax(1) == np.asarray(labels)).mean())
        bundle = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_VERSION,
            "task": TASK,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "artifact": artifact,
            "models": {"onnx": "model.onnx", "ort": ort_name, "required_operators": config_name},
            "input": {"kind": "text", "names": names, "dtype": "int64", "shape": ["batch", "sequence"],
                      "max_length": spec["max_length"], "max_windows": spec["max_windows"]},
            "output": {"name": onnx_session.get_outputs()[0].name, "shape": ["batch", len(spec["classes"])],
                       "kind": "logits",
                       "postprocessing": "probabilities = mean over the text's windows of softmax(logits)"},
            "classes": spec["classes"],
            "tokenizer": tokenizer_info,
            "preprocessing": {"tokenizer": "tokenizer.json", "max_length": spec["max_length"],
                              "max_windows": spec["max_windows"],
                              "windows": (f"the word pieces are cut into consecutive windows of {spec['max_length'] - 2}, "
                                          "each framed [CLS] ... [SEP] (the tokenizer's overflowing encodings, stride 0); "
                                          + ("all windows are scored" if not spec["max_windows"] else
                                             f"the first {spec['max_windows']} are scored, the rest dropped")
                                          + " and their softmax averaged"),
                              "truncation": ("none: a text longer than one window gets more windows"
                                             if not spec["max_windows"] else
                                             f"word pieces beyond the first {spec['max_windows']} windows are dropped"),
                              "padding": "a text's windows run as one batch, padded to its longest window (the last "
                                         "may be short) with [PAD], attention_mask 0 there",
                              "token_type_ids": "all 0 (one segment)"},
            "metrics": dict(metrics or {}),
            "verification": verification,
            "ort_format": {"optimization_style": cfg.optimization_style, "target_platform": cfg.target_platform,
                           "type_reduction": cfg.type_reduction,
                           "converter": "python -m onnxruntime.tools.convert_onnx_models_to_ort",
                           "replay_saved_optimizations": cfg.optimization_style == "runtime"},
            "ship_config": asdict(cfg),
            "source": {"artifact_path": str(model_path), "artifact_sha256": sha256(model_path),
                       "tokenizer_sha256": sha256(tokenizer_path)},
            "samples": _samples(list(texts), labels, onnx_out, ort_out, spec["classes"], cfg.samples),
        }
        bundle["files"] = {path.relative_to(tmp).as_posix(): {"sha256": sha256(path), "bytes": path.stat().st_size}
                           for path in sorted(tmp.rglob("*")) if path.is_file()}
        write_json(tmp / "model.json", bundle)
    return bundle


def _text_spec(props: dict, source: Path) -> dict:
    classes, max_length, names = props.get("class_labels"), props.get("max_length"), props.get("input_names")
    if props.get("task") != TASK or not isinstance(classes, list) or not isinstance(max_length, int) or not names:
        raise CompressError(f"{source} lacks the task/class_labels/max_length/input_names metadata that "
                            "compress.text_onnx.export_text_model writes: re-export it with compress")
    max_windows = props.get("max_windows", 1)  # models exported before windows saw only the first window
    return {"classes": [str(c) for c in classes], "max_length": max_length, "input_names": list(names),
            "max_windows": int(max_windows) if isinstance(max_windows, int) else 1}


def describe_tokenizer(path: Path) -> dict:
    """What an app needs to re-implement the tokenizer (the browser's WordPiece reads tokenizer.json itself), and
    whether the browser tokenizer supports it: BERT normalizer and pre-tokenizer, WordPiece model."""
    load_tokenizer(path)  # a clear error for a file the tokenizers library cannot read
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    model, normalizer = document.get("model") or {}, document.get("normalizer") or {}
    pre = document.get("pre_tokenizer") or {}
    vocab = model.get("vocab") or {}
    problems = [f"{what} is {kind!r}" for what, kind, wanted in
                (("model", model.get("type"), "WordPiece"), ("normalizer", normalizer.get("type"), "BertNormalizer"),
                 ("pre_tokenizer", pre.get("type"), "BertPreTokenizer")) if kind != wanted]
    lowercase = bool(normalizer.get("lowercase", True))
    strip = normalizer.get("strip_accents")
    return {"file": "tokenizer.json", "type": model.get("type"), "vocab_size": len(vocab),
            "lowercase": lowercase, "strip_accents": lowercase if strip is None else bool(strip),
            "unk_token": model.get("unk_token", "[UNK]"), "continuing_subword_prefix": model.get("continuing_subword_prefix", "##"),
            "special_ids": {token: vocab.get(token) for token in ("[PAD]", "[UNK]", "[CLS]", "[SEP]")},
            "browser_supported": not problems,
            "browser_note": "" if not problems else ("edge_demo/web/wordpiece.js implements BERT WordPiece only: "
                                                     + ", ".join(problems))}


def _samples(texts: list[str], labels, onnx_out: np.ndarray, ort_out: np.ndarray, classes: list[str],
             count: int) -> list[dict]:
    """Known texts for the apps' self-test: one per class first, only those both models get right (or agree on,
    without labels), with the expected label and probability."""
    predicted = onnx_out.argmax(1)
    probs = softmax(onnx_out)
    good = [i for i in range(len(texts)) if predicted[i] == ort_out[i].argmax() and
            (labels is None or predicted[i] == int(labels[i]))]
    order = [next((i for i in good if predicted[i] == label), None) for label in range(len(classes))]
    chosen = [i for i in order if i is not None]
    chosen += [i for i in good if i not in chosen]
    if not chosen:
        raise CompressError("the model gets none of the given texts right: check its accuracy before shipping it")
    return [{"text": texts[i], "label": classes[int(predicted[i])], "index": int(i),
             "probability": round(float(probs[i].max()), 6)} for i in chosen[:count]]
