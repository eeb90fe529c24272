"""The `compress` command line: each command loads the config, applies overrides and calls a stage."""
from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import click

from compress.errors import CompressError

SET_HELP = "Override a config value, e.g. --set distill.train.epochs=3 (repeatable)."
DATA_HELP = "Dataset: mnist, digits, an image folder (one subfolder per class) or an .npz with x and y."


DEVICE_HELP = ("Where to train: auto (CUDA when available, else CPU), cpu, cuda or cuda:N. Sets every training "
               "stage's train.device (and, for text, text_train/text_windows_train/text_finetune.device); ONNX files and checkpoints "
               "always come from CPU fp32 weights.")
DEVICE_KEYS = ("teacher.train.device", "distill.train.device", "prune.finetune.device",
               "teacher.text_train.device", "teacher.text_windows_train.device", "distill.text_train.device", "prune.text_finetune.device")


def _config(config_path, overrides, data=None, device=None):
    from compress.config import load_config

    overrides = list(overrides)
    if data is not None:
        overrides.insert(0, f"data.source={json.dumps(str(data))}")
    if device is not None:
        from compress.train import resolve_device

        resolve_device(device)  # a device this machine lacks fails here, before any data is read
        overrides[:0] = [f"{key}={json.dumps(device)}" for key in DEVICE_KEYS]
    return load_config(config_path, overrides)


def _refuse_existing(path: Path, force: bool) -> None:
    """Refuse to replace a finished output unless asked to."""
    if path.exists() and not force:
        raise CompressError(f"{path} already exists: pass --force to replace it, or choose another --out")


def _threads(cfg) -> None:
    import torch

    from compress.distributed import threads_per_process

    torch.set_num_threads(threads_per_process(cfg.threads))


NPROC_HELP = ("Train data-parallel in N processes on this machine (starts torchrun; gloo on CPU, nccl on GPU). "
              "For several machines run torchrun -m compress yourself.")
TRUST_PICKLE_HELP = ("Allow model files that are pickled whole modules. Unpickling runs whatever code the file carries: "
                     "only for files you trust; better, save a state_dict and pass a factory.")
RESUME_HELP = "Continue a killed run from its last epoch checkpoint (kept in .OUT.checkpoints/ beside --out)."


def _relaunched(nproc: int, command: str) -> bool:
    """With --nproc N > 1, run this command line again under torchrun in N processes (True: done here).
    Under torchrun, join its process group."""
    from compress import distributed

    if nproc < 1:
        raise CompressError(f"--nproc must be >= 1, got {nproc}")
    if nproc == 1:
        distributed.setup()
        return False
    if sys.argv[1:2] != [command]:
        raise CompressError("--nproc relaunches the command line: use it from the compress command, or run torchrun")
    code = distributed.launch(nproc, distributed.without_option(sys.argv[1:], "--nproc"))
    if code:
        sys.exit(code)
    return True


def _is_main() -> bool:
    from compress.distributed import context

    return context().is_main


class FriendlyGroup(click.Group):
    """The CLI boundary: every failure becomes one line on stderr and exit code 2 (130 on Ctrl-C or SIGTERM).
    ``--debug`` (or COMPRESS_DEBUG=1) also prints the full chained traceback behind the line."""

    def invoke(self, ctx):
        import signal

        from compress.errors import user_message

        finished = False
        debug = ctx.params.get("debug") or os.environ.get("COMPRESS_DEBUG", "") not in ("", "0")
        previous_term = signal.signal(signal.SIGTERM, _terminate)
        try:
            from compress.fsutil import remove_stale_tempdirs

            remove_stale_tempdirs()  # what a killed run left in the temporary folder
            result = super().invoke(ctx)
            finished = True
            return result
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except KeyboardInterrupt:
            if debug:
                traceback.print_exc()
            click.echo("interrupted: finished stages are kept; rerun with --resume", err=True)
            sys.exit(130)
        except Exception as exc:
            if debug:
                traceback.print_exc()
            message = user_message(exc)
            if message is None:
                from compress.errors import first_line

                message = (f"unexpected {type(exc).__name__}: {first_line(exc)} (a bug in compress: rerun with --debug "
                           "for the traceback and report it)")
            click.echo(f"error: {message}", err=True)
            sys.exit(2)
        finally:
            signal.signal(signal.SIGTERM, previous_term)
            if "compress.distributed" in sys.modules:
                sys.modules["compress.distributed"].teardown(synchronize=finished)


