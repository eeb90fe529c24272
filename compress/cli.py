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

    from compress.distributed import threads_per_process

    torch.set_num_threads(threads_per_process(cfg.threads))


NPROC_HELP = ("Train data-parallel in N processes on this machine (starts torchrun; gloo on CPU, nccl on GPU). "
              "For several machines run torchrun -m compress yourself.")
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


def _file_hash(path) -> str:
    from compress.fsutil import sha256

    return sha256(path) if path and Path(path).is_file() else "missing"


class FriendlyGroup(click.Group):
    """Turn CompressError (and config ValueErrors) into one line on stderr and exit code 2."""

    def invoke(self, ctx):
        finished = False
        try:
            result = super().invoke(ctx)
            finished = True
            return result
        except CompressError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except OSError as exc:
            from compress.fsutil import DISK_FULL, disk_full_error

            if exc.errno not in DISK_FULL:
                raise
            click.echo(f"error: {disk_full_error(exc.filename or 'the output')}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: finished stages are kept; rerun with --resume", err=True)
            sys.exit(130)
        finally:
            if "compress.distributed" in sys.modules:
                sys.modules["compress.distributed"].teardown(synchronize=finished)


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
@click.option("--resume", is_flag=True, help="Continue in an existing run folder, reusing unchanged stages and "
              "continuing a killed stage's training from its last epoch checkpoint.")
@click.option("--force", is_flag=True, help="Replace an existing run folder's stages.")
@click.option("--nproc", type=int, default=1, show_default=True, help=NPROC_HELP)
def pipeline(config_path, out_dir, overrides, data, baseline, resume, force, nproc):
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
    cfg = _config(config_path, overrides, data)
    manifest = run_pipeline(cfg, Path(out_dir), resume=resume, force=force)
    if not _is_main():
        return
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
@click.option("--resume", is_flag=True, help=RESUME_HELP)
@click.option("--nproc", type=int, default=1, show_default=True, help=NPROC_HELP)
def teacher_command(data, config_path, overrides, out_dir, force, resume, nproc):
    """Train (or load) a teacher from the zoo.

    \b
    Example:
      compress teacher --data digits --set teacher.source=train --set teacher.model.arch=mlp --out runs/t
    """
    from compress.config import to_dict
    from compress.data import load_dataset
    from compress.distributed import output_dir
    from compress.train import resumable, run_key
    from stages import teacher

    if _relaunched(nproc, "teacher"):
        return
    cfg = _config(config_path, overrides, data)
    _fresh(Path(out_dir), force)
    _threads(cfg)
    key = run_key(command="teacher", config=to_dict(cfg.teacher), data=to_dict(cfg.data),
                  teacher_file=_file_hash(cfg.teacher.path))
    with resumable(Path(out_dir), key, resume, force), output_dir(Path(out_dir)) as tmp:
        result = teacher.run(cfg.teacher, cfg.data, load_dataset(cfg.data), tmp)
    if _is_main():
        _echo_metrics(result.metrics)


@main.command()
@click.option("--teacher", "teacher_path", type=click.Path(), required=True, help="Teacher checkpoint (.pt).")
@click.option("--data", default="mnist", show_default=True, help=DATA_HELP)
@click.option("--config", "config_path", type=click.Path(), help="Config file (its [distill] and [data] sections).")
@click.option("--set", "overrides", multiple=True, help=SET_HELP)
@click.option("--baseline", is_flag=True, help="Also train the student without distillation.")
@click.option("--out", "out_dir", type=click.Path(), required=True, help="Folder for student.pt.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--resume", is_flag=True, help=RESUME_HELP)
@click.option("--nproc", type=int, default=1, show_default=True, help=NPROC_HELP)
def distill(teacher_path, data, config_path, overrides, baseline, out_dir, force, resume, nproc):
    """Distill a smaller student from a teacher.

    \b
    Example:
      compress distill --teacher runs/default/teacher/teacher.pt --set distill.student.width=0.25 --out runs/s
      compress distill --teacher teacher.pt --data digits --out runs/s2 --nproc 2
    """
    from compress.config import to_dict
    from compress.data import load_dataset
    from compress.distributed import output_dir
    from compress.train import resumable, run_key
    from stages import distill as distill_stage

    if _relaunched(nproc, "distill"):
        return
    cfg = _config(config_path, list(overrides) + (["distill.baseline=true"] if baseline else []), data)
    _fresh(Path(out_dir), force)
    _threads(cfg)
    key = run_key(command="distill", config=to_dict(cfg.distill), data=to_dict(cfg.data), teacher=_file_hash(teacher_path))
    with resumable(Path(out_dir), key, resume, force), output_dir(Path(out_dir)) as tmp:
        result = distill_stage.run(cfg.distill, Path(teacher_path), load_dataset(cfg.data), tmp)
    if _is_main():
        _echo_metrics(result.metrics)


