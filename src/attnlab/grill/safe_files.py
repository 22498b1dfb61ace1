"""Files that must not be lost: path checks before work starts, locks, atomic writes.

- `output_path_problem(path, what)`: why a report can't be written to `path` (missing
  folder, a directory, a path under a regular file, an unwritable folder), or None. The
  CLI calls it before any evidence runs, so a long run never ends in a failed write.
- `creatable_path_problem(path, what)`: the same for a file whose folders may be created
  (the quiz's progress file), probing the nearest existing folder.
- `file_lock(path)`: an exclusive advisory lock on `<dir>/.<name>.lock`, held while a
  reader-modifier-writer re-reads and merges (`progress.Progress.save`).
- `atomic_write_text(path, text)`: temp file + fsync + `os.replace`, keeping the file's mode.
- `remove_stale_temps(path)`: temp files a killed writer left behind (call under the lock).

Permission checks use `os.access` and an actual probe write: root passes `os.access` on
almost anything, and a read-only mount or a path under a regular file fails for root too.
"""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_TIMEOUT_S = 30.0


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _nearest_existing(path: Path) -> Path:
    p = path
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def _probe_write(folder: Path) -> str | None:
    """None if a file can be created and removed in `folder`, else the OS's reason."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return "permission denied"
    try:
        fd, probe = tempfile.mkstemp(prefix=".attnlab-probe-", suffix=".tmp", dir=folder)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return None


def _existing_file_problem(path: Path, what: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"{what} {path} cannot be used: {exc.strerror or exc}"
    if stat.S_ISDIR(st.st_mode):
        return f"{what} {path} is a directory; expected a file path"
    if not stat.S_ISREG(st.st_mode):
        return f"{what} {path} is not a regular file"
    return None


def output_path_problem(path: str | Path, what: str = "output file") -> str | None:
    """Why `path` cannot be written as a new or replaced file, or None if it can.

    Its folder must already exist (reports never create folders silently)."""
    path = Path(path)
    if str(path).strip() == "":
        return f"{what} path is empty"
    if os.path.lexists(path):
        problem = _existing_file_problem(path, what)
        if problem:
            return problem
    parent = path.parent
    if not parent.exists():
        anc = _nearest_existing(parent)
        if anc.exists() and not anc.is_dir():
            return f"{what} {path} cannot be created: {anc} is a file, not a directory"
        return f"{what} {path} cannot be created: folder {parent} does not exist"
    if not parent.is_dir():
        return f"{what} {path} cannot be created: {parent} is a file, not a directory"
    why = _probe_write(parent)
    if why:
        return f"{what} {path} cannot be written: folder {parent}: {why}"
    return None


def creatable_path_problem(path: str | Path, what: str = "file") -> str | None:
    """Like `output_path_problem`, but missing folders are fine if they can be created."""
    path = Path(path)
    if str(path).strip() == "":
        return f"{what} path is empty"
    if os.path.lexists(path):
        problem = _existing_file_problem(path, what)
        if problem:
            return problem
        if not os.access(path, os.R_OK):
            return f"{what} {path} cannot be read: permission denied"
    anc = _nearest_existing(path.parent)
    if not anc.exists():  # a dangling symlink on the way
        return f"{what} {path} cannot be created: {anc} is a broken link"
    if not anc.is_dir():
        return f"{what} {path} cannot be created: {anc} is a file, not a directory"
    why = _probe_write(anc)
    if why:
        return f"{what} {path} cannot be written: folder {anc}: {why}"
    return None


@contextlib.contextmanager
def file_lock(path: str | Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive lock tied to `path` (on `<dir>/.<name>.lock`) for the block.

    Raises TimeoutError if another process holds it for longer than `timeout` seconds.
    Where the platform has no `fcntl` (Windows), `msvcrt.locking` is used instead.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                _try_lock(fd)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{path} is locked by another process "
                                       f"(waited {timeout:.0f} s for {lock})") from None
                time.sleep(0.02)
        try:
            yield
        finally:
            _unlock(fd)
    finally:
        os.close(fd)


def _try_lock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            raise BlockingIOError from None
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _unlock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_UN)


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Delete temp files an interrupted `atomic_write_text(path, ...)` left; returns them.

    Only safe under `file_lock(path)`: a live writer holds the lock while its temp exists."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for tmp in path.parent.glob(f"{_temp_prefix(path)}*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` via temp file + fsync + os.replace; the old file survives any error.

    The new file keeps the old one's permission bits (a new file gets 0o666 less the umask,
    as `open` would give it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = _new_file_mode()
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if not hasattr(os, "fchmod"):
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if os.name == "posix":  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
