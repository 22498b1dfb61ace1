"""The tiny config-driven decoder LM, generation, and the parallel == decode conformance check."""
from .config import ModelConfig
from .conformance import check_parallel_equals_decode, decode_logits
from .generate import generate
from .lm import TinyLM

__all__ = ["ModelConfig", "TinyLM", "check_parallel_equals_decode", "decode_logits", "generate"]
