"""compress search: the space and budgets, the untrained latency pre-filter, successive halving, resume and
the impossible-budget message."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from compress import search_cli
from compress.cli import main
from compress.config import load_config
from compress.errors import CompressError
from compress.latency import Target
from compress.search import (
    SearchConfig,
    Structure,
    UntrainedTimer,
    fit_latency_model,
    image_builder,
    image_feed,
    pareto_front,
    parse_budget,
    prefilter,
    run_search,
    structure_stats,
    structures,
)

DIGITS = ((1, 8, 8), 10)
# A tiny pipeline on digits: an MLP teacher, short training, one static int8, short timings.
TINY = ["data.source=digits", "teacher.source=train", 'teacher.model.arch="mlp"', "teacher.train.epochs=5",
        'teacher.train.optimizer="adamw"', "teacher.train.lr=0.003", 'distill.train.optimizer="adamw"',
        "distill.train.lr=0.003", "prune.finetune.epochs=1", 'prune.finetune.optimizer="adamw"', "prune.round_to=1",
        "prune.protect_first=false", 'quantize.mode="static"', "quantize.accuracy_aware=false",
        "quantize.layer_report=false", "quantize.calibration_samples=32", "benchmark.min_runs=20",
        "benchmark.min_seconds=0.05", "benchmark.warmup_runs=5", 'benchmark.warmup="fixed"', "benchmark.cold_start=false",
        "benchmark.profile=false", "export.parity_samples=64"]


@pytest.mark.parametrize("override, message", [
    ("search.widths=[]", "search.widths is empty"),
    ('search.archs=["resnet", "transformerxl"]', "unknown architecture 'transformerxl'"),
    ("search.prune_amounts=[0.0]", r"prune_amounts must all be fractions in \(0, 1\)"),
    ("search.widths=[-0.5]", "widths must all be > 0"),
    ("search.p50_ms=-1.0", "search.p50_ms must be > 0"),
    ('search.formats=["fp16"]', "unknown format 'fp16'"),
    ("search.eta=1", "search.eta must be >= 2"),
    ("search.max_epochs=1", r"max_epochs \(1\) must be >= search.min_epochs \(3\)"),
    ("search.budget=3", "unknown config key search.budget"),
    ("search.workers=0", "search.workers must be >= 1"),
])
def test_invalid_search_config_is_one_line(override, message):
    extra = ["search.min_epochs=3"] if "max_epochs" in override else []
    with pytest.raises(CompressError, match=message) as info:
        load_config(None, [*extra, override])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text, message", [
    ("p50=0.2", "must be p50_ms=MS or size_kb=KB"), ("p50_ms", "must be p50_ms=MS"),
    ("p50_ms=fast", "'fast' is not a number"), ("size_kb=-3", "must be a positive number"),
    ("p50_ms=nan", "must be a positive number"),
])
def test_bad_budget_is_refused(text, message):
    with pytest.raises(CompressError, match=message):
        parse_budget(text)


def test_space_and_rungs():
    cfg = load_config(None, ["search.p50_ms=0.2", "search.size_kb=200", 'search.archs=["mlp", "resnet"]',
                             "search.widths=[0.5, 1]", "search.prune_amounts=[0.3]"]).search
    assert (cfg.p50_ms, cfg.size_kb) == (0.2, 200.0)
    assert [s.name for s in structures(cfg)] == ["mlp-w0.5-d0-p0.3", "mlp-w1-d0-p0.3", "resnet-w0.5-d0-p0.3",
                                                 "resnet-w1-d0-p0.3"]
    assert SearchConfig(min_epochs=1, eta=3, max_epochs=9).rungs() == [1, 3, 9]
    assert SearchConfig(min_epochs=2, eta=2, max_epochs=5).rungs() == [2, 4, 5]
    assert Structure("resnet", 0.5, 0, 0.3).overrides()[2] == 'distill.student.depth="none"'


def test_latency_model_recovers_a_linear_law():
    points = [(m, p, 0.01 + 0.002 * m / 1e6 + 0.05 * p / 1e6) for m, p in [(1e6, 1e4), (5e6, 3e4), (2e7, 1e5), (4e7, 1e4)]]
    model = fit_latency_model(points)
    assert model["r2"] == pytest.approx(1.0)
    assert model["ms_per_mmac"] == pytest.approx(0.002)
    assert fit_latency_model(points[:2]) is None


def test_pareto_front():
    assert pareto_front([("a", 1, 0.9), ("b", 2, 0.8), ("c", 3, 0.95), ("d", 0.5, 0.5)]) == ["d", "a", "c"]


def test_prefilter_drops_a_structure_over_budget_measured(tmp_path):
    """A tiny and a huge untrained structure, timed for real; a budget between them keeps only the tiny one."""
    cfg = SearchConfig(archs=["mlp", "resnet"], widths=[0.1], prune_amounts=[0.2], formats=["fp32", "int8"], rounds=3)
    tiny, huge = Structure("mlp", 0.1, 0, 0.2), Structure("resnet", 4.0, 0, 0.2)
    timer = UntrainedTimer(tmp_path, image_builder(*DIGITS, "macs", cfg), image_feed(DIGITS[0], 0), Target(), cfg)
    fast, slow = timer.measure(tiny), timer.measure(huge)
    assert slow["fp32"]["p50_ms"] > 10 * fast["fp32"]["p50_ms"]
    assert slow["int8"]["size_bytes"] < slow["fp32"]["size_bytes"] / 2
    cfg.p50_ms = (slow["int8"]["p50_ms"] * fast["fp32"]["p50_ms"]) ** 0.5
    found = prefilter(cfg, [tiny, huge], lambda s: structure_stats(s, *DIGITS, "macs"), timer.measure, log=lambda _: None)
    kept = sorted(n for n, c in found["candidates"].items() if "dropped" not in c)
    assert kept == ["mlp-w0.1-d0-p0.2-fp32", "mlp-w0.1-d0-p0.2-int8"]
    for name in ("resnet-w4-d0-p0.2-fp32", "resnet-w4-d0-p0.2-int8"):
        assert found["candidates"][name]["dropped"].startswith("untrained p50")


def _stub_space(p50: dict[str, float]):
    """Stats and untrained measurements from a table: name -> p50 (size grows with it)."""
    def stats(s):
        return {"macs": int(p50[s.name] * 1e6), "params": int(p50[s.name] * 1e3)}

    def measure(s):
        return {f: {"p50_ms": p50[s.name] * (0.5 if f == "int8" else 1), "size_bytes": int(p50[s.name] * 1e4)}
                for f in ("fp32", "int8")}
    return stats, measure


def test_successive_halving_promotes_the_best_and_trains_it_longest(tmp_path):
    cfg = SearchConfig(p50_ms=1.0, archs=["mlp"], widths=[0.25, 0.5, 1.0, 2.0], prune_amounts=[0.5], formats=["fp32"],
                       keep=4, min_epochs=1, eta=2, max_epochs=4)
    names = [s.name for s in structures(cfg)]
    stats, measure = _stub_space(dict(zip(names, [0.1, 0.2, 0.3, 0.4])))
    quality = {"mlp-w0.25-d0-p0.5": 0.70, "mlp-w0.5-d0-p0.5": 0.90, "mlp-w1-d0-p0.5": 0.80, "mlp-w2-d0-p0.5": 0.95}
    calls = []

    def train(structure, epochs):
        calls.append((structure.name, epochs))
        # w2 is the most accurate but, trained, measures over the budget: it must not win.
        p50 = 1.5 if structure.width == 2.0 else 0.1
        return {"fp32": {"val_accuracy": quality[structure.name] + 0.001 * epochs, "test_accuracy": 0.5,
                         "p50_ms": p50, "size_bytes": 100, "run_dir": str(tmp_path / structure.name),
                         "artifact": "pruned"}}

    state = run_search(cfg, tmp_path, stats, measure, train, log=lambda _: None)
    assert state["winner"]["name"] == "mlp-w0.5-d0-p0.5-fp32"
    assert state["winner"]["epochs"] == 4
    # Rungs 1, 2, 4 epochs: 4 trained, 3 within budget -> top 2 at 2 epochs -> the best at 4.
    assert calls[4:] == [("mlp-w0.5-d0-p0.5", 2), ("mlp-w1-d0-p0.5", 2), ("mlp-w0.5-d0-p0.5", 4)]
    saved = json.loads((tmp_path / "search.json").read_text())
    assert saved["candidates"]["mlp-w2-d0-p0.5-fp32"]["dropped"].startswith("trained (1 epochs) p50 1.5000 ms > budget")
    assert "not in the top" in saved["candidates"]["mlp-w0.25-d0-p0.5-fp32"]["dropped"]
    report = (tmp_path / "search.md").read_text()
    assert "**Winner: mlp-w0.5-d0-p0.5-fp32**" in report and (tmp_path / "pareto.png").stat().st_size > 0


def test_an_impossible_budget_names_the_fastest_candidate(tmp_path):
    cfg = SearchConfig(p50_ms=0.01, archs=["mlp"], widths=[0.5, 1.0], prune_amounts=[0.5], formats=["fp32", "int8"])
    names = [s.name for s in structures(cfg)]
    stats, measure = _stub_space(dict(zip(names, [0.2, 0.4])))
    with pytest.raises(CompressError, match=r"no candidate meets the budget \(p50_ms 0.01\): the fastest found is "
                                            r"mlp-w0.5-d0-p0.5-int8 at p50 0.1000 ms, .* \(untrained\)"):
        run_search(cfg, tmp_path, stats, measure, lambda s, e: pytest.fail("nothing may train"), log=lambda _: None)


def test_cli_impossible_budget_exits_2_with_one_line(tmp_path):
    result = CliRunner().invoke(main, ["search", "--out", str(tmp_path / "s"), "--budget", "p50_ms=0.000001",
                                       "--set", "data.source=digits", "--set", 'search.archs=["mlp"]',
                                       "--set", "search.widths=[0.1]", "--set", "search.prune_amounts=[0.5]"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "the fastest found is mlp-w0.1-d0-p0.5-" in lines[0]
    assert "Traceback" not in result.output


def test_cli_bad_budget_exits_2(tmp_path):
    result = CliRunner().invoke(main, ["search", "--out", str(tmp_path / "s"), "--budget", "latency=3"])
    assert result.exit_code == 2 and "must be p50_ms=MS or size_kb=KB" in result.output
    result = CliRunner().invoke(main, ["search", "--out", str(tmp_path / "s"), "--budget", "p50_ms=1", "--workers", "0"])
    assert result.exit_code == 2 and "Invalid value for '--workers'" in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cli_device_cuda_without_cuda_is_one_line_and_writes_nothing(tmp_path):
    """--device reaches the search's training sections through the pipeline's config; a device this machine
    lacks fails before any candidate is built."""
    out = tmp_path / "s"
    result = CliRunner().invoke(main, ["search", "--out", str(out), "--budget", "p50_ms=1", "--device", "cuda",
                                       "--set", "data.source=digits"])
    assert result.exit_code == 2 and "device cuda requested" in result.output and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.slow
def test_real_search_resumes_after_an_interruption(tmp_path, monkeypatch):
    """A real tiny search through the pipeline, interrupted after its first rung, then re-run: the first rung's
    runs are reused and the winner is the one an uninterrupted re-run finds."""
    space = ['search.archs=["mlp"]', "search.widths=[0.25, 0.5]", "search.prune_amounts=[0.3]", "search.min_epochs=1",
             "search.eta=2", "search.max_epochs=2", "search.rounds=2"]

    def load(extra):
        return load_config(None, [*TINY, *space, *extra])

    real = search_cli.run_pipeline
    seen = []

    def interrupted(cfg, run_dir, resume=False, force=False, train_only=False):
        if len(seen) == 2:
            raise KeyboardInterrupt
        seen.append(run_dir)
        return real(cfg, run_dir, resume=resume, force=force, train_only=train_only)

    monkeypatch.setattr(search_cli, "run_pipeline", interrupted)
    monkeypatch.chdir(tmp_path.parent)  # a relative --out, as users give it: manifests then hold relative paths
    with pytest.raises(KeyboardInterrupt):
        search_cli.run(load, Path(tmp_path.name), ["p50_ms=1000"], log=lambda _: None)
    assert json.loads((tmp_path / "search.json").read_text())["status"] == "pre-filtered"
    monkeypatch.setattr(search_cli, "run_pipeline", real)
    first = search_cli.run(load, tmp_path, ["p50_ms=1000"], log=lambda _: None)
    rung_one = [c["rungs"][0] for c in first["candidates"].values() if c["rungs"] and c["rungs"][0]["epochs"] == 1]
    assert rung_one and all(r["reused"] for r in rung_one)
    again = search_cli.run(load, tmp_path, ["p50_ms=1000"], log=lambda _: None)
    assert again["winner"]["name"] == first["winner"]["name"] and again["winner"]["reused"]
    assert (tmp_path / "search.md").is_file()
    assert (tmp_path / "candidates" / first["winner"]["name"].rsplit("-", 1)[0] / "e2" / "manifest.json").is_file()


@pytest.mark.slow
def test_parallel_workers_train_the_same_candidates_as_one_process(tmp_path):
    """workers=2 trains rung 1's two structures side by side, then times them one at a time: the same
    accuracies per candidate and rung (one torch thread per process either way, so the same arithmetic) and the
    same winner as workers=1."""
    space = ['search.archs=["mlp"]', "search.widths=[0.25, 0.5]", "search.prune_amounts=[0.3]", "search.min_epochs=1",
             "search.eta=2", "search.max_epochs=2", "search.rounds=2", "threads=1"]

    def search(workers, folder):
        def load(extra):
            return load_config(None, [*TINY, *space, f"search.workers={workers}", *extra])
        return search_cli.run(load, tmp_path / folder, ["p50_ms=1000"], log=lambda _: None)

    def accuracies(state):
        return {name: [(r["epochs"], r["val_accuracy"], r["test_accuracy"]) for r in c["rungs"]]
                for name, c in state["candidates"].items()}

    one, two = search(1, "one"), search(2, "two")
    assert accuracies(two) == accuracies(one)
    assert two["winner"]["name"] == one["winner"]["name"]
    assert sum(len(c["rungs"]) for c in two["candidates"].values()) == 6  # 2 structures x 2 formats, then 1 x 2
    assert all(r["run_dir"].startswith(str(tmp_path / "two")) for c in two["candidates"].values() for r in c["rungs"])
    # the workers trained; this process only completed each run, reusing what they trained
    manifest = json.loads((tmp_path / "two" / "candidates" / "mlp-w0.25-d0-p0.3" / "e1" / "manifest.json").read_text())
    assert {n: s["status"] for n, s in manifest["stages"].items()} == {
        "teacher": "reused", "distill": "reused", "prune": "reused", "export": "done", "quantize": "done",
        "benchmark": "done"}


@pytest.mark.slow
def test_a_worker_error_is_one_line_naming_the_candidate(tmp_path):
    """A CompressError raised in a spawned worker comes back as the same one line, prefixed by the candidate."""
    cfg = load_config(None, TINY)
    runs = {}
    for name in ("mlp-w1-d0-p0.3", "mlp-w2-d0-p0.3"):
        runs[name] = (tmp_path / f"{name}-file", cfg)
        runs[name][0].write_text("a file where the run folder goes")
    with pytest.raises(CompressError, match=r"^search candidate mlp-w[12]-d0-p0.3 \(.*-file\): --out .* is a file") as info:
        search_cli.train_in_parallel(runs, 2)
    assert "\n" not in str(info.value)
