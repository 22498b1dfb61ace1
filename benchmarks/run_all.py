"""Run every benchmark module in this folder that defines `main()` (`make bench`).

Each module runs with an empty argument list (its defaults). A module that fails is
reported and the others still run; the exit status is non-zero if any failed.
"""
from __future__ import annotations

import importlib
import pkgutil
import sys
import time
import traceback
from pathlib import Path

SKIP = {"common", "run_all"}


def modules() -> list[str]:
    here = Path(__file__).resolve().parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)])
                  if m.name not in SKIP and not m.name.startswith("_"))


def main() -> int:
    failed = []
    for name in modules():
        mod = importlib.import_module(f"benchmarks.{name}")
        if not callable(getattr(mod, "main", None)):
            continue
        print(f"== benchmarks.{name} ==", flush=True)
        t0 = time.perf_counter()
        argv, sys.argv = sys.argv, [f"benchmarks.{name}"]
        try:
            mod.main()
        except Exception:  # noqa: BLE001 — report and continue with the other benchmarks
            failed.append(name)
            traceback.print_exc()
        finally:
            sys.argv = argv
        print(f"== benchmarks.{name}: {time.perf_counter() - t0:.0f} s ==", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
