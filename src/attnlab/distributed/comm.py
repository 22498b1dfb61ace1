"""Counted, time-limited collectives for context parallelism.

`Comm` wraps a `torch.distributed` process group: point-to-point `isend`/`irecv`,
`all_gather`, `all_to_all` and `all_reduce`, each waited with a timeout, each failure
re-raised as `ContextParallelError` naming the rank, the operation and the peer (a
failing rank makes its peers fail instead of hang: docs/conventions.md §8). Every send
is counted in bytes, per kind ("kv", "dkv", "qkv", "out", "meta", ...), into the
recorders opened with `record_comm()` — the tests compare those counts with the formula of
each method. Logical bytes: a point-to-point send counts its tensor; an all-gather
counts the rank's contribution once per peer; an all-to-all counts what leaves the rank.
"""
from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = float(os.environ.get("ATTNLAB_CP_TIMEOUT", "60"))


class ContextParallelError(RuntimeError):
    """A collective failed or timed out on this rank (a peer failed, hung or disagreed)."""


@dataclass
class CommStats:
    """Bytes this rank sent, per kind, and the number of messages."""

    bytes_sent: dict = field(default_factory=lambda: defaultdict(int))
    messages: int = 0

    def add(self, kind: str, nbytes: int) -> None:
        self.bytes_sent[kind] += int(nbytes)
        self.messages += 1

    def total(self, exclude: tuple[str, ...] = ("meta",)) -> int:
        """Bytes sent, leaving out `exclude` kinds (the up-front agreement by default)."""
        return sum(b for k, b in self.bytes_sent.items() if k not in exclude)


_RECORDERS: list[CommStats] = []


@contextlib.contextmanager
def record_comm():
    """`with record_comm() as stats:` counts every send made through `Comm` inside."""
    stats = CommStats()
    _RECORDERS.append(stats)
    try:
        yield stats
    finally:
        _RECORDERS.remove(stats)


def _count(kind: str, nbytes: int) -> None:
    for s in _RECORDERS:
        s.add(kind, nbytes)


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class Comm:
    """A process group seen from one rank: counted, timed collectives.

    `group=None` is the default group. `timeout_s` bounds every wait.
    """

    def __init__(self, group=None, timeout_s: float | None = None):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialized: call "
                               "torch.distributed.init_process_group first (gloo on CPU)")
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        self.timeout = timedelta(seconds=DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s)
        # NCCL moves only CUDA tensors: small metadata tensors travel on this device
        self.device = (torch.device("cuda", torch.cuda.current_device())
                       if dist.get_backend(group) == "nccl" else torch.device("cpu"))
        self._global = (list(range(self.size)) if group is None
                        else [dist.get_global_rank(group, r) for r in range(self.size)])

    def _fail(self, what: str, exc: Exception):
        raise ContextParallelError(
            f"rank {self.rank} of {self.size}: {what} failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); a peer rank failed, "
            f"hung past the {self.timeout.total_seconds():g} s timeout, or disagreed") from exc

    def wait(self, work, what: str) -> None:
        try:
            done = work.wait(self.timeout)
        except RuntimeError as exc:  # gloo raises RuntimeError on timeout / closed pairs
            self._fail(what, exc)
        if done is False:  # an aborted operation reports False instead of raising
            self._fail(what, RuntimeError("the operation was aborted"))

    def isend(self, t: torch.Tensor, dst: int, tag: int, kind: str):
        _count(kind, nbytes(t))
        try:
            return dist.isend(t, self._global[dst], group=self.group, tag=tag)
        except RuntimeError as exc:
            self._fail(f"send of {kind} to rank {dst}", exc)

    def irecv(self, t: torch.Tensor, src: int, tag: int):
        try:
            return dist.irecv(t, self._global[src], group=self.group, tag=tag)
        except RuntimeError as exc:
            self._fail(f"receive from rank {src}", exc)

    def all_gather(self, t: torch.Tensor, kind: str, what: str = "all_gather") -> list[torch.Tensor]:
        """Every rank's `t` (same shape on all ranks)."""
        _count(kind, nbytes(t) * (self.size - 1))
        src = t.contiguous().to(self.device)
        out = [torch.empty_like(src) for _ in range(self.size)]
        try:
            work = dist.all_gather(out, src, group=self.group, async_op=True)
        except RuntimeError as exc:
            self._fail(what, exc)
        self.wait(work, what)
        return [o.to(t.device) for o in out]

    def all_to_all(self, send: list[torch.Tensor], recv_numel: list[int], kind: str,
                   what: str = "all_to_all") -> list[torch.Tensor]:
        """Send `send[g]` (flattened) to rank g; return the flat tensors received from each
        rank (`recv_numel[g]` elements from rank g)."""
        flat = torch.cat([s.reshape(-1) for s in send])
        _count(kind, sum(nbytes(s) for g, s in enumerate(send) if g != self.rank))
        out = flat.new_empty(sum(recv_numel))
        in_split = [s.numel() for s in send]
        try:
            work = dist.all_to_all_single(out, flat, list(recv_numel), in_split,
                                          group=self.group, async_op=True)
        except RuntimeError as exc:
            self._fail(what, exc)
        self.wait(work, what)
        return list(out.split(list(recv_numel)))

    def all_reduce(self, t: torch.Tensor, kind: str, what: str = "all_reduce") -> torch.Tensor:
        """Sum `t` over ranks in place (counted as a ring all-reduce sends: 2·(P−1)/P of it)."""
        _count(kind, 2 * (self.size - 1) * nbytes(t) // self.size)
        try:
            work = dist.all_reduce(t, group=self.group, async_op=True)
        except RuntimeError as exc:
            self._fail(what, exc)
        self.wait(work, what)
        return t
