"""Short answers and rubrics of grill questions 26–50 (fast: no evidence runs).

Every question opens with a short spoken answer and carries 3–6 key points; the question's
own text (short + depth) covers every key point, while an empty or evasive answer covers
none, so quiz feedback separates a full answer from a non-answer.
"""
import importlib
import pkgutil

import pytest

from attnlab.grill import answers

MODULES = {int(m.name[1:3]): m.name for m in pkgutil.iter_modules(answers.__path__)
           if m.name.startswith("q") and 26 <= int(m.name[1:3]) <= 50}


def _question(qid):
    return importlib.import_module(f"{answers.__name__}.{MODULES[qid]}").QUESTION


def test_all_of_26_to_50_are_here():
    assert sorted(MODULES) == list(range(26, 51))


@pytest.mark.parametrize("qid", sorted(MODULES))
def test_short_answer_and_rubric(qid):
    q = _question(qid)
    assert q.id == qid and q.short and len(q.short) < (400 if qid >= 41 else 700)
    assert 3 <= len(q.rubric) <= 6, [k.name for k in q.rubric]
    own = q.short + " " + q.answer
    missed = [k.name for k in q.rubric if not k.covered(own)]
    assert not missed, f"Q{qid}: its own answer misses key points {missed}"
    for evasive in ("", "I don't know.", "no idea, sorry"):
        assert not any(k.covered(evasive) for k in q.rubric), (qid, evasive)


@pytest.mark.parametrize("qid", (30, 37, 44, 49))
def test_partial_answer_covers_some_points(qid):
    q = _question(qid)
    first = q.rubric[0]
    partial = first.name  # naming one key point, nothing else
    covered = [k.name for k in q.rubric if k.covered(partial)]
    assert first.name in covered and len(covered) < len(q.rubric)
