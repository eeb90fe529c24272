"""Text bundles (compress.text_ship) and the edge apps on them: the Python app (onnxruntime + tokenizers, no torch,
no transformers) and the browser page (onnxruntime-web + edge_demo/web/wordpiece.js) give the ONNX model's
predictions, and the JavaScript tokenizer gives the tokenizers library's ids on tricky strings."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from compress.errors import CompressError
from compress.fsutil import sha256
from compress.onnxutil import make_session
from compress.ship import BundleConfig
from compress.text_onnx import (
    TextExportConfig,
    TextQuantizeConfig,
    build_text_candidates,
    encode_text_windows,
    encode_texts,
    export_text_model,
    onnx_logits,
)
from compress.text_ship import ship_text_bundle
from compress.text_windows import text_probabilities
from tests.edge_web_helpers import load_web_module
from tests.text_helpers import LABELS, corpus, train_tokenizer, trained_tiny_bert

MAX_LENGTH = 32
ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "edge_demo" / "python" / "classify.py"
TRICKY = [
    "Crème brûlée à la FRANÇAISE, naïve café",
    "Hello,world!!...(ok)? 'quoted' \"double\" a-b_c #tag @user",
    "xyzzyq qwertyuiop zxcvbnm goal",
    " ".join(["match goal team"] * 40),  # several windows of MAX_LENGTH
    "中文字符 mixed with recipe",
    "[MASK] goal [SEP] score",
    "tab\there new\nline\r\nnul\u0000zero\u200bwidth",
    "goal ⚽ 🎉 pizza 🍕",
    "İstanbul ΣΑΣ Ελληνικά",
    "3.14 $100 50% 1,000,000 x^2 <b>bold</b>",
    "",
]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A tiny BERT's dynamic-int8 model shipped as a text bundle: (bundle folder, model.json, test texts, labels)."""
    root = tmp_path_factory.mktemp("text_edge")
    text = trained_tiny_bert(root, 40, 2, MAX_LENGTH)
    export_text_model(text["model"], root / "fp32.onnx", text["test"], TextExportConfig(), LABELS, MAX_LENGTH,
                      text["tokenizer_path"])
    # 7-bit weights: onnxruntime's AVX2 kernels (x86 without VNNI) then compute exactly what WebAssembly's do
    int8 = build_text_candidates(root / "fp32.onnx", text["train"], root,
                                 TextQuantizeConfig(candidates=["dynamic_int8"], reduce_range=True))
    bundle = root / "bundle"
    info = ship_text_bundle(int8["dynamic_int8"], text["tokenizer_path"], bundle, text["test_texts"], text["test_labels"],
                            BundleConfig(samples=6), metrics={"accuracy": 1.0})
    return {"root": root, "bundle": bundle, "info": info, "texts": text["test_texts"], "labels": text["test_labels"],
            "tokenizer": text["tokenizer"]}


def onnx_predictions(shipped, texts: list[str]) -> np.ndarray:
    """Probabilities of the bundled .onnx, tokenized by the tokenizers library: each text's mean softmax over all
    its windows (compress.text_windows), one text per run, padded only to its longest window as the apps do
    (dynamic int8 scales activations per run, so other texts or more padding would shift them)."""
    session = make_session(shipped["bundle"] / "model.onnx")
    rows = []
    for text in texts:
        samples, groups = encode_text_windows(shipped["tokenizer"], [text], MAX_LENGTH)
        longest = int(samples["attention_mask"].sum(1).max())
        samples = {name: values[:, :longest] for name, values in samples.items()}
        rows.append(text_probabilities(onnx_logits(session, samples), groups, 1)[0])
    return np.array(rows)


