"""Mamba-2 SSD (Dao & Gu 2024): chunked, quadratic and recurrent algorithms."""
from .forms import LOG_DECAY_FLOOR, segsum
from .reference import ssd_reference
from .ssd import MODES, ssd

__all__ = ["LOG_DECAY_FLOOR", "MODES", "segsum", "ssd", "ssd_reference"]
