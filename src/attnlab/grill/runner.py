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
    if section is not None:
        sec = section.strip().upper()
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
            "rubric": [{"name": k.name, "accept": k.accept, "formula": k.formula}
                       for k in q.rubric],
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


def fmt_value(v: Any, digits: int = 3) -> str:
    """A measurement as printed in reports: floats rounded to `digits` significant digits.

    Whole floats print as integers with thousands separators (131072.0 -> 131,072), values
    of 10^4 and more round to the integer, very small or very large ones use an exponent;
    lists, tuples and dicts are formatted element by element (long lists shortened).
    """
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, torch.Tensor):
        return fmt_value(v.item() if v.numel() == 1 else v.tolist(), digits)
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        a = abs(v)
        if v == 0:
            return "0"
        if a >= 1e12 or a < 1e-3:
            return f"{v:.{digits - 1}e}"
        text = f"{v:.{digits}g}"
        if v.is_integer() or a >= 10 ** digits or "e" in text:
            return f"{round(v):,}"
        return text
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {fmt_value(x, digits)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        items = [fmt_value(x, digits) for x in v[:8]]
        if len(v) > 8:
            return f"[{', '.join(items)}, …] ({len(v)} items)"
        return f"[{', '.join(items)}]" if isinstance(v, list) else f"({', '.join(items)})"
    return str(v)


_fmt = fmt_value  # the name the report modules used before


def write_json(results: list[Result], path: str) -> None:
    with open(path, "w") as f:
        json.dump(to_json(results), f, indent=2)
