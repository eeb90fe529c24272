"""Run the text default (`compress pipeline --set data.source=bbc-news`) and record its numbers and the
issue-15 targets: teacher within 2 points of TF-IDF + LR, int8 >= teacher - 1 point, int8 p50 at seq 128
<= teacher p50 / 4, int8 file <= teacher / 6, attention fused in every export.

    nice -n 15 python benchmarks/text_default.py                      # one run, seed 0
    nice -n 15 python benchmarks/text_default.py --seeds 0 1 2 --baseline

The split (and so the packaged teacher) stays fixed; the seeds change the student's and the fine-tune's
shuffling and the calibration samples. Writes benchmarks/results/text_default.{json,md}.
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
LABELS = {"teacher": "teacher (BERT 4x256)", "student_baseline": "student without distillation",
          "student": "distilled student", "pruned": "pruned student (heads + FFN)", "int8": "int8 pruned student"}


def targets(manifest: dict) -> dict:
    r, tfidf = manifest["results"], manifest["baselines"]["tfidf_lr"]["accuracy"]
    tfidf_same_input = manifest["baselines"]["tfidf_lr_model_input"]["accuracy"]
    teacher, int8 = r["teacher"], r["int8"]
    return {"teacher_within_2_points_of_tfidf": teacher["accuracy"] >= tfidf - 0.02,
            "teacher_within_2_points_of_tfidf_on_same_tokens": teacher["accuracy"] >= tfidf_same_input - 0.02,
            "int8_within_1_point_of_teacher": int8["accuracy"] >= teacher["accuracy"] - 0.01,
            "int8_p50_at_most_teacher_over_4": int8["p50_ms"] <= teacher["p50_ms"] / 4,
            "int8_file_at_most_teacher_over_6": int8["size_bytes"] <= teacher["size_bytes"] / 6,
            "attention_fused_everywhere": all(f["attention_fused"] for f in manifest["fusion"].values())}


def main() -> None:
    parser = seed_parser(__doc__.splitlines()[0], "text_default", [0])
    parser.add_argument("--baseline", action="store_true", help="also train the student without distillation")
    args = parser.parse_args()

    runs = []
    for seed, manifest, wall_s in seed_runs(args.seeds, args.work, lambda seed: [
            "data.source=bbc-news", f"distill.text_train.seed={seed}", f"prune.text_finetune.seed={seed}",
            f"quantize.seed={seed}", *(["distill.baseline=true"] if args.baseline else []), *args.overrides]):
        runs.append({"seed": seed, "wall_s": round(wall_s, 1), "results": manifest["results"],
                     "tfidf_lr": manifest["baselines"]["tfidf_lr"],
                     "tfidf_lr_model_input": manifest["baselines"]["tfidf_lr_model_input"], "fusion": manifest["fusion"],
                     "quantize": manifest["stages"]["quantize"]["metrics"]["decision"], "ship": manifest["ship"]["artifact"],
                     "targets": targets(manifest), "data": manifest["data"],
                     "stage_wall_s": {name: round(s["wall_s"], 1) for name, s in manifest["stages"].items()}})

    def stat(values):
        return {"mean": float(np.mean(values)), "std": float(np.std(values))}

    summary = {name: {key: stat([r["results"][name][key] for r in runs])
                      for key in ("accuracy", "f1_macro", "p50_ms", "size_bytes")}
               for name in ARTIFACTS if all(name in r["results"] for r in runs)}
    for baseline in ("tfidf_lr", "tfidf_lr_model_input"):
        summary[baseline] = {key: stat([r[baseline][key] for r in runs]) for key in ("accuracy", "f1_macro")}
    command = "python benchmarks/text_default.py " + shlex.join(sys.argv[1:])
    write_json(args.out.with_suffix(".json"), {"command": command, "seeds": args.seeds, "runs": runs, "summary": summary})

    def pm(entry, scale=100.0, digits=2):
        return f"{scale * entry['mean']:.{digits}f} ± {scale * entry['std']:.{digits}f}"

    data = runs[0]["data"]
    max_windows = data["preprocessing"]["windows"]["max_windows"]
    max_length = data["preprocessing"]["max_length"]
    seen = "every window" if max_windows == 0 else f"first {max_windows} window(s)"
    rows = [[label, pm(summary[key]["accuracy"]), pm(summary[key]["f1_macro"]), "-", "-"]
            for key, label in (("tfidf_lr", "TF-IDF + logistic regression, whole texts"),
                               ("tfidf_lr_model_input", f"TF-IDF + logistic regression, the models' input ({seen})"))]
    rows += [[LABELS[name], pm(s["accuracy"]), pm(s["f1_macro"]), pm(s["p50_ms"], 1.0, 3),
              f"{s['size_bytes']['mean'] / 1e6:.2f} MB"] for name, s in summary.items() if name in LABELS]
    checks = [[run["seed"], run["wall_s"], run["quantize"], *("yes" if ok else "**no**" for ok in run["targets"].values())]
              for run in runs]
    text = "\n".join([
        "# Text default: bbc-news, packaged BERT 4x256 teacher", "", f"Command: `{command}`", "",
        f"Seeds {args.seeds}; accuracy and macro F1 in % on the test split of {data['test']} texts (mean ± std), "
        f"each text scored by the mean softmax of its windows of {max_length} tokens ({seen}; "
        f"{data['windows']['test'] / data['test']:.2f} windows per test text). p50 in ms of one window at batch 1, "
        f"seq {max_length}, one intra-op thread: an app classifying a text runs it once per window.", "",
        markdown_table(["model", "accuracy %", "macro F1 %", f"p50 ms @{max_length}", "size"], rows),
        "## Targets (issue 15)", "",
        markdown_table(["seed", "wall s", "quantize decision", *runs[0]["targets"]], checks)])
    write_text(args.out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
