"""The text path through the stages and the pipeline on a tiny config: a CSV written here, a 2-layer x 32
BERT teacher trained for a few epochs (or a user's save_pretrained folder), every stage, the manifest, the
report, and `compress ship` + the Python edge app on the text bundle."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from compress.cli import main  # noqa: E402
from compress.config import load_config  # noqa: E402
from compress.pipeline import RESULT_KEYS, run_pipeline  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TOPICS = {"finance": "bank market shares profit stocks economy rates", "sport": "match goal team coach league win season",
          "music": "album band song concert singer guitar tour"}
FILLER = "the a of and in on today people said new".split()
IMAGE_RESULT_KEYS = {"accuracy", "precision_macro", "recall_macro", "f1_macro", "p50_ms", "p90_ms", "p99_ms", "mean_ms",
                     "throughput_sps", "size_bytes", "params", "macs", "path"}
TINY = [
    "teacher.source=train", "teacher.text_model.layers=2", "teacher.text_model.hidden=32", "teacher.text_model.heads=4",
    "teacher.text_model.intermediate=64", "teacher.text_model.dropout=0.0", "teacher.text_train.epochs=6", "teacher.mlm_epochs=1",
    "teacher.text_train.lr=0.005", "teacher.text_train.batch_size=8",
    "distill.text_train.epochs=3", "distill.text_train.lr=0.003", "distill.text_train.batch_size=8",
    "prune.head_amount=0.25", "prune.ffn_amount=0.5", "prune.importance_samples=32", "prune.verify_samples=16",
    "prune.text_finetune.epochs=1", "prune.text_finetune.batch_size=8",
    "quantize.calibration_samples=16", "quantize.measure_seconds=0.1",
    "benchmark.seq_lengths=[16, 32]", "benchmark.headline_seq=32", "benchmark.min_runs=10",
    "benchmark.min_seconds=0.02", 'benchmark.warmup="fixed"', "benchmark.warmup_runs=2",
    "data.max_length=12", "data.vocab_size=200", "data.val_fraction=0.2", "data.test_fraction=0.2",
]


def write_topics_csv(path: Path, n_per_class: int = 30, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for label, words in TOPICS.items():
            words = words.split()
            for _ in range(n_per_class):
                tokens = [rng.choice(words) if rng.random() < 0.6 else rng.choice(FILLER)
                          for _ in range(rng.integers(6, 14))]
                writer.writerow([" ".join(tokens).capitalize() + ".", label])
    return path


def tiny_config(source: Path, *more: str):
    return load_config(None, [f"data.source={json.dumps(str(source))}", *TINY, *more])


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """One tiny text pipeline run: (run_dir, manifest)."""
    root = tmp_path_factory.mktemp("textrun")
    csv_path = write_topics_csv(root / "topics.csv")
    run_dir = root / "run"
    manifest = run_pipeline(tiny_config(csv_path, "distill.baseline=true"), run_dir)
    return run_dir, manifest


@pytest.mark.slow
def test_text_pipeline_results_fusion_and_report(text_run):
    run_dir, manifest = text_run
    assert manifest["status"] == "complete"
    assert set(manifest["results"]) >= {"teacher", "student", "pruned", "int8"}
    for name in ("teacher", "student", "pruned", "int8"):
        assert set(manifest["results"][name]) == IMAGE_RESULT_KEYS == set(RESULT_KEYS)
    assert manifest["results"]["teacher"]["accuracy"] >= 0.6
    for name, fusion in manifest["fusion"].items():
        assert fusion["attention_fused"], name
        assert fusion["fused_operators"].get("Attention", 0) >= 1
    assert manifest["stages"]["export"]["metrics"]["teacher"]["fused_operators"]["Attention"] == 2
    assert 0 <= manifest["baselines"]["tfidf_lr"]["accuracy"] <= 1
    assert manifest["data"]["preprocessing"]["layout"] == "text"
    assert manifest["data"]["preprocessing"]["windows"]["max_windows"] == 0  # every window, averaged
    assert manifest["data"]["windows"]["test"] > manifest["data"]["test"]  # texts counted once, windows per row
    prune = manifest["stages"]["prune"]["metrics"]
    assert sum(prune["heads_after"]) < sum(prune["heads_before"]) and prune["ffn_after"] < prune["ffn_before"]
    quant = manifest["stages"]["quantize"]["metrics"]
    assert {row["candidate"] for row in quant["candidates"]} == {"fp32", "dynamic_int8", "static_u8s8_qdq", "int4_weight_only"}
    report = (run_dir / "report.md").read_text()
    assert "TF-IDF + logistic regression" in report and "Fused operators" in report and "WARNING" not in report
    assert (run_dir / "accuracy_vs_latency.png").is_file()
    bench = json.loads((run_dir / "benchmark" / "benchmark.json").read_text())
    assert set(bench["results"]["int8"]["latency_by_seq"]) == {"16", "32"}
    assert "student_baseline" in manifest["results"]
    for stage in ("teacher", "distill", "prune", "export", "quantize"):
        assert (run_dir / stage / "tokenizer.json").is_file()


@pytest.mark.slow
def test_ship_and_python_app_agree_with_the_pipeline_onnx(text_run, tmp_path):
    from compress.data import DataConfig
    from compress.onnxutil import make_session
    from compress.text_data import load_text_dataset
    from compress.text_onnx import onnx_logits

    run_dir, manifest = text_run
    bundle = tmp_path / "bundle"
    done = subprocess.run([sys.executable, "-m", "compress", "ship", str(run_dir), "--out", str(bundle)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    for name in ("model.onnx", "model.ort", "tokenizer.json", "model.json"):
        assert (bundle / name).is_file()
    cfg = manifest["config"]["data"]
    data = load_text_dataset(DataConfig(**cfg), tokenizer=run_dir / "export" / "tokenizer.json")
    first = data.test.subset(np.arange(12))  # 12 texts with all their windows
    texts = first.texts
    assert len(first) > first.num_samples  # some of these texts run past max_length 12: the windows are averaged
    shipped = run_dir / manifest["ship"]["path"]
    session = make_session(shipped)
    names = [i.name for i in session.get_inputs()]
    x = first.x
    expected = first.sample_logits(onnx_logits(session, {n: x[:, i] for i, n in enumerate(
        ("input_ids", "attention_mask", "token_type_ids")) if n in names})).argmax(1)
    text_file = tmp_path / "texts.txt"
    text_file.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n")
    app = subprocess.run([sys.executable, str(ROOT / "edge_demo" / "python" / "classify.py"), str(bundle),
                          "--text-file", str(text_file), "--json"], capture_output=True, text=True)
    assert app.returncode == 0, app.stderr
    classes = data.class_names
    predicted = [classes.index(row["label"]) if "label" in row else classes.index(row["top"][0]["label"])
                 for row in _json_rows(app.stdout)]
    assert predicted == expected.tolist()


def _json_rows(stdout: str) -> list[dict]:
    text = stdout.strip()
    try:
        value = json.loads(text)
        return value if isinstance(value, list) else value.get("results", [value])
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def save_pretrained_teacher(folder: Path, data) -> Path:
    """A user's fine-tuned BERT as transformers writes it: config.json, model.safetensors, tokenizer files."""
    import torch
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(json.loads(data.tokenizer_json)["model"]["vocab"]), hidden_size=32,
                        num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_labels=data.num_classes)
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    fast = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(data.tokenizer_json), pad_token="[PAD]",
                                   unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from compress.data import load_dataset

    csv_path = write_topics_csv(tmp_path_factory.mktemp("tinydata") / "topics.csv")
    return csv_path, load_dataset(tiny_config(csv_path).data)


