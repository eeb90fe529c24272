"""Issue 14, case by case through the real CLI: nothing lost, nothing run, nothing stale.

Each test runs a hostile input or a fault through `compress ...` (click's runner, or a subprocess where a
signal is involved) and asserts the exit code, that no traceback is printed, the one-line message, and that
the folder listing is what it was (nothing deleted, nothing half-written). Case 1 (a crafted pickle is never
executed) is tests/test_safety.py; the edge apps' model.json cases are in tests/test_edge_python.py."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from compress import distributed, fsutil
from compress.checkpoint import save_model
from compress.cli import main
from compress.zoo import ModelSpec, build_model

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ["--set", "teacher.source=train", "--set", "teacher.model.arch=mlp", "--set", "teacher.model.width=0.25",
           "--set", "teacher.train.epochs=1"]
BENCH_FAST = ["--set", "benchmark.min_runs=5", "--set", "benchmark.min_seconds=0", "--set", "benchmark.warmup=fixed",
              "--set", "benchmark.warmup_runs=1", "--set", "benchmark.profile=false", "--set", "benchmark.cold_start=false",
              "--set", "benchmark.rounds=1"]


def listing(root: Path) -> list[str]:
    """Every file and folder under ``root``, hidden ones included, with file contents' sizes."""
    root = Path(root)
    if not root.exists():
        return []
    return sorted(f"{p.relative_to(root)}{'/' if p.is_dir() else ':' + str(p.stat().st_size)}" for p in root.rglob("*"))


def invoke(args) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.output


def fails(args, expected: str, unchanged: Path | None = None) -> str:
    """The command exits 2 with one 'error: ...' line containing ``expected``; ``unchanged`` keeps its listing."""
    before = listing(unchanged) if unchanged is not None else None
    code, output = invoke(args)
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and expected in errors[0], output
    if unchanged is not None:
        assert listing(unchanged) == before
    return errors[0]


