"""KV caches behind one interface (SPEC §4)."""
from .base import CacheOverflowError, CacheStack, KVCache
from .contiguous import ContiguousKVCache
from .latent import LatentKVCache
from .rolling import EvictedPositionError, RollingKVCache
from .static import StaticCrossCache

__all__ = [
    "CacheOverflowError",
    "CacheStack",
    "ContiguousKVCache",
    "KVCache",
    "LatentKVCache",
    "RollingKVCache",
    "EvictedPositionError",
    "StaticCrossCache",
]
