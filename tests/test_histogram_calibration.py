"""Percentile and entropy ranges from one shared activation pass match onnxruntime's own calibration of each
method, and the quantize stage collects the histograms once for both."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnxruntime.quantization import QuantFormat, quantize_static
from onnxruntime.quantization.calibrate import HistogramCollector

from compress import histogram_calibration as hc
from stages import quantize as q


def _chunks(seed: int = 0) -> list[dict[str, list[np.ndarray]]]:
    """Chunks of a few tensors whose largest |value| grows, stays, then grows again (so the histograms widen by
    different numbers of bins), plus an all-zero and a constant tensor."""
    rng = np.random.default_rng(seed)
    chunks = []
    for scale in (1.0, 3.0, 2.0, 3.5, 10.0, 0.5):
        chunks.append({"wide": [(scale * rng.standard_normal(4000)).astype(np.float32)],
                       "relu": [np.maximum(scale * rng.standard_normal((8, 50)), 0).astype(np.float32)],
                       "zeros": [np.zeros(100, np.float32)], "ones": [np.ones(100, np.float32)]})
    return chunks


def test_entropy_histogram_is_onnxruntimes_128_bin_histogram():
    shared = hc.SharedHistogramCollector(percentile=99.9)
    entropy = HistogramCollector("entropy", symmetric=False, num_bins=128, num_quantized_bins=128, percentile=99.9,
                                 scenario="same")
    percentile = HistogramCollector("percentile", symmetric=False, num_bins=2048, num_quantized_bins=128,
                                    percentile=99.9, scenario="same")
    for chunk in _chunks():
        for collector in (shared, entropy, percentile):
            collector.collect(chunk)
    for tensor, (hist, edges, low, high, threshold) in entropy.histogram_dict.items():
        derived = shared.entropy_histogram(tensor)
        assert len(derived[0]) == len(hist) > (128 if tensor == "wide" else 127)  # "wide" widened
        np.testing.assert_array_equal(derived[1], edges)
        assert (derived[2], derived[3], derived[4]) == (low, high, threshold)
        # counts agree but where float rounding puts a value on the other side of a bin edge
        assert derived[0].sum() == hist.sum() and np.abs(derived[0] - hist).sum() <= 2e-3 * hist.sum()
    for tensor, fine in percentile.histogram_dict.items():  # the 2048-bin histogram is onnxruntime's own
        np.testing.assert_array_equal(shared.histogram_dict[tensor][0], fine[0])
    ours, theirs = shared.compute_entropy(), entropy.compute_entropy()
    for tensor in theirs:
        width = entropy.histogram_dict[tensor][1][1] - entropy.histogram_dict[tensor][1][0]
        assert abs(ours[tensor][0] - theirs[tensor][0]) <= width and abs(ours[tensor][1] - theirs[tensor][1]) <= width


def test_widened_grows_by_whole_bins_of_the_first_stride():
    assert hc.widened(128, np.float32(1.0), np.float32(0.5)) == (128, np.float32(1.0))  # within range: unchanged
    assert hc.widened(128, np.float32(0.0), np.float32(2.0)) == (128, np.float32(2.0))  # all zeros so far
    bins, threshold = hc.widened(128, np.float32(1.0), np.float32(1.5))  # stride 1/64: 33 bins each side
    assert bins == 128 + 2 * 33 and threshold == pytest.approx(1.0 + 33 / 64)


def _ranges(path) -> dict[str, tuple[float, float]]:
    def value(entry):
        return float(np.ravel(entry["data"] if isinstance(entry, dict) else entry)[0])

    return {name: (value(entry["lowest"]), value(entry["highest"]))
            for name, entry in json.loads(path.read_text())["data"].items()}


def test_caches_match_onnxruntimes_calibration_of_each_method(cnn_onnx_path, digits, tmp_path):
    x = digits.train.x[:48].copy()
    x[16:32] *= 3.0  # a later chunk with larger activations widens the histograms
    name = onnx.load(str(cnn_onnx_path)).graph.input[0].name
    extra = {"CalibTensorRangeSymmetric": False, "CalibStridedMinMax": 16, "CalibPercentile": 99.99}
    with q._quiet():
        collector = hc.collect(cnn_onnx_path, q.CalibrationReader(x, name, 8), 16, None, 99.99)
        for method in hc.SHARED_METHODS:
            hc.write_cache(collector, method, tmp_path / f"shared_{method}.json")
            quantize_static(str(cnn_onnx_path), str(tmp_path / f"{method}.onnx"), q.CalibrationReader(x, name, 8),
                            quant_format=QuantFormat.QDQ, calibrate_method=q.METHODS[method], extra_options=extra,
                            calibration_cache_path=str(tmp_path / f"{method}.json"))
    ours, theirs = _ranges(tmp_path / "shared_percentile.json"), _ranges(tmp_path / "percentile.json")
    assert ours == theirs and len(ours) > 5
    ours, theirs = _ranges(tmp_path / "shared_entropy.json"), _ranges(tmp_path / "entropy.json")
    assert ours.keys() == theirs.keys()
    close = [np.allclose(ours[t], theirs[t], rtol=0, atol=0.02 * (theirs[t][1] - theirs[t][0]) + 1e-7) for t in ours]
    assert all(close)


def test_quantize_collects_the_histograms_once_for_both_methods(cnn_onnx_path, digits, tmp_path, monkeypatch):
    passes = []
    collect = hc.collect
    monkeypatch.setattr(hc, "collect", lambda *args, **kwargs: passes.append(1) or collect(*args, **kwargs))
    cfg = q.QuantizeConfig(mode="static", calibration_samples=32, layer_report=False)
    job = q.QuantizationJob(cfg, cnn_onnx_path, digits, onnx.load(str(cnn_onnx_path)).graph.input[0].name, tmp_path)
    variant = job.variants()[0]
    for method in ("percentile", "entropy", "percentile"):
        attempt = job.evaluate(variant, method, {})
        onnx.checker.check_model(str(attempt["path"]))
        assert attempt["val_accuracy"] > 0.8
    assert passes == [1]
    assert (tmp_path / "calibration_percentile.json").is_file() and (tmp_path / "calibration_entropy.json").is_file()