def succeeds(args) -> str:
    code, output = invoke(args)
    assert code == 0, output
    return output


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny checkpoints and ONNX files: an MLP for digits (8x8, 10 classes), one for 28x28 inputs, one with 7 classes."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    paths = {}
    for name, shape, classes in (("digits", (1, 8, 8), 10), ("mnist", (1, 28, 28), 10), ("seven", (1, 8, 8), 7)):
        model = build_model(ModelSpec("mlp", 0.25), shape, classes)
        save_model(model, root / f"{name}.safetensors")
        torch.onnx.export(model.eval(), (torch.zeros(2, *shape),), str(root / f"{name}.onnx"), dynamo=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        paths[name], paths[f"{name}_onnx"] = root / f"{name}.safetensors", root / f"{name}.onnx"
    return paths


def digits_npz(path: Path, relabel: bool = False) -> Path:
    from sklearn.datasets import load_digits

    data = load_digits()
    y = (data.target + 1) % 10 if relabel else data.target
    np.savez(path, x=data.images.reshape(-1, 1, 8, 8).astype(np.float32) / 16, y=y)
    return path


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    """A real tmpfs mounted at ``path`` (root only); skips the test where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


# ---- 2. a changed data file reruns what depends on it --------------------------------------------------

def test_resume_reruns_a_stage_whose_data_file_changed_in_place(tmp_path):
    data = digits_npz(tmp_path / "d.npz")
    args = ["teacher", "--data", data, *TEACHER, "--set", "teacher.train.epochs=3"]

    def metrics(out: Path) -> dict:
        return json.loads((out / "manifest.json").read_text())["stages"]["teacher"]["metrics"]

    succeeds([*args, "--out", tmp_path / "t"])
    first = metrics(tmp_path / "t")
    digits_npz(data, relabel=True)  # every label changed, same path, same size
    resumed = succeeds([*args, "--out", tmp_path / "t", "--resume"])
    assert "[teacher] running" in resumed and "reused" not in resumed
    succeeds([*args, "--out", tmp_path / "fresh"])
    same = _untimed(metrics(tmp_path / "t"))
    assert same == _untimed(metrics(tmp_path / "fresh")) != _untimed(first)


def _untimed(value):
    """Measured numbers without wall times (``*_s``), which differ between identical runs."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if not k.endswith("_s")}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


@pytest.mark.slow
def test_pipeline_resume_after_labels_changed_reruns_every_stage_and_matches_a_fresh_run(tmp_path, quick_toml):
    data = digits_npz(tmp_path / "d.npz")
    args = ["pipeline", "--config", quick_toml, "--data", data, "--set", "teacher.train.epochs=3",
            "--set", "distill.train.epochs=2", "--set", "prune.finetune.epochs=1"]
    succeeds([*args, "--out", tmp_path / "run"])
    digits_npz(data, relabel=True)
    output = succeeds([*args, "--out", tmp_path / "run", "--resume"])
    assert "reused" not in output
    succeeds([*args, "--out", tmp_path / "fresh"])
    resumed = json.loads((tmp_path / "run" / "manifest.json").read_text())
    fresh = json.loads((tmp_path / "fresh" / "manifest.json").read_text())
    assert all(stage["status"] == "done" for stage in resumed["stages"].values())
    assert {n: r["accuracy"] for n, r in resumed["results"].items()} == {n: r["accuracy"] for n, r in fresh["results"].items()}


# ---- 3. and 4. --out: never delete what compress did not write ----------------------------------------------

def _foreign_folder(root: Path) -> Path:
    (root / "teacher").mkdir(parents=True)
    (root / "teacher" / "notes.txt").write_text("mine")
    (root / ".teacher.abcd1234").mkdir()
    (root / ".teacher.abcd1234" / "draft.txt").write_text("mine too")
    (root / "keep.tmp").write_text("and this")
    return root


def test_pipeline_refuses_a_folder_that_is_not_a_run_folder(tmp_path):
    out = _foreign_folder(tmp_path / "mine")
    fails(["pipeline", "--data", "digits", *TEACHER, "--out", out], "is not empty and is not a compress run folder", out)


def test_pipeline_force_into_a_foreign_folder_replaces_none_of_its_files(tmp_path):
    out = _foreign_folder(tmp_path / "mine")
    fails(["pipeline", "--data", "digits", *TEACHER, "--out", out, "--force"],
          f"{out / 'teacher'} holds files compress did not write (notes.txt)", out)
    (out / "teacher" / "notes.txt").unlink()
    (out / "report.md").write_text("my report")
    fails(["pipeline", "--data", "digits", *TEACHER, "--out", out, "--force"],
          f"{out / 'report.md'} was not written by compress", out)


def test_per_stage_command_refuses_a_foreign_folder_and_force_keeps_its_files(tmp_path):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "thesis.txt").write_text("two years of work")
    fails(["teacher", "--data", "digits", *TEACHER, "--out", out], "is not empty and is not a compress run folder", out)
    succeeds(["teacher", "--data", "digits", *TEACHER, "--out", out, "--force"])
    assert (out / "thesis.txt").read_text() == "two years of work"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "teacher.safetensors", "thesis.txt"]
    # A second --force replaces what compress wrote (recorded in the manifest), still not the thesis.
    succeeds(["teacher", "--data", "digits", *TEACHER, "--out", out, "--force", "--set", "teacher.train.epochs=2"])
    assert (out / "thesis.txt").read_text() == "two years of work"
    assert json.loads((out / "manifest.json").read_text())["stages"]["teacher"]["files"] == ["manifest.json", "teacher.safetensors"]


def test_force_replaces_a_folder_written_before_files_were_recorded(tmp_path):
    out = tmp_path / "t"
    succeeds(["teacher", "--data", "digits", *TEACHER, "--out", out])
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["stages"]["teacher"]["files"]  # as an earlier compress wrote it: outputs only
    (out / "manifest.json").write_text(json.dumps(manifest))
    succeeds(["teacher", "--data", "digits", *TEACHER, "--out", out, "--force"])
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "teacher.safetensors"]


def test_benchmark_force_keeps_an_unrelated_file_and_never_replaces_its_input(tmp_path, models):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "thesis.txt").write_text("keep me")
    succeeds(["benchmark", models["digits_onnx"], "--data", "digits", *BENCH_FAST, "--out", out, "--force"])
    assert (out / "thesis.txt").read_text() == "keep me" and (out / "benchmark.json").is_file()
    inside = out / "m.onnx"
    inside.write_bytes(models["digits_onnx"].read_bytes())
    fails(["benchmark", inside, "--data", "digits", *BENCH_FAST, "--out", out, "--force"],
          f"would replace the input {inside}", out)


