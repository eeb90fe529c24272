"""The export stage: every checkpoint of the run to ONNX, checked and verified against PyTorch.

Text models go through ``compress.text_onnx``: dynamic batch and sequence axes, onnxruntime's transformer
optimizer, and the fused-operator counts in the metrics; attention left unfused is a warning and a line in
the report (or an error with ``export.require_fused_attention``), never silent."""
from __future__ import annotations

import warnings
from pathlib import Path

from compress import text_run
from compress.checkpoint import load_model
from compress.data import Dataset
from compress.fsutil import sha256
from compress.manifest import StageResult, compress_version
from compress.onnx_export import ExportConfig, export_model
from compress.zoo import check_fits_data

__all__ = ["ExportConfig", "run"]


def run(cfg: ExportConfig, inputs: dict[str, Path], data: Dataset, out_dir: Path) -> StageResult:
    """Export each named checkpoint of ``inputs`` to ``out_dir/<name>.onnx``; metrics hold each one's parity."""
    if text_run.is_text(data):
        return run_text(cfg, inputs, data, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs, metrics = {}, {}
    for name, model_path in inputs.items():
        onnx_path = out_dir / f"{name}.onnx"
        info = {"artifact": name, "source_sha256": sha256(model_path), "compress": compress_version()}
        model = load_model(model_path)
        check_fits_data(model, data, f"model {model_path}")
        metrics[name] = export_model(model, onnx_path, data, cfg, info)
        outputs[name] = onnx_path
    return StageResult(outputs, metrics)


def run_text(cfg: ExportConfig, inputs: dict[str, Path], data: Dataset, out_dir: Path) -> StageResult:
    """Export each text checkpoint, optimize it, and record its fused operators; the run's tokenizer.json goes
    beside them (its sha256 is in every model's metadata)."""
    from compress.text_models import check_inputs
    from compress.text_onnx import TextExportConfig, export_text_model

    out_dir.mkdir(parents=True, exist_ok=True)
    if inputs:
        data = text_run.with_tokenizer_of(data, next(iter(inputs.values())))
    tokenizer_path = text_run.write_tokenizer(data, out_dir)
    text_cfg = TextExportConfig(opset=max(cfg.opset, 14), parity_samples=cfg.parity_samples, rtol=cfg.rtol if cfg.rtol is not None else 1e-3,
                                min_agreement=cfg.min_agreement, optimize=cfg.optimize,
                                require_fused_attention=cfg.require_fused_attention)
    outputs, metrics = {}, {}
    for name, model_path in inputs.items():
        onnx_path = out_dir / f"{name}.onnx"
        info = {"artifact": name, "source_sha256": sha256(model_path), "compress": compress_version()}
        model = load_model(model_path)
        check_inputs(model, data)
        report = export_text_model(model, onnx_path, text_run.export_inputs(model, data), text_cfg, data.class_names,
                                   data.train.x.shape[-1], tokenizer_path, info,
                                   max_windows=data.config.max_windows if data.config else 0)
        fusion = report.get("fusion", {})
        metrics[name] = {**report, "fused_operators": fusion.get("fused_operators", {}),
                         "attention_fused": bool(fusion.get("attention_fused", False))}
        if not metrics[name]["attention_fused"]:
            metrics[name]["warning"] = fusion.get("warning") or "attention not fused: export.optimize is off"
            warnings.warn(f"{name}: {metrics[name]['warning']}", stacklevel=2)
        outputs[name] = onnx_path
    outputs["tokenizer"] = tokenizer_path
    return StageResult(outputs, metrics)
