"""attnlab benchmarks: one script per topic (`python -m benchmarks.<name>`), all run by
`python -m benchmarks.run_all` (`make bench`). Results go to benchmarks/results/.

OpenMP threads wait passively unless the caller chose otherwise: on a shared 2-core
machine, spinning worker threads made loops of small torch calls 5–30× slower in our
measurements (kernels.md). This must be set before torch loads, hence here.

Large torch allocations are backed by transparent huge pages (`THP_MEM_ALLOC_ENABLE=1`,
torch's CPU allocator then advises the kernel for buffers of ≥ 2 MiB) unless the caller
chose otherwise: a paged KV pool read through scattered blocks otherwise pays a TLB miss
per block (at 64–128K context, paged decode was 1.2–1.3× faster with it in our
measurements; contiguous 1.1×). Every results header prints the setting.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
