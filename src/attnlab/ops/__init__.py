"""Pure functions on tensors, one folder per attention family."""
from .rope import apply_rope, rope_angles
from .softmax import attention, attention_reference, merge, merge_many

__all__ = ["apply_rope", "attention", "attention_reference", "merge", "merge_many", "rope_angles"]