@main.command()
@click.argument("model_path", type=click.Path())
@click.option("--teacher", "teacher_path", type=click.Path(), required=True, help="Teacher for the fine-tune.")
@click.option("--data", default="mnist", show_default=True, help=DATA_HELP)
@click.option("--config", "config_path", type=click.Path(), help="Config file (its [prune] and [data] sections).")
@click.option("--set", "overrides", multiple=True, help=SET_HELP)
@click.option("--out", "out_dir", type=click.Path(), required=True, help="Folder for pruned.pt.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--resume", is_flag=True, help=RESUME_HELP)
@click.option("--nproc", type=int, default=1, show_default=True, help=NPROC_HELP)
def prune(model_path, teacher_path, data, config_path, overrides, out_dir, force, resume, nproc):
    """Remove channels, neurons and attention heads from a model (a smaller dense model, verified
    after every step: forward pass, ONNX export, parity), then fine-tune it by distillation.

    \b
    Options of the [prune] section (set with --set prune.KEY=VALUE):
      target=macs|channels|params|latency|sparsity  what `amount` is a share of (default macs);
          sparsity = unstructured magnitude pruning: smaller gzip file, NOT faster on dense runtimes
      amount=0.5             share to remove, in (0, 1)
      max_params=N           target=params: keep at most N parameters instead of `amount`
      max_latency_ms=X       target=latency: reach p50 X ms instead of `amount`
      latency_reference=model|teacher   target=latency with `amount`: share of whose p50
      provider=cpu, latency_threads=1, latency_runs=200, latency_seconds=0.2   how latency is measured
      importance=l1|l2|bn_scale|taylor|random|auto   channel ranking (auto: the most accurate
          after pruning of the first four, each uniform and global)
      global_pruning=false   true: rank channels across layers; false: same share per layer (uniform);
          importance=auto tries both and ignores it
      round_to=8, protect_first=true, protected=["layer", ...]   (the classifier is always protected)
      rounds=1               rounds of prune + fine-tune; finetune.epochs=4, finetune.lr=0.02 per round
      steps=20, step_fraction=0.1   target=latency: steps per round, share of MACs cut per step
      recalibrate_bn=true, verify_samples=64, temperature=4.0, alpha=0.9
    \b
    Examples:
      compress prune runs/default/distill/student.pt --teacher runs/default/teacher/teacher.pt \\
          --set prune.amount=0.5 --set prune.importance=taylor --out runs/p
      compress prune student.pt --teacher teacher.pt --set prune.target=latency \\
          --set prune.latency_reference=teacher --set prune.amount=0.5 --set prune.rounds=2 --out runs/p2
    """
    from compress.config import to_dict
    from compress.data import load_dataset
    from compress.distributed import output_dir
    from compress.train import resumable, run_key
    from stages import prune as prune_stage

    if _relaunched(nproc, "prune"):
        return
    cfg = _config(config_path, overrides, data)
    _fresh(Path(out_dir), force)
    _threads(cfg)
    key = run_key(command="prune", config=to_dict(cfg.prune), data=to_dict(cfg.data), model=_file_hash(model_path),
                  teacher=_file_hash(teacher_path))
    with resumable(Path(out_dir), key, resume, force), output_dir(Path(out_dir)) as tmp:
        result = prune_stage.run(cfg.prune, Path(model_path), Path(teacher_path), load_dataset(cfg.data), tmp)
    if _is_main():
        # the full per-layer and per-round report is in OUT/prune.md (and prune.json)
        summary = ("method", "target", "macs_reduction", "params_reduction", "latency_speedup", "channels_removed",
                   "sparsity", "compressed", "note")
        _echo_metrics({**{k: v for k, v in result.metrics.items() if k in summary},
                       "test_accuracy": result.metrics["after_finetune"]["test_accuracy"],
                       "report": str(Path(out_dir) / "prune.md")})


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
    from compress.ship import ShipBundleConfig, ship

    try:
        cfg = ShipBundleConfig(artifact, samples, optimization_style, target_platform, type_reduction)
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
@click.option("--optimization", type=click.Choice(["disable", "basic", "extended", "layout", "all"]),
              help="Graph optimization level (default all).")
