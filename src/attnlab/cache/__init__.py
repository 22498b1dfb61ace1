"""KV caches behind one interface (conventions §4)."""
from .base import CacheOverflowError, CacheStack, KVCache
from .block_allocator import BlockAllocator, PoolExhaustedError
from .contiguous import ContiguousKVCache
from .latent import LatentKVCache
from .paged import PagedKVCache
from .quantized import Int8KVCache, KIVICache
from .recurrent import RecurrentStateCache
from .rolling import EvictedPositionError, RollingKVCache
from .sink import SinkKVCache
from .static import StaticCrossCache

__all__ = [
    "BlockAllocator",
    "CacheOverflowError",
    "CacheStack",
    "ContiguousKVCache",
    "EvictedPositionError",
    "Int8KVCache",
    "KIVICache",
    "KVCache",
    "LatentKVCache",
    "PagedKVCache",
    "PoolExhaustedError",
    "RecurrentStateCache",
    "RollingKVCache",
    "SinkKVCache",
    "StaticCrossCache",
]
