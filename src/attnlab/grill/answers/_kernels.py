"""Shared evidence helpers for the FlashAttention questions (27–29, 37, 48)."""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def single_thread():
    """Run small-tensor evidence on one thread: on a busy 2-core machine, spinning OpenMP
    workers make loops of small ops 10–30× slower, and the figures here are counts and
    ratios, not peak throughput."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
