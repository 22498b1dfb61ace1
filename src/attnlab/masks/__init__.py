"""Composable mask predicates (conventions §2) and their dense / block lowering."""
from .bigbird import BigBirdConfig, bigbird
from .layout import EMPTY, FULL, PARTIAL, BlockLayout, block_layout, describe, to_dense
from .predicates import (
                         Mask,
                         and_masks,
                         causal,
                         document,
                         full,
                         global_tokens,
                         or_masks,
                         prefix_lm,
                         sliding_window,
)

__all__ = [
                         "EMPTY",
                         "FULL",
                         "PARTIAL",
                         "BlockLayout",
                         "Mask",
                         "and_masks",
                         "block_layout",
                         "causal",
                         "describe",
                         "document",
                         "full",
                         "global_tokens",
                         "or_masks",
                         "prefix_lm",
                         "sliding_window",
                         "to_dense",
]
__all__ += ["BigBirdConfig", "bigbird"]