def test_ship_into_its_own_run_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text("{}")
    (run / "report.md").write_text("results")
    fails(["ship", run, "--out", run, "--force"], f"would replace the run folder {run}", tmp_path)
    fails(["ship", run / "bundle", "--out", tmp_path, "--force"], "would replace the run folder", tmp_path)


@pytest.mark.parametrize("command", ["quantize", "export"])
def test_output_equal_to_the_input_is_refused(tmp_path, models, command):
    source = tmp_path / ("m.onnx" if command == "quantize" else "m.safetensors")
    source.write_bytes(models["digits_onnx" if command == "quantize" else "digits"].read_bytes())
    fails([command, source, "--data", "digits", "--out", source, "--force"], f"would replace the input {source}", tmp_path)


# ---- 5. disk full ------------------------------------------------------------------------------------------

def test_torch_save_hitting_a_full_disk_is_the_disk_full_line(tmp_path, monkeypatch):
    def full(*args, **kwargs):  # what torch.save's zip writer raises when a write comes up short (ENOSPC)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full)
    message = fails(["teacher", "--data", "digits", *TEACHER, "--out", tmp_path / "t"], "no space left on the device",
                    tmp_path)
    assert "free some space" in message


@pytest.mark.parametrize("size", ["60k", "150k"])
def test_a_really_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, size):
    with tmpfs(tmp_path / "small", f"size={size}") as disk:
        message = fails(["teacher", "--data", "digits", "--set", "teacher.source=train", "--set", "teacher.model.arch=mlp",
                         "--set", "teacher.train.epochs=1", "--out", disk / "t"], "no space left on the device")
        assert "free some space" in message
        assert [p for p in disk.rglob("*") if p.is_file()] == []


# ---- 6. quantizing a quantized model; a model for other classes ---------------------------------------------

def test_quantizing_an_output_of_quantize_is_refused(tmp_path, models):
    model = onnx.load(str(models["digits_onnx"]))
    entry = model.metadata_props.add()
    entry.key, entry.value = "quantization", json.dumps({"candidate": "u8s8_qdq"})  # what compress quantize records
    quantized = tmp_path / "q.onnx"
    onnx.save(model, str(quantized))
    fails(["quantize", quantized, "--data", "digits", "--out", tmp_path / "qq.onnx"], "is already quantized", tmp_path)


def test_quantize_refuses_a_model_for_another_number_of_classes(tmp_path, models):
    fails(["quantize", models["seven_onnx"], "--data", "digits", "--out", tmp_path / "q.onnx"],
          "outputs 7 classes but dataset digits has 10", tmp_path)


# ---- 7. one line instead of a traceback ---------------------------------------------------------------------

def _image_folder(root: Path, size: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (size, size)).astype(np.uint8), mode="L").save(root / label / f"{i}.png")
    return root


def test_a_decompression_bomb_image_is_one_line(tmp_path, monkeypatch):
    root = _image_folder(tmp_path / "images", size=64)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x64 is then "a bomb", as 20000x20000 is by default
    fails(["teacher", "--data", root, *TEACHER, "--out", tmp_path / "t"], f"image {root / 'a' / '0.png'} is too large to "
          "decode safely", tmp_path)


@pytest.mark.parametrize("content, expected", [
    ({"x": np.array([object()] * 10, dtype=object), "y": np.arange(10)}, "holds Python object arrays"),
    ({"x": np.array(3.0), "y": np.arange(10)}, "x is a single value (a 0-d array)"),
    ({"x": np.zeros((30, 6), np.float32), "y": np.zeros(30, int)}, "has only 1 class"),
    ({"x": np.zeros((30, 0), np.float32), "y": np.repeat(np.arange(3), 10)}, "each sample has zero features"),
])
def test_npz_with_objects_a_0d_array_one_class_or_zero_features(tmp_path, content, expected):
    np.savez(tmp_path / "d.npz", **content)
    fails(["teacher", "--data", tmp_path / "d.npz", *TEACHER, "--out", tmp_path / "t"], expected, tmp_path)


