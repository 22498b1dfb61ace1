"""What this CPU is and what it can do: model, ISA, threads, per-dtype matmul peaks and
streaming read bandwidth (docs/conventions.md §7).

The machines attnlab runs on differ from one session to the next (AVX2 parts that emulate
bf16; AVX-512 parts with AVX512-BF16; parts with AMX tiles where bf16 matmul is several
times fp32). Fast paths ask `native_bf16()` before choosing a low-precision route, and
every benchmark and roofline reports against peaks measured on the machine it ran on, in
the dtype it ran in.

- `cpu_info()`: model name, ISA extensions from /proc/cpuinfo flags, torch's own CPU
  capability, thread count. No measurement, cheap.
- `matmul_peak(dtype, n)`: best FLOP/s of an n×n×n matmul in that dtype (a ceiling).
- `read_bandwidth()`: bytes/s of a large streaming sum (reads only, as decoding does).
- `measure()`: all of the above as one `Machine`, whose `line()` heads results files.
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field

import torch

# /proc/cpuinfo flag -> the name attnlab reports (order: weakest first)
_ISA_FLAGS = (
    ("avx2", "AVX2"),
    ("fma", "FMA"),
    ("avx512f", "AVX-512"),
    ("avx512_vnni", "AVX512-VNNI"),
    ("avx512_bf16", "AVX512-BF16"),
    ("avx512_fp16", "AVX512-FP16"),
    ("amx_bf16", "AMX-BF16"),
    ("amx_int8", "AMX-INT8"),
    ("amx_fp16", "AMX-FP16"),
)
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
               torch.float64: "fp64"}


@dataclass(frozen=True)
class CpuInfo:
    model: str
    isa: tuple[str, ...]  # e.g. ("AVX2", "FMA", "AVX-512", "AVX512-BF16")
    torch_capability: str  # what torch's CPU kernels dispatch to ("AVX512", "AVX2", ...)
    threads: int
    cores: int

    @property
    def native_bf16(self) -> bool:
        """bf16 arithmetic in hardware (AVX512-BF16 dot products or AMX tiles)."""
        return "AVX512-BF16" in self.isa or "AMX-BF16" in self.isa

    @property
    def native_fp16(self) -> bool:
        return "AVX512-FP16" in self.isa or "AMX-FP16" in self.isa

    def describe(self) -> str:
        isa = ", ".join(self.isa) or "no AVX"
        return (f"{self.model}; ISA {isa} (torch dispatch {self.torch_capability}); "
                f"{self.threads} torch threads on {self.cores} cores")


def _cpuinfo_text() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def parse_cpuinfo(text: str) -> tuple[str, tuple[str, ...]]:
    """(model name, ISA names) from /proc/cpuinfo text (first processor's entries)."""
    model, flags = platform.processor() or platform.machine(), set()
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key = key.strip()
        if key == "model name" and model in ("", platform.processor(), platform.machine()):
            model = val.strip()
        elif key == "flags" and not flags:
            flags = set(val.split())
    return model, tuple(name for flag, name in _ISA_FLAGS if flag in flags)


def cpu_info() -> CpuInfo:
    model, isa = parse_cpuinfo(_cpuinfo_text())
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        cap = "unknown"
    return CpuInfo(model=model, isa=isa, torch_capability=str(cap),
                   threads=torch.get_num_threads(), cores=os.cpu_count() or 1)


def native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (else torch emulates it, slowly)."""
    return cpu_info().native_bf16


def _best_time(fn, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5,
                budget_s: float = 0.25) -> float:
    """Best FLOP/s of a square matmul in `dtype` (a ceiling: best of `repeats`), at size
    `n` or smaller: starting from 256, the size doubles only while one product takes less
    than `budget_s`, so a dtype the CPU emulates (fp16 without AVX512-FP16 runs ~100×
    slower than fp32) is measured in seconds, not minutes."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype ({dtype!r}) must be a floating torch.dtype")
    if not isinstance(n, int) or n < 16:
        raise ValueError(f"n ({n!r}) must be an int >= 16")
    g = torch.Generator().manual_seed(0)
    size = min(n, 256)
    while True:
        a = torch.randn(size, size, generator=g).to(dtype)
        b = torch.randn(size, size, generator=g).to(dtype)
        once = _best_time(lambda: a @ b, 1, warmup=1)  # noqa: B023 — used at once
        if size >= n or once * 8 > budget_s:
            break
        size *= 2
    return 2 * size ** 3 / min(once, _best_time(lambda: a @ b, repeats - 1, 0)
                               if repeats > 1 else once)


def read_bandwidth(n_bytes: int = 512 * 2 ** 20, repeats: int = 5) -> float:
    """Streaming READ bytes/s: a sum over a large fp32 tensor (reads n_bytes, writes
    nothing) — the ceiling of memory-bound kernels that only read, like decoding."""
    if not isinstance(n_bytes, int) or n_bytes < 4096:
        raise ValueError(f"n_bytes ({n_bytes!r}) must be an int >= 4096")
    src = torch.randn(n_bytes // 4)
    return n_bytes / _best_time(src.sum, repeats, warmup=1)


@dataclass
class Machine:
    """A CPU with its measured ceilings (FLOP/s per dtype, read bytes/s)."""

    cpu: CpuInfo
    peaks: dict[torch.dtype, float] = field(default_factory=dict)
    read_bw: float | None = None

    def peak(self, dtype: torch.dtype) -> float:
        """The measured matmul peak of `dtype` (fp32's for dtypes not measured)."""
        if dtype in self.peaks:
            return self.peaks[dtype]
        if torch.float32 in self.peaks:
            return self.peaks[torch.float32]
        raise KeyError(f"no peak measured for {dtype} (measured: {list(self.peaks)})")

    def attainable(self, intensity: float, dtype: torch.dtype = torch.float32) -> float:
        """Roofline: FLOP/s attainable at `intensity` FLOP per byte read."""
        if self.read_bw is None:
            raise ValueError("read bandwidth was not measured; call measure(bandwidth=True)")
        return min(self.peak(dtype), intensity * self.read_bw)

    def ridge(self, dtype: torch.dtype = torch.float32) -> float:
        """FLOP per byte where the roofline turns from memory- to compute-bound."""
        if self.read_bw is None:
            raise ValueError("read bandwidth was not measured; call measure(bandwidth=True)")
        return self.peak(dtype) / self.read_bw

    def line(self) -> str:
        """The machine line every results file starts with."""
        parts = [self.cpu.describe()]
        if self.peaks:
            parts.append("matmul peaks " + ", ".join(
                f"{DTYPE_NAMES.get(d, str(d))} {p / 1e9:.0f} GFLOP/s"
                for d, p in self.peaks.items()))
        if self.read_bw is not None:
            parts.append(f"streaming read {self.read_bw / 1e9:.1f} GB/s")
        return "; ".join(parts)


def measure(dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16),
            *, bandwidth: bool = True, n: int = 2048, repeats: int = 5) -> Machine:
    """Measure this machine's per-dtype matmul peaks and (optionally) read bandwidth."""
    peaks = {d: matmul_peak(d, n, repeats) for d in dtypes}
    return Machine(cpu=cpu_info(), peaks=peaks,
                   read_bw=read_bandwidth(repeats=repeats) if bandwidth else None)
