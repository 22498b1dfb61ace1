"""Test-session settings.

Tests run torch single-threaded by default: they use small tensors, where a second
OpenMP thread buys little and, on a busy 2-core machine, spin-waiting threads can slow
small-op loops (decoding, recurrences) by two orders of magnitude. Set
ATTNLAB_TEST_THREADS to override. Tests never assert wall-clock times.
"""
import os

import torch

torch.set_num_threads(int(os.environ.get("ATTNLAB_TEST_THREADS", "1")))

# Hypothesis profiles for the differential fuzz suite (tests/fuzz/): "ci" (the default:
# derandomised, no example database, no deadline, so CI is stable and `make test` stays
# within its budget) and "deep" (`make fuzz`: randomised, thousands of examples per
# property). Select with HYPOTHESIS_PROFILE=deep.
from hypothesis import HealthCheck, settings

_SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("ci", derandomize=True, database=None, deadline=None,
                          max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")),
                          suppress_health_check=_SLOW, print_blob=True)
settings.register_profile("deep", derandomize=False, database=None, deadline=None,
                          max_examples=int(os.environ.get("FUZZ_EXAMPLES", "5500")),
                          suppress_health_check=_SLOW, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
