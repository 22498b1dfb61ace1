"""attnlab: the attention family beyond the basic transformer, verified and measured."""
from . import masks
from .ops import apply_rope, attention, attention_reference, merge

__version__ = "0.1.0"
__all__ = ["__version__", "apply_rope", "attention", "attention_reference", "masks", "merge"]
