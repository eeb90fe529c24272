"""Percentile and entropy calibration ranges from one pass of activations, for onnxruntime's calibration cache.

onnxruntime calibrates each method on its own: one pass of the calibration samples through the augmented model,
and one set of per-tensor histograms, per method. The histograms are most of the time (numpy.histogram over every
activation of every sample), and the accuracy-aware search may ask for both methods. Both build their histograms
the same way (``HistogramCollector.collect_value``: a range symmetric around zero, widened by whole bins when a
chunk holds a larger value) and differ only in the bin count, which ``quantize_static`` fixes: 2048 for
percentile, 128 for entropy. So every entropy bin is the union of 16 percentile bins, and how far the entropy
histogram has widened follows from each chunk's largest |value| alone. One pass that keeps the 2048-bin histogram
and that widening yields both, and onnxruntime's own percentile and entropy threshold searches run on them:
percentile ranges are onnxruntime's exactly, entropy ranges differ only where float rounding puts a value on the
other side of a bin edge. The ranges are written in onnxruntime's calibration-cache format, which
``quantize_static(calibration_cache_path=...)`` then loads instead of calibrating.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization.calibrate import (
    CalibrationDataReader,
    CalibrationMethod,
    HistogramCollector,
    TensorsData,
    create_calibrator,
    save_tensors_data,
)
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

# The bin counts quantize_static gives onnxruntime's calibrators (its extra_options cannot change them).
PERCENTILE_BINS = 2048
ENTROPY_BINS = 128
ENTROPY_QUANTIZED_BINS = 128
SHARED_METHODS = ("percentile", "entropy")


class SharedHistogramCollector(HistogramCollector):
    """onnxruntime's percentile collector (2048 bins, range not symmetric) that also follows, per tensor, the bin
    count and threshold that onnxruntime's 128-bin entropy histogram would reach on the same chunks."""

    def __init__(self, percentile: float):
        super().__init__(method="percentile", symmetric=False, num_bins=PERCENTILE_BINS,
                         num_quantized_bins=ENTROPY_QUANTIZED_BINS, percentile=percentile, scenario="same")
        self.entropy_grid: dict[str, tuple[int, np.ndarray]] = {}  # tensor -> (bins, threshold) of entropy's

    def collect_value(self, name_to_arr):
        for tensor, arrays in name_to_arr.items():
            values = np.asarray(arrays).flatten()
            # as onnxruntime's collect_value computes them, so that both histograms see the same thresholds
            if values.size > 0:
                low, high = np.nanmin(values), np.nanmax(values)
            else:
                low, high = np.array(0, dtype=values.dtype), np.array(0, dtype=values.dtype)
            threshold = np.array(max(abs(low), abs(high)), dtype=values.dtype)
            if tensor in self.histogram_dict:
                self.histogram_dict[tensor] = self.merge_histogram(self.histogram_dict[tensor], values, low, high,
                                                                   threshold)
                self.entropy_grid[tensor] = widened(*self.entropy_grid[tensor], threshold)
            else:
                hist, edges = np.histogram(values, self.num_bins, range=(-threshold, threshold))
                self.histogram_dict[tensor] = (hist, edges, low, high, threshold)
                self.entropy_grid[tensor] = (ENTROPY_BINS, threshold)

    def entropy_histogram(self, tensor: str) -> tuple:
        """The histogram onnxruntime's entropy calibrator would hold for ``tensor``: its bin edges, and counts
        summed from the 16 fine bins each of its bins covers (fine bins outside its range join its end bins)."""
        hist, edges, low, high, threshold = self.histogram_dict[tensor]
        bins, coarse_threshold = self.entropy_grid[tensor]
        ratio = PERCENTILE_BINS // ENTROPY_BINS
        if coarse_threshold == 0:  # all zeros so far: both histograms kept numpy's default range
            coarse_edges, start = edges[::ratio], 0
        else:
            coarse_edges = np.histogram_bin_edges(np.zeros(0, dtype=edges.dtype), bins,
                                                  range=(-coarse_threshold, coarse_threshold))
            start = int(round((float(coarse_edges[0]) - float(edges[0])) / (float(edges[1]) - float(edges[0]))))
        bounds = np.clip(start + ratio * np.arange(bins + 1), 0, len(hist))
        bounds[0], bounds[-1] = 0, len(hist)
        cumulative = np.concatenate([[0], np.cumsum(hist)])
        return cumulative[bounds[1:]] - cumulative[bounds[:-1]], coarse_edges, low, high, coarse_threshold

    def compute_entropy(self):
        ranges = {}
        for tensor in self.histogram_dict:
            histogram = self.entropy_histogram(tensor)
            ranges[tensor] = (*self.get_entropy_threshold(histogram, ENTROPY_QUANTIZED_BINS), *histogram[:2])
        return ranges


def widened(bins: int, threshold: np.ndarray, new_threshold: np.ndarray) -> tuple[int, np.ndarray]:
    """The (bins, threshold) onnxruntime's ``merge_histogram`` gives a histogram of ``bins`` bins over
    +-``threshold`` that meets a chunk whose largest |value| is ``new_threshold`` (the same arithmetic)."""
    if new_threshold <= threshold:
        return bins, threshold
    if threshold == 0:
        return bins, new_threshold
    stride = 2 * threshold / bins
    half = int((new_threshold - threshold) // stride + 1)
    return bins + 2 * half, half * stride + threshold


def shareable(model: onnx.ModelProto) -> bool:
    """quantize_static calibrates the model file itself unless it raises the opset first (below opset 10)."""
    opsets = [entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")]
    return bool(opsets) and opsets[0] >= 10


def collect(model_path: Path, reader: CalibrationDataReader, stride: int, op_types: list[str] | None,
            percentile: float) -> SharedHistogramCollector:
    """One pass of ``reader``'s samples, ``stride`` at a time (onnxruntime's strided calibration), through the
    model augmented as ``quantize_static`` augments it, into a shared collector."""
    wanted = list(op_types or set(QLinearOpsRegistry) | set(QDQRegistry))  # quantize_static's default
    with tempfile.TemporaryDirectory(prefix="compress-calibration-") as tmp:
        calibrator = create_calibrator(Path(model_path), wanted, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.Percentile,
                                       extra_options={"symmetric": False, "percentile": percentile})
        calibrator.collector = SharedHistogramCollector(percentile)
        for start in range(0, len(reader), stride):
            reader.set_range(start_index=start, end_index=start + stride)
            calibrator.collect_data(reader)
        return calibrator.collector


def write_cache(collector: SharedHistogramCollector, method: str, path: Path) -> None:
    """``method``'s ranges (percentile or entropy) in onnxruntime's calibration-cache JSON at ``path``."""
    if method == "percentile":
        data = TensorsData(CalibrationMethod.Percentile, collector.compute_percentile())
    elif method == "entropy":
        data = TensorsData(CalibrationMethod.Entropy, collector.compute_entropy())
    else:
        raise ValueError(f"{method!r} is not calibrated from the shared histograms; use one of {SHARED_METHODS}")
    save_tensors_data(data, path)
