"""Would bbc-news models that see every 128-token window of an article, with their probabilities averaged,
close the gap to TF-IDF on whole texts?

    nice -n 15 python benchmarks/text_windows.py [--runs packaged all_windows random_window student] [--seeds 0 1 2]

The packaged teacher was fine-tuned on each article's first 128 tokens only (test articles have a median of
444 WordPiece tokens). Each article here is split into windows of ``max_length - 2`` body tokens, each with its
own [CLS]/[SEP] (compress.text_windows); an article's prediction is the mean of its windows' softmax
probabilities over its first K windows (K = 1, 2, 4, all). Runs, each scored on val and test at every K:

- ``packaged``: the packaged teacher as it is;
- ``all_windows``: the packaged teacher fine-tuned further on every window of every train article (~4.6x the
  rows of one epoch now);
- ``random_window``: the packaged teacher fine-tuned on one randomly drawn window per train article and epoch,
  the same steps per epoch as now (the draws of all epochs are concatenated and trained as one pass, so the
  learning-rate schedule is the same; validation chooses only between the start and the end);
- ``student``: the default 2-layer student (layers 0 and 2 of the ``all_windows`` teacher), distilled from it
  with Hinton KD on one random window per article and epoch, as ``random_window``.

Model selection in training (the epoch ``fit`` keeps, the start included) uses every validation window scored
on its own: on first windows alone no fine-tuned epoch beat the packaged teacher, so the fine-tunes were undone.
Results: benchmarks/results/text_windows.{json,md} (rows are added per run; the table is rewritten from all
rows).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compress.checkpoint import load_model  # noqa: E402
from compress.data import DataConfig, Split, load_dataset  # noqa: E402
from compress.distillation import train_supervised  # noqa: E402
from compress.fsutil import write_json, write_text  # noqa: E402
from compress.report import markdown_table  # noqa: E402
from compress.text_data import tfidf_baseline, tokenizer_of  # noqa: E402
from compress.text_models import distill_text, make_student, text_train_config  # noqa: E402
from compress.text_windows import encode_windows, one_window_per_text, text_probabilities  # noqa: E402
from compress.train import predict_logits, seed_everything  # noqa: E402

PACKAGED = ROOT / "compress" / "weights" / "bbc-news_bert4x256_seed0" / "teacher.safetensors"
WINDOW_COUNTS = (1, 2, 4, 0)  # 0: all windows
SCORE_KEYS = [f"{split}_{k or 'all'}" for split in ("val", "test") for k in WINDOW_COUNTS]  # Windows.scores' keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", choices=["packaged", "all_windows", "random_window", "student"],
                        default=["packaged", "all_windows", "random_window", "student"])
    parser.add_argument("--teacher-epochs", type=int, default=2, help="all_windows: passes over every window")
    parser.add_argument("--random-epochs", type=int, default=4, help="random_window and student: epochs (draws)")
    parser.add_argument("--lr", type=float, default=5e-4, help="teacher fine-tunes (the student: 1e-3)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "text_windows"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    command = "nice -n 15 python benchmarks/text_windows.py " + shlex.join(sys.argv[1:])
    data = load_dataset(DataConfig(source="bbc-news"))
    windows = Windows(data)
    val = windows.all_rows("val")
    record = lambda row: _record(args.out, command, row)  # noqa: E731
    record({"run": "TF-IDF + logistic regression, whole texts", "test_all": tfidf_baseline(data)["accuracy"]})
    if "packaged" in args.runs:
        record({"run": "packaged teacher (first windows only)", **windows.scores(load_model(PACKAGED))})
    for seed in args.seeds:
        _runs(args, seed, data, windows, val, record)


def _runs(args, seed: int, data, windows: "Windows", val: Split, record) -> None:
    """Every fine-tune of one seed; the seed sets the torch RNG (dropout) before each, and the window draws."""
    teacher = None
    if {"all_windows", "student"} & set(args.runs):
        seed_everything(seed)
        teacher, row = _fine_tune(load_model(PACKAGED), windows.all_rows(), val, data, args.teacher_epochs, args.lr,
                                  seed, "all windows")
        record({"run": f"packaged teacher + {args.teacher_epochs} epochs on all windows", "seed": seed, **row,
                **windows.scores(teacher)})
    if "random_window" in args.runs:
        seed_everything(seed)
        model, row = _fine_tune(load_model(PACKAGED), windows.random_rows(args.random_epochs, seed), val, data, 1,
                                args.lr, seed, "random window")
        record({"run": f"packaged teacher + {args.random_epochs} epochs of one random window per article",
                "seed": seed, **row, **windows.scores(model)})
    if "student" in args.runs:
        seed_everything(seed)
        student, how = make_student(teacher)
        train = windows.random_rows(args.random_epochs, seed + 1000)
        started = time.perf_counter()
        distill_text(student, teacher, dataclasses.replace(data, train=train, val=val),
                     text_train_config(epochs=1, lr=1e-3, seed=seed))
        record({"run": f"2-layer student distilled from the all-windows teacher, {args.random_epochs} epochs of one "
                       "random window per article", "seed": seed, "train_rows": len(train),
                "train_s": round(time.perf_counter() - started, 1), "init": how, **windows.scores(student)})


class Windows:
    """Every article of each split as its windows of ``max_length`` tokens (compress.text_windows)."""

    def __init__(self, data):
        self.data = data
        tokenizer = tokenizer_of(data)
        self.split = {name: encode_windows(tokenizer, getattr(data, name).texts) for name in ("train", "val", "test")}

    def all_rows(self, name: str = "train") -> Split:
        x, owners = self.split[name]
        return Split(x, getattr(self.data, name).y[owners])

    def random_rows(self, draws: int, seed: int) -> Split:
        """``draws`` independent draws of one window per train article, concatenated."""
        x, owners = self.split["train"]
        rng = np.random.default_rng(seed)
        picks = np.concatenate([one_window_per_text(owners, rng) for _ in range(draws)])
        return Split(x[picks], self.data.train.y[owners[picks]])

    def scores(self, model) -> dict:
        """Accuracy on val and test when an article's prediction averages its first K windows."""
        out = {}
        for name in ("val", "test"):
            x, owners = self.split[name]
            split = getattr(self.data, name)
            logits = predict_logits(model, x, 64)
            for k in WINDOW_COUNTS:
                predicted = text_probabilities(logits, owners, len(split), k).argmax(1)
                out[f"{name}_{k or 'all'}"] = float((predicted == split.y).mean())
        out["test_windows_per_article"] = round(len(self.split["test"][1]) / len(self.data.test), 2)
        return out


