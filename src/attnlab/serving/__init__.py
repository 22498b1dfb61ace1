"""Serving: continuous batching over a paged KV cache (`Engine`), the packed model step."""
from .engine import Engine, EngineConfig, EngineStats, Request, Result, generate_one
from .runner import StepEntry, new_paged_cache, packed_forward

__all__ = [
           "Engine",
           "EngineConfig",
           "EngineStats",
           "Request",
           "Result",
           "StepEntry",
           "generate_one",
           "new_paged_cache",
           "packed_forward",
]