@click.option("--threads", type=int, default=None, help="Intra-op threads (default 1; 0 = onnxruntime's default).")
@click.option("--inter-op-threads", type=int, default=None, help="Inter-op threads (needs --execution-mode parallel).")
@click.option("--execution-mode", type=click.Choice(["sequential", "parallel"]), help="Default sequential.")
@click.option("--warmup", type=click.Choice(["steady", "fixed"]), help="Warm up until steady (default) or a fixed count.")
@click.option("--warmup-runs", type=int, help="Fixed warm-up count, or the minimum before steadiness (default 30).")
@click.option("--min-runs", type=int, help="Timed runs at least (default 300).")
@click.option("--min-seconds", type=float, help="Timed seconds at least (default 1.0).")
@click.option("--mlperf", is_flag=True, help="MLPerf single-stream minimums: 1,024 runs and 600 s per model.")
@click.option("--batch-sizes", callback=_int_list, help="Throughput batch sizes, e.g. 1,8,32 (the largest is the headline).")
@click.option("--threads-sweep", callback=_int_list, help="Intra-op thread counts to time, e.g. 1,2,4.")
@click.option("--inter-op-sweep", callback=_int_list, help="Inter-op thread counts to time (with --execution-mode parallel).")
@click.option("--profile/--no-profile", default=None, help="Top operators from onnxruntime's profiler (default on).")
@click.option("--profile-top", type=int, help="Operators listed per model (default 10).")
@click.option("--cold-start/--no-cold-start", default=None,
              help="Cold start and peak memory in a fresh process per model (default on).")
@click.option("--plot", is_flag=True, help="Write latency_distribution.png and pareto.png into --out.")
@click.option("--out", "out_dir", type=click.Path(), help="Folder for benchmark.json/.md, plots and profiler traces.")
@click.option("--json", "json_path", type=click.Path(), help="Also write the JSON results here.")
@click.option("--markdown", "markdown_path", type=click.Path(), help="Also write the Markdown results here.")
@click.option("--force", is_flag=True, help="Replace existing output files.")
@click.option("--config", "config_path", type=click.Path(), help="Config file (its [benchmark] and [data] sections).")
@click.option("--set", "overrides", multiple=True, help=SET_HELP)
def benchmark(model_paths, list_providers, data, inputs_path, mlperf, plot, out_dir, json_path, markdown_path, force,
              config_path, overrides, **flags):
    """Measure latency, throughput, memory, operators and accuracy of ONNX models side by side.

    \b
    Examples:
      compress benchmark model.onnx --data mnist
      compress benchmark teacher.onnx int8.onnx --data mnist --batch-sizes 1,8,32 --plot --out bench/
      compress benchmark bert.onnx --dim batch=1 --dim seq=128 --threads-sweep 1,2,4
      compress benchmark model.onnx --provider cuda --provider-option device_id=0
      compress benchmark --list-providers
    """
    import shlex
    import tempfile

    from compress.data import load_dataset
    from compress.fsutil import staging_dir, write_text
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
    for target in (out_dir, json_path, markdown_path):
        if target:
            _fresh(Path(target), force)
    command = shlex.join(["compress", *sys.argv[1:]]) if sys.argv[1:2] == ["benchmark"] else None
    with (staging_dir(Path(out_dir)) if out_dir else tempfile.TemporaryDirectory()) as tmp:
        result = run(cfg.benchmark, paths, dataset, Path(tmp), command=command)
        for target, key in ((json_path, "benchmark_json"), (markdown_path, "benchmark_md")):
            if target:
                write_text(target, result.outputs[key].read_text())
    click.echo(terminal_table(result.metrics), nl=False)
    first = next(iter(result.metrics.values()))
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
