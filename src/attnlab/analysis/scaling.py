"""Measured complexity: time attention mechanisms over a geometric range of N and fit the
log-log slope (time ∝ N^slope).

Expected: ≈2 for full attention (O(N²·D)), ≈1 for sliding window and BigBird on a
block-sparse executor (O(N·W·D), O(N·b·(w+g+r)·D)), ≈1–1.2 for Reformer LSH
(O(n_hashes·N·chunk·D + N log N)). Small N is dominated by fixed per-call overhead, which
flattens every slope, so fits use the upper part of the range. Timings are medians of
repeats; on a shared machine they carry noise, so the slope is reported with the fit's
max residual.
"""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .._checks import check_positive_int
from ..masks import bigbird, sliding_window
from ..ops.lsh import lsh_attention
from ..ops.softmax import BACKENDS, attention

# name -> builder(N) returning a zero-argument callable that runs one forward pass
Builder = Callable[[int], Callable[[], object]]


@dataclass
class ScalingResult:
    name: str
    ns: list[int]
    seconds: list[float]
    slope: float = field(init=False)
    intercept: float = field(init=False)
    max_residual: float = field(init=False)

    def __post_init__(self) -> None:
        self.slope, self.intercept, self.max_residual = fit_loglog(self.ns, self.seconds)


def fit_loglog(ns: list[int], seconds: list[float]) -> tuple[float, float, float]:
    """Least-squares fit of log t = slope·log N + c. Returns (slope, c, max |residual|)."""
    if len(ns) != len(seconds) or len(ns) < 2:
        raise ValueError(f"ns ({len(ns)}) and seconds ({len(seconds)}) must be equal-length "
                         "lists of at least 2 points")
    if min(ns) <= 0 or min(seconds) <= 0:
        raise ValueError("ns and seconds must be positive to take logs")
    x = torch.tensor([math.log(n) for n in ns], dtype=torch.float64)
    y = torch.tensor([math.log(t) for t in seconds], dtype=torch.float64)
    A = torch.stack([x, torch.ones_like(x)], 1)  # (n, 2)
    sol = torch.linalg.lstsq(A, y.unsqueeze(1)).solution.squeeze(1)  # (2,)
    resid = float((A @ sol - y).abs().max())
    return float(sol[0]), float(sol[1]), resid


def median_seconds(fn: Callable[[], object], repeats: int = 3, warmup: int = 1,
                   estimator: str = "median") -> float:
    """Wall time of `fn()` over `repeats` runs after `warmup` runs: the median, or with
    `estimator="min"` the fastest run (robust when other processes share the cores)."""
    check_positive_int("repeats", repeats)
    if estimator not in ("median", "min"):
        raise ValueError(f"estimator ({estimator!r}) must be 'median' or 'min'")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) if estimator == "min" else statistics.median(times)


def default_mechanisms(head_dim: int = 64, heads: int = 1, window: int = 256,
                       block: int = 64, chunk: int = 64, n_hashes: int = 2,
                       seed: int = 0) -> dict[str, Builder]:
    """Full causal attention (SDPA), LSH, and — when a "block_sparse" backend is
    registered — sliding window and causal BigBird on it."""
    g = torch.Generator().manual_seed(seed)

    def qkv(n):
        return [torch.randn(1, heads, n, head_dim, generator=g) for _ in range(3)]

    def full(n):
        q, k, v = qkv(n)
        return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def lsh(n):
        qk, _, v = qkv(n)
        return lambda: lsh_attention(qk, v, n_hashes=n_hashes, chunk_size=chunk, causal=True)

    mechs: dict[str, Builder] = {"full": full, "lsh": lsh}
    if "block_sparse" in BACKENDS:
        def win(n):
            q, k, v = qkv(n)
            m = sliding_window(window)
            return lambda: attention(q, k, v, mask=m, backend="block_sparse")

        def bb(n):
            q, k, v = qkv(n)
            m = bigbird(n, block, 3, (0,), 2, causal=True, seed=seed)
            return lambda: attention(q, k, v, mask=m, backend="block_sparse")

        mechs["window"] = win
        mechs["bigbird"] = bb
    return mechs


def measure_scaling(mechanisms: dict[str, Builder], ns: list[int], repeats: int = 3,
                    estimator: str = "median", threads: int | None = 1) -> list[ScalingResult]:
    """Time every mechanism at every N (building inputs and masks outside the timing).

    `threads`: torch intra-op threads during the measurement (restored afterwards; None
    keeps the current setting). One thread is the default because on a machine shared
    with other processes, ops that fan out over threads stall waiting for a preempted
    worker, which swamps the small per-chunk ops of sparse mechanisms; the slope of a
    mechanism does not depend on the thread count.
    """
    if not ns or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in ns):
        raise ValueError(f"ns must be a non-empty list of positive ints, got {ns}")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(check_positive_int("threads", threads))
    try:
        out = []
        for name, build in mechanisms.items():
            secs = [median_seconds(build(n), repeats, estimator=estimator) for n in ns]
            out.append(ScalingResult(name, list(ns), secs))
    finally:
        torch.set_num_threads(before)
    return out


def geometric(lo: int, hi: int, factor: int = 2) -> list[int]:
    """lo, lo·f, lo·f², … up to hi inclusive."""
    check_positive_int("lo", lo)
    check_positive_int("factor", factor, minimum=2)
    if hi < lo:
        raise ValueError(f"hi ({hi}) must be >= lo ({lo})")
    ns, n = [], lo
    while n <= hi:
        ns.append(n)
        n *= factor
    return ns


def plot_scaling(results: list[ScalingResult], path: str) -> str | None:
    """Log-log plot of the measurements with fitted slopes (needs the `viz` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for r in results:
        ax.loglog(r.ns, r.seconds, "o-", label=f"{r.name} (slope {r.slope:.2f})")
    ax.set_xlabel("sequence length N")
    ax.set_ylabel("seconds per forward")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