def test_text_config_keys_are_checked():
    from compress.errors import CompressError

    for key, value, message in [("prune.head_amount", "1.5", "head_amount"), ("distill.student_init", '"zero"', "student_init"),
                                ("quantize.text_candidates", '["int2"]', "text candidate"),
                                ("benchmark.headline_seq", "64", "headline_seq"), ("export.rtol", "-1", "export.rtol")]:
        with pytest.raises(CompressError, match=message):
            load_config(None, [f"{key}={value}"])
    cfg = load_config(None, [])
    assert (cfg.prune.head_amount, cfg.prune.ffn_amount, cfg.distill.student_layers) == (0.5, 0.5, 0)
    assert cfg.teacher.model.arch == "resnet" and cfg.distill.student.arch == "resnet"  # image defaults unchanged


def test_a_teacher_folder_brings_its_tokenizer(tmp_path, tiny_data):
    from stages.teacher import TeacherConfig, teacher_data, teacher_inputs

    csv_path, data = tiny_data
    folder = save_pretrained_teacher(tmp_path / "bert", data)
    retrained = tmp_path / "other.json"
    from compress.text_data import train_tokenizer

    retrained.write_text(train_tokenizer(data.train.texts[:20], 120).to_str())
    (folder / "tokenizer.json").write_text(retrained.read_text())
    cfg = TeacherConfig(source="file", path=str(folder))
    encoded = teacher_data(cfg, data)
    assert encoded.tokenizer_json != data.tokenizer_json and encoded.train.x.shape[1:] == data.train.x.shape[1:]
    assert encoded.train.texts == data.train.texts and np.array_equal(encoded.train.sample_y, data.train.sample_y)
    assert len(encoded.train) != len(data.train)  # its own word pieces: another number of windows
    assert {"teacher_config.json", "teacher_model.safetensors", "teacher_tokenizer.json"} <= set(teacher_inputs(cfg, data.config))
    (folder / "tokenizer.json").unlink()
    from compress.errors import CompressError

    with pytest.raises(CompressError, match="no tokenizer.json"):
        teacher_data(cfg, data)


