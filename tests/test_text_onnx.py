"""compress.text_onnx on a tiny trained BERT: export parity, fused-operator counts (also with per-layer head
counts after pruning), int8/int4 candidates, stats and benchmark figures, and the error cases."""
from __future__ import annotations

import copy
import os

import onnx
import pytest

from compress.errors import CompressError
from compress.latency import TimingRules
from compress.onnxutil import make_session, metadata
from compress.text_onnx import (
    TextExportConfig,
    TextQuantizeConfig,
    benchmark_text_model,
    build_text_candidates,
    choose_text_candidate,
    compare_logits,
    encode_texts,
    export_text_model,
    onnx_logits,
    take,
    text_latency,
    text_model_stats,
    torch_logits,
)
from tests.text_helpers import LABELS, NoTokenTypes, prune_heads, tiny_bert, trained_tiny_bert

MAX_LENGTH = 32
FAST = TimingRules(warmup="fixed", warmup_runs=2, min_runs=5, min_seconds=0.01)


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    """Tokenizer, trained tiny BERT, tokenized splits and its optimized fp32 export."""
    root = tmp_path_factory.mktemp("text_onnx")
    text = trained_tiny_bert(root, 60, 1, MAX_LENGTH)
    path = root / "model.onnx"
    report = export_text_model(text["model"], path, text["test"], TextExportConfig(), LABELS, MAX_LENGTH,
                               text["tokenizer_path"])
    return {**text, "root": root, "path": path, "report": report}


def test_export_matches_pytorch_and_fuses_every_layer(text):
    report = text["report"]
    for step in ("export_parity", "optimized_parity"):
        assert report[step]["relative_diff"] < 1e-4 and report[step]["top1_agreement"] == 1.0
    fusion = report["fusion"]
    assert fusion["fused_operators"]["Attention"] == 2
    assert fusion["fused_operators"]["EmbedLayerNormalization"] == 1
    assert fusion["fused_operators"]["SkipLayerNormalization"] == 4
    assert fusion["fused_operators"]["BiasGelu"] == 2
    assert fusion["attention_fused"] and fusion["heads_per_layer"] == [4, 4]
    model = onnx.load(str(text["path"]))
    onnx.checker.check_model(model)
    props = metadata(model)
    assert props["class_labels"] == LABELS and props["max_length"] == MAX_LENGTH
    assert props["input_names"] == ["input_ids", "attention_mask", "token_type_ids"]
    from compress.fsutil import sha256
    assert props["tokenizer_sha256"] == sha256(text["tokenizer_path"]) and props["task"] == "text-classification"
    session = make_session(text["path"])
    assert [(i.name, i.type, i.shape) for i in session.get_inputs()] == [
        (name, "tensor(int64)", ["batch", "sequence"]) for name in props["input_names"]]
    accuracy = (onnx_logits(session, text["test"]).argmax(1) == text["test_labels"]).mean()
    assert accuracy >= 0.9


@pytest.mark.parametrize("batch, length", [(1, 5), (3, 20), (7, MAX_LENGTH)])
def test_dynamic_batch_and_sequence_axes(text, batch, length):
    samples = encode_texts(text["tokenizer"], text["test_texts"][:batch], length, pad_to_max=True)
    expected = torch_logits(text["model"], samples)
    result = compare_logits(expected, onnx_logits(make_session(text["path"]), samples))
    assert result["relative_diff"] < 1e-4 and result["top1_agreement"] == 1.0


def test_head_pruned_layers_keep_their_head_counts(text, tmp_path):
    model = copy.deepcopy(text["model"])
    prune_heads(model, layer=1, keep=[0, 2])
    report = export_text_model(model, tmp_path / "pruned.onnx", text["test"], TextExportConfig(), LABELS, MAX_LENGTH)
    assert report["fusion"]["fused_operators"]["Attention"] == 2
    assert report["fusion"]["heads_per_layer"] == [4, 2]
    assert report["optimized_parity"]["relative_diff"] < 1e-4
    heads = [a.i for n in onnx.load(str(tmp_path / "pruned.onnx")).graph.node if n.op_type == "Attention"
             for a in n.attribute if a.name == "num_heads"]
    assert heads == [4, 2]


def test_sdpa_attention_is_reported_not_fused(text, tmp_path):
    model = tiny_bert(text["tokenizer"].get_vocab_size(), attention="sdpa")
    with pytest.raises(CompressError, match="attention not fused: .* fused 0 of 2 attention layers"):
        export_text_model(model, tmp_path / "sdpa.onnx", text["test"], TextExportConfig(), LABELS, MAX_LENGTH)
    assert not (tmp_path / "sdpa.onnx").exists()
    report = export_text_model(model, tmp_path / "sdpa.onnx", text["test"],
                               TextExportConfig(require_fused_attention=False), LABELS, MAX_LENGTH)
    assert not report["fusion"]["attention_fused"] and "attention not fused" in report["fusion"]["warning"]


