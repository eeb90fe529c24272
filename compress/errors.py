"""The one exception users see, and the one translation layer that turns every other failure into
a one-line message naming the problem and the fix (used at the CLI boundary)."""
from __future__ import annotations

import errno


class CompressError(Exception):
    """A problem with the user's input or environment; the CLI prints it on one line and exits 2."""


OS_ERRORS = {
    errno.ENOSPC: "no space left on the device while writing {file}: nothing was written there; free some space "
                  "(or choose another --out) and run again (a pipeline or training continues with --resume)",
    errno.EDQUOT: "disk quota exceeded while writing {file}: nothing was written there; free some space (or choose "
                  "another --out) and run again",
    errno.EROFS: "{file} is on a read-only file system: choose another --out",
    errno.EACCES: "permission denied: {file}; choose a path you can write (or read), or fix its permissions",
    errno.EPERM: "operation not permitted on {file}; choose another path or fix its permissions",
    errno.EISDIR: "{file} is a folder, but a file is needed there: give a file path",
    errno.ENOTDIR: "a part of {file} is a file, not a folder: choose another path",
    errno.ENOENT: "file not found: {file}",
    errno.ENAMETOOLONG: "the path {file} is too long: choose a shorter one",
}


def user_message(exc: BaseException) -> str | None:
    """The one-line message for ``exc``, or None when it is not a known user-side failure (a bug)."""
    if isinstance(exc, CompressError):
        return str(exc)
    from compress.fsutil import is_disk_full  # fsutil builds on this module

    if is_disk_full(exc):
        return OS_ERRORS[errno.ENOSPC].format(file=getattr(exc, "filename", None) or "the output")
    if isinstance(exc, OSError) and exc.errno in OS_ERRORS:
        return OS_ERRORS[exc.errno].format(file=exc.filename or "the output")
    if isinstance(exc, UnicodeDecodeError):
        return f"cannot decode text as {exc.encoding} ({exc.reason} at byte {exc.start}): save the file as UTF-8"
    if type(exc).__name__ == "DecompressionBombError":  # Pillow's, without importing Pillow here
        return f"an image is too large to decode safely ({first_line(exc)}): resize it, or remove it from the data"
    if isinstance(exc, MemoryError):
        return "out of memory: use a smaller batch size, model or dataset"
    return None


def first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
