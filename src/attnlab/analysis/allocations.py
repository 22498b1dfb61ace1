"""Measure what a piece of torch code allocates: peak live bytes and the largest tensor.

`AllocationProbe` is a `TorchDispatchMode`: every aten op that runs inside it (forward and
autograd backward) reports its outputs; an output whose storage is new (not one of the
op's inputs, so views and in-place results are not double counted) adds its bytes to a
live total, and a finalizer on the storage subtracts them when the storage dies. Tensors
that existed before the probe are not counted. The result is the peak of live bytes
allocated by the code under the probe, and the largest single tensor with the op that
made it — e.g. to prove a tiled kernel never materialises an (N, N) score matrix.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


@dataclass
class AllocationReport:
    peak_bytes: int = 0
    total_bytes: int = 0  # sum of every new allocation
    largest_numel: int = 0
    largest_shape: tuple = ()
    largest_op: str = ""
    n_allocations: int = 0
    live: int = field(default=0, repr=False)


class AllocationProbe(TorchDispatchMode):
    """`with AllocationProbe() as p: ...`; then `p.report` (peak bytes, largest tensor)."""

    def __init__(self):
        super().__init__()
        self.report = AllocationReport()
        self._seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self.report.live -= nbytes
        self._seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        r = self.report
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            key = st.data_ptr()
            if key in inputs or key in self._seen or st.nbytes() == 0:
                continue
            nbytes = st.nbytes()
            self._seen.add(key)
            weakref.finalize(st, self._free, key, nbytes)
            r.live += nbytes
            r.total_bytes += nbytes
            r.n_allocations += 1
            r.peak_bytes = max(r.peak_bytes, r.live)
            if t.numel() > r.largest_numel:
                r.largest_numel, r.largest_shape, r.largest_op = t.numel(), tuple(t.shape), str(func)
        return out


def measure_allocations(fn) -> AllocationReport:
    """Run `fn()` under an `AllocationProbe` and return its report (the result is dropped
    inside the probe, so gradients and outputs created by `fn` count toward the peak)."""
    with AllocationProbe() as probe:
        fn()
    return probe.report
