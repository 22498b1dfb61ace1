"""Composable mask predicates (SPEC §2) and their dense / block lowering."""
from .bigbird import BigBirdConfig, bigbird
from .layout import EMPTY, FULL, PARTIAL, BlockLayout, block_layout, describe, to_dense
from .predicates import (Mask, and_masks, causal, document, full, global_tokens, or_masks,
                         prefix_lm, sliding_window)

__all__ = ["Mask", "and_masks", "or_masks", "causal", "sliding_window", "global_tokens",
           "prefix_lm", "document", "full", "to_dense", "block_layout", "describe",
           "BlockLayout", "EMPTY", "PARTIAL", "FULL"]
__all__ += ["bigbird", "BigBirdConfig"]
