"""Issue 17's benchmark: `compress search --budget p50_ms=X` with X = half the int8 p50 of a finished default
pipeline run on the same data must find a model that meets the budget, in <= 30 minutes on 2 cores.

    compress pipeline --out runs/default             # the reference (once)
    python benchmarks/search_budget.py --run runs/default --out runs/search_mnist
    compress pipeline --set data.source=bbc-news --out runs/text
    python benchmarks/search_budget.py --run runs/text --out runs/search_text --set 'search.text_layers=[1, 2]' \
        --set 'search.text_hidden=[64, 128]' --set 'search.text_ffn=[512]' --set search.keep=2 --set search.max_epochs=3

Runs the search as a user would (a subprocess of the CLI on the reference run's data source, with --reference
so search.md shows the default int8 beside the winner), then writes benchmarks/results/search_<data>.{json,md}: the command, the budget, the
winner against the default int8, whether the budget was met, the wall time and the machine. Extra
``--set KEY=VALUE`` arguments go to the search (e.g. a smaller space for a smoke run)."""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compress.sysinfo import environment  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LIMIT_S = 30 * 60  # the time limit on 2 cores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/default"), help="The default pipeline's run folder.")
    parser.add_argument("--out", type=Path, default=Path("runs/search_mnist"), help="The search folder.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="Passed to compress search.")
    parser.add_argument("--results", type=Path, default=RESULTS, help="Where search_<data>.{json,md} go.")
    args = parser.parse_args()
    manifest = json.loads((args.run / "manifest.json").read_text())
    source, reference = manifest["config"]["data"]["source"], manifest["results"]["int8"]
    name = f"search_{Path(source).stem.replace('-', '_')}"
    budget = reference["p50_ms"] / 2
    command = [sys.executable, "-m", "compress", "search", "--out", str(args.out), "--budget", f"p50_ms={budget:.6f}",
               "--reference", str(args.run), "--data", source, *[a for o in args.overrides for a in ("--set", o)]]
    shown = shlex.join(["compress", *command[3:]])
    print(f"$ {shown}", flush=True)
    started = time.perf_counter()
    completed = subprocess.run(command, text=True, stderr=subprocess.PIPE)
    wall = time.perf_counter() - started
    state = json.loads((args.out / "search.json").read_text()) if (args.out / "search.json").is_file() else {}
    winner = state.get("winner")
    result = {"command": shown, "budget_p50_ms": budget, "reference_int8": reference, "winner": winner,
              "met": bool(winner) and winner["p50_ms"] <= budget, "wall_s": round(wall, 1),
              "within_time_limit": wall <= LIMIT_S, "exit_code": completed.returncode,
              "message": completed.stderr.strip().splitlines()[-1] if completed.stderr.strip() else "",
              "candidates": len(state.get("candidates", {})), "environment": environment()}
    args.results.mkdir(parents=True, exist_ok=True)
    kept = args.results / name  # the search's own report and plot, committed beside these results
    kept.mkdir(exist_ok=True)
    for file in ("search.md", "search.json", "pareto.png"):
        if (args.out / file).is_file():
            shutil.copyfile(args.out / file, kept / file)
    (args.results / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    lines = [f"# compress search on {source}: half the default int8 p50", "", "```", shown, "```", "",
             f"Budget: p50 <= {budget:.4f} ms (half the default int8's {reference['p50_ms']:.4f} ms).", ""]
    if winner:
        lines += ["| model | test accuracy | p50 ms | KiB |", "|---|---|---|---|",
                  f"| default int8 ({args.run}) | {100 * reference['accuracy']:.2f}% | {reference['p50_ms']:.4f} | "
                  f"{reference['size_bytes'] / 1024:.1f} |",
                  f"| search winner {winner['name']} | {100 * winner['test_accuracy']:.2f}% | {winner['p50_ms']:.4f} | "
                  f"{winner['size_bytes'] / 1024:.1f} |", "",
                  f"Budget met: {'yes' if result['met'] else 'no'}; wall time {wall / 60:.1f} min "
                  f"({'within' if result['within_time_limit'] else 'over'} the 30-minute limit); "
                  f"{result['candidates']} candidates; every one, with the Pareto plot, in [{name}/search.md]({name}/search.md)."]
    else:
        lines += [f"No winner (exit code {completed.returncode}): {result['message']}"]
    (args.results / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
