"""Shared benchmark helpers: this machine's peaks, timing, and the results-file header.

Every benchmark measures the peak it reports against at the start of its own run (conventions §7):
fp32 matmul FLOP/s for compute-bound work, streaming copy bytes/s for memory-bound work.
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from attnlab.analysis.machine import Machine, cpu_info
from attnlab.grill.runner import machine_line

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Timing:
    median: float  # seconds
    best: float
    runs: list[float]


def time_fn(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> Timing:
    """Median (and best) wall time of `fn()` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return Timing(statistics.median(runs), min(runs), runs)


def matmul_peak_flops(n: int = 2048, repeats: int = 7) -> float:
    """fp32 FLOP/s of an n×n×n matmul (best of `repeats`: a peak is a ceiling)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = time_fn(lambda: a @ b, repeats=repeats, warmup=2)
    return 2 * n ** 3 / t.best


def stream_bandwidth(n_bytes: int = 256 * 2 ** 20, repeats: int = 5) -> float:
    """Bytes/s of a large fp32 copy (read + write counted)."""
    src = torch.randn(n_bytes // 4)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), repeats=repeats, warmup=1)
    return 2 * n_bytes / t.best


def load_line() -> str:
    """1-minute load average against the core count: timings on a shared machine are noisy."""
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        return "load average unavailable"
    return f"load average {load1:.2f} on {os.cpu_count()} cores at the start of the run"


def memory_line() -> str:
    """Whether torch's large buffers use transparent huge pages (benchmarks/__init__.py)."""
    mode = "unknown"
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
        mode = text[text.index("[") + 1:text.index("]")]
    except (OSError, ValueError):
        pass
    on = os.environ.get("THP_MEM_ALLOC_ENABLE") == "1"
    return (f"transparent huge pages for torch buffers ≥ 2 MiB {'on' if on else 'off'} "
            f"(THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}; "
            f"kernel mode {mode})")


def header(title: str, peak_flops: float | None = None, bandwidth: float | None = None,
           machine: Machine | None = None) -> str:
    """Results-file header: the machine line (CPU model, ISA, threads; with `machine`, its
    per-dtype matmul peaks and read bandwidth), the software line and the load."""
    line = machine.line() if machine is not None else cpu_info().describe()
    lines = [f"# {title}", "", f"Machine: {line}", "", f"Software: {machine_line()}", "",
             f"Load: {load_line()}", "", f"Memory: {memory_line()}", ""]
    if peak_flops is not None:
        lines.append(f"Measured fp32 matmul peak: {peak_flops / 1e9:.1f} GFLOP/s (2048³, best of 7)")
    if bandwidth is not None:
        lines.append(f"Measured copy bandwidth: {bandwidth / 1e9:.1f} GB/s")
    return "\n".join(lines + [""])


def write_results(name: str, text: str) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.md"
    path.write_text(text)
    return path


def read_bandwidth(n_bytes: int = 512 * 2 ** 20, repeats: int = 5) -> float:
    """Streaming READ bytes/s: a sum over a large fp32 tensor (reads n_bytes, writes
    nothing) — the ceiling for memory-bound kernels that only read, like decoding."""
    src = torch.randn(n_bytes // 4)
    t = time_fn(lambda: src.sum(), repeats=repeats, warmup=1)
    return n_bytes / t.best


def fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def md_table(header_row: list[str], rows: list[list]) -> str:
    """A Markdown table from a header and rows of cells (str() of each)."""
    lines = ["| " + " | ".join(header_row) + " |", "|" + "---|" * len(header_row)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
