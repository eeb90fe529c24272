"""Does a short masked-LM pre-training on the train texts pay for a BERT teacher trained from scratch?

    nice -n 15 python benchmarks/text_mlm.py [--epochs 6] [--mlm-epochs 3] [--seeds 0]

On bbc-news (default split, 128 tokens, an 8,000-token WordPiece vocabulary trained on the train split)
it trains the default 4 x 256 BERT teacher twice per seed, fine-tuning only and MLM-then-fine-tuning, and
scores both and the TF-IDF + logistic-regression baseline on the test split. Writes
benchmarks/results/text_mlm.{json,md}, with the command, the wall times and the load average (other users
of the CPU distort every timing).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compress.data import DataConfig, load_dataset  # noqa: E402
from compress.distillation import train_supervised  # noqa: E402
from compress.fsutil import write_json, write_text  # noqa: E402
from compress.metrics import classification_metrics  # noqa: E402
from compress.report import markdown_table  # noqa: E402
from compress.text_data import tfidf_baseline  # noqa: E402
from compress.text_models import BertShape, build_teacher, pretrain_mlm, text_train_config, train_teacher  # noqa: E402
from compress.train import predict_logits  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--mlm-epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "text_mlm"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    data = load_dataset(DataConfig(source="bbc-news"))
    rows = [{"run": "tfidf+logreg", "seed": 0, **tfidf_baseline(data), "wall_s": None, "mlm_s": None, "epochs": None}]
    for seed in args.seeds:
        for mlm_epochs in (0, args.mlm_epochs):
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            train = text_train_config(epochs=args.epochs, lr=args.lr, seed=seed)
            mlm_s = None
            if mlm_epochs:
                # timed separately: train_teacher would run MLM and fine-tuning as one
                model = build_teacher(data, BertShape(), seed)
                losses = pretrain_mlm(model, data, mlm_epochs, 5e-4, train.batch_size, seed)
                mlm_s = time.perf_counter() - t0
                result = train_supervised(model, data, train, "teacher")
            else:
                model, result = train_teacher(data, BertShape(), train)
                losses = []
            metrics = classification_metrics(predict_logits(model, data.test.x, 64), data.test.y)
            rows.append({"run": f"teacher 4x256, {mlm_epochs} MLM epochs" if mlm_epochs else "teacher 4x256, no MLM",
                         "seed": seed, **metrics, "val_accuracy": result.best_val_accuracy, "best_epoch": result.best_epoch,
                         "epochs": args.epochs, "wall_s": round(time.perf_counter() - t0, 1),
                         "mlm_s": round(mlm_s, 1) if mlm_s else None, "mlm_losses": losses, "load_average": load,
                         "history": result.history})
            print(rows[-1]["run"], seed, metrics, rows[-1]["wall_s"], "s", flush=True)
    command = "nice -n 15 python benchmarks/text_mlm.py " + shlex.join(sys.argv[1:])
    write_json(Path(args.out + ".json"), {"command": command, "threads": args.threads, "rows": rows,
                                          "total_s": round(time.perf_counter() - started, 1)})
    table = markdown_table(["run", "seed", "test accuracy", "macro F1", "best epoch", "wall s (MLM s)", "load avg"],
                           [[r["run"], r["seed"], f"{r['accuracy']:.4f}", f"{r['f1_macro']:.4f}", r.get("best_epoch", ""),
                             "" if r["wall_s"] is None else f"{r['wall_s']} ({r['mlm_s'] or 0})",
                             f"{r.get('load_average', 0):.1f}"] for r in rows])
    write_text(Path(args.out + ".md"), f"# Masked-LM pre-training for the bbc-news teacher\n\n`{command}`\n\n{table}")


if __name__ == "__main__":
    main()
