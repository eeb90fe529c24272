"""Accuracy of each pruning method over several seeds, from results of benchmarks/prune_compare.py.

    python benchmarks/prune_seeds_summary.py benchmarks/results/prune_compare.json \
        benchmarks/results/prune_compare_mobilenet_seed1.json benchmarks/results/prune_compare_mobilenet_seed2.json

One prune_compare run is one seed, and on 1,000 test images a few images decide its (a)-vs-(b) comparison;
this tabulates every model and MACs target that more than one of the given runs measured, per run and as
the mean and standard deviation. Runs made with --finetune-seed (the same dense model, fine-tuned again)
show how much of the spread the fine-tune alone makes. Writes benchmarks/results/prune_compare_seeds.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compress.fsutil import write_json, write_text  # noqa: E402
from compress.report import markdown_table  # noqa: E402

METHODS = ("ours", "tp_magnitude", "li_l1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="JSON files written by prune_compare.py")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "prune_compare_seeds")
    args = parser.parse_args()
    # (model, target) -> seed -> method -> test accuracy
    table: dict[tuple[str, str], dict[str, dict[str, float]]] = defaultdict(dict)
    for path in args.results:
        document = json.loads(path.read_text())
        budget = document["budget"]
        finetune_seed = budget.get("finetune_seed", budget["seed"])
        seed = str(budget["seed"]) if finetune_seed == budget["seed"] else f"{budget['seed']} (fine-tune {finetune_seed})"
        for model, result in document["models"].items():
            for row in result["pruned"]:
                table[model, f"{row['reduction_target']:g}x"].setdefault(seed, {})[row["method"]] = row["accuracy"]
    summary = []
    for (model, target), seeds in sorted(table.items()):
        if len(seeds) < 2:
            continue
        means = {m: float(np.mean([s[m] for s in seeds.values()])) for m in METHODS}
        stds = {m: float(np.std([s[m] for s in seeds.values()], ddof=1)) for m in METHODS}
        summary.append({"model": model, "target": target, "seeds": dict(seeds), "mean": means, "std": stds,
                        # accuracies are whole test images: equal means must not differ by float rounding
                        "a_at_least_as_accurate_as_b": round(means["ours"], 9) >= round(means["tp_magnitude"], 9)})
    command = "python benchmarks/prune_seeds_summary.py " + shlex.join(sys.argv[1:])
    write_json(args.out.with_suffix(".json"), {"command": command, "summary": summary})
    rows = []
    for entry in summary:
        for seed, accuracies in entry["seeds"].items():
            rows.append([entry["model"], entry["target"], seed, *[f"{100 * accuracies[m]:.2f}%" for m in METHODS], ""])
        holds = "holds" if entry["a_at_least_as_accurate_as_b"] else "does NOT hold"
        rows.append([entry["model"], entry["target"], "**mean ± std**",
                     *[f"**{100 * entry['mean'][m]:.2f}%** ± {100 * entry['std'][m]:.2f}" for m in METHODS],
                     f"(a) >= (b): {holds}"])
    text = ("# Pruning methods over seeds\n\n"
            f"Command: `{command}`. Test accuracy (1,000 mnist test images at 32x32) of each method per seed of "
            "`benchmarks/prune_compare.py` (the seed changes the dense model's training and every fine-tune; "
            "\"2 (fine-tune 10)\": seed 2's dense model, every fine-tune run with seed 10; the split is fixed), "
            "and the mean and standard deviation over the runs.\n\n"
            + markdown_table(["model", "target", "seed", "(a) ours", "(b) Torch-Pruning magnitude", "(c) Li et al. L1",
                              "check"], rows))
    write_text(args.out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
