"""compress search over text students: the text space and its checks, the pruned-shape stand-ins, and a tiny
end-to-end search on a CSV (a 2 x 32 BERT teacher, students of one layer)."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from compress import search_cli  # noqa: E402
from compress.config import load_config  # noqa: E402
from compress.errors import CompressError  # noqa: E402
from compress.search import TextStructure, check_formats, text_structures  # noqa: E402
from compress.text_search import pruned_sizes  # noqa: E402
from tests.test_text_pipeline import TINY, write_topics_csv  # noqa: E402

SPACE = ["search.text_layers=[1]", "search.text_hidden=[16, 32]", "search.text_heads=[2]", "search.text_ffn=[32]",
         "search.prune_amounts=[0.5]", "search.min_epochs=1", "search.eta=2", "search.max_epochs=2", "search.rounds=2"]


@pytest.mark.parametrize("override, message", [
    ("search.text_hidden=[100, 128]", "search.text_hidden 100 is not a multiple of search.text_heads 8"),
    ("search.text_layers=[0, 2]", r"search.text_layers must all be >= 1, got \[0, 2\]"),
    ("search.text_ffn=[]", "search.text_ffn is empty"),
    ('search.formats=["fp32", "int3"]', "unknown format 'int3'.*text also dynamic_int8"),
])
def test_invalid_text_space_is_one_line(override, message):
    extra = ["search.text_heads=[8]"] if "text_hidden" in override else []
    with pytest.raises(CompressError, match=message) as info:
        load_config(None, [*extra, override])
    assert "\n" not in str(info.value)


def test_formats_fit_the_kind_of_data():
    two = load_config(None, ['search.formats=["fp32", "dynamic_int8", "static_u8s8_qdq"]']).search
    with pytest.raises(CompressError, match="a text search builds one quantized format per candidate run"):
        check_formats(two, text=True)
    with pytest.raises(CompressError, match="'dynamic_int8' is a text format; image searches build fp32 and int8"):
        check_formats(two, text=False)
    check_formats(load_config(None, ['search.formats=["fp32", "int4_weight_only"]']).search, text=True)


def test_text_space_names_overrides_and_limits():
    cfg = load_config(None, [*TINY, *SPACE, "search.text_heads=[2, 4]"])
    names = [s.name for s in text_structures(cfg.search)]
    assert names == ["bert-l1-h16-a2-f32-p0.5", "bert-l1-h16-a4-f32-p0.5", "bert-l1-h32-a2-f32-p0.5",
                     "bert-l1-h32-a4-f32-p0.5"]
    assert TextStructure(2, 64, 4, 128, 0.3).overrides() == [
        "distill.student_layers=2", "distill.student_hidden=64", "distill.student_heads=4", "distill.student_ffn=128",
        "prune.head_amount=0.3", "prune.ffn_amount=0.3"]
    assert TextStructure.epochs_key == "distill.text_train.epochs"
    # pruning half of 4 heads and of 128 neurons (kept count a multiple of 8); one head always stays
    assert pruned_sizes(TextStructure(2, 64, 4, 128, 0.5), 8) == (2, 64)
    assert pruned_sizes(TextStructure(2, 64, 1, 20, 0.9), 8) == (1, 8)
    with pytest.raises(CompressError, match=r"search.text_hidden: 64 exceeds the teacher's 32 \(teacher.text_model.hidden\)"):
        search_cli.check_text_space(load_config(None, [*TINY, "search.text_hidden=[64]", "search.text_heads=[4]"]))
    assert search_cli.text_overrides(cfg, 16) == ['quantize.mode="dynamic"', "quantize.accuracy_aware=false",
                                                  "benchmark.seq_lengths=[16, 32]", "benchmark.headline_seq=16"]


@pytest.mark.slow
def test_tiny_text_search_end_to_end(tmp_path):
    """Two untrained text students timed at data.max_length (fp32 and dynamic int8), both trained one epoch,
    the better trained two: the winner's run is a complete text pipeline run with dynamic int8 and the headline
    latency at data.max_length tokens (12 in TINY), where the untrained ones were timed."""
    source = write_topics_csv(tmp_path / "topics.csv")

    def load(extra):
        return load_config(None, [f"data.source={json.dumps(str(source))}", *TINY, *SPACE, *extra])

    state = search_cli.run(load, tmp_path / "search", ["p50_ms=1000"], log=lambda _: None)
    assert state["status"] == "complete" and state["context"]["kind"] == "text"
    assert set(state["candidates"]) == {f"bert-l1-h{h}-a2-f32-p0.5-{f}" for h in (16, 32) for f in ("fp32", "int8")}
    for entry in state["candidates"].values():
        assert entry["untrained"]["p50_ms"] > 0 and entry["macs"] > 0 and entry["rungs"]
    small, large = (state["candidates"][f"bert-l1-h{h}-a2-f32-p0.5-fp32"] for h in (16, 32))
    assert small["params"] < large["params"] and small["untrained"]["size_bytes"] < large["untrained"]["size_bytes"]
    winner = state["winner"]
    assert winner["epochs"] == 2 and winner["name"].startswith("bert-l1-h")
    manifest = json.loads((tmp_path / "search" / "candidates" / winner["name"].rsplit("-", 1)[0] / "e2" /
                           "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["config"]["distill"]["student_heads"] == 2
    assert manifest["stages"]["quantize"]["metrics"]["mode"] == "dynamic"
    assert manifest["config"]["benchmark"]["headline_seq"] == 12
    assert manifest["stages"]["prune"]["metrics"]["heads_after"] == [1]
    assert "**Winner: bert-l1-h" in (tmp_path / "search" / "search.md").read_text()
