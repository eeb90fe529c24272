"""The `compress` command line: each command loads the config, applies overrides and calls a stage."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import click

from compress.errors import CompressError

SET_HELP = "Override a config value, e.g. --set distill.train.epochs=3 (repeatable)."
DATA_HELP = "Dataset: mnist, digits, an image folder (one subfolder per class) or an .npz with x and y."


def _config(config_path, overrides, data=None):
    from compress.config import load_config

    overrides = list(overrides)
    if data is not None:
        overrides.insert(0, f"data.source={json.dumps(str(data))}")
    return load_config(config_path, overrides)


def _fresh(path: Path, force: bool) -> None:
    """Refuse to replace a finished output unless asked to."""
    if path.exists() and not force:
        raise CompressError(f"{path} already exists: pass --force to replace it, or choose another --out")


def _threads(cfg) -> None:
    import torch

    torch.set_num_threads(cfg.threads)


class FriendlyGroup(click.Group):
    """Turn CompressError (and config ValueErrors) into one line on stderr and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CompressError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: finished stages are kept; rerun with --resume", err=True)
            sys.exit(130)


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="compress")
def main():
    """Compress a PyTorch teacher into a small, fast, verified int8 ONNX student.

    \b
    Example:
      compress pipeline --out runs/default
    """


@main.command()
@click.option("--config", "config_path", type=click.Path(), help="TOML or YAML config, one section per stage.")
@click.option("--out", "out_dir", type=click.Path(), default="runs/default", show_default=True, help="Run folder.")
@click.option("--set", "overrides", multiple=True, help=SET_HELP)
@click.option("--data", default=None, help=DATA_HELP)
@click.option("--baseline", is_flag=True, help="Also train the student without distillation, for comparison.")
@click.option("--resume", is_flag=True, help="Continue in an existing run folder, reusing unchanged stages.")
@click.option("--force", is_flag=True, help="Replace an existing run folder's stages.")
def pipeline(config_path, out_dir, overrides, data, baseline, resume, force):
    """Run teacher -> distill -> prune -> export -> quantize -> benchmark, and write a report.

    \b
    Examples:
      compress pipeline --out runs/default
      compress pipeline --config my.toml --out runs/exp1 --set prune.amount=0.5
      compress pipeline --out runs/default --resume --set quantize.method=entropy
    """
    from compress.pipeline import run_pipeline, summary

    overrides = list(overrides) + (["distill.baseline=true"] if baseline else [])
    cfg = _config(config_path, overrides, data)
    manifest = run_pipeline(cfg, Path(out_dir), resume=resume, force=force)
    click.echo("\n" + summary(manifest))
    click.echo(f"ship: {manifest['ship']['artifact']} ({manifest['ship']['path']}): {manifest['ship']['reason']}")
    click.echo(f"report: {Path(out_dir) / 'report.md'}")


@main.command(name="config")
@click.option("--config", "config_path", type=click.Path(), help="Start from this config file.")
@click.option("--set", "overrides", multiple=True, help=SET_HELP)
def show_config(config_path, overrides):
    """Print the resolved config as TOML (a starting point for --config).

    \b
    Example:
      compress config --set data.source=digits > my.toml
    """
    from compress.config import to_dict, to_toml

    click.echo(to_toml(to_dict(_config(config_path, overrides))), nl=False)