def test_npz_of_random_bytes_is_not_called_pickled_data(tmp_path):
    (tmp_path / "d.npz").write_bytes(np.random.default_rng(0).bytes(3000))
    message = fails(["teacher", "--data", tmp_path / "d.npz", *TEACHER, "--out", tmp_path / "t"],
                    "is not an .npz archive", tmp_path)
    assert "pickle" not in message


def test_a_csv_given_as_data_is_read_as_text_and_its_problem_named(tmp_path):
    """A CSV is a text source now: one that exists is never 'not found'; its real problem is named."""
    (tmp_path / "d.csv").write_text("text,label\nhello,0\n")
    fails(["teacher", "--data", tmp_path / "d.csv", *TEACHER, "--out", tmp_path / "t"],
          f"{tmp_path / 'd.csv'} has only one class (0): a classifier needs at least 2", tmp_path)
    (tmp_path / "notes.txt").write_text("hello\n")
    fails(["teacher", "--data", tmp_path / "notes.txt", *TEACHER, "--out", tmp_path / "t"],
          "is a TXT file: text data is a .csv, .tsv or .jsonl file", tmp_path)


def test_a_config_file_that_is_not_utf8(tmp_path):
    (tmp_path / "c.toml").write_bytes(b'[data]\nsource = "\xff\xfe"\n')
    fails(["teacher", "--config", tmp_path / "c.toml", *TEACHER, "--out", tmp_path / "t"],
          f"config {tmp_path / 'c.toml'} is not UTF-8 text", tmp_path)


@pytest.mark.parametrize("key", ["data.seed", "teacher.train.seed"])
def test_negative_seeds(tmp_path, key):
    fails(["teacher", "--data", "digits", *TEACHER, "--set", f"{key}=-1", "--out", tmp_path / "t"],
          "seed must be an integer from 0 to 2**32 - 1, got -1", tmp_path)


@pytest.mark.parametrize("key", ["ship.accuracy_budget", "quantize.max_accuracy_drop", "distill.temperature"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_nan_and_inf_config_values(key, value):
    fails(["config", "--set", f"{key}={value}"], f"config key {key} must be a finite number")


def test_out_that_is_a_file_or_under_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    fails(["teacher", "--data", "digits", *TEACHER, "--out", tmp_path / "afile"], "is a file, not a folder", tmp_path)
    fails(["teacher", "--data", "digits", *TEACHER, "--out", tmp_path / "afile" / "sub"],
          f"{tmp_path / 'afile'} is a file, not a folder", tmp_path)
    fails(["pipeline", "--data", "digits", "--out", tmp_path / "afile"], "is a file, not a folder", tmp_path)


def test_out_on_a_read_only_file_system(tmp_path, models):
    with tmpfs(tmp_path / "ro", "ro,size=64k") as disk:
        fails(["teacher", "--data", "digits", *TEACHER, "--out", disk / "t"], "is on a read-only file system")
        fails(["export", models["digits"], "--data", "digits", "--out", disk / "m.onnx"], "is on a read-only file system")


def test_json_pointing_to_a_folder(tmp_path, models):
    fails(["benchmark", models["digits_onnx"], "--data", "digits", *BENCH_FAST, "--json", tmp_path],
          f"--json {tmp_path} is a folder: give a file path", tmp_path)


@pytest.mark.parametrize("command", ["export", "distill"])
def test_a_model_for_other_inputs(tmp_path, models, command):
    args = (["export", models["mnist"], "--out", tmp_path / "m.onnx"] if command == "export" else
            ["distill", "--teacher", models["mnist"], "--set", "distill.train.epochs=1", "--out", tmp_path / "s"])
    fails([*args, "--data", "digits"], "does not take the inputs of dataset digits ([N, 1, 8, 8])", tmp_path)


def test_a_builtin_as_teacher_factory_is_refused_and_never_called(tmp_path):
    weights = tmp_path / "w.pt"
    torch.save(build_model(ModelSpec("mlp", 0.25), (1, 8, 8), 10).state_dict(), weights)
    for factory in ("os:system", "os:getpid", "builtins:exec"):
        fails(["teacher", "--data", "digits", "--set", "teacher.source=file", "--set", f'teacher.path="{weights}"',
               "--set", f"teacher.factory={factory}", "--out", tmp_path / "t"],
              f"teacher factory '{factory}' is a builtin_function_or_method, not a Python function or class", tmp_path)


@pytest.mark.parametrize("manifest", [[1, 2], {"stages": []}, {"stages": {"teacher": "done"}},
                                      {"stages": {"teacher": {"outputs": {"teacher": "teacher.safetensors"}}}}])
def test_a_manifest_of_the_wrong_shape_on_resume(tmp_path, manifest):
    out = tmp_path / "t"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps(manifest))
    fails(["teacher", "--data", "digits", *TEACHER, "--out", out, "--resume"], "it was not written by this compress",
          tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps(manifest))
    fails(["pipeline", "--data", "digits", *TEACHER, "--out", run, "--resume"], "it was not written by this compress",
          tmp_path)


@pytest.mark.parametrize("manifest", [[1, 2], {"status": "complete", "ship": {"artifact": "int8"}, "results": []},
                                      {"status": "complete", "ship": "int8", "results": {}, "config": {"data": {}}},
                                      {"status": "complete", "ship": {"artifact": "int8"}, "config": {"data": {}},
                                       "results": {"int8": {"accuracy": "high"}}}])
def test_a_manifest_of_the_wrong_shape_on_ship(tmp_path, manifest):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps(manifest))
    fails(["ship", run, "--out", tmp_path / "bundle"], "rerun the pipeline into a fresh folder", tmp_path)


