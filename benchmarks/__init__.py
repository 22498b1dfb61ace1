"""attnlab benchmarks: one script per topic (`python -m benchmarks.<name>`), all run by
`python -m benchmarks.run_all` (`make bench`). Results go to benchmarks/results/.

OpenMP threads wait passively unless the caller chose otherwise: on a shared 2-core
machine, spinning worker threads made loops of small torch calls 5–30× slower in our
measurements (kernels.md). This must be set before torch loads, hence here.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