@main.command(name="teacher")
@click.option("--data", default="mnist", show_default=True, help=DATA_HELP)
@click.option("--config", "config_path", type=click.Path(), help="Config file (its [teacher] and [data] sections).")
@click.option("--set", "overrides", multiple=True, help=SET_HELP)
@click.option("--out", "out_dir", type=click.Path(), required=True, help="Folder for teacher.pt.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
def teacher_command(data, config_path, overrides, out_dir, force):
    """Train (or load) a teacher from the zoo.

    \b
    Example:
      compress teacher --data digits --set teacher.source=train --set teacher.model.arch=mlp --out runs/t
    """
    from compress.data import load_dataset
    from compress.fsutil import staging_dir
    from stages import teacher

    cfg = _config(config_path, overrides, data)
    _fresh(Path(out_dir), force)
    _threads(cfg)
    with staging_dir(Path(out_dir)) as tmp:
        result = teacher.run(cfg.teacher, cfg.data, load_dataset(cfg.data), tmp)
    _echo_metrics(result.metrics)


@main.command()
@click.option("--teacher", "teacher_path", type=click.Path(), required=True, help="Teacher checkpoint (.pt).")
@click.option("--data", default="mnist", show_default=True, help=DATA_HELP)
@click.option("--config", "config_path", type=click.Path(), help="Config file (its [distill] and [data] sections).")
@click.option("--set", "overrides", multiple=True, help=SET_HELP)
@click.option("--baseline", is_flag=True, help="Also train the student without distillation.")
@click.option("--out", "out_dir", type=click.Path(), required=True, help="Folder for student.pt.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
def distill(teacher_path, data, config_path, overrides, baseline, out_dir, force):
    """Distill a smaller student from a teacher.

    \b
    Example:
      compress distill --teacher runs/default/teacher/teacher.pt --set distill.student.width=0.25 --out runs/s
    """
    from compress.data import load_dataset
    from compress.fsutil import staging_dir
    from stages import distill as distill_stage

    cfg = _config(config_path, list(overrides) + (["distill.baseline=true"] if baseline else []), data)
    _fresh(Path(out_dir), force)
    _threads(cfg)
    with staging_dir(Path(out_dir)) as tmp:
        result = distill_stage.run(cfg.distill, Path(teacher_path), load_dataset(cfg.data), tmp)
    _echo_metrics(result.metrics)


@main.command()
@click.argument("model_path", type=click.Path())
@click.option("--teacher", "teacher_path", type=click.Path(), required=True, help="Teacher for the fine-tune.")
@click.option("--data", default="mnist", show_default=True, help=DATA_HELP)
@click.option("--config", "config_path", type=click.Path(), help="Config file (its [prune] and [data] sections).")
@click.option("--set", "overrides", multiple=True, help=SET_HELP)
@click.option("--out", "out_dir", type=click.Path(), required=True, help="Folder for pruned.pt.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
def prune(model_path, teacher_path, data, config_path, overrides, out_dir, force):
    """Remove channels from a model, then fine-tune it by distillation.

    \b
    Options of the [prune] section (set with --set prune.KEY=VALUE):
      target=macs|channels, amount=0.3, importance=l1|l2|bn_scale|taylor|random,
      global_pruning=false, round_to=8, protect_first=true, protected=[...],
      steps=20, temperature=4.0, alpha=0.9, finetune.epochs=4, finetune.lr=0.02
    \b
    Example:
      compress prune runs/default/distill/student.pt --teacher runs/default/teacher/teacher.pt \\
          --set prune.amount=0.5 --set prune.importance=taylor --out runs/p
    """
    from compress.data import load_dataset
    from compress.fsutil import staging_dir
    from stages import prune as prune_stage

    cfg = _config(config_path, overrides, data)
    _fresh(Path(out_dir), force)
    _threads(cfg)
    with staging_dir(Path(out_dir)) as tmp:
        result = prune_stage.run(cfg.prune, Path(model_path), Path(teacher_path), load_dataset(cfg.data), tmp)
    _echo_metrics({k: v for k, v in result.metrics.items() if k != "after_finetune"})


@main.command()
@click.argument("model_path", type=click.Path())
@click.option("--data", default="mnist", show_default=True, help=DATA_HELP + " Gives the shapes and parity inputs.")
@click.option("--config", "config_path", type=click.Path(), help="Config file (its [export] and [data] sections).")
@click.option("--set", "overrides", multiple=True, help=SET_HELP)
@click.option("--out", "out_path", type=click.Path(), required=True, help="ONNX file to write.")
@click.option("--force", is_flag=True, help="Replace an existing file.")
def export(model_path, data, config_path, overrides, out_path, force):
    """Export a PyTorch checkpoint to ONNX, checked and verified against PyTorch.

    \b
    Example:
      compress export runs/default/prune/pruned.pt --data mnist --out pruned.onnx
    """
    from compress.data import load_dataset
    from compress.fsutil import sha256
    from compress.zoo import load_model
    from stages.export import export_model

    cfg = _config(config_path, overrides, data)
    _fresh(Path(out_path), force)
    parity = export_model(load_model(model_path), Path(out_path), load_dataset(cfg.data), cfg.export,
                          {"source": str(model_path), "source_sha256": sha256(model_path)})
    _echo_metrics(parity)


@main.command()
@click.argument("model_path", type=click.Path())
@click.option("--data", default="mnist", show_default=True, help=DATA_HELP + " Calibrates and scores.")
@click.option("--config", "config_path", type=click.Path(), help="Config file (its [quantize] and [data] sections).")
@click.option("--set", "overrides", multiple=True, help=SET_HELP)
@click.option("--out", "out_path", type=click.Path(), required=True, help="int8 ONNX file to write.")
@click.option("--force", is_flag=True, help="Replace an existing file.")
def quantize(model_path, data, config_path, overrides, out_path, force):
    """Quantize an fp32 ONNX model to static int8, calibrated on real samples.

    \b
    Example:
      compress quantize model.onnx --data digits --out q.onnx --set quantize.method=entropy
    """
    from compress.data import load_dataset
    from stages.quantize import quantize as quantize_model

    cfg = _config(config_path, overrides, data)
    _fresh(Path(out_path), force)
    _echo_metrics(quantize_model(cfg.quantize, Path(model_path), load_dataset(cfg.data), Path(out_path)))


@main.command()
@click.argument("model_paths", nargs=-1, required=True, type=click.Path())
@click.option("--data", default=None, help=DATA_HELP + " Without it, inputs are random and no accuracy is given.")
@click.option("--provider", default=None, help="Execution provider: cpu, cuda, tensorrt, openvino, ...")
@click.option("--threads", type=int, default=None, help="Intra-op threads (default 1).")
@click.option("--config", "config_path", type=click.Path(), help="Config file (its [benchmark] and [data] sections).")
@click.option("--set", "overrides", multiple=True, help=SET_HELP)
@click.option("--json", "json_path", type=click.Path(), help="Also write the results as JSON here.")
def benchmark(model_paths, data, provider, threads, config_path, overrides, json_path):
    """Measure latency, throughput, size and accuracy of ONNX models side by side.

    \b
    Examples:
      compress benchmark model.onnx --data mnist
      compress benchmark teacher.onnx int8.onnx --data mnist --threads 2 --json bench.json
    """
    from compress.data import load_dataset
    from compress.fsutil import write_json
    from stages.benchmark import benchmark_model, results_markdown

    extra = [f"benchmark.provider={json.dumps(provider)}"] if provider else []
    extra += [f"benchmark.threads={threads}"] if threads is not None else []
    cfg = _config(config_path, list(overrides) + extra, data)
    dataset = load_dataset(cfg.data) if data or config_path else None
    results = {}
    for path in model_paths:
        name = Path(path).stem if Path(path).stem not in results else str(path)
        results[name] = benchmark_model(Path(path), dataset, cfg.benchmark)
    click.echo(results_markdown(results), nl=False)
    if json_path:
        write_json(json_path, {"config": vars(cfg.benchmark), "results": results})


def _echo_metrics(metrics: dict) -> None:
    click.echo(json.dumps(metrics, indent=2, default=str))


if __name__ == "__main__":
    main()
