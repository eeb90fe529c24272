"""The export stage: every checkpoint of the run to ONNX, checked and verified against PyTorch."""
from __future__ import annotations

from pathlib import Path

from compress.checkpoint import load_model
from compress.data import Dataset
from compress.fsutil import sha256
from compress.manifest import StageResult, compress_version
from compress.onnx_export import ExportConfig, export_model
from compress.zoo import check_fits_data

__all__ = ["ExportConfig", "run"]


def run(cfg: ExportConfig, inputs: dict[str, Path], data: Dataset, out_dir: Path) -> StageResult:
    """Export each named checkpoint of ``inputs`` to ``out_dir/<name>.onnx``; metrics hold each one's parity."""
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
