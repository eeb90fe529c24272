"""The text side of ``compress search``'s pre-filter: untrained BERT-style students shaped like a text structure
after pruning, exported and quantized as the pipeline's export and quantize stages do, and timed at batch 1 on
``data.max_length`` tokens."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.data import Dataset
from compress.search import Builder, SearchConfig, TextStructure

# The text quantize candidate each text search format builds (int8: the usual dynamic int8 of transformers).
CANDIDATE_OF_FORMAT = {"int8": "dynamic_int8", "dynamic_int8": "dynamic_int8", "static_u8s8_qdq": "static_u8s8_qdq",
                       "int4_weight_only": "int4_weight_only"}


def pruned_sizes(structure: TextStructure, round_to: int) -> tuple[int, int]:
    """Heads and FFN neurons per layer left after the prune stage removes ``structure.prune`` of each (its
    rounding: at least one head per layer, the FFN kept count a multiple of round_to). Approximate, for timing
    only: the real pruning removes heads by importance, so layers may keep different counts."""
    heads = max(1, round(structure.heads * (1 - structure.prune)))
    step = round_to or 1
    neurons = min(structure.ffn, max(step, round(structure.ffn * (1 - structure.prune) / step) * step))
    return heads, neurons


def stand_in(structure: TextStructure, data: Dataset, round_to: int, seed: int):
    """An untrained student of ``structure`` for ``data`` (its vocabulary, length and classes), pruned in shape."""
    from compress.text_models import BertShape, bert_config, build_classifier
    from compress.text_pruning import keep_first
    from compress.train import seed_everything

    seed_everything(seed)
    shape = BertShape(structure.layers, structure.hidden, structure.heads, structure.ffn, dropout=0.0)
    model = build_classifier(bert_config(data, shape)).eval()
    keep_first(model, *pruned_sizes(structure, round_to))
    return model


def text_stats(structure: TextStructure, data: Dataset, round_to: int, seed: int) -> dict:
    """MACs (at data.max_length tokens) and params of the untrained stand-in."""
    from compress.metrics import model_stats

    return model_stats(stand_in(structure, data, round_to, seed), data.input_shape)


def text_builder(data: Dataset, cfg: SearchConfig, export_cfg, round_to: int) -> Builder:
    """Untrained text structures as ONNX: fp32 exported and optimized like the export stage (``export_cfg`` its
    ExportConfig), and the quantized format built by the text quantize stage's code, calibrated on real samples."""
    from compress import text_run
    from compress.text_onnx import TextExportConfig, TextQuantizeConfig, build_text_candidates, export_text_model

    export = TextExportConfig(opset=max(export_cfg.opset, 14), parity_samples=8, optimize=export_cfg.optimize,
                              require_fused_attention=export_cfg.require_fused_attention)
    quantized = [f for f in cfg.formats if f != "fp32"]

    def build(structure: TextStructure, folder: Path) -> dict[str, Path]:
        model = stand_in(structure, data, round_to, cfg.seed)
        samples = text_run.export_inputs(model, data, 8)
        files = {"fp32": folder / "fp32.onnx"}
        export_text_model(model, files["fp32"], samples, export, data.class_names, data.train.x.shape[-1])
        calibration = text_run.samples(data.train, list(samples), 32)
        for fmt in quantized:
            candidate = CANDIDATE_OF_FORMAT[fmt]
            built = build_text_candidates(files["fp32"], calibration, folder,
                                          TextQuantizeConfig(candidates=[candidate], calibration_samples=32))
            files[fmt] = built[candidate]
        return files
    return build


def text_feed(data: Dataset) -> dict[str, np.ndarray]:
    """One row of data.max_length real token ids (the first validation text's, repeated), mask all ones."""
    from compress import text_run
    from compress.text_onnx import TEXT_INPUTS, token_feed

    return token_feed(list(TEXT_INPUTS), text_run.samples(data.val), data.train.x.shape[-1])