def _terminate(signum, frame):
    """SIGTERM cleans up like Ctrl-C: staging folders, temporary files and locks go, checkpoints stay."""
    raise KeyboardInterrupt


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="compress")
@click.option("--debug", is_flag=True, help="Print the full traceback behind an error (or set COMPRESS_DEBUG=1).")
def main(debug):
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
@click.option("--resume", is_flag=True, help="Continue in an existing run folder, reusing unchanged stages and "
              "continuing a killed stage's training from its last epoch checkpoint.")
@click.option("--force", is_flag=True, help="Replace an existing run folder's stages.")
@click.option("--nproc", type=int, default=1, show_default=True, help=NPROC_HELP)
@click.option("--device", default=None, help=DEVICE_HELP)
def pipeline(config_path, out_dir, overrides, data, baseline, resume, force, nproc, device):
    """Run teacher -> distill -> prune -> export -> quantize -> benchmark, and write a report.

    \b
    Examples:
      compress pipeline --out runs/default
      compress pipeline --config my.toml --out runs/exp1 --set prune.amount=0.5
      compress pipeline --out runs/default --resume --set quantize.method=entropy
      compress pipeline --out runs/ddp --nproc 2
    """
    from compress.pipeline import run_pipeline, summary

    if _relaunched(nproc, "pipeline"):
        return
    overrides = list(overrides) + (["distill.baseline=true"] if baseline else [])
    cfg = _config(config_path, overrides, data, device)
    manifest = run_pipeline(cfg, Path(out_dir), resume=resume, force=force)
    if not _is_main():
        return
    click.echo("\n" + summary(manifest))
    click.echo(f"ship: {manifest['ship']['artifact']} ({manifest['ship']['path']}): {manifest['ship']['reason']}")
    click.echo(f"report: {Path(out_dir) / 'report.md'}")


@main.command()
@click.option("--out", "out_dir", type=click.Path(), required=True, help="Search folder: search.json/.md, candidates/.")
@click.option("--budget", "budgets", multiple=True, help="p50_ms=MS or size_kb=KB (repeatable; either or both).")
@click.option("--reference", type=click.Path(), default=None, help="A finished pipeline run whose int8 is shown beside the winner.")
@click.option("--config", "config_path", type=click.Path(), help="TOML or YAML config; its [search] section is the space.")
@click.option("--set", "overrides", multiple=True, help=SET_HELP + " Search keys: search.widths=[0.25,0.5], ...")
@click.option("--data", default=None, help=DATA_HELP)
@click.option("--device", default=None, help=DEVICE_HELP)
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Train a rung's candidates in N processes side by side (search.workers; default 1).")
def search(out_dir, budgets, reference, config_path, overrides, data, device, workers):
    """Find the most accurate student meeting a latency and/or size budget, by measurement.

    Untrained structures are timed first (over-budget ones never train); survivors are trained through the
    pipeline by successive halving, each in DIR/candidates/<name>/e<epochs>/ (a re-run reuses them).

    \b
    Example:
      compress search --out runs/search --budget p50_ms=0.2 --budget size_kb=200
      compress search --out runs/s2 --budget p50_ms=0.1 --set 'search.archs=["mobilenet"]' --workers 2
    """
    from compress import search_cli

    overrides = [*overrides, *([f"search.workers={workers}"] if workers is not None else [])]
    state = search_cli.run(lambda extra: _config(config_path, [*overrides, *extra], data, device), Path(out_dir),
                           list(budgets), Path(reference) if reference else None)
    w = state["winner"]
    click.echo(f"winner: {w['name']}: validation accuracy {100 * w['val_accuracy']:.2f}%, p50 {w['p50_ms']:.4f} ms, "
               f"{w['size_bytes'] / 1024:.1f} KiB; run folder {w['run_dir']} (artifact {w['artifact']})")
    click.echo(f"report: {Path(out_dir) / 'search.md'}")


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


