"""Test-session settings.

Tests run torch single-threaded by default: they use small tensors, where a second
OpenMP thread buys little and, on a busy 2-core machine, spin-waiting threads can slow
small-op loops (decoding, recurrences) by two orders of magnitude. Set
ATTNLAB_TEST_THREADS to override. Tests never assert wall-clock times.
"""
import os

import torch

torch.set_num_threads(int(os.environ.get("ATTNLAB_TEST_THREADS", "1")))
