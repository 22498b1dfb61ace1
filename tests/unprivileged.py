"""Run a function as an unprivileged user, so permission bits apply even when tests run as
root (root bypasses them). The function runs in a forked child that reuses this process's
loaded code, so the child needs no interpreter or file it may not be allowed to open; modules
imported lazily must be imported before (pass `warmup`, e.g. the same command on a good path),
as the interpreter's own files may be out of the unprivileged user's reach."""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

NOBODY = 65534


def run_unprivileged(fn: Callable[[], Any], warmup: Callable[[], Any] | None = None) -> Any:
    """`fn()`'s JSON-able result, computed as `nobody` when this process is root; `warmup()`
    runs first in this process, to import what `fn` imports lazily."""
    if warmup is not None:
        warmup()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            os.write(write_end, json.dumps(fn()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and data, "the unprivileged child failed"
    return json.loads(data)


def world_reachable_dir():
    """A fresh folder under the system temp dir that `nobody` can reach (mode 0755)."""
    import tempfile
    from pathlib import Path

    base = Path(tempfile.mkdtemp(prefix="attnlab-perm-"))
    os.chmod(base, 0o755)
    return base