def stage_command(name: str, out_help: str, resumable: bool = True, reads_models: bool = True):
    """The options every per-stage command shares (--data, --config, --set, --out, --force; for training
    stages --resume and --nproc; for stages reading model files --trust-pickle), with the stage's --set keys,
    generated from its config dataclass, in --help."""
    def decorate(function):

        options = [
            click.option("--data", default=None, help=DATA_HELP + " Default: the config's [data], else mnist."),
            click.option("--config", "config_path", type=click.Path(),
                         help=f"Config file (its [{name}] and [data] sections)."),
            click.option("--set", "overrides", multiple=True, help=SET_HELP),
            click.option("--out", "out_path", type=click.Path(), required=True, help=out_help),
            click.option("--force", is_flag=True, help="Replace an existing output."),
        ]
        if resumable:
            options += [click.option("--resume", is_flag=True, help=RESUME_HELP),
                        click.option("--nproc", type=int, default=1, show_default=True, help=NPROC_HELP),
                        click.option("--device", default=None, help=DEVICE_HELP)]
        if reads_models:
            options.append(click.option("--trust-pickle", is_flag=True, help=TRUST_PICKLE_HELP))
        for option in reversed(options):
            function = option(function)
        return key_help(name)(function)
    return decorate


def key_help(name: str):
    """Append the stage's --set keys, their defaults and meaning (from its config dataclass) to --help."""
    def decorate(function):
        from compress.config import field_help
        from stages import STAGES

        keys = "\n".join("  " + line for line in field_help(STAGES[name].config, f"{name}."))
        function.__doc__ = (function.__doc__ or "").rstrip() + f"\n\n\b\nKeys of [{name}] (--set {name}.KEY=VALUE):\n{keys}\n"
        return function
    return decorate


def _run_stage_command(stage: str, cfg, inputs: dict[str, Path], out_path: str, force: bool, resume: bool,
                       **run_options) -> dict:
    """A training stage on its own: ``--out`` becomes a one-stage run folder through the shared stage runner."""
    from compress.config import to_dict
    from compress.data import load_dataset
    from compress.runner import data_identity, run_single_stage
    from stages import STAGES

    _threads(cfg)
    stage_cfg = getattr(cfg, stage)
    return run_single_stage(
        stage, stage_cfg, data_identity(cfg.data), inputs,
        lambda out: STAGES[stage].run(stage_cfg, inputs, load_dataset(cfg.data), out, **run_options),
        Path(out_path), resume, force, to_dict(cfg))


def _trusted(trust_pickle: bool, paths):
    """--trust-pickle: only these files may be unpickled, and only in this command."""
    import contextlib

    from compress.checkpoint import trusting_pickles

    return trusting_pickles(paths) if trust_pickle else contextlib.nullcontext()


def _run_file_command(stage: str, cfg, inputs: dict[str, Path], out_path: str, force: bool, **run_options) -> dict:
    """A stage that writes a file (export, quantize) through the shared stage runner."""
    from compress.data import load_dataset
    from compress.runner import data_identity, run_file_stage
    from stages import STAGES

    stage_cfg = getattr(cfg, stage)
    return run_file_stage(stage, stage_cfg, data_identity(cfg.data), inputs,
                          lambda out: STAGES[stage].run(stage_cfg, inputs, load_dataset(cfg.data), out, **run_options),
                          Path(out_path), force)


@main.command(name="teacher")
@stage_command("teacher", "Folder for teacher.safetensors and its manifest.json.", reads_models=False)
def teacher_command(data, config_path, overrides, out_path, force, resume, nproc, device):
    """Train (or load) a teacher.

    \b
    Example:
      compress teacher --data digits --set teacher.source=train --set teacher.model.arch=mlp --out runs/t
    """
    from stages.teacher import teacher_inputs

    if _relaunched(nproc, "teacher"):
        return
    cfg = _config(config_path, overrides, data, device)
    record = _run_stage_command("teacher", cfg, teacher_inputs(cfg.teacher, cfg.data), out_path, force, resume)
    if _is_main():
        _echo_metrics(record["metrics"])


@main.command()
@click.option("--teacher", "teacher_path", type=click.Path(), required=True, help="Teacher checkpoint.")
@click.option("--baseline", is_flag=True, help="Also train the student without distillation.")
@stage_command("distill", "Folder for student.safetensors and its manifest.json.")
def distill(teacher_path, baseline, data, config_path, overrides, out_path, force, resume, nproc, device,
            trust_pickle):
    """Distill a smaller student from a teacher.

    \b
    Examples:
      compress distill --teacher runs/default/teacher/teacher.safetensors --set distill.student.width=0.25 --out runs/s
      compress distill --teacher teacher.safetensors --data digits --out runs/s2 --nproc 2
    """
    if _relaunched(nproc, "distill"):
        return
    cfg = _config(config_path, list(overrides) + (["distill.baseline=true"] if baseline else []), data, device)
    with _trusted(trust_pickle, [teacher_path]):
        record = _run_stage_command("distill", cfg, {"teacher": Path(teacher_path)}, out_path, force, resume)
    if _is_main():
        _echo_metrics(record["metrics"])