def test_the_packaged_text_teacher_only_fits_its_split(tiny_data):
    from compress.data import DataConfig
    from stages.teacher import TeacherConfig, teacher_inputs, text_pretrained_dir, text_pretrained_matches

    cfg = TeacherConfig()
    default = DataConfig(source="bbc-news")
    folder = text_pretrained_dir(cfg, default)
    assert folder.name == "bbc-news_bert4x256_seed0"
    if not (folder / "meta.json").is_file():
        pytest.skip("the packaged text teacher is not built (python -m stages.teacher --text)")
    assert text_pretrained_matches(cfg, default)
    assert set(teacher_inputs(cfg, default)) == {"pretrained", "pretrained_tokenizer"}
    for changed in (DataConfig(source="bbc-news", seed=1), DataConfig(source="bbc-news", max_length=64),
                    DataConfig(source="bbc-news", vocab_size=4000)):
        assert not text_pretrained_matches(cfg, changed)
    assert not text_pretrained_matches(TeacherConfig(text_model=type(cfg.text_model)(layers=2)), default)


def test_an_unfused_export_is_loud(tmp_path, tiny_data):
    from compress.checkpoint import save_model
    from compress.config import load_config as load
    from compress.text_models import BertShape, build_teacher
    from stages import export

    _, data = tiny_data
    model_path = tmp_path / "teacher.safetensors"
    save_model(build_teacher(data, BertShape(layers=2, hidden=32, heads=4, intermediate=64), seed=0), model_path)
    cfg = load(None, ["export.optimize=false", "export.parity_samples=8"]).export
    with pytest.warns(UserWarning, match="attention not fused"):
        result = export.run(cfg, {"teacher": model_path}, data, tmp_path / "out")
    assert result.metrics["teacher"]["attention_fused"] is False
    from compress.report import _unfused_warning

    assert "WARNING: attention is not fused in teacher" in _unfused_warning(
        {"teacher": {"attention_fused": False, "fused_operators": {}}})
    assert (tmp_path / "out" / "tokenizer.json").is_file() and (tmp_path / "out" / "teacher.onnx").is_file()


