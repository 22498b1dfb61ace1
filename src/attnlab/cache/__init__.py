"""KV caches behind one interface (SPEC §4)."""
from .base import CacheOverflowError, CacheStack, KVCache
from .contiguous import ContiguousKVCache
from .latent import LatentKVCache
from .rolling import EvictedPositionError, RollingKVCache
from .static import StaticCrossCache
from .block_allocator import BlockAllocator, PoolExhaustedError
from .paged import PagedKVCache
from .quantized import Int8KVCache, KIVICache
from .sink import SinkKVCache
from .recurrent import RecurrentStateCache

__all__ = [
    "CacheOverflowError",
    "CacheStack",
    "ContiguousKVCache",
    "KVCache",
    "LatentKVCache",
    "RollingKVCache",
    "EvictedPositionError",
    "StaticCrossCache",
    "BlockAllocator",
    "PoolExhaustedError",
    "PagedKVCache",
    "Int8KVCache",
    "KIVICache",
    "SinkKVCache",
    "RecurrentStateCache",
]