def test_the_launcher_names_a_killed_peer_in_one_line():
    report = ("[W] Sending process 101 closing signal SIGTERM\n"
              "torch.distributed.elastic.multiprocessing.api: failed (exitcode: -9) local_rank: 1 (pid: 102)\n"
              "Traceback (most recent call last):\n  ...\nChildFailedError:\n"
              "============================================================\ncompress FAILED\n"
              "------------------------------------------------------------\nFailures:\n  <NO_OTHER_FAILURES>\n"
              "------------------------------------------------------------\nRoot Cause (first observed failure):\n"
              "[0]:\n  time      : 2026-01-01_00:00:00\n  host      : box\n  rank      : 1 (local_rank: 1)\n"
              "  exitcode  : -9 (pid: 102)\n  error_file: <N/A>\n  traceback : Signal 9 (SIGKILL) received by PID 102\n")
    message = distributed.dead_worker_message(report, 1)
    assert message.startswith("training process 1 of the data-parallel run was killed by SIGKILL")
    assert "rerun with --resume" in message and "\n" not in message
    assert "exited with code 3" in distributed.dead_worker_message("rank : 0 (local_rank: 0)\n exitcode : 3 (pid: 9)", 1)


@pytest.mark.slow
def test_a_killed_data_parallel_peer_is_one_line(tmp_path):
    command = [sys.executable, "-m", "compress", "teacher", "--data", "digits", "--set", "teacher.source=train",
               "--set", "teacher.model.arch=mlp", "--set", "teacher.train.epochs=300", "--out", str(tmp_path / "t"),
               "--nproc", "2"]
    launcher = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        for _ in range(20):  # until training has started in both processes
            if "epoch 1/" in launcher.stdout.readline():
                break
        killed = False
        for _ in range(100):
            for pid in _rank_one_processes(launcher.pid):
                os.kill(pid, signal.SIGKILL)
                killed = True
            if killed:
                break
            time.sleep(0.1)
        assert killed
        _, stderr = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert launcher.returncode == 2 and "Traceback" not in stderr
    assert stderr.strip().splitlines() == [stderr.strip()]
    assert "error: training process 1 of the data-parallel run was killed by SIGKILL" in stderr