@pytest.mark.slow
def test_per_stage_cli_with_a_save_pretrained_teacher(tmp_path, tiny_data):
    csv_path, data = tiny_data
    folder = save_pretrained_teacher(tmp_path / "bert", data)
    sets = [arg for key in TINY for arg in ("--set", key)]
    common = ["--data", str(csv_path), *sets]

    def compress(*args):  # in this process: six interpreters importing torch and transformers cost ~25 s
        done = CliRunner().invoke(main, list(args))
        assert done.exit_code == 0 and "Traceback" not in done.output, done.output[-2000:]
        return done

    compress("teacher", *common, "--set", "teacher.source=file", "--set", f"teacher.path={json.dumps(str(folder))}",
             "--out", str(tmp_path / "t"))
    teacher = tmp_path / "t" / "teacher.safetensors"
    assert (tmp_path / "t" / "tokenizer.json").is_file()
    assert json.loads((tmp_path / "t" / "manifest.json").read_text())["stages"]["teacher"]["metrics"]["source"] == "file"
    compress("distill", "--teacher", str(teacher), *common, "--out", str(tmp_path / "d"))
    compress("prune", str(tmp_path / "d" / "student.safetensors"), "--teacher", str(teacher), *common,
             "--out", str(tmp_path / "p"))
    compress("export", str(tmp_path / "p" / "pruned.safetensors"), *common, "--out", str(tmp_path / "e" / "pruned.onnx"))
    compress("quantize", str(tmp_path / "e" / "pruned.onnx"), *common, "--set", 'quantize.mode="dynamic"',
             "--out", str(tmp_path / "q" / "int8.onnx"))
    from compress.onnxutil import load_onnx, metadata

    props = metadata(load_onnx(tmp_path / "q" / "int8.onnx"))
    # dynamic mode builds dynamic_int8 alone; fp32 is kept when it is not faster on this tiny model
    assert props.get("quantization", {"candidate": "dynamic_int8"})["candidate"] == "dynamic_int8"
    prune = json.loads((tmp_path / "p" / "prune.json").read_text())
    assert prune["after_finetune"]["parity"]["fused_operators"]["Attention"] == 1  # the student: half of 2 layers
    done = compress("benchmark", str(tmp_path / "e" / "pruned.onnx"), str(tmp_path / "q" / "int8.onnx"), *common,
                    "--out", str(tmp_path / "b"))
    assert "batch 1, 32 tokens" in done.output
    assert "TF-IDF + LR" in (tmp_path / "b" / "benchmark.md").read_text()


def test_auto_uses_a_packaged_text_teacher_that_matches(tmp_path, tiny_data, monkeypatch):
    import stages.teacher as teacher_stage
    from compress.checkpoint import load_model
    from compress.text_models import BertShape, build_teacher
    from stages.teacher import TeacherConfig, save_text_pretrained, teacher_inputs

    _, data = tiny_data
    monkeypatch.setattr(teacher_stage, "PRETRAINED_DIR", tmp_path / "weights")
    shape = BertShape(layers=2, hidden=32, heads=4, intermediate=64, dropout=0.0)
    cfg = TeacherConfig(text_model=shape)
    assert teacher_inputs(cfg, data.config) == {}  # nothing packaged: auto trains
    packaged = build_teacher(data, shape, seed=0)
    save_text_pretrained(packaged, cfg, data, {"test_accuracy": 0.0})
    assert set(teacher_inputs(cfg, data.config)) == {"pretrained", "pretrained_tokenizer"}
    result = teacher_stage.run(cfg, teacher_inputs(cfg, data.config), data, tmp_path / "out")
    assert result.metrics["source"] == "pretrained"
    loaded = load_model(result.outputs["teacher"])
    import torch

    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), packaged.state_dict().values()))
    other = TeacherConfig(text_model=BertShape(layers=1, hidden=32, heads=4, intermediate=64))
    assert teacher_inputs(other, data.config) == {}  # another shape: not packaged
