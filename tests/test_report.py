"""compress/report.py: report.md and the accuracy/latency PNG show the numbers the pipeline measured."""
from __future__ import annotations

import json
import shutil

from PIL import Image

from compress import report
from compress.pipeline import summary


def _row(text: str, name: str, section: str = "## Teacher vs student vs pruned vs int8") -> list[str]:
    text = text.split(section, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in text.splitlines() if line.startswith(f"| {name} |")]
    assert len(rows) == 1, f"expected one table row for {name}"
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


def test_report_table_shows_the_measured_results(quick_run):
    run_dir, manifest = quick_run
    text = (run_dir / "report.md").read_text()
    results, teacher = manifest["results"], manifest["results"]["teacher"]
    for name in ("teacher", "student", "pruned", "int8"):
        r = results[name]
        cells = _row(text, name)
        assert cells[1] == f"{100 * r['accuracy']:.2f}%"
        assert cells[2] == f"{100 * (r['accuracy'] - teacher['accuracy']):+.2f} pts"
        assert cells[4:7] == [f"{r['p50_ms']:.3f}", f"{r['p90_ms']:.3f}", f"{r['p99_ms']:.3f}"]
        assert cells[7] == f"{teacher['p50_ms'] / r['p50_ms']:.1f}x"
        assert cells[8] == f"{r['size_bytes'] / 1024:.1f}" and cells[10] == f"{r['params']:,}"


def test_report_sections(quick_run):
    run_dir, manifest = quick_run
    text = (run_dir / "report.md").read_text()
    ship = manifest["ship"]
    assert f"**{ship['artifact']}** (`{ship['path']}`): {ship['reason']}" in text
    quant = manifest["stages"]["quantize"]["metrics"]
    assert f"{100 * quant['fp32_accuracy']:.2f}% fp32 -> {100 * quant['int8_accuracy']:.2f}% int8" in text
    prune = manifest["stages"]["prune"]["metrics"]
    assert f"Params {prune['before']['params']:,} -> {prune['after_prune']['params']:,}" in text
    for name, parity in manifest["stages"]["export"]["metrics"].items():
        assert f"| {name} | {parity['samples']} | {parity['max_abs_diff']:.2e} |" in text
    assert "Run with `--baseline`" in text  # the quick run has no baseline: the report says how to get one
    for stage in manifest["stages"]:
        assert f"| {stage} | done |" in text
    assert "![accuracy vs latency](accuracy_vs_latency.png)" in text


def test_plot_is_a_png(quick_run):
    with Image.open(quick_run[0] / "accuracy_vs_latency.png") as image:
        assert image.format == "PNG" and image.size == (768, 504)
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 20  # points and text, not blank


def test_plot_places_each_artifact_at_its_measured_latency_and_accuracy(quick_run, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    points = []
    original = Axes.scatter

    def spy(self, x, y, *args, **kwargs):
        points.append((x, y))
        return original(self, x, y, *args, **kwargs)

    monkeypatch.setattr(Axes, "scatter", spy)
    run_dir = tmp_path / "run"
    shutil.copytree(quick_run[0], run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    report.write_report(run_dir, manifest)
    results = manifest["results"]
    assert points == [(results[n]["p50_ms"], 100 * results[n]["accuracy"]) for n in ("teacher", "student", "pruned", "int8")]


def test_summary_is_the_results_table(quick_run):
    table = summary(quick_run[1])
    assert table.splitlines()[0].startswith("| artifact | accuracy |")
    assert len(table.strip().splitlines()) == 2 + len(quick_run[1]["results"])


def test_baseline_section(quick_run, tmp_path):
    """With --baseline, the report compares the distilled student with the same student trained on hard labels."""
    manifest = json.loads(json.dumps(quick_run[1]))
    distill = manifest["stages"]["distill"]["metrics"]
    distill["student_baseline"] = {"val_accuracy": 0.9123, "test_accuracy": 0.8877, "best_epoch": 3, "train_s": 1.5}
    text = report.write_report(tmp_path, manifest).read_text()
    assert "## What distillation bought" in text
    assert "| without distillation (hard labels) | 91.23% | 88.77% | 1.5 |" in text
    student = distill["student"]
    row = _row(text, f"distilled (T={distill['temperature']}, alpha={distill['alpha']}, offline)", "## What distillation bought")
    assert row[2] == f"{100 * student['test_accuracy']:.2f}%"