def test_bundle_holds_model_ort_tokenizer_and_labels(shipped):
    info, bundle = shipped["info"], shipped["bundle"]
    assert info["task"] == "text-classification" and info["classes"] == LABELS
    assert set(info["files"]) >= {"model.onnx", "model.ort", "tokenizer.json"}
    assert info["models"]["ort"] == "model.ort" and (bundle / "model.ort").is_file()
    assert info["input"]["names"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert info["input"]["max_length"] == MAX_LENGTH
    assert info["tokenizer"]["browser_supported"] and info["tokenizer"]["lowercase"]
    assert json.loads((bundle / "model.json").read_text()) == info
    assert info["files"]["tokenizer.json"]["sha256"] == sha256(shipped["root"] / "tokenizer.json")
    assert info["verification"]["onnx_accuracy"] >= 0.9 and info["verification"]["ort_onnx_top1_agreement"] == 1.0
    assert {s["label"] for s in info["samples"]} == set(LABELS) and len(info["samples"]) == 6


def test_ship_errors(shipped, tmp_path):
    root = shipped["root"]
    with pytest.raises(CompressError, match="already exists: pass --force"):
        ship_text_bundle(root / "fp32.onnx", root / "tokenizer.json", shipped["bundle"], ["goal"])
    other = train_tokenizer(corpus(60, seed=5)[0], vocab_size=120)
    other.save(str(tmp_path / "other.json"))
    with pytest.raises(CompressError, match="is not the tokenizer .* was exported with"):
        ship_text_bundle(root / "fp32.onnx", tmp_path / "other.json", tmp_path / "b1", ["goal"])
    bare = onnx.load(str(root / "fp32.onnx"))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(CompressError, match="lacks the task/class_labels/max_length/input_names metadata"):
        ship_text_bundle(tmp_path / "bare.onnx", root / "tokenizer.json", tmp_path / "b2", ["goal"])
    with pytest.raises(CompressError, match="2 texts but 1 labels"):
        ship_text_bundle(root / "fp32.onnx", root / "tokenizer.json", tmp_path / "b3", ["a", "b"], [0])
    assert not any((tmp_path / name).exists() for name in ("b1", "b2", "b3"))


# Runs the app as a user would, with torch and transformers made unimportable: it must need neither.
_NO_TORCH = ("import runpy, sys; sys.modules.update(torch=None, transformers=None); sys.argv = sys.argv[1:]; "
             "runpy.run_path(sys.argv[0], run_name='__main__')")


def run_app(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _NO_TORCH, str(APP), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120, env={**os.environ, "PYTHONPATH": ""})


def test_python_app_predicts_like_onnx(shipped, tmp_path):
    content = "\n".join(shipped["texts"][:12] + TRICKY)
    (tmp_path / "texts.txt").write_text(content, encoding="utf-8")
    result = run_app(shipped["bundle"], "--text-file", tmp_path / "texts.txt", "--top-k", "3", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    sent = [line for line in content.splitlines() if line.strip()]  # the app's contract: one text per line
    assert [r["text"] for r in report["results"]] == sent
    expected = onnx_predictions(shipped, sent)
    for row, probs in zip(report["results"], expected):
        assert row["top"][0]["label"] == LABELS[int(probs.argmax())]
        assert abs(row["top"][0]["probability"] - probs.max()) < 1e-5
        assert row["tokens"] <= MAX_LENGTH * row["windows"]
    long_text = report["results"][sent.index(TRICKY[3])]
    assert long_text["windows"] == len(encode_text_windows(shipped["tokenizer"], [TRICKY[3]], MAX_LENGTH)[1]) > 2


def test_python_app_self_test_and_single_text(shipped, tmp_path):
    result = run_app(shipped["bundle"], "--self-test", "--text", shipped["texts"][0], "--bench", "5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "self-test: 6/6 known samples correct" in result.stdout and "bench: 5 runs of one text (all its windows)" in result.stdout
    ort_format = run_app(shipped["bundle"], "--format", "onnx", "--text", "goal", "--json", cwd=tmp_path)
    assert json.loads(ort_format.stdout)["model"] == "model.onnx"


@pytest.mark.parametrize("args, message", [
    (["image.png"], "is a text bundle: give --text or --text-file instead of files"),
    (["--text-file", "missing.txt"], "text file not found: missing.txt"),
])
def test_python_app_errors(shipped, tmp_path, args, message):
    result = run_app(shipped["bundle"], *args, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith(f"error: {shipped['bundle']}" if "bundle" in message
                                                                else "error: ")
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


# --- the browser page --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(shipped):
    """The bundle, and a copy whose tokenizer.json is not BERT WordPiece (its sha256 updated to match)."""
    bad = shipped["root"] / "not-bert"
    shutil.copytree(shipped["bundle"], bad)
    config = json.loads((bad / "tokenizer.json").read_text())
    config["normalizer"] = {"type": "Lowercase"}
    (bad / "tokenizer.json").write_text(json.dumps(config))
    info = json.loads((bad / "model.json").read_text())
    info["files"]["tokenizer.json"]["sha256"] = sha256(bad / "tokenizer.json")
    (bad / "model.json").write_text(json.dumps(info))
    server, url = load_web_module("serve").serve_in_thread({"text": shipped["bundle"], "not-bert": bad})
    yield url
    server.shutdown()


def open_page(driver, url: str, query: str) -> tuple[str, str]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{url}?{query}")
    WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "status").get_attribute("data-state") != "loading")
    status = driver.find_element(By.ID, "status")
    return status.get_attribute("data-state"), status.text


@pytest.mark.browser
def test_javascript_tokenizer_gives_the_tokenizers_ids(browser, site, shipped):
    state, text = open_page(browser, site, "bundle=text/&bench=5")
    assert state == "ready", text
    for sample in TRICKY + shipped["texts"][:5]:
        encoding = shipped["tokenizer"].encode(sample)
        expected = encode_texts(shipped["tokenizer"], [sample], MAX_LENGTH)
        got = browser.execute_script("return window.edgeDemo.tokenize(arguments[0])", sample)
        assert got["inputIds"] == expected["input_ids"][0].tolist(), (sample, got["tokens"], encoding.tokens)
        assert got["attentionMask"] == expected["attention_mask"][0].tolist()
        assert got["tokenTypeIds"] == expected["token_type_ids"][0].tolist()
    assert len(browser.execute_script("return window.edgeDemo.tokenize(arguments[0])", TRICKY[3])["inputIds"]) == MAX_LENGTH
    for sample in (TRICKY[3], " ".join(shipped["texts"][:6]), "goal"):
        expected, _ = encode_text_windows(shipped["tokenizer"], [sample], MAX_LENGTH)
        windows = browser.execute_script("return window.edgeDemo.tokenizeWindows(arguments[0])", sample)
        longest = max(len(w["inputIds"]) for w in windows)
        assert [w["inputIds"] for w in windows] == expected["input_ids"][:, :longest].tolist(), sample
        assert [w["attentionMask"] for w in windows] == expected["attention_mask"][:, :longest].tolist(), sample


MULTILINGUAL = ["Crème brûlée, naïve café, Ångström, São Paulo, Zürich", "ΣΑΣ σας Ελληνικά ΟΔΟΣ", "İstanbul Straße",
                "中文字符 日本語 한국어", "Ωmega ﬁ ligature ½ ² №", "don't stop-believing!!! (really?) ¿Qué? «quote» …"]


@pytest.mark.browser
@pytest.mark.parametrize("lowercase, strip_accents", [(True, True), (True, False), (False, None)])
def test_javascript_tokenizer_with_a_rich_vocabulary(browser, site, lowercase, strip_accents):
    """Every character in the vocabulary, so normalization differences (accents, case, final sigma) show."""
    state, text = open_page(browser, site, "bundle=text/&bench=5")
    assert state == "ready", text
    tokenizer = train_tokenizer(MULTILINGUAL * 3 + TRICKY * 3 + corpus(100, seed=3)[0], vocab_size=600,
                                lowercase=lowercase, strip_accents=strip_accents)
    for sample in MULTILINGUAL + TRICKY:
        expected = encode_texts(tokenizer, [sample], 64)["input_ids"][0].tolist()
        got = browser.execute_script(
            "const t = new window.edgeDemo.WordPieceTokenizer(JSON.parse(arguments[0]));"
            "return t.encode(arguments[1], {maxLength: 64});", tokenizer.to_str(), sample)
        assert got["inputIds"] == expected, (sample, got["tokens"], tokenizer.encode(sample).tokens)
        assert got["inputIds"].count(tokenizer.token_to_id("[UNK]")) < len(expected) - 2 or len(expected) <= 3


@pytest.mark.browser
@pytest.mark.parametrize("model_format", ["ort", "onnx"])
def test_page_classifies_like_onnx(browser, site, shipped, model_format):
    from selenium.webdriver.common.by import By

    state, text = open_page(browser, site, f"bundle=text/&model={model_format}&bench=5")
    assert state == "ready", text
    assert "self-test 6/6" in text
    assert browser.find_element(By.ID, "text-selftest").get_attribute("data-correct") == "6"
    assert not browser.find_element(By.ID, "draw-card").is_displayed()
    texts = shipped["texts"][:8] + TRICKY
    expected = onnx_predictions(shipped, texts)
    for sample, probs in zip(texts, expected):
        result = browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "window.edgeDemo.classifyText(arguments[0]).then(done, (e) => done({error: String(e)}))", sample)
        assert "error" not in result, result
        assert result["label"] == LABELS[int(probs.argmax())], sample
        np.testing.assert_allclose(result["probabilities"], probs, atol=1e-4)


@pytest.mark.browser
def test_typed_text_is_classified_live(browser, site, shipped):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    state, text = open_page(browser, site, "bundle=text/&bench=5")
    assert state == "ready", text
    typed = "The coach said the team will win the league"
    browser.find_element(By.ID, "text").send_keys(typed)
    WebDriverWait(browser, 30).until(
        lambda d: (d.execute_script("return window.edgeDemo.lastResult") or {}).get("text") == typed)
    result = browser.execute_script("return window.edgeDemo.lastResult")
    probs = onnx_predictions(shipped, [typed])[0]
    assert result["source"] == "typed" and result["label"] == LABELS[int(probs.argmax())] == "sport"
    assert browser.find_element(By.ID, "prediction").get_attribute("data-label") == "sport"
    assert "tokens: [CLS] the coach" in browser.find_element(By.ID, "tokens").text


@pytest.mark.browser
def test_non_bert_tokenizer_gets_one_clear_error(browser, site):
    state, text = open_page(browser, site, "bundle=not-bert/")
    assert state == "error"
    assert text == ("error: tokenizer.json is not a BERT WordPiece tokenizer (normalizer is Lowercase): this page "
                    "implements BERT WordPiece only"), text
