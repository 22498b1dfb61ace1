"""The committed full-size experiment results (`experiments/results/NAME.json`, 3 seeds),
which the head-analysis answers quote beside their live quick runs. None when absent
(e.g. an installed wheel without the repository's `experiments/` folder)."""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[4] / "experiments" / "results"


def committed(name: str) -> dict | None:
    """The JSON of the full run of experiment `name`, or None if it is not present."""
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data if data.get("mode") == "full" else None


def spread(s: dict | None, digits: int = 3) -> str:
    """'mean (min–max)' of a {"mean", "min", "max"} summary entry."""
    if not s:
        return "n/a"
    return (f"{round(s['mean'], digits)} ({round(s['min'], digits)}–"
            f"{round(s['max'], digits)})")
