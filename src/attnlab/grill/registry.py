"""The grill's question registry.

Each answered question lives in its own module under `attnlab.grill.answers` and defines
`QUESTION = Question(...)`. Modules are discovered automatically, so answering a question
touches exactly one file. Ids without a module are reported as pending with the title
from `titles.TITLES`.

A question carries `short` (the 2-3 sentences said aloud, shown first everywhere), the depth
(`answer`), `formulas`, a `rubric` of `KeyPoint`s for feedback on typed quiz answers, and an
evidence function. Evidence records measured checks (`Evidence.check`, with `timing=True`
when the verdict rests on wall-clock; see `answers/_timing.median_time`) and cited facts
(`Evidence.cite`, shown as citations, never as PASS). A question passes when it is
answered, every measured check holds, and, where it has no measured checks, it cites.
"""
from __future__ import annotations

import contextlib
import importlib
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .titles import SECTIONS, TITLES

Number = int | float


@dataclass
class KeyPoint:
    """One point a good spoken answer makes, for feedback on typed quiz answers.

    `accept` holds case-insensitive regular expressions (accepted phrasings and synonyms);
    any one match anywhere in the typed text covers the point. `formula` is shown when the
    point is missed and has one.
    """

    name: str
    accept: list[str]
    formula: str | None = None

    def __post_init__(self) -> None:
        if not self.accept:
            raise ValueError(f"key point {self.name!r} needs at least one accepted phrasing "
                             "(got accept=[])")
        for pat in self.accept:
            try:
                re.compile(pat, re.IGNORECASE)
            except re.error as exc:
                raise ValueError(f"key point {self.name!r}: accept pattern {pat!r} is not a "
                                 f"valid regular expression ({exc})") from None

    def covered(self, text: str) -> bool:
        """True when any accepted phrasing occurs in `text` (case-insensitive)."""
        return any(re.search(p, text or "", re.IGNORECASE) for p in self.accept)


@dataclass
class Citation:
    """A paper figure or model-card fact, stated with its source; shown as a citation and
    never as PASS (nothing in this run measured it)."""

    claim: str
    source: str  # e.g. "GQA paper (2023), Table 1"; see docs/sources.md


@dataclass
class Check:
    """A claim the evidence tests; `passed` is computed, never hard-coded.

    `timing`: the verdict depends on wall-clock measurements. Default tests do not assert
    timing checks (a loaded machine may flip them); the slow loop test does.
    """

    name: str
    passed: bool
    detail: str = ""
    timing: bool = False


@dataclass
class Evidence:
    """What an evidence function measured on this machine."""

    measurements: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    key_figure: str = ""
    plots: list[str] = field(default_factory=list)  # paths of PNGs written by the evidence
    citations: list[Citation] = field(default_factory=list)

    def check(self, name: str, passed: bool, detail: str = "", *, timing: bool = False) -> bool:
        """Record a measured check; `timing=True` when its verdict depends on wall-clock."""
        self.checks.append(Check(name, bool(passed), detail, timing=timing))
        return bool(passed)

    def cite(self, claim: str, source: str) -> None:
        """Record a cited fact (paper, section/table, or model config): never a PASS."""
        if not claim or not source:
            raise ValueError(f"a citation needs a claim and a source (got claim={claim!r}, "
                             f"source={source!r})")
        self.citations.append(Citation(claim, source))

    @property
    def non_timing_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.timing]

    def verdict(self) -> list[str]:
        """Names of what keeps this evidence from passing (empty: it passes).

        It passes when every measured check holds, and, where it has no measured checks,
        it gives at least one citation.
        """
        failed = [c.name for c in self.checks if not c.passed]
        if not self.checks and not self.citations:
            failed = ["evidence made no checks and gave no citations"]
        return failed


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
    answer: str  # the depth: shown after `short`
    formulas: list[str] = field(default_factory=list)
    seed_note: str | None = None
    evidence: EvidenceFn | None = None
    # torch threads the evidence runs with (None: leave the process setting). One by
    # default: evidence is counts, equalities and ratios of small workloads, and on a busy
    # 2-core machine a spin-waiting second OpenMP thread slows small-op loops many-fold.
    threads: int | None = 1
    # The 2-3 sentence answer a candidate would say aloud; shown first everywhere.
    short: str = ""
    # Key points of a good answer, for feedback on typed quiz answers.
    rubric: list[KeyPoint] = field(default_factory=list)

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
