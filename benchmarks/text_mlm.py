"""Does a short masked-LM pre-training on the train texts pay for a BERT teacher trained from scratch?

    nice -n 15 python benchmarks/text_mlm.py [--epochs 4] [--mlm-epochs 2] [--seeds 0] [--runs baselines plain mlm]

On bbc-news (default split, 128 tokens, an 8,000-token WordPiece vocabulary trained on the train split)
it trains the default 4 x 256 BERT teacher per seed, fine-tuning only (``plain``, with the TF-IDF +
logistic-regression baseline) and/or MLM-then-fine-tuning (``mlm``), and scores them on the test split.
Each finished run is added to benchmarks/results/text_mlm.json (so the two kinds can run as separate
processes) and the table text_mlm.md is rewritten from all rows, with the commands, wall times and load
average (other users of the CPU distort every timing).
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

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compress.data import DataConfig, Split, load_dataset  # noqa: E402
from compress.distillation import train_supervised  # noqa: E402
from compress.fsutil import write_json, write_text  # noqa: E402
from compress.metrics import classification_metrics  # noqa: E402
from compress.report import markdown_table  # noqa: E402
from compress.text_data import tfidf_baseline  # noqa: E402
from compress.text_models import BertShape, build_teacher, pretrain_mlm, text_train_config  # noqa: E402
from compress.train import predict_logits  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--mlm-epochs", type=int, default=2)
    parser.add_argument("--runs", nargs="+", choices=["baselines", "plain", "mlm"],
                        default=["baselines", "plain", "mlm"])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--limit", type=int, default=0, help="smoke runs: keep only this many train samples")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "text_mlm"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    command = "nice -n 15 python benchmarks/text_mlm.py " + shlex.join(sys.argv[1:])
    data = load_dataset(DataConfig(source="bbc-news", max_length=args.max_length))
    if args.limit:
        step = len(data.train) // args.limit
        data = dataclasses.replace(data, train=Split(data.train.x[::step], data.train.y[::step], data.train.texts[::step]))
    if "baselines" in args.runs:
        _record(args.out, command, {"run": "tfidf+logreg", "seed": 0, **tfidf_baseline(data)})
        _record(args.out, command, {"run": f"tfidf+logreg, first {args.max_length} tokens (the models' input)",
                                    "seed": 0, **tfidf_baseline(data, model_input=True)})
    for seed in args.seeds:
        for mlm_epochs in [0] * ("plain" in args.runs) + [args.mlm_epochs] * ("mlm" in args.runs):
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            train = text_train_config(epochs=args.epochs, lr=args.lr, seed=seed)
            model = build_teacher(data, BertShape(), seed)
            losses = pretrain_mlm(model, data, mlm_epochs, 5e-4, train.batch_size, seed) if mlm_epochs else []
            mlm_s = time.perf_counter() - t0
            result = train_supervised(model, data, train, "teacher")
            metrics = classification_metrics(predict_logits(model, data.test.x, 64), data.test.y)
            _record(args.out, command, {
                "run": f"teacher 4x256, {mlm_epochs} MLM epochs" if mlm_epochs else "teacher 4x256, no MLM",
                "seed": seed, **metrics, "val_accuracy": result.best_val_accuracy, "best_epoch": result.best_epoch,
                "epochs": args.epochs, "lr": args.lr, "threads": args.threads,
                "wall_s": round(time.perf_counter() - t0, 1), "mlm_s": round(mlm_s, 1) if mlm_epochs else 0,
                "mlm_losses": losses, "load_average_at_start": load, "history": result.history})
            print(command, seed, mlm_epochs, metrics, round(time.perf_counter() - t0, 1), "s", flush=True)
    print(f"done in {time.perf_counter() - started:.0f} s")


def _record(out: str, command: str, row: dict) -> None:
    """Add ``row`` to the results (read again first: another process may have added its own)."""
    path = Path(out + ".json")
    results = json.loads(path.read_text()) if path.is_file() else {"commands": [], "rows": []}
    if command not in results["commands"]:
        results["commands"].append(command)
    if not (row["run"].startswith("tfidf") and any(r["run"] == row["run"] for r in results["rows"])):
        results["rows"].append({**row, "command": command})  # a baseline is deterministic: listed once
    write_json(path, results)
    rows = results["rows"]
    table = markdown_table(
        ["run", "seed", "test accuracy", "macro F1", "best epoch / epochs", "wall s (of which MLM)", "load avg"],
        [[r["run"], r["seed"], f"{r['accuracy']:.4f}", f"{r['f1_macro']:.4f}",
          f"{r['best_epoch']} / {r['epochs']}" if "epochs" in r else "", f"{r['wall_s']} ({r['mlm_s']})" if "wall_s" in r else "",
          f"{r['load_average_at_start']:.1f}" if "load_average_at_start" in r else ""] for r in rows])
    commands = "\n".join(f"    {c}" for c in results["commands"])
    write_text(Path(out + ".md"), "# Masked-LM pre-training for the bbc-news teacher\n\n"
               f"Made by\n\n{commands}\n\non a shared 2-core machine (wall times include waiting for other processes: "
               f"see the load average).\n\n{table}")


if __name__ == "__main__":
    main()