def _rank_one_processes(ancestor: int) -> list[int]:
    """The worker processes with RANK=1 among the descendants of ``ancestor`` (torchrun's children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            grandparent_stat = Path(f"/proc/{parent}/stat").read_text()
            if int(grandparent_stat.rsplit(")", 1)[1].split()[1]) == ancestor and \
                    b"RANK=1\0" in (entry / "environ").read_bytes():
                found.append(int(entry.name))
    return found


# ---- 8. bad input that used to be accepted ------------------------------------------------------------------

def test_images_in_nested_subfolders_are_refused_not_skipped(tmp_path):
    root = _image_folder(tmp_path / "images")
    (root / "a" / "more").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(root / "a" / "more" / "x.png")
    fails(["teacher", "--data", root, *TEACHER, "--out", tmp_path / "t"],
          f"{root / 'a' / 'more'} is a folder inside class folder a", tmp_path)


# ---- 9. loose ends after faults ------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigterm_cleans_up_like_ctrl_c(tmp_path):
    out = tmp_path / "t"
    command = [sys.executable, "-m", "compress", "teacher", "--data", "digits", "--set", "teacher.source=train",
               "--set", "teacher.model.arch=mlp", "--set", "teacher.train.epochs=500", "--out", str(out)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        for _ in range(600):  # until the first epoch checkpoint is written
            if (tmp_path / ".t.checkpoints" / "teacher.pt").is_file() or process.poll() is not None:
                break
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1] == "interrupted: finished stages are kept; rerun with --resume"
    assert "Traceback" not in stderr
    # No staging folder, no lock; the epoch checkpoints stay for --resume.
    assert [p.name for p in tmp_path.iterdir()] == [".t.checkpoints"]
    assert [p.name for p in (tmp_path / ".t.checkpoints").iterdir()] == ["teacher.pt"]


def test_a_killed_runs_staging_folder_goes_with_the_next_run(tmp_path, models):
    (tmp_path / "o" / ".sd.k3j4h5g6").mkdir(parents=True)  # what a SIGKILL in the middle of a stage leaves
    (tmp_path / "o" / ".sd.k3j4h5g6" / "student.safetensors").write_bytes(b"half")
    succeeds(["distill", "--teacher", models["digits"], "--data", "digits", "--set", "distill.train.epochs=1",
              "--set", "distill.student.arch=mlp", "--set", "distill.student.width=0.25", "--out", tmp_path / "o" / "sd"])
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["sd"]


def test_temporary_folders_of_killed_runs_are_removed_at_the_next_start(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = [tmp_path / f"compress-quantize-{gone.pid}-x1", tmp_path / f"compress-rank-{gone.pid}-x2"]
    alive = tmp_path / f"compress-quantize-{os.getppid()}-x3"  # a live process's folder is never taken
    unrelated = tmp_path / "compress-notes"
    for folder in (*dead, alive, unrelated):
        folder.mkdir()
    succeeds(["config"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, unrelated.name])
    with fsutil.private_tempdir("quantize") as folder:
        assert Path(folder).name.startswith(f"compress-quantize-{os.getpid()}-")


def test_a_lock_of_an_unrelated_live_process_is_stale_and_garbage_says_how_to_clear_it(tmp_path):
    out = tmp_path / "t"
    checkpoints = tmp_path / ".t.checkpoints"
    checkpoints.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # alive, and not compress
    try:
        (checkpoints / ".lock").write_text(str(sleeper.pid))
        succeeds(["teacher", "--data", "digits", *TEACHER, "--out", out])
    finally:
        sleeper.kill()
        sleeper.wait()
    checkpoints.mkdir()
    (checkpoints / ".lock").write_text("garbage")
    message = fails(["teacher", "--data", "digits", *TEACHER, "--out", out, "--force"], "holds no process id", tmp_path)
    assert f"delete {checkpoints / '.lock'} and run again" in message


def _serve_module():
    spec = importlib.util.spec_from_file_location("edge_web_serve_faults", ROOT / "edge_demo" / "web" / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_edge_web_server_stays_inside_the_bundle(tmp_path, monkeypatch):
    serve = _serve_module()
    monkeypatch.setattr(serve, "RUNTIME_FILE", Path(serve.__file__))  # the page's runtime is not needed here
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.json").write_text("{}")
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    (bundle / "leak.txt").symlink_to(secret)
    server, url = serve.serve_in_thread({"bundle": bundle})
    try:
        assert urllib.request.urlopen(url + "bundle/model.json").read() == b"{}"
        for path, status in (("bundle/leak.txt", 404), ("bundle/%00", 400), ("bundle/..%2fsecret.txt", 404)):
            with pytest.raises(urllib.error.HTTPError) as error:
                urllib.request.urlopen(url + path)
            assert error.value.code == status, path
    finally:
        server.shutdown()