@main.command()
@click.argument("model_path", type=click.Path())
@click.option("--teacher", "teacher_path", type=click.Path(), required=True, help="Teacher for the fine-tune.")
@stage_command("prune", "Folder for pruned.safetensors, prune.md/json and its manifest.json.")
def prune(model_path, teacher_path, data, config_path, overrides, out_path, force, resume, nproc, device,
          trust_pickle):
    """Remove channels, neurons and attention heads from a model (a smaller dense model, verified
    after every step: forward pass, ONNX export, parity), then fine-tune it by distillation.
    target=sparsity is unstructured magnitude pruning instead: a smaller gzip file, NOT faster on
    dense runtimes.

    \b
    Examples:
      compress prune runs/default/distill/student.safetensors --teacher runs/default/teacher/teacher.safetensors \\
          --set prune.amount=0.5 --set prune.importance=taylor --out runs/p
      compress prune student.safetensors --teacher teacher.safetensors --set prune.target=latency \\
          --set prune.latency_reference=teacher --set prune.amount=0.5 --set prune.rounds=2 --out runs/p2
    """
    if _relaunched(nproc, "prune"):
        return
    cfg = _config(config_path, overrides, data, device)
    with _trusted(trust_pickle, [model_path, teacher_path]):
        record = _run_stage_command("prune", cfg, {"student": Path(model_path), "teacher": Path(teacher_path)},
                                    out_path, force, resume)
    if _is_main():
        # the full per-layer and per-round report is in OUT/prune.md (and prune.json)
        metrics = record["metrics"]
        summary = ("method", "target", "macs_reduction", "params_reduction", "latency_speedup", "channels_removed",
                   "sparsity", "compressed", "note")
        _echo_metrics({**{k: v for k, v in metrics.items() if k in summary},
                       "test_accuracy": metrics["after_finetune"]["test_accuracy"],
                       "report": str(Path(out_path) / "prune.md")})


@main.command()
@click.argument("model_path", type=click.Path())
@stage_command("export", "ONNX file to write.", resumable=False)
def export(model_path, data, config_path, overrides, out_path, force, trust_pickle):
    """Export a PyTorch checkpoint to ONNX, checked and verified against PyTorch on real test inputs.

    \b
    Example:
      compress export runs/default/prune/pruned.safetensors --data mnist --out pruned.onnx
    """
    cfg = _config(config_path, overrides, data)
    with _trusted(trust_pickle, [model_path]):
        record = _run_file_command("export", cfg, {Path(out_path).stem: Path(model_path)}, out_path, force)
    _echo_metrics(next(iter(record["metrics"].values())))


@main.command()
@click.argument("model_path", type=click.Path())
@stage_command("quantize", "int8 ONNX file to write (its per-layer report goes beside it).", resumable=False,
               reads_models=False)
def quantize(model_path, data, config_path, overrides, out_path, force):
    """Quantize an fp32 ONNX model with onnxruntime (auto: measure the int8 formats, keep the fastest
    within the accuracy budget), calibrated on real samples.

    \b
    Example:
      compress quantize model.onnx --data digits --out q.onnx --set quantize.method=entropy
    """
    cfg = _config(config_path, overrides, data)
    record = _run_file_command("quantize", cfg, {"model": Path(model_path)}, out_path, force,
                               name=Path(out_path).stem)
    _echo_metrics(record["metrics"])


@main.command(name="ship")
@click.argument("run_dir", type=click.Path())
@click.option("--out", "out_dir", type=click.Path(), required=True, help="Bundle folder to write.")
@click.option("--artifact", default=None,
              help="Bundle this artifact (teacher, student, pruned, int8) instead of the one the pipeline chose.")
@click.option("--samples", type=click.IntRange(min=1), default=10, show_default=True,
              help="Known test images stored with their labels, for the apps' self-test.")
@click.option("--optimization-style", type=click.Choice(["fixed", "runtime"]), default="fixed", show_default=True,
              help="ORT format: fixed (optimizations baked in) or runtime (for NNAPI/CoreML).")
@click.option("--target-platform", type=click.Choice(["arm", "amd64"]), default=None,
              help="Bake this platform's optimizations into the .ort (default: portable).")
