"""Typed config of the tiny decoder LM: sizes plus one mixer spec per layer.

A mixer spec is any object with `build(d_model, layer_idx) -> Mixer` (`MixerSpec`):
`AttentionSpec`, `MLASpec`, and every later family (linear attention, RWKV, SSD, ...)
plug in without touching the model.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .._checks import check_positive_int
from ..layers.base import MixerSpec

MLP_KINDS = ("swiglu", "gelu")


@dataclass
class ModelConfig:
    """Decoder-only LM config.

    `mixers`: one spec used for every layer, or a list of `n_layers` specs (hybrid stacks,
    e.g. Gemma-2-style alternating local/global layers). `d_ff` defaults to 4·d_model.
    `mlp`: "swiglu" (Shazeer 2020; LLaMA) or "gelu" (GPT-2).
    """

    vocab_size: int
    d_model: int
    n_layers: int
    mixers: MixerSpec | Sequence[MixerSpec]
    d_ff: int | None = None
    mlp: str = "swiglu"
    max_seq_len: int = 2048
    tie_embeddings: bool = True
    norm_eps: float = 1e-6
    init_std: float = 0.02
    layer_specs: list[MixerSpec] = field(init=False, repr=False)  # derived: one spec per layer

    def __post_init__(self) -> None:
        check_positive_int("vocab_size", self.vocab_size)
        check_positive_int("d_model", self.d_model)
        check_positive_int("n_layers", self.n_layers)
        check_positive_int("max_seq_len", self.max_seq_len)
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        check_positive_int("d_ff", self.d_ff)
        if self.mlp not in MLP_KINDS:
            raise ValueError(f"mlp ({self.mlp!r}) must be one of {list(MLP_KINDS)}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps ({self.norm_eps}) must be > 0")
        if not self.init_std > 0:
            raise ValueError(f"init_std ({self.init_std}) must be > 0")
        specs = list(self.mixers) if isinstance(self.mixers, (list, tuple)) else \
            [self.mixers] * self.n_layers
        if len(specs) != self.n_layers:
            raise ValueError(f"mixers has {len(specs)} specs but n_layers is {self.n_layers}; "
                             "expected one spec or one per layer")
        for i, s in enumerate(specs):
            if not isinstance(s, MixerSpec):
                raise TypeError(f"mixers[{i}] must be a mixer spec with build(d_model, "
                                f"layer_idx), got {type(s).__name__}")
        self.layer_specs = specs
