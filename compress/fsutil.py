"""Atomic file writes, hashing and the run-folder lock: no half-written artifact is ever left behind."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from compress.errors import OS_ERRORS, CompressError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the file the usual permissions
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in DISK_FULL:
            raise disk_full_error(path) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(path: str | Path) -> CompressError:
    return CompressError(OS_ERRORS[errno.ENOSPC].format(file=path))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: object) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def staging_dir(final_dir: Path) -> Iterator[Path]:
    """Build a whole stage folder in a hidden sibling and swap it in at the end, so a stage that
    fails or is killed leaves either the previous complete folder or nothing."""
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", dir=final_dir.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if final_dir.exists():
            shutil.rmtree(final_dir)
        os.replace(tmp, final_dir)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno in DISK_FULL:
            raise disk_full_error(final_dir) from exc
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """Run a block inside ``path``: onnxruntime's tools write temporary files (``sym_shape_infer_temp.onnx``,
    external-data files) into the current directory, even when they then fail."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Refuse a second process writing into the same run folder (O_EXCL lock file holding our pid)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / ".lock"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        owner = lock.read_text().strip() or "?"
        if owner.isdigit() and not _pid_alive(int(owner)):
            lock.unlink(missing_ok=True)  # left by a killed run
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        else:
            raise CompressError(f"{run_dir} is in use by another compress process (pid {owner}); wait for it or use another --out") from None
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
