"""The human report of a run: side-by-side tables of every artifact and an accuracy/latency plot.
Every number comes from the manifest, which the stages measured."""
from __future__ import annotations

from pathlib import Path

from compress.fsutil import atomic_path, write_text

ARTIFACT_ORDER = ("teacher", "student_baseline", "student", "pruned", "int8")


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def results_table(results: dict[str, dict]) -> str:
    """Every artifact against the teacher: accuracy, latency, size, params, MACs."""
    teacher = results.get("teacher")
    headers = ["artifact", "accuracy", "vs teacher", "F1 (macro)", "p50 ms", "p90 ms", "p99 ms", "speed-up",
               "size KB", "smaller", "params", "MMACs"]
    rows = []
    for name in _ordered(results):
        r = results[name]
        rows.append([
            name, f"{100 * r['accuracy']:.2f}%",
            f"{100 * (r['accuracy'] - teacher['accuracy']):+.2f} pts" if teacher else "-",
            f"{100 * r['f1_macro']:.2f}%", f"{r['p50_ms']:.3f}", f"{r['p90_ms']:.3f}", f"{r['p99_ms']:.3f}",
            f"{teacher['p50_ms'] / r['p50_ms']:.1f}x" if teacher else "-", f"{r['size_bytes'] / 1024:.1f}",
            f"{teacher['size_bytes'] / r['size_bytes']:.1f}x" if teacher else "-", f"{r['params']:,}",
            f"{r['macs'] / 1e6:.2f}",
        ])
    return markdown_table(headers, rows)


