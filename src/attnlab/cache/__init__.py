"""KV caches behind one interface (SPEC §4)."""
from .base import CacheOverflowError, CacheStack, KVCache

__all__ = ["KVCache", "CacheStack", "CacheOverflowError"]
