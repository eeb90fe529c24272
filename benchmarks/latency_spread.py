"""How stable is the int8/fp32 latency ratio of the default run? Timed 5 times two ways with the one
timing harness (compress.latency):

- sequential (how the benchmark stage timed before): each model in its own fresh worker, one after the other;
- interleaved (how it times now): both models in one worker, alternating in rounds.

    python benchmarks/latency_spread.py --run runs/default --repeats 5

Writes benchmarks/results/latency_spread.{json,md}. The spread of a method is (max - min) / mean of its
ratios over the repeats; the goal is under 10% for the interleaved one."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compress.data import DataConfig, load_dataset  # noqa: E402
from compress.latency import Target, TimingRules, ratio_over_rounds, time_interleaved, time_jobs  # noqa: E402
from compress.sysinfo import environment  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def sequential_ratio(fp32: Path, int8: Path, feed: dict, rules: TimingRules, target: Target) -> dict:
    job = [{"name": "latency", "feed": "latency", "intra_op": 1, "inter_op": 1, "min_runs": rules.min_runs}]
    p50 = {name: float(np.median(time_jobs(path, target, rules, {"latency": feed}, job)["latency"].samples_ms))
           for name, path in (("fp32", fp32), ("int8", int8))}
    return {"ratio": p50["fp32"] / p50["int8"], **{f"{k}_p50_ms": v for k, v in p50.items()}}


def interleaved_ratio(fp32: Path, int8: Path, feed: dict, rules: TimingRules, target: Target, rounds: int) -> dict:
    timed = time_interleaved({"fp32": fp32, "int8": int8}, {"fp32": feed, "int8": feed}, target, rules, rounds=rounds,
                             round_seconds=rules.min_seconds / rounds, round_runs=-(-rules.min_runs // rounds))
    over_rounds = ratio_over_rounds(timed["fp32"], timed["int8"])
    return {"ratio": over_rounds["ratio"], "within_run_spread": over_rounds["spread"],
            **{f"{k}_p50_ms": float(np.median(t.samples_ms)) for k, t in timed.items()}}


def summary(ratios: list[float]) -> dict:
    values = np.array(ratios)
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
            "max": float(values.max()), "spread": float((values.max() - values.min()) / values.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/default"), help="a finished default pipeline run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    fp32, int8 = args.run / "export" / "pruned.onnx", args.run / "quantize" / "int8.onnx"
    for path in (fp32, int8):
        if not path.is_file():
            sys.exit(f"{path} not found: run `compress pipeline --out {args.run}` first")
    feed = {"input": np.ascontiguousarray(load_dataset(DataConfig()).test.x[:1])}
    rules, target = TimingRules(), Target("cpu", intra_op=1)
    repeats = []
    for index in range(args.repeats):  # the two methods alternate, so both see the same stretch of machine load
        repeats.append({"repeat": index, "sequential": sequential_ratio(fp32, int8, feed, rules, target),
                        "interleaved": interleaved_ratio(fp32, int8, feed, rules, target, args.rounds)})
        print(f"repeat {index}: sequential {repeats[-1]['sequential']['ratio']:.3f}, "
              f"interleaved {repeats[-1]['interleaved']['ratio']:.3f}", flush=True)
    result = {
        "command": shlex.join(["python", "benchmarks/latency_spread.py", *sys.argv[1:]]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "environment": environment(),
        "models": {"fp32": str(fp32), "int8": str(int8)}, "rules": asdict(rules),
        "rounds": args.rounds, "repeats": repeats,
        "sequential": summary([r["sequential"]["ratio"] for r in repeats]),
        "interleaved": summary([r["interleaved"]["ratio"] for r in repeats]),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latency_spread.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = "\n".join(f"| {r['repeat']} | {r['sequential']['ratio']:.3f} | {r['interleaved']['ratio']:.3f} | "
                     f"{100 * r['interleaved']['within_run_spread']:.1f}% |" for r in repeats)
    seq, inter = result["sequential"], result["interleaved"]
    (RESULTS / "latency_spread.md").write_text(f"""# int8/fp32 latency ratio of the default run, {args.repeats} repeats

`{result['command']}` ({result['created']}; fp32 = `export/pruned.onnx`, int8 = `quantize/int8.onnx`, batch 1,
one thread, {rules.min_runs} runs / {rules.min_seconds:g} s per model and repeat)

| repeat | sequential (fresh worker per model) | interleaved ({args.rounds} rounds, one worker) | spread over rounds |
|---|---|---|---|
{rows}

| method | mean | std | min | max | spread (max - min) / mean |
|---|---|---|---|---|---|
| sequential | {seq['mean']:.3f} | {seq['std']:.3f} | {seq['min']:.3f} | {seq['max']:.3f} | {100 * seq['spread']:.1f}% |
| interleaved | {inter['mean']:.3f} | {inter['std']:.3f} | {inter['min']:.3f} | {inter['max']:.3f} | {100 * inter['spread']:.1f}% |
""")
    print((RESULTS / "latency_spread.md").read_text())


if __name__ == "__main__":
    main()