def plot_accuracy_latency(results: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name in _ordered(results):
        r = results[name]
        size = 30 + 400 * (r["size_bytes"] / max(x["size_bytes"] for x in results.values()))
        ax.scatter(r["p50_ms"], 100 * r["accuracy"], s=size, alpha=0.7)
        ax.annotate(f"{name}\n{r['size_bytes'] / 1024:.0f} KB", (r["p50_ms"], 100 * r["accuracy"]),
                    textcoords="offset points", xytext=(8, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency at batch 1 (ms, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_report(run_dir: Path, manifest: dict) -> Path:
    """report.md of a finished run: the side-by-side table and plot, what to ship, then one section per stage."""
    stages = manifest["stages"]
    plot_name = "accuracy_vs_latency.png"
    bench_cfg, source = manifest["config"]["benchmark"], manifest["config"]["data"]["source"]
    plot_accuracy_latency(manifest["results"], run_dir / plot_name,
                          f"{source}: accuracy vs latency ({bench_cfg['provider']}, {bench_cfg['threads']} thread)")
    parts = [_summary_section(manifest, plot_name), _latency_ratio_section(manifest.get("latency_ratios", {})),
             _ship_section(manifest.get("ship", {})),
             _distillation_section(stages.get("distill", {}).get("metrics", {})),
             _prune_section(stages.get("prune", {}).get("metrics")),
             _quantization_section(stages.get("quantize", {})),
             _parity_section(stages.get("export", {}).get("metrics", {})),
             _fusion_section(manifest.get("fusion", {})), _stages_section(stages)]
    path = run_dir / "report.md"
    write_text(path, "\n".join(part for part in parts if part))
    return path


def _summary_section(manifest: dict, plot_name: str) -> str:
    config, data = manifest["config"], manifest["data"]
    bench_cfg = config["benchmark"]
    return "\n".join([
        "# compress run report\n",
        f"Dataset **{config['data']['source']}** (train/val/test: {data['train']}/{data['val']}/{data['test']} samples). "
        f"Latency: onnxruntime {manifest['packages'].get('onnxruntime')} `{bench_cfg['provider']}`, "
        f"{bench_cfg['threads']} intra-op thread(s), batch 1, after warm-up ({bench_cfg.get('warmup', 'fixed')}, at least "
        f"{bench_cfg['warmup_runs']} runs)"
        + (f", the artifacts interleaved in {bench_cfg['rounds']} rounds in one process" if bench_cfg.get("interleave") else "")
        + f". Throughput at batch {bench_cfg['throughput_batch']} is in `benchmark/benchmark.md`.\n",
        "## Teacher vs student vs pruned vs int8\n", results_table(manifest["results"]),
        _baseline_line(manifest.get("baselines", {})), _unfused_warning(manifest.get("fusion", {})),
        f"\n![accuracy vs latency]({plot_name})\n"])


def _baseline_line(baselines: dict) -> str:
    """Text runs: the TF-IDF + logistic-regression rows, trained and scored on the same split, on the whole
    texts and on the part of each text the models see."""
    labels = {"tfidf_lr": "TF-IDF + logistic regression, whole texts",
              "tfidf_lr_model_input": "TF-IDF + logistic regression, the models' input (truncated to max_length tokens)"}
    rows = [[label, f"{100 * b['accuracy']:.2f}%", f"{100 * b['f1_macro']:.2f}%", f"{100 * b['precision_macro']:.2f}%",
             f"{100 * b['recall_macro']:.2f}%"] for key, label in labels.items() if (b := baselines.get(key))]
    if not rows:
        return ""
    return markdown_table(["baseline (same split)", "accuracy", "F1 (macro)", "precision (macro)", "recall (macro)"], rows)


def _unfused_warning(fusion: dict) -> str:
    unfused = [name for name, f in fusion.items() if not f["attention_fused"]]
    if not unfused:
        return ""
    return (f"\n> **WARNING: attention is not fused in {', '.join(unfused)}**: onnxruntime's transformer optimizer "
            "did not turn every attention layer into one Attention node, so these models run slower than they "
            "could. Build the model with attn_implementation='eager' (see the Fused operators section).\n")


def _fusion_section(fusion: dict) -> str:
    if not fusion:
        return ""
    return "\n".join(["\n## Fused operators (onnxruntime transformer optimizer)\n", markdown_table(
        ["model", "attention fused", "fused operators"],
        [[name, "yes" if f["attention_fused"] else "**NO**",
          ", ".join(f"{op} x{n}" for op, n in sorted(f["fused_operators"].items())) or "none"]
         for name, f in fusion.items()])])


def _prune_section(prune: dict | None) -> str:
    if not prune:
        return ""
    return text_prune_markdown(prune) if prune.get("method") == "heads+ffn" else prune_markdown(prune)


def _latency_ratio_section(ratios: dict) -> str:
    """The interleaved latency ratios that matter for the choice: int8 against its fp32 source and the teacher."""
    shown = {pair: r for pair, r in ratios.items() if pair in ("int8/pruned", "int8/teacher", "pruned/teacher",
                                                                "student/teacher")}
    if not shown:
        return ""
    return "\n".join(["## Latency ratios (interleaved rounds)\n", markdown_table(
        ["p50 ratio", "median over rounds", "min", "max", "spread"],
        [[pair, f"{r['ratio']:.3f}", f"{r['min']:.3f}", f"{r['max']:.3f}", f"{100 * r['spread']:.1f}%"]
         for pair, r in shown.items()]),
        "\nEach round timed every artifact back to back in one worker process; a ratio below 1 means faster.\n"])


def _ship_section(ship: dict) -> str:
    return f"## What to ship\n\n**{ship['artifact']}** (`{ship['path']}`): {ship['reason']}\n" if ship else ""


def _distillation_section(distill: dict) -> str:
    if "student_baseline" in distill:
        student, baseline = distill["student"], distill["student_baseline"]
        return "\n".join(["## What distillation bought\n", markdown_table(
            ["student", "val accuracy", "test accuracy", "train s"],
            [["without distillation (hard labels)", f"{100 * baseline['val_accuracy']:.2f}%",
              f"{100 * baseline['test_accuracy']:.2f}%", baseline["train_s"]],
             [f"distilled (T={distill['temperature']}, alpha={distill['alpha']}, {distill['mode']})",
              f"{100 * student['val_accuracy']:.2f}%", f"{100 * student['test_accuracy']:.2f}%", student["train_s"]]]),
            f"\nBoth start from the same weights ({distill['init']}) and use the same schedule.\n"])
    if distill:
        return (f"## Distillation\n\nT={distill['temperature']}, alpha={distill['alpha']}, {distill['mode']}; "
                f"student init: {distill['init']}. Run with `--baseline` to compare against the same student "
                "trained without distillation.\n")
    return ""


def _quantization_section(stage: dict) -> str:
    quant = stage.get("metrics", {})
    if not quant:
        return ""
    calibration = (f"{quant['method']} calibration on {quant['calibration_samples']} training samples"
                   if quant.get("calibration_samples") else "no calibration")
    parts = [f"\n## Quantization\n\nint8 ({quant.get('mode', 'static')} mode, {quant['format']}, {quant['types']}, "
             f"{calibration}): test accuracy {100 * quant['fp32_accuracy']:.2f}% fp32 -> "
             f"{100 * quant['int8_accuracy']:.2f}% int8, top-1 agreement {100 * quant['top1_agreement']:.2f}%.\n"]
    if quant.get("decision_reason"):
        parts.append(f"Decision: **{quant['decision']}**: {quant['decision_reason']}.\n")
    if quant.get("fp32_nodes"):
        parts.append(f"Kept in fp32 by the accuracy-aware search: {', '.join(map(str, quant['fp32_nodes']))}.\n")
    parts += [f"> {warning}\n" for warning in quant.get("warnings", [])]
    outputs = stage.get("outputs", {})
    if "int8_layers" in outputs:
        links = [f"[{outputs[key]['path']}]({outputs[key]['path']})" for key in ("int8_layers", "int8_layers_plot")
                 if key in outputs]
        parts.append(f"Per-layer error report: {', plot '.join(links)}.\n")
    return "\n".join(parts)


def _parity_section(export: dict) -> str:
    if not export:
        return ""
    # text models: the parity of the optimized model (the file written) against PyTorch
    export = {name: p.get("optimized_parity") or p.get("export_parity") or p for name, p in export.items()}
    return "\n".join(["\n## Export parity (onnxruntime vs PyTorch)\n", markdown_table(
        ["model", "samples", "max abs diff", "top-1 agreement"],
        [[name, p["samples"], f"{p['max_abs_diff']:.2e}", f"{100 * p['top1_agreement']:.2f}%"]
         for name, p in export.items()])])


def _stages_section(stages: dict) -> str:
    return "\n".join(["\n## Stages\n", markdown_table(
        ["stage", "status", "wall s"], [[name, s["status"], f"{s['wall_s']:.1f}"] for name, s in stages.items()])])


def text_prune_markdown(metrics: dict, heading: str = "## Pruning (attention heads and FFN neurons)") -> str:
    """The text prune stage's metrics: head counts and FFN widths per layer, params, MACs and accuracy."""
    before, after, tuned = metrics["before"], metrics["after_prune"], metrics["after_finetune"]
    table = markdown_table(
        ["", "heads per layer", "FFN per layer", "params", "MACs", "val accuracy"],
        [["before", metrics["heads_before"], metrics["ffn_before"], f"{before['params']:,}", f"{before['macs']:,}",
          f"{100 * before['val_accuracy']:.2f}%"],
         ["pruned", metrics["heads_after"], metrics["ffn_after"], f"{after['params']:,}", f"{after['macs']:,}",
          f"{100 * after['val_accuracy']:.2f}%"],
         ["fine-tuned", "", "", "", "", f"{100 * tuned['val_accuracy']:.2f}%"]])
    parity = tuned["parity"]
    return "\n".join([
        f"\n{heading}\n",
        f"Importance: {metrics['importance']}; {100 * metrics['head_amount']:.0f}% of the heads and "
        f"{100 * metrics['ffn_amount']:.0f}% of each FFN removed, then a distillation fine-tune.\n", table,
        f"Every step verified (forward, ONNX export, fusion, parity); after the fine-tune: fused "
        f"{parity['fused_operators']}, heads per Attention node {parity['heads_per_layer']}, max |diff| "
        f"{parity['optimized_parity']['max_abs_diff']:.2e}.\n"])


def prune_markdown(prune: dict, heading: str = "## Pruning") -> str:
    """The prune stage's metrics as Markdown: the target, params/MACs/accuracy before and after, each
    round (params, MACs, measured latency, accuracy) and every layer's channels before and after."""
    before, after = prune["before"], prune["after_prune"]
    rows = [[layer, channels, after["channels"].get(layer, "-")] for layer, channels in before["channels"].items()]
    target = prune.get("target", {})
    goal = ""
    if target:
        goal = (f"Target: {target['kind']} ({target['unit']}) from {_num_or(target['start'])} to "
                f"{_num_or(target['goal'])}; reached {_num_or(target['reached'])} "
                f"({'met' if target.get('met') else 'not met'}). ")
    parts = [f"{heading}\n\n{goal}Params {before['params']:,} -> {after['params']:,} "
             f"({100 * prune['params_reduction']:.1f}% fewer); MACs {before['macs'] / 1e6:.2f}M -> "
             f"{after['macs'] / 1e6:.2f}M ({100 * prune['macs_reduction']:.1f}% fewer). Validation accuracy "
             f"{100 * before['val_accuracy']:.2f}% before, {100 * after['val_accuracy']:.2f}% right after pruning, "
             f"{100 * prune['after_finetune']['val_accuracy']:.2f}% after the distillation fine-tune.\n"]
    if prune.get("rounds"):
        parts += [f"\nPer round ({prune.get('method', 'structured')}, importance {prune.get('importance')}; latency: "
                  f"p50 at batch 1 of the exported model on {prune.get('provider')}):\n",
                  markdown_table(["round", "params", "MMACs", "p50 ms", "val acc after pruning",
                                  "val acc after fine-tune"], _prune_round_rows(prune))]
    if prune.get("note"):
        parts.append(f"\n{prune['note']}.\n")
    if prune.get("auto_protected"):
        parts += ["\nProtected automatically (pruning them was tried on a copy first and would break the model):\n\n",
                  *[f"- `{entry['layer']}`: {entry['reason']}\n" for entry in prune["auto_protected"]]]
    parts += ["\nChannels per layer (attention modules: heads):\n",
              markdown_table(["layer", "channels before", "channels after"], rows)]
    return "".join(parts)


def _num_or(value) -> str:
    if isinstance(value, float) and value < 10:
        return f"{value:.4g}"
    return f"{value:,.0f}" if isinstance(value, (int, float)) else str(value)


def _prune_round_rows(prune: dict) -> list[list[str]]:
    """The model before pruning, then each prune + fine-tune round (sparsity rounds keep params and MACs)."""
    before = prune["before"]

    def cells(stats: dict) -> list[str]:
        p50 = stats.get("p50_ms", stats.get("latency", {}).get("p50_ms"))
        return [f"{stats['params']:,}" if "params" in stats else "same",
                f"{stats['macs'] / 1e6:.2f}" if "macs" in stats else "same", f"{p50:.3f}" if p50 else "-"]

    rows = [["before", *cells(before), f"{100 * before['val_accuracy']:.2f}%", "-"]]
    for r in prune["rounds"]:
        label = str(r["round"]) + (f" ({100 * r['after_prune']['sparsity']:.0f}% zeros)" if "sparsity" in r["after_prune"] else "")
        chosen = dict.fromkeys(f"{step['importance']} {step['allocation']}" for step in r.get("steps", [])
                               if "allocation" in step)
        if chosen:  # what importance=auto picked (or the configured criterion), step by step
            label += f" ({', '.join(chosen)})"
        rows.append([label, *cells(r["after_prune"]), f"{100 * r['after_prune']['val_accuracy']:.2f}%",
                     f"{100 * r['after_finetune']['val_accuracy']:.2f}%"])
    return rows


def _ordered(results: dict) -> list[str]:
    return [n for n in ARTIFACT_ORDER if n in results] + [n for n in results if n not in ARTIFACT_ORDER]
