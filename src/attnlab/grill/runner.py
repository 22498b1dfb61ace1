"""Run grill evidence and render results (rich table, JSON, Markdown)."""
from __future__ import annotations

import json
import math
import platform
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch

from .registry import Evidence, EvidenceContext, Question, all_questions, torch_threads
from .titles import SECTIONS


@dataclass
class Result:
    question: Question
    status: str  # "pass" | "fail" | "pending"
    evidence: Evidence | None = None
    seconds: float = 0.0
    error: str | None = None
    failed_checks: list[str] = field(default_factory=list)


def machine_line() -> str:
    """One line naming this machine, written beside every measurement."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{cpu}; {torch.get_num_threads()} torch threads; torch {torch.__version__}; "
        f"Python {platform.python_version()}; {platform.system()} {platform.machine()}"
    )


def select(section: str | None = None, ids: list[int] | None = None) -> list[Question]:
    qs = all_questions()
    if section:
        sec = section.upper()
        if sec not in SECTIONS:
            raise ValueError(f"section ({section!r}) must be one of {', '.join(SECTIONS)}")
        qs = [q for q in qs if q.section == sec]
    if ids:
        bad = [i for i in ids if not 1 <= i <= 50]
        if bad:
            raise ValueError(f"question ({bad[0]}) must be an id in 1..50")
        qs = [q for q in qs if q.id in set(ids)]
    return qs


def run_one(q: Question, ctx: EvidenceContext) -> Result:
    if q.evidence is None:
        return Result(q, "pending")
    t0 = time.perf_counter()
    torch.manual_seed(ctx.seed)
    try:
        with torch_threads(q.threads):
            ev = q.evidence(ctx)
    except Exception as exc:  # noqa: BLE001 — an evidence crash is a failed answer, reported in full
        return Result(q, "fail", None, time.perf_counter() - t0,
                      error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}")
    dt = time.perf_counter() - t0
    failed = ev.verdict()
    return Result(q, "fail" if failed else "pass", ev, dt, failed_checks=failed)


def run(questions: list[Question], ctx: EvidenceContext, progress=None) -> list[Result]:
    out = []
    for q in questions:
        if progress is not None:
            progress(q)
        out.append(run_one(q, ctx))
    return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else str(x)
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _jsonable(x.tolist())
    if isinstance(x, (int, str, bool)) or x is None:
        return x
    return str(x)


def to_json(results: list[Result]) -> dict:
    qs = []
    for r in results:
        q = r.question
        qs.append({
            "id": q.id,
            "section": q.section,
            "title": q.title,
            "status": r.status,
            "short": q.short,
            "answer": q.answer,
            "formulas": q.formulas,
            "seed_note": q.seed_note,
            "key_figure": r.evidence.key_figure if r.evidence else "",
            "measurements": _jsonable(r.evidence.measurements) if r.evidence else {},
            "checks": [
                {"name": c.name, "passed": c.passed, "detail": c.detail, "timing": c.timing}
                for c in (r.evidence.checks if r.evidence else [])
            ],
            "citations": [
                {"claim": c.claim, "source": c.source}
                for c in (r.evidence.citations if r.evidence else [])
            ],
            "plots": list(r.evidence.plots) if r.evidence else [],
            "seconds": round(r.seconds, 3),
            "torch_threads": q.threads,
            "error": r.error,
        })
    return {"machine": machine_line(), "questions": qs}


def to_markdown(results: list[Result]) -> str:
    """The Markdown study report (see `report.render_markdown`; plots linked by path)."""
    from .report import render_markdown  # report imports this module

    return render_markdown(results)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
            return f"{v:.3e}"
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and len(v) > 8:
        return f"[{', '.join(_fmt(x) for x in v[:8])}, …] ({len(v)} items)"
    return str(v)


def write_json(results: list[Result], path: str) -> None:
    with open(path, "w") as f:
        json.dump(to_json(results), f, indent=2)
