"""The text default's shapes without training: the packaged teacher's (BERT 4x256) against the default
student after the default head/FFN pruning and dynamic int8, on the bbc-news tokenizer. Latency and size
depend on the shapes, not the weights, so this checks two issue-15 targets (int8 p50 at seq 128 <= teacher
fp32 p50 / 4, int8 file <= teacher / 6) before a full run; accuracy needs benchmarks/text_default.py.

    nice -n 15 python benchmarks/text_default_shape.py

Writes benchmarks/results/text_default_shape.{json,md}."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compress import text_run  # noqa: E402
from compress.data import DataConfig, load_dataset  # noqa: E402
from compress.fsutil import write_json, write_text  # noqa: E402
from compress.latency import TimingRules  # noqa: E402
from compress.report import markdown_table  # noqa: E402
from compress.text_models import build_teacher, make_student  # noqa: E402
from compress.text_onnx import (  # noqa: E402
    TextExportConfig,
    TextQuantizeConfig,
    build_text_candidates,
    export_text_model,
    text_latency,
    text_model_stats,
)
from compress.text_pruning import ffn_sizes, head_counts, prune_heads  # noqa: E402
from stages.prune import PruneConfig  # noqa: E402


def main() -> None:
    torch.set_num_threads(2)
    data = load_dataset(DataConfig(source="bbc-news"))
    prune = PruneConfig()
    teacher = build_teacher(data)
    student, _ = make_student(teacher)
    prune_heads(student, prune.head_amount, data, ffn_amount=prune.ffn_amount, teacher=teacher, samples=32)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, model in (("teacher fp32", teacher), ("pruned student fp32", student)):
            path = work / f"{name.split()[0]}.onnx"
            export_text_model(model, path, text_run.export_inputs(model, data, 16), TextExportConfig(parity_samples=16),
                              data.class_names, 128)
            rows[name] = path
        rows["pruned student dynamic int8"] = build_text_candidates(
            rows["pruned student fp32"], text_run.samples(data.train, None, 16), work,
            TextQuantizeConfig(candidates=["dynamic_int8"]))["dynamic_int8"]
        results = {name: {"p50_ms_128": text_latency(path, text_run.samples(data.test), (128,),
                                                      rules=TimingRules(min_runs=200, min_seconds=1.0))
                          ["latency_by_seq"][128]["p50_ms"], **text_model_stats(path, 128)}
                   for name, path in rows.items()}
    teacher_row, int8 = results["teacher fp32"], results["pruned student dynamic int8"]
    document = {"command": "python benchmarks/text_default_shape.py", "student_heads": head_counts(student),
                "student_ffn": ffn_sizes(student), "results": results,
                "latency_ratio": teacher_row["p50_ms_128"] / int8["p50_ms_128"],
                "size_ratio": teacher_row["size_bytes"] / int8["size_bytes"]}
    write_json(ROOT / "benchmarks" / "results" / "text_default_shape.json", document)
    text = "\n".join([
        "# Text default: shapes (untrained weights)", "", f"Command: `{document['command']}` (batch 1, seq 128, one "
        "intra-op thread, shared 2-core machine).", "",
        f"Student: 2 layers, heads per layer {document['student_heads']}, FFN {document['student_ffn']}.", "",
        markdown_table(["model", "p50 ms @128", "size MB", "params", "MMACs @128"],
                       [[name, f"{r['p50_ms_128']:.2f}", f"{r['size_bytes'] / 1e6:.2f}", f"{r['params']:,}",
                         f"{r['macs'] / 1e6:.1f}"] for name, r in results.items()]),
        f"teacher fp32 / int8 student: p50 {document['latency_ratio']:.1f}x (target >= 4), file "
        f"{document['size_ratio']:.1f}x (target >= 6).", ""])
    write_text(ROOT / "benchmarks" / "results" / "text_default_shape.md", text)
    print(text)


if __name__ == "__main__":
    main()
