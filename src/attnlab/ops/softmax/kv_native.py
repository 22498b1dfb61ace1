"""The native (C++) path of the every-dtype split-KV decode (`kv_decode.py`).

`kv_native.cpp` holds the kernel: the scores of 4 query rows × 4 keys as 16 vector
accumulators over the head dim reduced together, p·V with a 4 × 64 register tile, stored
rows (fp32, bf16, fp16, int8 + float32 scales) widened in registers as they are read; its
header says why numba could not get there (kernels_notes.md has the measurements). It is
compiled on first use with the system C++ compiler (`$CXX`, else `g++`/`c++`) for this
machine's ISA (`-march=native`) into `$ATTNLAB_CACHE_DIR` (default `~/.cache/attnlab`),
keyed by the source, the flags, the compiler and the CPU's feature flags, and loaded with
ctypes: a 2–3 s build, once per machine. With no compiler, a failed build or
`ATTNLAB_NATIVE=0`, `available()` is False and `kv_decode` uses numba or torch.
`ATTNLAB_NATIVE_FLAGS` appends compiler flags (e.g. `-march=znver3` to test the AVX2 build
on an AVX-512 machine; they enter the cache key).

Shapes the kernel does not take (head dims not multiples of 16, int8 groups under 16
channels) are refused with `run(...) is False`; the caller falls back.
Cost: O(Σ_b len_b·Hq·Nq·D) time, one read of each visible K/V row; no history copy.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("kv_native.cpp")
FLAGS = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread",
         "-fno-math-errno", "-fno-trapping-math"] + os.environ.get("ATTNLAB_NATIVE_FLAGS", "").split()
DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.int8: 3}
_state: dict = {}


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    import platform
    return platform.processor() + platform.machine()


def cache_dir() -> Path:
    return Path(os.environ.get("ATTNLAB_CACHE_DIR") or Path.home() / ".cache" / "attnlab")


def _build() -> ctypes.CDLL | None:
    """Compile (once per machine, source and compiler) and load the library, or None."""
    if os.environ.get("ATTNLAB_NATIVE", "1") == "0":
        _state["why"] = "disabled by ATTNLAB_NATIVE=0"
        return None
    cxx = _compiler()
    if cxx is None:
        _state["why"] = "no C++ compiler found ($CXX, g++, c++)"
        return None
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                                 timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError) as e:
        _state["why"] = f"{cxx} --version failed: {e}"
        return None
    key = hashlib.sha256("\0".join([SOURCE.read_text(), " ".join(FLAGS), version,
                                    _cpu_flags()]).encode()).hexdigest()[:16]
    lib = cache_dir() / f"kv_native-{key}.so"
    if not lib.exists():
        try:
            lib.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=lib.parent)
            os.close(fd)
            res = subprocess.run([cxx, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True,
                                 text=True, timeout=300, check=False)
            if res.returncode != 0:
                os.unlink(tmp)
                _state["why"] = f"compile failed: {res.stderr.strip()[-500:]}"
                return None
            os.replace(tmp, lib)  # atomic: concurrent builders never load a partial file
        except (OSError, subprocess.SubprocessError) as e:
            _state["why"] = f"build failed: {e}"
            return None
    try:
        dll = ctypes.CDLL(str(lib))
    except OSError as e:
        _state["why"] = f"load failed: {e}"
        return None
    f = dll.attnlab_kv_decode
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    f.argtypes = [ctypes.c_int, p, p, p, p, p, p, i64, i64, i64, i64, p, i64, p, i64, i64, i64,
                  i64, i64, i64, i64, i64, ctypes.c_float, p, p, p, ctypes.c_int]
    f.restype = ctypes.c_int
    return dll


def library() -> ctypes.CDLL | None:
    if "lib" not in _state:
        _state["lib"] = _build()
    return _state["lib"]


def available() -> bool:
    """Whether the native kernel is built and loaded on this machine."""
    return library() is not None


def why_unavailable() -> str:
    library()
    return _state.get("why", "")


def supports(D: int, Dv: int, gk: int = 1, gv: int = 1, int8: bool = False) -> bool:
    """Shapes the kernel takes: head dims multiples of 16 up to 1024; int8 groups of ≥ 16
    channels (a multiple of 16)."""
    if D % 16 or Dv % 16 or not (0 < D <= 1024 and 0 < Dv <= 1024):
        return False
    return not int8 or (D % gk == 0 and Dv % gv == 0 and (D // gk) % 16 == 0
                        and (Dv // gv) % 16 == 0)


def run(qg, k, v, ks, vs, table, hstride, pstride, bs, items, lens, nq, scale, o_part,
        lse_part, flags, threads: int, q_bf16: bool = False, nblocks: int = 0) -> bool:
    """Fill o_part/lse_part/flags as `kv_numba.decode_items` does; all tensors contiguous
    (qg, scales, outputs float32; table/items/lens int64; flags uint8). False if the shape
    is not one the kernel takes (nothing written). q_bf16: qg's values are bf16 (q was
    stored in bf16), so a bf16 cache may be scored with the bf16 dot product. nblocks > 0:
    the table entries each work item reads are checked against [0, nblocks) first; an item
    with one outside gets flags = 2 and is not computed."""
    dll = library()
    if dll is None:
        return False
    def ptr(t):
        return None if t is None else t.data_ptr()

    rc = dll.attnlab_kv_decode(
        4 if q_bf16 and k.dtype == torch.bfloat16 else DTYPES[k.dtype], ptr(qg), ptr(k), ptr(v), ptr(ks), ptr(vs), ptr(table),
        table.shape[1], hstride, pstride, bs, ptr(items), items.shape[0], ptr(lens),
        qg.shape[1], qg.shape[2], qg.shape[3], v.shape[1], nq,
        ks.shape[1] if ks is not None else 1, vs.shape[1] if vs is not None else 1,
        nblocks, scale, ptr(o_part), ptr(lse_part), ptr(flags), threads)
    return rc == 0
