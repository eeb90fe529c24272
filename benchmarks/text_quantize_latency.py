"""fp32 against the text quantization candidates (dynamic int8, static U8S8 QDQ, int4 weight-only) on a
BERT-shaped classifier, batch 1, one thread, at sequence lengths 32/128/256: p50 of each and the fp32/candidate
ratio per round, all timed interleaved in one worker by the one timing harness (compress.latency).

    python benchmarks/text_quantize_latency.py --layers 4 --hidden 256   # BERT-mini shape (the default)
    python benchmarks/text_quantize_latency.py --layers 4 --hidden 512   # BERT-small shape

The weights are random (latency does not depend on them); the model is exported and optimized by
compress.text_onnx exactly as a trained one is. Writes benchmarks/results/text_quantize_latency_<L>x<H>.{json,md}."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compress.latency import Target, TimingRules, ratio_over_rounds, time_interleaved  # noqa: E402
from compress.onnxutil import make_session  # noqa: E402
from compress.sysinfo import environment  # noqa: E402
from compress.text_models import BertShape, random_bert  # noqa: E402
from compress.text_onnx import (  # noqa: E402
    TextExportConfig,
    TextQuantizeConfig,
    build_text_candidates,
    export_text_model,
    latency_feed,
    text_model_stats,
)

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--round-seconds", type=float, default=0.3)
    parser.add_argument("--seq", type=int, nargs="+", default=[32, 128, 256])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    samples = {"input_ids": rng.integers(5, args.vocab, (64, 128)), "attention_mask": np.ones((64, 128), np.int64),
               "token_type_ids": np.zeros((64, 128), np.int64)}
    with tempfile.TemporaryDirectory(prefix="text-quantize-latency.") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        # Eager attention (random_bert's default): the SDPA form does not fuse.
        model = random_bert(args.vocab, 5, BertShape(args.layers, args.hidden, args.hidden // 64, 4 * args.hidden), 512)
        export = export_text_model(model, fp32, samples, TextExportConfig(), [f"c{i}" for i in range(5)], 128)
        models = {"fp32": fp32, **build_text_candidates(fp32, samples, Path(tmp), TextQuantizeConfig(calibration_samples=32))}
        stats = {name: text_model_stats(path, 128) for name, path in models.items()}
        session = make_session(fp32)
        rules = TimingRules(warmup="fixed", warmup_runs=20)
        by_seq = {}
        for length in args.seq:
            feed = latency_feed(session, samples, length)
            timed = time_interleaved(models, {name: feed for name in models}, Target(intra_op=1), rules,
                                     rounds=args.rounds, round_seconds=args.round_seconds)
            by_seq[length] = {name: {"p50_ms": float(np.median(t.samples_ms)),
                                     "fp32_over_this": ratio_over_rounds(timed["fp32"], t)} for name, t in timed.items()}
    document = {"command": "python benchmarks/text_quantize_latency.py " + shlex.join(sys.argv[1:]),
                "model": f"BERT {args.layers} layers x {args.hidden} hidden, {args.hidden // 64} heads, vocab {args.vocab}",
                "fused_operators": export["fusion"]["fused_operators"], "stats_at_seq_128": stats,
                "latency": {str(k): v for k, v in by_seq.items()}, "environment": environment()}
    name = f"text_quantize_latency_{args.layers}x{args.hidden}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(document, indent=2) + "\n")
    lines = [f"# Text quantization latency: {document['model']}", "", f"`{document['command']}`", "",
             "Batch 1, 1 thread, CPUExecutionProvider; p50 over interleaved rounds; speedup = fp32 p50 / model p50 "
             "(median of per-round ratios, spread = (max - min) / median).", "",
             "| model | size (MB) | params | MACs @128 | " + " | ".join(f"p50 @{k} (ms) | speedup @{k}" for k in args.seq) + " |",
             "|---|---:|---:|---:|" + "---:|---:|" * len(args.seq)]
    for model in models:
        cells = [f"{by_seq[k][model]['p50_ms']:.3f} | {by_seq[k][model]['fp32_over_this']['ratio']:.2f}x "
                 f"(±{100 * by_seq[k][model]['fp32_over_this']['spread'] / 2:.0f}%)" for k in args.seq]
        s = stats[model]
        lines.append(f"| {model} | {s['size_bytes'] / 1e6:.2f} | {s['params']:,} | {s['macs'] / 1e6:.1f} M | " + " | ".join(cells) + " |")
    lines += ["", f"Fused operators of the fp32 model: {document['fused_operators']}", ""]
    (RESULTS / f"{name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
