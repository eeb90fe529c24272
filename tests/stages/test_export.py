"""stages/export.py: ONNX export with a dynamic batch axis, checked, verified against PyTorch, with metadata."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from compress.checkpoint import load_model
from compress.errors import CompressError
from compress.fsutil import sha256
from compress.onnx_export import ExportConfig, check_parity, export_model
from compress.onnxutil import make_session, metadata
from compress.train import predict_logits
from stages.export import run


def _onnx_logits(path, x: np.ndarray) -> np.ndarray:
    return make_session(path).run(None, {"input": x})[0]


def test_export_stage_writes_one_verified_file_per_checkpoint(tmp_path, digits, mlp_teacher_path, cnn_teacher_path):
    result = run(ExportConfig(parity_samples=64), {"teacher": cnn_teacher_path, "student": mlp_teacher_path},
                 digits, tmp_path)
    assert result.outputs == {"teacher": tmp_path / "teacher.onnx", "student": tmp_path / "student.onnx"}
    for name, source in (("teacher", cnn_teacher_path), ("student", mlp_teacher_path)):
        parity = result.metrics[name]
        assert parity["samples"] == 64
        assert parity["max_abs_diff"] <= 1e-3 and parity["top1_agreement"] >= 0.995
        # Recompute parity here, on the whole test split, independently of the stage.
        expected = predict_logits(load_model(source), digits.test.x)
        actual = _onnx_logits(result.outputs[name], digits.test.x)
        assert np.abs(expected - actual).max() <= 1e-3
        assert (expected.argmax(1) == actual.argmax(1)).mean() >= 0.995
        meta = metadata(onnx.load(str(result.outputs[name])))
        assert meta["producer"]["artifact"] == name and meta["producer"]["source_sha256"] == sha256(source)
        assert "run_dir" not in meta["producer"]  # no absolute paths: the same model exports to the same bytes anywhere
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.onnx", "teacher.onnx"]  # no temporary files left


def test_metadata_carries_labels_and_preprocessing(cnn_onnx_path, digits):
    model = onnx.load(str(cnn_onnx_path))
    onnx.checker.check_model(model, full_check=True)
    meta = metadata(model)
    assert meta["class_labels"] == digits.class_names == [str(i) for i in range(10)]
    assert meta["preprocessing"] == digits.preprocessing()
    assert meta["preprocessing"]["mean"] == digits.mean and meta["preprocessing"]["layout"] == "NCHW"
    assert meta["dataset"] == "digits" and meta["producer"] == {"source": "test"}
    assert model.producer_name == "compress"


@pytest.mark.parametrize("batch", [1, 7])
def test_dynamic_batch(cnn_onnx_path, cnn_teacher_path, digits, batch):
    session = make_session(cnn_onnx_path)
    declared = session.get_inputs()[0].shape
    assert declared[0] == "batch" and declared[1:] == [1, 8, 8]
    x = digits.test.x[10:10 + batch]
    logits = session.run(None, {"input": x})[0]
    assert logits.shape == (batch, 10)
    np.testing.assert_allclose(logits, predict_logits(load_model(cnn_teacher_path), x), atol=1e-3)


class TracedOnce(nn.Module):
    """Its Python-side state is frozen into the ONNX graph at export, so PyTorch and ONNX disagree afterwards."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(64, 10)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.linear(x.flatten(1)) * (1 if self.calls == 1 else -1)


def test_failing_parity_raises_and_leaves_no_file(tmp_path, digits):
    target = tmp_path / "model.onnx"
    with pytest.raises(CompressError, match=r"ONNX export does not match PyTorch: max \|diff\| .* top-1 agreement"):
        export_model(TracedOnce(), target, digits, ExportConfig(parity_samples=32), {})
    assert list(tmp_path.iterdir()) == []


def test_tolerance_is_relative_to_the_logit_scale(tmp_path, digits, mlp_teacher_path):
    """The same ONNX file against PyTorch weights perturbed by 1e-4 of the logit scale passes at rtol 1e-3, and
    fails at rtol 1e-6 with the relative difference in the message; scaling every logit by 1000 does not change
    the verdict (an absolute tolerance would)."""
    model = load_model(mlp_teacher_path)
    path = tmp_path / "m.onnx"
    export_model(model, path, digits, ExportConfig(), {})
    with torch.no_grad():
        model.classifier.bias += 1e-4 * float(model(torch.from_numpy(digits.test.x[:64])).abs().max())
    assert check_parity(model, path, digits, ExportConfig(rtol=1e-3))["relative_diff"] > 0
    with pytest.raises(CompressError, match=r"of the largest \|logit\| .* \(allowed 1e-06 in float32\)"):
        check_parity(model, path, digits, ExportConfig(rtol=1e-6))
    scaled_path = tmp_path / "scaled.onnx"
    with torch.no_grad():
        model.classifier.weight *= 1000
        model.classifier.bias *= 1000
    parity = export_model(model, scaled_path, digits, ExportConfig(), {})
    assert parity["max_abs_logit"] > 100 and parity["relative_diff"] <= 1e-3


def test_opset_is_written(tmp_path, digits, mlp_teacher_path):
    path = tmp_path / "m.onnx"
    export_model(load_model(mlp_teacher_path), path, digits, ExportConfig(opset=13, parity_samples=16), {})
    assert {o.domain: o.version for o in onnx.load(str(path)).opset_import}[""] == 13


def test_config_checks():
    with pytest.raises(ValueError, match="export.opset must be within 13..21"):
        ExportConfig(opset=22)
    with pytest.raises(ValueError, match="export.parity_samples must be >= 1"):
        ExportConfig(parity_samples=0)
    with pytest.raises(ValueError, match=r"export.min_agreement must be within \[0, 1\]"):
        ExportConfig(min_agreement=1.5)
