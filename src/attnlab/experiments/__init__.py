"""Training experiments on the tiny LM; each `run(quick, out_dir, seed) -> dict` writes
`<name>[_quick].json` and, with the viz extra, a PNG. `--quick` sizes run in seconds (the
default grill and CI); full sizes (≤ 15 min on 2 cores, 3 seeds) produce the committed
results under `experiments/results/`.
"""
from __future__ import annotations

import importlib

EXPERIMENTS = ("induction", "kv_sharing", "sinks", "redundancy")


def get(name: str):
    """The experiment module `name` (one of EXPERIMENTS)."""
    key = name.replace("-", "_")
    if key not in EXPERIMENTS:
        raise ValueError(f"experiment ({name!r}) must be one of {list(EXPERIMENTS)}")
    return importlib.import_module(f"{__name__}.{key}")
