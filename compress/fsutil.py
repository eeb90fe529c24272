"""Atomic file writes, hashing and the run-folder lock: no half-written artifact is ever left behind."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
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
    except (OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        if is_disk_full(exc):
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
def staging_dir(final_dir: Path, owned: Iterable[str] | None = ()) -> Iterator[Path]:
    """Build a whole stage folder in a hidden sibling and swap it in at the end, so a stage that
    fails or is killed leaves either the previous complete folder or nothing.

    ``owned``: the files (relative to ``final_dir``) compress wrote there before, from its record. A
    previous folder holding only those is replaced whole; one holding anything else keeps it: only
    the owned files go, the new ones are moved in, and a new file that would replace someone else's
    is refused before anything is touched."""
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", dir=final_dir.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        foreign = foreign_files(final_dir, owned) if final_dir.exists() else []
        if not foreign:
            if final_dir.exists():
                shutil.rmtree(final_dir)
            os.replace(tmp, final_dir)
        else:
            _merge_into(tmp, final_dir, set(owned or ()), foreign)
    except (OSError, RuntimeError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(exc):
            raise disk_full_error(final_dir) from exc
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def foreign_files(folder: Path, owned: Iterable[str] | None) -> list[str]:
    """Entries of ``folder`` (relative paths, files and empty folders) that compress did not write there."""
    owned = set(owned or ())
    entries = [p for p in Path(folder).rglob("*") if p.is_file() or p.is_symlink() or (p.is_dir() and not any(p.iterdir()))]
    return sorted(rel for rel in (p.relative_to(folder).as_posix() for p in entries) if rel not in owned)


def _merge_into(new: Path, final_dir: Path, owned: set[str], foreign: list[str]) -> None:
    """Replace compress's own files in ``final_dir`` by those of ``new``, keeping everyone else's."""
    incoming = sorted(p.relative_to(new).as_posix() for p in new.rglob("*") if p.is_file())
    clash = sorted(set(incoming) & set(foreign))
    if clash:
        raise CompressError(f"{final_dir / clash[0]} was not written by compress and would be replaced: move it away, "
                            "or choose another --out")
    for rel in owned:
        (final_dir / rel).unlink(missing_ok=True)
    for rel in incoming:
        target = final_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(new / rel, target)
    shutil.rmtree(new, ignore_errors=True)


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC / EDQUOT, also as torch.save reports them: its zip writer raises RuntimeError('... unexpected pos ...')
    when a write comes up short, which is what a full disk does."""
    if isinstance(exc, OSError):
        return exc.errno in DISK_FULL
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("unexpected pos" in text or "No space left on device" in text)


def check_out_folder(out_dir: Path) -> None:
    """An --out folder must be a folder (or not exist yet) on a writable file system."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CompressError(f"--out {out_dir} is a file, not a folder: give a folder path (or move the file away)")
    existing = next(p for p in (out_dir, *out_dir.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        raise CompressError(f"--out {out_dir}: {existing} is a file, not a folder: choose another --out")
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        raise CompressError(f"--out {out_dir} is on a read-only file system: choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CompressError(f"--out {out_dir}: permission denied writing in {existing}: choose another --out")


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
    """Refuse a second process writing into the same run folder (O_EXCL lock file holding our pid). A lock
    whose process is gone, or is no compress process (its pid was reused), is stale and taken over."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / ".lock"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        owner = lock.read_text(errors="replace").strip()
        if not owner.isdigit():
            raise CompressError(f"{lock} holds no process id ({owner[:20]!r}): if no compress run is using {run_dir}, "
                                f"delete {lock} and run again") from None
        if is_compress_process(int(owner)):
            raise CompressError(f"{run_dir} is in use by another compress process (pid {owner}); wait for it or use "
                                f"another --out (if that process is not compress, delete {lock})") from None
        lock.unlink(missing_ok=True)  # left by a killed run
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)


def is_compress_process(pid: int) -> bool:
    """``pid`` is alive and runs compress (its command line names it). Where there is no /proc, alive is enough."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not Path("/proc/self/cmdline").exists():
        return True
    try:
        args = cmdline.read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False  # it ended meanwhile
    return any(re.search(r"\bcompress\b", arg) for arg in args)


TEMP_PREFIX = re.compile(r"compress-[a-z]+-(\d+)-.+")  # private_tempdir's names: compress-KIND-PID-random


def private_tempdir(kind: str) -> tempfile.TemporaryDirectory:
    """A private temporary folder named after this process, so the next run can remove it if this one is killed."""
    return tempfile.TemporaryDirectory(prefix=f"compress-{kind}-{os.getpid()}-")


def remove_stale_tempdirs() -> list[Path]:
    """Remove the private temporary folders of processes that are gone (killed, so never cleaned). A live pid
    keeps its folders, whatever it runs: a reused pid leaves a folder behind, never takes a live one's."""
    removed = []
    root = Path(tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            match = TEMP_PREFIX.fullmatch(entry.name)
            if match and entry.is_dir() and not entry.is_symlink() and not _pid_alive(int(match.group(1))):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