@click.option("--type-reduction", is_flag=True, help="Record each operator's types too (smaller reduced builds).")
@click.option("--force", is_flag=True, help="Replace an existing bundle folder.")
def ship_command(run_dir, out_dir, artifact, samples, optimization_style, target_platform, type_reduction, force):
    """Bundle a finished run for edge apps: model.onnx, model.ort, operators config, model.json, samples.

    \b
    Examples:
      compress ship runs/default --out runs/default/bundle
      compress ship runs/default --out bundle-int8 --artifact int8
      python edge_demo/python/classify.py runs/default/bundle --self-test
    """
    from compress.ship import BundleConfig, ship

    try:
        cfg = BundleConfig(artifact, samples, optimization_style, target_platform, type_reduction)
    except ValueError as exc:
        raise CompressError(str(exc)) from exc
    bundle = ship(cfg, Path(run_dir), Path(out_dir), force=force)
    why = "the pipeline's choice" if bundle["chosen_by_pipeline"] else "requested with --artifact"
    check = bundle["verification"]
    sizes = ", ".join(f"{name} {bundle['files'][name]['bytes'] / 1024:.1f} KB"
                      for name in bundle["models"].values())
    click.echo(f"bundled {bundle['artifact']} ({why}) into {out_dir}: {sizes}")
    click.echo(f"verified: .ort and .onnx agree on all {check['test_samples']} test samples "
               f"(accuracy {100 * check['onnx_accuracy']:.2f}%); {check['samples_verified']} known samples stored")
    click.echo(f"try it: python edge_demo/python/classify.py {out_dir} --self-test")


def _int_list(ctx, param, value):
    if value is None:
        return None
    try:
        return [int(item) for item in value.split(",") if item.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} must be comma-separated integers, e.g. 1,8,32") from None


