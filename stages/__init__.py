"""The pipeline's stages and their one registry.

Every stage is a module with a config dataclass and ``run(config, inputs, data, out_dir) -> StageResult``:
``inputs`` maps names to the files it reads, and the StageResult names the files it wrote. The
application layer (compress.cli, compress.config, compress.pipeline) knows the stages only through
``STAGES``; stages never import each other, and the core (compress/) never imports them."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from stages import benchmark, distill, export, prune, quantize, teacher


@dataclass(frozen=True)
class Stage:
    """One stage: what it is configured with, what it reads and writes, and how it runs."""

    name: str  # the config section and the run folder's subfolder
    config: type  # its config dataclass
    inputs: tuple[str, ...]  # named input files; "*" = any named models (export, benchmark)
    outputs: tuple[str, ...]  # named output files it always writes (a run may add more, e.g. student_baseline)
    run: Callable  # run(config, inputs: dict[str, Path], data: Dataset, out_dir: Path) -> StageResult
    summary: str  # one line for --help and the README


STAGES: dict[str, Stage] = {
    "teacher": Stage("teacher", teacher.TeacherConfig, (), ("teacher",), teacher.run,
                     "load your teacher, the packaged one, or train one"),
    "distill": Stage("distill", distill.DistillConfig, ("teacher",), ("student",), distill.run,
                     "distill a smaller student from the teacher"),
    "prune": Stage("prune", prune.PruneConfig, ("student", "teacher"), ("pruned",), prune.run,
                   "remove channels/heads physically, then fine-tune by distillation"),
    "export": Stage("export", export.ExportConfig, ("*",), ("*",), export.run,
                    "export every checkpoint to ONNX, checked and parity-verified"),
    "quantize": Stage("quantize", quantize.QuantizeConfig, ("model",), ("int8",), quantize.run,
                      "onnxruntime int8 (static/dynamic), measured, with accuracy-aware fallback"),
    "benchmark": Stage("benchmark", benchmark.BenchmarkConfig, ("*",), ("benchmark_json", "benchmark_md"),
                       benchmark.run, "latency, throughput, size and accuracy of every artifact"),
}
