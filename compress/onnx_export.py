"""Export one PyTorch model to ONNX with a dynamic batch axis, check it (onnx.checker, strict shape
inference) and verify it against PyTorch on real test inputs. Shared by the export stage and by
pruning, which verifies every step this way."""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import shape_inference

from compress.data import Dataset
from compress.errors import CompressError
from compress.fsutil import atomic_path
from compress.onnxutil import make_session, predict
from compress.train import predict_logits

INPUT_NAME, OUTPUT_NAME = "input", "logits"
# Largest allowed max|onnx - torch| / max|torch logit| per precision of the exported weights. Relative, because
# a model with logits in the hundreds (EfficientNet after a fine-tune) differs by 1e-2 in fp32 rounding alone,
# while one with logits near 1e-3 (random weights) could differ by 1e-4 and still be wrong.
RELATIVE_TOLERANCE = {"float32": 1e-3, "float16": 1e-2, "bfloat16": 5e-2}


@dataclass
class ExportConfig:
    """ONNX export and its verification."""

    opset: int = 17  # ONNX opset; 13..21 are supported by this onnxruntime's quantizer
    parity_samples: int = 256  # real test samples compared between PyTorch and onnxruntime
    rtol: float | None = None  # largest allowed max|onnx - torch| / max|torch logit|; None: per precision (1e-3 fp32)
    min_agreement: float = 0.995  # smallest allowed share of identical top-1 predictions
    # Text models only (compress.text_onnx):
    optimize: bool = True  # run onnxruntime's transformer optimizer (attention, LayerNorm and GELU fusion)
    require_fused_attention: bool = False  # attention not fused in every layer: an error; false = a loud warning and
    # a line in report.md (the model still works, only slower)

    def __post_init__(self) -> None:
        if not 13 <= self.opset <= 21:
            raise ValueError(f"export.opset must be within 13..21, got {self.opset}")
        if self.parity_samples < 1:
            raise ValueError(f"export.parity_samples must be >= 1, got {self.parity_samples}")
        if self.rtol is not None and self.rtol < 0:
            raise ValueError(f"export.rtol must be >= 0 (or unset for the per-precision default), got {self.rtol}")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ValueError(f"export.min_agreement must be within [0, 1], got {self.min_agreement}")


def export_model(model: torch.nn.Module, path: Path, data: Dataset, cfg: ExportConfig, run_info: dict) -> dict:
    model.eval()
    example = torch.from_numpy(data.test.x[:2])
    with atomic_path(path) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            # The TorchScript-based exporter: fast on these CNNs, folds BatchNorm into Conv in eval mode, and
            # needs no onnxscript; dynamo=True would work too but takes seconds per model.
            torch.onnx.export(model, (example,), str(tmp), dynamo=False, opset_version=cfg.opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        onnx_model = onnx.load(str(tmp))
        onnx.checker.check_model(onnx_model, full_check=True)
        shape_inference.infer_shapes(onnx_model, check_type=True, strict_mode=True)
        _set_metadata(onnx_model, data, run_info)
        onnx.save(onnx_model, str(tmp))
        parity = check_parity(model, tmp, data, cfg)
    return parity


def check_parity(model: torch.nn.Module, onnx_path: Path, data: Dataset, cfg: ExportConfig) -> dict:
    """PyTorch against onnxruntime on real test samples, relative to the logit scale: max |diff| over
    max |logit| within the precision's tolerance, and top-1 agreement."""
    x = data.test.x[:cfg.parity_samples]
    expected = predict_logits(model, x).astype(np.float64)
    actual = predict(make_session(onnx_path), x).astype(np.float64)
    precision = _precision(model)
    tolerance = cfg.rtol if cfg.rtol is not None else RELATIVE_TOLERANCE[precision]
    max_abs_diff = float(np.abs(expected - actual).max())
    scale = float(np.abs(expected).max())
    relative = max_abs_diff / max(scale, 1e-12) if max_abs_diff > 0 else 0.0
    agreement = float((expected.argmax(1) == actual.argmax(1)).mean())
    result = {"samples": len(x), "max_abs_diff": max_abs_diff, "max_abs_logit": scale, "relative_diff": relative,
              "rtol": tolerance, "precision": precision, "top1_agreement": agreement}
    if relative > tolerance or agreement < cfg.min_agreement:
        raise CompressError(f"ONNX export does not match PyTorch: max |diff| {max_abs_diff:.2e} is {relative:.2e} of the "
                            f"largest |logit| {scale:.3g} (allowed {tolerance:g} in {precision}), top-1 agreement "
                            f"{agreement:.3f} (needed {cfg.min_agreement:g}); the model may use an op the exporter "
                            "translates differently")
    return result


def _precision(model: torch.nn.Module) -> str:
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return str(dtype).removeprefix("torch.") if str(dtype).removeprefix("torch.") in RELATIVE_TOLERANCE else "float32"


def _set_metadata(model: onnx.ModelProto, data: Dataset, run_info: dict) -> None:
    write_metadata(model, {"class_labels": data.class_names, "preprocessing": data.preprocessing(), "dataset": data.name,
                           "producer": run_info})


def write_metadata(model: onnx.ModelProto, props: dict) -> None:
    """Replace the model's metadata_props by ``props`` (each value JSON-encoded) and name compress its producer."""
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    model.producer_name = "compress"