def test_model_without_token_type_ids(text, tmp_path):
    model = NoTokenTypes(text["model"].hf).eval()
    export_text_model(model, tmp_path / "two.onnx", text["test"], TextExportConfig(), LABELS, MAX_LENGTH)
    names = [i.name for i in make_session(tmp_path / "two.onnx").get_inputs()]
    assert names == ["input_ids", "attention_mask"]


@pytest.fixture(scope="module")
def candidates(text):
    before = set(os.listdir("."))
    built = build_text_candidates(text["path"], text["train"], text["root"] / "candidates",
                                  TextQuantizeConfig(calibration_samples=32))
    assert set(os.listdir(".")) == before  # onnxruntime's temporary files stayed in a private folder
    return built


@pytest.mark.parametrize("name, op_type", [("dynamic_int8", "MatMulInteger"), ("static_u8s8_qdq", "QuantizeLinear"),
                                           ("int4_weight_only", "MatMulNBits")])
def test_quantized_candidates_are_valid_and_close(text, candidates, name, op_type):
    model = onnx.load(str(candidates[name]))
    onnx.checker.check_model(model)
    assert any(node.op_type == op_type for node in model.graph.node)
    assert metadata(model)["quantization"]["candidate"] == name
    assert metadata(model)["class_labels"] == LABELS
    fp32 = onnx_logits(make_session(text["path"]), text["test"])
    result = compare_logits(fp32, onnx_logits(make_session(candidates[name]), text["test"]))
    assert result["top1_agreement"] >= 0.95 and result["relative_diff"] < 0.3, result
    if name != "int4_weight_only":
        assert candidates[name].stat().st_size < text["path"].stat().st_size


def test_static_candidate_quantizes_activations(candidates):
    model = onnx.load(str(candidates["static_u8s8_qdq"]))
    initializers = {i.name for i in model.graph.initializer}
    activation_q = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in initializers]
    assert len(activation_q) >= 6  # not a weight-only model: calibration reached past the fused ops


def test_stats_count_weights_and_macs(text, candidates):
    torch_params = sum(p.numel() for p in text["model"].parameters())
    fp32 = text_model_stats(text["path"], 16)
    assert abs(fp32["params"] - torch_params) / torch_params < 0.02, (fp32["params"], torch_params)
    # 2 layers x 16 tokens x (4 x 64 x 64 + 2 x 64 x 128) + 2 x 2 x 16 x 16 x 64 (attention), plus pooler and head
    encoder = 2 * 16 * (4 * 64 * 64 + 2 * 64 * 128) + 2 * 2 * 16 * 16 * 64
    assert encoder <= fp32["macs"] <= encoder + 64 * 64 + 64 * 3
    assert text_model_stats(text["path"], 32)["macs"] > fp32["macs"]
    for path in candidates.values():
        stats = text_model_stats(path, 16)
        assert stats["macs"] == fp32["macs"]
        assert abs(stats["params"] - fp32["params"]) / fp32["params"] < 0.002, (path.name, stats, fp32)


def test_benchmark_row_has_the_image_keys(text):
    row = benchmark_text_model(text["path"], take(text["test"], 8), text["test_labels"][:8], seq_lengths=(8, 16),
                               headline_seq=16, rules=FAST)
    for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "p50_ms", "p90_ms", "p99_ms", "size_bytes",
                "params", "macs", "throughput_sps"):
        assert key in row
    assert set(row["latency_by_seq"]) == {"8", "16"} and row["p50_ms"] > 0 and row["seq_length"] == 16


def test_auto_choice_over_text_candidates(text, candidates):
    val = take(text["test"], 30)
    result = choose_text_candidate(text["path"], candidates, val, text["test_labels"][:30], max_accuracy_drop=100.0,
                                   seq_length=16, measure_seconds=0.05)
    assert result["chosen"] in {"fp32", *candidates}
    assert [row["candidate"] for row in result["candidates"]] == ["fp32", *candidates]
    strict = choose_text_candidate(text["path"], candidates, val, text["test_labels"][:30], max_accuracy_drop=-1.0,
                                   seq_length=16, measure_seconds=0.05)
    assert strict["decision"] == "fp32" and strict["reason"].startswith("none within budget")


def test_error_cases(text, tmp_path):
    with pytest.raises(CompressError, match="tokenizer file not found"):
        encode_texts(tmp_path / "missing.json", ["hello"], 8)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(CompressError, match="is not a tokenizers tokenizer.json"):
        encode_texts(tmp_path / "bad.json", ["hello"], 8)
    without = {k: v for k, v in text["test"].items() if k != "token_type_ids"}
    with pytest.raises(CompressError, match="has no token_type_ids"):
        export_text_model(text["model"], tmp_path / "m.onnx", without, TextExportConfig(), LABELS, MAX_LENGTH)
    with pytest.raises(CompressError, match="longer than the 128 positions"):
        text_latency(text["path"], text["test"], seq_lengths=(200,), rules=FAST)
    with pytest.raises(ValueError, match="not a text candidate"):
        TextQuantizeConfig(candidates=["int3"])
    with pytest.raises(ValueError, match="int4_block_size must be a power of 2"):
        TextQuantizeConfig(int4_block_size=24)
    with pytest.raises(ValueError, match="opset must be within 14..21"):
        TextExportConfig(opset=13)
