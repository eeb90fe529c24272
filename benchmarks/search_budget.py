"""Issue 17's benchmark: on the built-in mnist default, `compress search --budget p50_ms=X` with X = half the
default pipeline's int8 p50 must find a model that meets the budget, in <= 30 minutes on 2 cores.

    compress pipeline --out runs/default             # the reference (once)
    python benchmarks/search_mnist.py --run runs/default --out runs/search_mnist

Runs the search as a user would (a subprocess of the CLI, with --reference so search.md shows the default
int8 beside the winner), then writes benchmarks/results/search_mnist.{json,md}: the command, the budget, the
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
    parser.add_argument("--results", type=Path, default=RESULTS, help="Where search_mnist.{json,md} go.")
    args = parser.parse_args()
    reference = json.loads((args.run / "manifest.json").read_text())["results"]["int8"]
    budget = reference["p50_ms"] / 2
    command = [sys.executable, "-m", "compress", "search", "--out", str(args.out), "--budget", f"p50_ms={budget:.6f}",
               "--reference", str(args.run), *[a for o in args.overrides for a in ("--set", o)]]
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
    kept = args.results / "search_mnist"  # the search's own report and plot, committed beside these results
    kept.mkdir(exist_ok=True)
    for name in ("search.md", "search.json", "pareto.png"):
        if (args.out / name).is_file():
            shutil.copyfile(args.out / name, kept / name)
    (args.results / "search_mnist.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    lines = ["# compress search on mnist: half the default int8 p50", "", "```", shown, "```", "",
             f"Budget: p50 <= {budget:.4f} ms (half the default int8's {reference['p50_ms']:.4f} ms).", ""]
    if winner:
        lines += ["| model | test accuracy | p50 ms | KiB |", "|---|---|---|---|",
                  f"| default int8 ({args.run}) | {100 * reference['accuracy']:.2f}% | {reference['p50_ms']:.4f} | "
                  f"{reference['size_bytes'] / 1024:.1f} |",
                  f"| search winner {winner['name']} | {100 * winner['test_accuracy']:.2f}% | {winner['p50_ms']:.4f} | "
                  f"{winner['size_bytes'] / 1024:.1f} |", "",
                  f"Budget met: {'yes' if result['met'] else 'no'}; wall time {wall / 60:.1f} min "
                  f"({'within' if result['within_time_limit'] else 'over'} the 30-minute limit); "
                  f"{result['candidates']} candidates; every one, with the Pareto plot, in [search_mnist/search.md](search_mnist/search.md)."]
    else:
        lines += [f"No winner (exit code {completed.returncode}): {result['message']}"]
    (args.results / "search_mnist.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
