"""Data bigger than RAM: does peak memory stay flat when the image folder grows tenfold?

Generates folders of 2,000 and 20,000 JPEGs (224x224 RGB, 4 classes, random but compressible
content) under benchmarks/_work, then runs one epoch of distillation on each in a fresh process:
data.lazy=true, data.workers=2, ImageNet mean/std (so no statistics pass), batch 64. Teacher and
student are small MLPs, so the time measured is mostly the data path (decode, normalize, batch).
Peak RSS is the child's (os.wait4's ru_maxrss: the largest of the process and its DataLoader
workers) and the main process's own VmHWM. Writes benchmarks/results/streaming.{json,md}.

    nice -n 15 python benchmarks/streaming.py [--sizes 2000 20000]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work"
RESULTS = ROOT / "benchmarks" / "results"
CLASSES = 4
SIZE = 224
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def generate(folder: Path, count: int, seed: int = 0) -> Path:
    """``count`` JPEGs: a smooth random colour field (upsampled 6x6 noise) tinted by class, quality 85."""
    from PIL import Image

    done = folder / ".complete"
    if done.is_file() and done.read_text() == str(count):
        return folder
    rng = np.random.default_rng(seed)
    for index in range(count):
        label = index % CLASSES
        (folder / f"class{label}").mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 160, (6, 6, 3)).astype(np.uint8)
        coarse[:, :, label % 3] += 90
        image = Image.fromarray(coarse, "RGB").resize((SIZE, SIZE), Image.BILINEAR)
        image.save(folder / f"class{label}" / f"{index:06d}.jpg", quality=85)
    done.write_text(str(count))
    return folder


def child(folder: Path, out: Path) -> None:
    """One epoch of distillation on ``folder``, in this (fresh) process; writes its numbers to ``out``."""
    sys.path.insert(0, str(ROOT))
    from compress.checkpoint import save_model
    from compress.data import DataConfig, load_dataset
    from compress.train import TrainConfig, seed_everything
    from compress.worker import peak_rss_mb
    from compress.zoo import ModelSpec, build_model
    from stages.distill import DistillConfig, run

    started = time.perf_counter()
    data = load_dataset(DataConfig(source=str(folder), image_size=SIZE, lazy="true", workers=2, **IMAGENET))
    load_s = time.perf_counter() - started
    seed_everything(0)
    teacher = build_model(ModelSpec("mlp", 0.125), data.input_shape, data.num_classes)
    work = out.parent / f"run_{folder.name}"
    work.mkdir(parents=True, exist_ok=True)
    save_model(teacher, work / "teacher.safetensors")
    cfg = DistillConfig(student=ModelSpec("mlp", 0.0625), init_from_teacher=False,
                        train=TrainConfig(epochs=1, batch_size=64, optimizer="adamw", lr=0.001, augment=True))
    fit_started = time.perf_counter()
    result = run(cfg, {"teacher": work / "teacher.safetensors"}, data, work)
    fit_s = time.perf_counter() - fit_started
    decoded = len(data.train) + 2 * len(data.val) + len(data.test)  # one epoch, validation before and after, test
    out.write_text(json.dumps({
        "images": len(data.train) + len(data.val) + len(data.test), "train_images": len(data.train),
        "decoded_images": decoded, "scan_and_split_s": round(load_s, 2), "epoch_with_evaluation_s": round(fit_s, 2),
        "images_per_s": round(decoded / fit_s, 1), "train_images_per_s": round(len(data.train) / fit_s, 1),
        "main_process_vmhwm_mb": round(peak_rss_mb() or 0.0, 1),
        "student_test_accuracy": result.metrics["student"]["test_accuracy"]}))


def measure(folder: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, __file__, "--child", str(folder), "--out", str(out)], env=env)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"the run on {folder} failed (exit {process.returncode})")
    return {**json.loads(out.read_text()), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--child", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.out)
    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    for count in args.sizes:
        started = time.perf_counter()
        folder = generate(WORK / f"jpegs_{count}", count)
        print(f"{count} JPEGs ready in {time.perf_counter() - started:.0f} s", flush=True)
        row = {"folder_images": count, **measure(folder, WORK / f"result_{count}.json")}
        print(json.dumps(row), flush=True)
        rows.append(row)
    growth = rows[-1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]
    command = f"nice -n 15 python benchmarks/streaming.py --sizes {' '.join(map(str, args.sizes))}"
    record = {"command": command, "what": __doc__.split("\n\n")[1].replace("\n", " "),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
              "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],  # a shared machine: other jobs slow it
              "runs": rows, "peak_rss_growth_mb": round(growth, 1), "goal_mb": 300, "goal_met": growth < 300}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "streaming.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = ["# Streaming an image folder bigger than RAM", "", record["what"], "", f"Command: `{command}`", "",
             "| images in folder | decoded per run | epoch + evaluation s | images/s | peak RSS MB (incl. workers) | main process VmHWM MB |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['folder_images']:,} | {r['decoded_images']:,} | {r['epoch_with_evaluation_s']} | {r['images_per_s']} | "
              f"{r['peak_rss_mb']} | {r['main_process_vmhwm_mb']} |" for r in rows]
    lines += ["", f"Peak RSS growth from {rows[0]['folder_images']:,} to {rows[-1]['folder_images']:,} images: "
              f"{growth:.1f} MB (goal: < 300 MB; {'met' if growth < 300 else 'not met'}). "
              f"Eager loading of {rows[-1]['folder_images']:,} images would need "
              f"{rows[-1]['folder_images'] * 3 * SIZE * SIZE * 4 / 2**30:.1f} GiB for the float32 array alone.", "",
              f"Load average at the end (1, 5, 15 min): {', '.join(map(str, record['load_average_1_5_15']))}; images/s "
              "depends on what else the machine runs, peak RSS does not.", ""]
    (RESULTS / "streaming.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
