"""Mutation testing for grill answers: break what an answer measures, and see it fail.

`assert_mutation_fails(qid, patches)` applies each `(obj, attribute name, replacement)` patch
for the duration (restored afterwards, even on error), runs that question's evidence
function, and asserts that at least one measured check that does not depend on wall-clock
(`Check.timing` False) fails, or that the evidence raises (a broken input the evidence
refuses). It prints which checks failed, so a test log shows what each mutation caught.

Content test files define `MUTATIONS: dict[int, Callable[[], list[tuple]]]` (question id ->
factory of patches) and parametrize over it; `test_grill_mutation_coverage.py` checks that
every answered question with measured non-timing checks appears in one of them.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from attnlab.grill.registry import EvidenceContext, all_questions, torch_threads

_MISSING = object()


@contextlib.contextmanager
def patched(patches: list[tuple[object, str, object]]) -> Iterator[None]:
    """Apply `setattr(obj, name, value)` for each patch; restore every one on exit."""
    saved: list[tuple[object, str, object]] = []
    try:
        for obj, name, value in patches:
            if not isinstance(name, str):
                raise TypeError(f"patch attribute name must be a str, got {name!r}")
            if not hasattr(obj, name):
                raise AttributeError(f"{obj!r} has no attribute {name!r} to patch "
                                     "(a renamed target would make the mutation a no-op)")
            saved.append((obj, name, obj.__dict__.get(name, _MISSING)
                          if hasattr(obj, "__dict__") else getattr(obj, name)))
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, old in reversed(saved):
            if old is _MISSING:
                delattr(obj, name)
            else:
                setattr(obj, name, old)


def question(qid: int):
    q = next(q for q in all_questions() if q.id == qid)
    if q.evidence is None:
        raise AssertionError(f"Q{qid} has no evidence function to mutate")
    return q


def assert_mutation_fails(qid: int, patches: list[tuple[object, str, object]],
                          ctx: EvidenceContext | None = None) -> list[str]:
    """Run Q`qid`'s evidence under `patches`; assert a non-timing measured check fails.

    Returns the names of the failed checks (or the exception text when the evidence raised).
    """
    q = question(qid)
    ctx = ctx or EvidenceContext()
    if not patches:
        raise ValueError(f"Q{qid}: a mutation needs at least one patch (got [])")
    with patched(patches):
        torch.manual_seed(ctx.seed)
        try:
            with torch_threads(q.threads):
                ev = q.evidence(ctx)
        except Exception as exc:  # noqa: BLE001 — a refused broken input also counts as caught
            caught = [f"evidence raised {type(exc).__name__}: {exc}"]
            print(f"Q{qid} mutation caught: {caught[0]}")
            return caught
    failed = [c.name for c in ev.checks if not c.passed and not c.timing]
    print(f"Q{qid} mutation caught by: {failed}" if failed
          else f"Q{qid} mutation NOT caught; checks: {[(c.name, c.passed) for c in ev.checks]}")
    assert failed, (f"Q{qid}: no non-timing measured check failed under the mutation; checks: "
                    + "; ".join(f"{c.name}={'PASS' if c.passed else 'FAIL'}"
                                f"{' (timing)' if c.timing else ''}" for c in ev.checks))
    return failed


def has_measured_checks(qid: int) -> bool:
    """Whether Q`qid`'s evidence makes at least one non-timing check (runs it once).

    A crashing evidence counts as measured: it must be covered by a mutation too.
    """
    from attnlab.grill.runner import run_one

    r = run_one(question(qid), EvidenceContext())
    return r.evidence is None or any(not c.timing for c in r.evidence.checks)
