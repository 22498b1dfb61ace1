"""Trained tiny models shared by the head-analysis answers (30–34, 50), built once per
process (the quick induction run takes tens of seconds on 2 cores; Q30, Q31, Q32 and
Q50 read the same run)."""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=4)
def induction_run(seed: int = 0, full: bool = False):
    """(model, result dict) of one quick (or full-size) induction training run."""
    from ...experiments import induction as ind

    c = ind.InductionConfig.preset(quick=not full, seed=seed)
    model_box = {}
    res = ind.train_one(c, seed, keep=model_box)  # threads: set per question by the runner
    return model_box["model"], res, c
