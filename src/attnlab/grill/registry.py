"""The grill's question registry.

Each answered question lives in its own module under `attnlab.grill.answers` and defines
`QUESTION = Question(...)`. Modules are discovered automatically, so answering a question
touches exactly one file. Ids without a module are reported as pending with the title
from `titles.TITLES`.
"""
from __future__ import annotations

import contextlib
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .titles import SECTIONS, TITLES

Number = int | float


@dataclass
class Check:
    """A claim the evidence tests; `passed` is computed, never hard-coded."""

    name: str
    passed: bool
    detail: str = ""


@dataclass
class Evidence:
    """What an evidence function measured on this machine."""

    measurements: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    key_figure: str = ""
    plots: list[str] = field(default_factory=list)  # paths of PNGs written by the evidence

    def check(self, name: str, passed: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, bool(passed), detail))
        return bool(passed)


@dataclass
class EvidenceContext:
    """Options handed to every evidence function."""

    full: bool = False  # `--full`: the longer experiment where one exists
    plot_dir: str | None = None  # where PNGs go when plots are wanted (viz extra)
    seed: int = 0


EvidenceFn = Callable[[EvidenceContext], Evidence]


@dataclass
class Question:
    id: int
    title: str
    answer: str
    formulas: list[str] = field(default_factory=list)
    seed_note: str | None = None
    evidence: EvidenceFn | None = None
    # torch threads the evidence runs with (None: leave the process setting). One by
    # default: evidence is counts, equalities and ratios of small workloads, and on a busy
    # 2-core machine a spin-waiting second OpenMP thread slows small-op loops many-fold.
    threads: int | None = 1

    def __post_init__(self) -> None:
        if not 1 <= self.id <= 50:
            raise ValueError(f"id ({self.id}) must be in 1..50")
        self.section = section_of(self.id)

    @property
    def answered(self) -> bool:
        return self.evidence is not None


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with `n` torch threads (None: unchanged), restoring the setting after."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def section_of(qid: int) -> str:
    for letter, (_, lo, hi) in SECTIONS.items():
        if lo <= qid <= hi:
            return letter
    raise ValueError(f"question id ({qid}) must be in 1..50")


def _discover() -> dict[int, Question]:
    from . import answers

    found: dict[int, Question] = {}
    for info in pkgutil.iter_modules(answers.__path__):
        mod = importlib.import_module(f"{answers.__name__}.{info.name}")
        qs = getattr(mod, "QUESTIONS", None) or [getattr(mod, "QUESTION", None)]
        for q in qs:
            if q is None:
                continue
            if q.id in found:
                raise RuntimeError(f"question {q.id} defined twice (module {info.name})")
            found[q.id] = q
    return found


_CACHE: dict[int, Question] | None = None


def all_questions() -> list[Question]:
    """All 50 questions in id order; unanswered ids become pending records."""
    global _CACHE
    if _CACHE is None:
        _CACHE = _discover()
    out = []
    for qid in range(1, 51):
        out.append(_CACHE.get(qid) or Question(id=qid, title=TITLES[qid], answer=""))
    return out
