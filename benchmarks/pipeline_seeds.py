"""Run the default pipeline with --baseline over several training seeds and tabulate
teacher / student without distillation / distilled student / pruned / int8.

    python benchmarks/pipeline_seeds.py --seeds 0 1 2

The data split (and so the packaged teacher) stays fixed; the seeds change student
initialisation order, shuffling, augmentation and calibration samples. Writes
benchmarks/results/pipeline_seeds.{json,md}.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._seeds import seed_parser, seed_runs  # noqa: E402
from compress.fsutil import write_json, write_text  # noqa: E402
from compress.report import markdown_table  # noqa: E402

ARTIFACTS = ("teacher", "student_baseline", "student", "pruned", "int8")
LABELS = {"teacher": "teacher (packaged)", "student_baseline": "student without distillation",
          "student": "distilled student", "pruned": "pruned student", "int8": "int8 pruned student"}


def main() -> None:
    args = seed_parser(__doc__.splitlines()[0], "pipeline_seeds", [0, 1, 2]).parse_args()
    runs = [{"seed": seed, "wall_s": wall_s, "results": manifest["results"], "ship": manifest["ship"]["artifact"]}
            for seed, manifest, wall_s in seed_runs(args.seeds, args.work, lambda seed: [
                "distill.baseline=true", f"distill.train.seed={seed}", f"prune.finetune.seed={seed}",
                f"quantize.seed={seed}", *args.overrides])]

    summary = {}
    for name in ARTIFACTS:
        values = [r["results"][name] for r in runs if name in r["results"]]
        summary[name] = {key: {"mean": float(np.mean([v[key] for v in values])), "std": float(np.std([v[key] for v in values]))}
                         for key in ("accuracy", "p50_ms", "size_bytes", "params", "macs")}
    command = "python benchmarks/pipeline_seeds.py " + shlex.join(sys.argv[1:])
    write_json(args.out.with_suffix(".json"), {"command": command, "seeds": args.seeds, "runs": runs, "summary": summary})

    rows = []
    for name in ARTIFACTS:
        s = summary[name]
        rows.append([LABELS[name], f"{100 * s['accuracy']['mean']:.2f} ± {100 * s['accuracy']['std']:.2f}",
                     f"{s['p50_ms']['mean']:.3f} ± {s['p50_ms']['std']:.3f}", f"{s['size_bytes']['mean'] / 1024:.1f}",
                     f"{s['params']['mean']:,.0f}", f"{s['macs']['mean'] / 1e6:.2f}"])
    text = (f"# Default pipeline over seeds {', '.join(map(str, args.seeds))}\n\n"
            f"Command: `{command}`\n\n"
            "Accuracy on the mnist test split (500 images), mean ± std over seeds; p50 latency at batch 1 on onnxruntime "
            "CPUExecutionProvider with 1 thread. The teacher is the packaged one (same for every seed).\n\n"
            + markdown_table(["artifact", "accuracy %", "p50 ms", "size KB", "params", "MMACs"], rows)
            + "\nWall time per run: " + ", ".join(f"{r['wall_s']:.0f} s" for r in runs) + "; shipped: "
            + ", ".join(r["ship"] for r in runs) + ".\n\n"
            + "## int8 against its fp32 export (the pruned student), per seed\n\n"
            + "Goal (issue 5): at most 0.5 point lost and at least 2x faster at batch 1 on a ResNet-style student of "
              ">= 20 MMACs. Latencies are the pipeline's benchmark stage (p50, batch 1, 1 thread).\n\n"
            + markdown_table(["seed", "MMACs", "fp32 p50 ms", "int8 p50 ms", "speed-up", "fp32 acc", "int8 acc",
                              "points lost", "goal"], [_int8_row(r) for r in runs]))
    write_text(args.out.with_suffix(".md"), text)
    print(text)


def _int8_row(run: dict) -> list:
    fp32, int8 = run["results"]["pruned"], run["results"]["int8"]
    speedup, lost = fp32["p50_ms"] / int8["p50_ms"], 100 * (fp32["accuracy"] - int8["accuracy"])
    met = speedup >= 2 and lost <= 0.5 and int8["macs"] >= 20e6
    return [run["seed"], f"{int8['macs'] / 1e6:.2f}", f"{fp32['p50_ms']:.3f}", f"{int8['p50_ms']:.3f}", f"{speedup:.2f}x",
            f"{100 * fp32['accuracy']:.2f}%", f"{100 * int8['accuracy']:.2f}%", f"{lost:+.2f}", "met" if met else "MISSED"]


if __name__ == "__main__":
    main()