def _fine_tune(model, train: Split, val: Split, data, epochs: int, lr: float, seed: int, desc: str):
    started = time.perf_counter()
    result = train_supervised(model, dataclasses.replace(data, train=train, val=val),
                              text_train_config(epochs=epochs, lr=lr, seed=seed), desc)
    return model.eval(), {"train_rows": len(train), "epochs": epochs, "lr": lr, "best_epoch": result.best_epoch,
                          "train_s": round(time.perf_counter() - started, 1)}


def _record(out: str, command: str, row: dict) -> None:
    """Add ``row`` to the results (replacing an earlier row of the same run) and rewrite the table."""
    path = Path(out + ".json")
    results = json.loads(path.read_text()) if path.is_file() else {"commands": [], "rows": []}
    if command not in results["commands"]:
        results["commands"].append(command)
    row = {**row, "command": command, "load_average": round(os.getloadavg()[0], 1)}
    same = lambda r: (r["run"], r.get("seed")) == (row["run"], row.get("seed"))  # noqa: E731
    results["rows"] = [r for r in results["rows"] if not same(r)] + [row]
    write_json(path, results)
    _write_table(out, results)


def _write_table(out: str, results: dict) -> None:
    cell = lambda r, key: f"{100 * r[key]:.2f}" if key in r else "-"  # noqa: E731
    table = markdown_table(["run", "seed", *[k.replace("_", " ") for k in SCORE_KEYS], "train rows", "train s"],
                           [[r["run"], r.get("seed", "-"), *[cell(r, k) for k in SCORE_KEYS], r.get("train_rows", "-"),
                             r.get("train_s", "-")] for r in results["rows"]])
    commands = "\n".join(f"    {c}" for c in results["commands"])
    write_text(Path(out + ".md"), "# bbc-news: averaging every 128-token window of an article\n\n"
               f"Made by\n\n{commands}\n\nAccuracy % on the default split (val and test: 223 articles each) when an "
               "article's prediction is the mean softmax of its first 1, 2, 4 or all windows (test: "
               f"{next((r['test_windows_per_article'] for r in results['rows'] if 'test_windows_per_article' in r), '-')} "
               "windows per article on average). "
               "Train seconds on a shared 2-core machine.\n\n" + table + _summary_table(results["rows"]))


def _summary_table(rows: list[dict]) -> str:
    """Mean ± std over seeds of every run with seeds."""
    runs = list(dict.fromkeys(r["run"] for r in rows if "seed" in r))
    if not runs:
        return ""
    lines = []
    for run in runs:
        picked = [r for r in rows if r["run"] == run and "seed" in r]
        stats = [np.array([r[k] for r in picked]) * 100 for k in SCORE_KEYS]
        lines.append([run, len(picked), *[f"{v.mean():.2f} ± {v.std():.2f}" for v in stats]])
    return ("\nMean ± std over seeds (population std):\n\n"
            + markdown_table(["run", "seeds", *[k.replace("_", " ") for k in SCORE_KEYS]], lines))


if __name__ == "__main__":
    main()
