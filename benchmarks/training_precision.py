"""Does bf16 autocast (or channels-last) train faster on this CPU? fp32 against bf16, NCHW against
channels-last, for one distillation-sized training job.

    python benchmarks/training_precision.py --repeats 3

Trains the default student's architecture (ResNet-8, width 1) on mnist (4,000 train images) for one
epoch per setting and repeat through compress's training loop (compress.train.fit, --set train.precision /
train.channels_last), the settings in alternating order within each repeat so machine load hits them alike.
Measures train images per second (the epoch's fit time, validation included) and the test accuracy after
that epoch. Writes benchmarks/results/training_precision.{json,md}. The CPU path is what this measures.
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compress.data import DataConfig, load_dataset  # noqa: E402
from compress.fsutil import write_json, write_text  # noqa: E402
from compress.report import markdown_table  # noqa: E402
from compress.sysinfo import environment  # noqa: E402
from compress.train import TrainConfig, evaluate, fit, seed_everything  # noqa: E402
from compress.zoo import ModelSpec, build_model  # noqa: E402

SETTINGS = {  # name: (precision, channels_last)
    "fp32": ("fp32", False),
    "bf16": ("bf16", False),
    "fp32 channels-last": ("fp32", True),
    "bf16 channels-last": ("bf16", True),
}


def train_once(data, precision: str, channels_last: bool, threads: int) -> dict:
    torch.set_num_threads(threads)
    seed_everything(0)
    model = build_model(ModelSpec("resnet", 1.0, 8), data.input_shape, data.num_classes)

    def loss_fn(x, y):
        logits = model(x)
        return F.cross_entropy(logits.float(), y), logits

    cfg = TrainConfig(epochs=1, device="cpu", precision=precision, channels_last=channels_last)
    started = time.perf_counter()
    fit(model, data, cfg, loss_fn, f"{precision}{' channels-last' if channels_last else ''}")
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "images_per_s": len(data.train) / seconds, "test_accuracy": evaluate(model, data.test)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "training_precision")
    args = parser.parse_args()
    data = load_dataset(DataConfig())
    runs = {name: [] for name in SETTINGS}
    for repeat in range(args.repeats):
        names = list(SETTINGS) if repeat % 2 == 0 else list(reversed(SETTINGS))
        for name in names:
            runs[name].append(train_once(data, *SETTINGS[name], args.threads))
            print(f"repeat {repeat} {name}: {runs[name][-1]['images_per_s']:.0f} images/s", flush=True)
    fp32 = statistics.median(r["images_per_s"] for r in runs["fp32"])
    summary = {name: {"images_per_s_median": statistics.median(r["images_per_s"] for r in rs),
                      "speedup_over_fp32": statistics.median(r["images_per_s"] for r in rs) / fp32,
                      "test_accuracy_after_1_epoch": statistics.median(r["test_accuracy"] for r in rs)}
               for name, rs in runs.items()}
    command = shlex.join(["python", "benchmarks/training_precision.py", *sys.argv[1:]])
    env = environment()
    write_json(args.out.with_suffix(".json"), {"command": command, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                               "environment": env, "threads": args.threads, "runs": runs,
                                               "summary": summary})
    rows = [[name, f"{s['images_per_s_median']:.0f}", f"{s['speedup_over_fp32']:.2f}x",
             f"{100 * s['test_accuracy_after_1_epoch']:.1f}"] for name, s in summary.items()]
    text = "\n".join([
        "# Training precision on this CPU: fp32 against bf16 autocast, NCHW against channels-last\n",
        f"One epoch of a ResNet-8 (width 1) on mnist (4,000 train images), {args.threads} threads, median of "
        f"{args.repeats} repeats (settings alternating in order). Images/s counts the whole fit (validation "
        "included).\n",
        markdown_table(["setting", "train images/s", "vs fp32", "test accuracy % after 1 epoch"], rows),
        f"Machine: {env['cpu']['model']}, {env['cpu']['usable_cores']} usable cores, torch {torch.__version__}. "
        "The machine is shared with other jobs; the settings alternate so a busy spell hits them alike.\n",
        f"Made by `{command}`.",
    ])
    write_text(args.out.with_suffix(".md"), text + "\n")
    print(text)


if __name__ == "__main__":
    main()
