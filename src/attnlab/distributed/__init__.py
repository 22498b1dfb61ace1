"""Context parallelism on torch.distributed (docs/conventions.md §8): ring, zigzag,
Ulysses and hybrid attention over a sequence sharded across ranks, exact in forward and
backward; mask-aware peer selection; decoding with a sequence-sharded KV cache."""
from .api import context_parallel_attention
from .comm import Comm, CommStats, ContextParallelError, record_comm
from .plan import METHODS, imbalance, visible_pairs, work_per_rank
from .sharding import LAYOUTS, all_positions, shard, shard_positions, shard_ranges, unshard

__all__ = [
    "LAYOUTS",
    "METHODS",
    "Comm",
    "CommStats",
    "ContextParallelError",
    "all_positions",
    "context_parallel_attention",
    "imbalance",
    "record_comm",
    "shard",
    "shard_positions",
    "shard_ranges",
    "unshard",
    "visible_pairs",
    "work_per_rank",
]
