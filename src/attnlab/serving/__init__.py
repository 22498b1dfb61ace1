"""Serving: continuous batching through the model's own forward (`Engine`), over one
paged pool per layer group and recurrent state slots (`ServingCache`)."""
from .engine import Engine, EngineConfig, EngineStats, Request, Result, generate_one
from .pool import PagedLayerView, ServingCache, ServingStep
from .state_slots import StateSlots, StateSlotView

__all__ = [
    "Engine",
    "EngineConfig",
    "EngineStats",
    "PagedLayerView",
    "Request",
    "Result",
    "ServingCache",
    "ServingStep",
    "StateSlotView",
    "StateSlots",
    "generate_one",
]
