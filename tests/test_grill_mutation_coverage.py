"""Every answered grill question with measured (non-timing) checks has a mutation test.

The mutations live in `test_grill_mutations_a.py` (Q1-25) and `test_grill_mutations_b.py`
(Q26-50), each a module-level `MUTATIONS: dict[int, Callable[[], list[tuple]]]`. Questions
absent from both are run once here to confirm their evidence is citations only (or timing
only); any that measures something and has no mutation is reported by id.
"""
import importlib

from grill_mutation import assert_mutation_fails, has_measured_checks, patched

from attnlab.grill.registry import Evidence, EvidenceContext, Question, all_questions

MUTATION_MODULES = ("test_grill_mutations_a", "test_grill_mutations_b")


def mutation_ids() -> tuple[set[int], list[str]]:
    ids: set[int] = set()
    missing: list[str] = []
    for name in MUTATION_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            missing.append(name)
            continue
        muts = getattr(mod, "MUTATIONS", None)
        assert isinstance(muts, dict), f"{name}.MUTATIONS must be a dict (got {type(muts)})"
        ids |= set(muts)
    return ids, missing


def test_every_measured_answer_has_a_mutation():
    covered, missing_modules = mutation_ids()
    uncovered = [q.id for q in all_questions()
                 if q.answered and q.id not in covered and has_measured_checks(q.id)]
    assert not uncovered, (
        f"answered questions with measured checks but no mutation test: {uncovered}"
        + (f" (mutation files not written yet: {missing_modules})" if missing_modules else ""))


def test_mutation_ids_are_answered_questions():
    covered, _ = mutation_ids()
    answered = {q.id for q in all_questions() if q.answered}
    assert covered <= answered, f"mutations for unanswered ids: {sorted(covered - answered)}"


class _Target:
    value = 3


def _fake_question(monkeypatch, fn, threads=1):
    import attnlab.grill.registry as reg

    q = Question(id=50, title="t", answer="a", evidence=fn, threads=threads)
    qs = [q if x.id == 50 else x for x in all_questions()]
    monkeypatch.setattr(reg, "all_questions", lambda: qs)
    import grill_mutation
    monkeypatch.setattr(grill_mutation, "all_questions", lambda: qs)
    return q


def test_helper_passes_when_a_measured_check_fails_and_restores_the_patch(monkeypatch):
    def ev(ctx):
        e = Evidence()
        e.check("value is 3", _Target.value == 3)
        return e

    _fake_question(monkeypatch, ev)
    failed = assert_mutation_fails(50, [(_Target, "value", 4)])
    assert failed == ["value is 3"] and _Target.value == 3


def test_helper_fails_when_only_a_timing_check_fails(monkeypatch):
    def ev(ctx):
        e = Evidence()
        e.check("fast", _Target.value == 3, timing=True)
        e.check("other", True)
        return e

    _fake_question(monkeypatch, ev)
    try:
        assert_mutation_fails(50, [(_Target, "value", 4)])
    except AssertionError as exc:
        assert "no non-timing measured check failed" in str(exc)
    else:
        raise AssertionError("a mutation caught only by a timing check must not count")
    assert _Target.value == 3


def test_helper_counts_a_refused_input_and_rejects_missing_attributes(monkeypatch):
    def ev(ctx):
        if _Target.value != 3:
            raise ValueError("value must be 3")
        e = Evidence()
        e.check("ok", True)
        return e

    _fake_question(monkeypatch, ev)
    assert "ValueError" in assert_mutation_fails(50, [(_Target, "value", 5)])[0]
    try:
        with patched([(_Target, "no_such_name", 1)]):
            pass
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("patching a missing attribute must raise")
    assert not hasattr(_Target, "no_such_name")
    assert EvidenceContext().seed == 0
