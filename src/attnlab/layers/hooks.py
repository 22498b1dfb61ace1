"""Named hook points: identity modules where activations can be read or edited.

Every attention layer owns `hook_q`, `hook_k` (after RoPE), `hook_v` and `hook_head_out`
(per-head output (B, H, N, Dv) before the output projection). A `HookPoint` is an
`nn.Identity` with a name, so `register_forward_hook` works on it and an unused hook
costs one Python call returning its input (the TransformerLens HookPoint idea).
"""
from __future__ import annotations

import torch
from torch import nn


class HookPoint(nn.Module):
    """Identity module; attach `register_forward_hook` to read or replace its output."""

    def __init__(self, name: str = ""):
        super().__init__()
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return repr(self.name) if self.name else ""


def hook_points(module: nn.Module) -> dict[str, HookPoint]:
    """Every HookPoint inside `module`, keyed by its qualified module name."""
    return {name: m for name, m in module.named_modules() if isinstance(m, HookPoint)}
