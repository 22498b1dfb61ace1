"""Start P local gloo ranks in spawned processes and collect every rank's result or error.

`run_ranks(fn, world, *args)` calls `fn(rank, world, *args)` in each of `world` fresh
processes (each with `threads` torch threads and a gloo process group whose collectives
time out after `timeout_s`), and returns the list of results. Unlike a launcher that
joins ranks in order and kills the rest at the first failure, every rank reports: a rank
that raises sends back its traceback, and the survivors' own errors (a timeout or a
closed connection naming the ring step) are collected too, so a test can check them.
A rank that reports nothing within `deadline_s` is terminated (only processes started
here) and the call raises.
"""
from __future__ import annotations

import os
import queue
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.multiprocessing as mp


@dataclass
class RankError:
    """What a failed rank reported: its exception type, message and traceback."""

    rank: int
    kind: str
    message: str
    traceback: str


def _worker(rank, world, init_file, threads, timeout_s, fn, args, results):
    torch.set_num_threads(threads)
    import torch.distributed as dist

    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                world_size=world, timeout=timedelta(seconds=timeout_s))
        os.environ["ATTNLAB_CP_TIMEOUT"] = str(timeout_s)
        out = fn(rank, world, *args)
        report = (rank, True, out)
    except BaseException as exc:  # noqa: BLE001 — every failure is reported to the parent
        report = (rank, False, RankError(rank, type(exc).__name__, str(exc),
                                         traceback.format_exc()))
    results.put(report)
    results.close()
    results.join_thread()  # the report is flushed before the process exits
    os._exit(0)  # skip interpreter teardown (torch's exit handlers cost seconds here)


def run_ranks(fn, world: int, *args, threads: int = 1, timeout_s: float = 30.0,
              deadline_s: float = 600.0, raise_errors: bool = True) -> list:
    """Run `fn(rank, world, *args)` on `world` spawned gloo ranks; results by rank.

    `fn` must be importable (a module-level function). With `raise_errors` a failed rank
    raises RuntimeError with its traceback; otherwise its `RankError` is returned in place.
    """
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "rendezvous")
        procs = [ctx.Process(target=_worker, args=(r, world, init_file, threads, timeout_s,
                                                   fn, args, results), daemon=True)
                 for r in range(world)]
        for p in procs:
            p.start()
        got: dict = {}
        end = time.monotonic() + deadline_s
        try:
            while len(got) < world:
                try:
                    rank, ok, out = results.get(timeout=max(0.1, end - time.monotonic()))
                except queue.Empty:
                    missing = sorted(set(range(world)) - set(got))
                    raise RuntimeError(f"ranks {missing} reported nothing within "
                                       f"{deadline_s:g} s") from None
                got[rank] = (ok, out)
        finally:
            for p in procs:
                p.join(timeout=10)
                if p.is_alive():
                    p.terminate()
                    p.join(timeout=5)
    out = []
    for r in range(world):
        ok, val = got[r]
        if not ok and raise_errors:
            raise RuntimeError(f"rank {r} failed: {val.kind}: {val.message}\n{val.traceback}")
        out.append(val)
    return out