@main.command()
@click.argument("model_paths", nargs=-1, type=click.Path())
@click.option("--list-providers", is_flag=True, help="List the execution providers onnxruntime knows, and exit.")
@click.option("--data", default=None, help=DATA_HELP + " Gives accuracy; without it inputs are generated.")
@click.option("--inputs", "inputs_path", type=click.Path(), help="An .npz with one array per model input (first axis = samples).")
@click.option("--dim", "dims", multiple=True, help="Symbolic input dimension NAME=N or INPUT:AXIS=N (repeatable).")
@click.option("--provider", default=None, help="Execution provider: cpu, cuda, tensorrt, openvino, directml, coreml, ...")
@click.option("--provider-option", "provider_options", multiple=True, help="Provider option KEY=VALUE (repeatable).")
@click.option("--threads", type=int, default=None, help="Intra-op threads (default 1; 0 = onnxruntime's default).")
@click.option("--batch-sizes", callback=_int_list, help="Throughput batch sizes, e.g. 1,8,32 (the largest is the headline).")
@click.option("--threads-sweep", callback=_int_list, help="Intra-op thread counts to time, e.g. 1,2,4.")
@click.option("--mlperf", is_flag=True, help="MLPerf single-stream minimums: 1,024 runs and 600 s per model.")
@click.option("--plot", is_flag=True, help="Write latency_distribution.png and pareto.png into --out.")
@click.option("--out", "out_dir", type=click.Path(), help="Folder for benchmark.json/.md, plots and profiler traces.")
@click.option("--json", "json_path", type=click.Path(), help="Also write the JSON results here.")
@click.option("--markdown", "markdown_path", type=click.Path(), help="Also write the Markdown results here.")
@click.option("--force", is_flag=True, help="Replace existing output files.")
@click.option("--config", "config_path", type=click.Path(), help="Config file (its [benchmark] and [data] sections).")
@click.option("--set", "overrides", multiple=True, help=SET_HELP + " Every [benchmark] key is listed below.")
@key_help("benchmark")
def benchmark(model_paths, list_providers, data, inputs_path, mlperf, plot, out_dir, json_path, markdown_path, force,
              config_path, overrides, **flags):
    """Measure latency, throughput, memory, operators and accuracy of ONNX models side by side (several models
    are timed interleaved, in alternating rounds in one process, so their ratios are fair).

    \b
    Examples:
      compress benchmark model.onnx --data mnist
      compress benchmark teacher.onnx int8.onnx --data mnist --batch-sizes 1,8,32 --plot --out bench/
      compress benchmark bert.onnx --dim batch=1 --dim seq=128 --threads-sweep 1,2,4
      compress benchmark model.onnx --set benchmark.warmup=fixed --set benchmark.min_runs=1000 --set benchmark.profile=false
      compress benchmark model.onnx --provider cuda --provider-option device_id=0
      compress benchmark --list-providers
    """
    import shlex

    from compress.config import to_dict
    from compress.data import load_dataset
    from compress.fsutil import private_tempdir, write_text
    from compress.runner import data_identity, run_single_stage, run_stage
    from stages.benchmark import run, terminal_table

    if list_providers:
        return _echo_providers()
    if not model_paths:
        raise click.UsageError("give at least one MODEL.onnx (or --list-providers)")
    if plot and not out_dir:
        raise CompressError("--plot writes PNG files: give --out DIR for them")
    values = {**flags, "inputs": inputs_path, "plot": plot or None,
              "dims": list(flags["dims"]) or None, "provider_options": list(flags["provider_options"]) or None}
    if flags["batch_sizes"]:
        values["throughput_batch"] = max(flags["batch_sizes"])
    extra = ["benchmark.min_runs=1024", "benchmark.min_seconds=600.0"] if mlperf else []
    extra += [f"benchmark.{key}={json.dumps(value)}" for key, value in values.items() if value is not None]
    cfg = _config(config_path, list(overrides) + extra, data)
    dataset = load_dataset(cfg.data) if data or (config_path and "data" in _config_sections(config_path)) else None
    paths = {}
    for path in model_paths:
        paths[Path(path).stem if Path(path).stem not in paths else str(path)] = Path(path)
    for option, target in (("--json", json_path), ("--markdown", markdown_path)):
        if target and Path(target).is_dir():
            raise CompressError(f"{option} {target} is a folder: give a file path (e.g. {Path(target) / 'benchmark.json'})")
    for target in (out_dir, json_path, markdown_path):
        if target:
            _refuse_existing(Path(target), force)
    command = shlex.join(["compress", *sys.argv[1:]]) if sys.argv[1:2] == ["benchmark"] else None
    identity = data_identity(cfg.data) if dataset is not None else {"data": None}

    def work(out: Path):
        return run(cfg.benchmark, paths, dataset, out, command=command)

    with private_tempdir("benchmark") as tmp:
        if out_dir:
            record = run_single_stage("benchmark", cfg.benchmark, identity, paths, work, Path(out_dir), False, force,
                                      to_dict(cfg))
            folder = Path(out_dir)
        else:
            folder = Path(tmp) / "benchmark"
            record = run_stage("benchmark", cfg.benchmark, identity, paths, work, folder, folder, Path(tmp) / "ckpt")
        for target, key in ((json_path, "benchmark_json"), (markdown_path, "benchmark_md")):
            if target:
                write_text(target, (folder / record["outputs"][key]["path"]).read_text())
    metrics = {name: r for name, r in record["metrics"].items() if name in paths}
    click.echo(terminal_table(metrics), nl=False)
    first = next(iter(metrics.values()))
    if "seq_length" in first:  # text models: batch 1 at the headline sequence length
        click.echo(f"{first['provider']}, {cfg.benchmark.threads} thread(s), batch 1, {first['seq_length']} tokens; "
                   "every sequence length and the TF-IDF + LR baseline are in benchmark.md")
    else:
        click.echo(f"{first['provider']}, {cfg.benchmark.threads} thread(s), latency batch {first['latency_batch'] or 'fixed'}; "
                   f"input transfer: {first['transfer'].get('reason', 'see the JSON')}")
    for target in (out_dir, json_path, markdown_path):
        if target:
            click.echo(f"wrote {target}")


def _config_sections(config_path) -> dict:
    from compress.config import read_config_file

    return read_config_file(config_path)


def _echo_providers() -> None:
    import onnxruntime as ort

    from compress.onnxutil import provider_table

    rows = provider_table()
    width = max(len(row["provider"]) for row in rows)
    click.echo(f"onnxruntime {ort.__version__} execution providers (use the short name or the full one with --provider):")
    for row in rows:
        state = "available" if row["available"] else f"not available: install {row['install']}"
        click.echo(f"  {row['provider']:<{width}}  {row['alias']:<9}  {state}")


def _echo_metrics(metrics: dict) -> None:
    click.echo(json.dumps(metrics, indent=2, default=str))


if __name__ == "__main__":
    main()
