"""Token mixers as nn.Modules: attention (MHA/GQA/MQA), MLA, cross-attention, hook points."""
from .attention import Attention, AttentionSpec
from .base import Mixer, MixerSpec
from .convert import gqa_to_mha, mha_to_gqa
from .cross import CrossAttention
from .hooks import HookPoint, hook_points
from .linear_attention import LinearAttention, LinearAttentionSpec, Performer, PerformerSpec
from .mla import MLASpec, MultiLatentAttention
from .rwkv import RWKVMixer, RWKVSpec
from .ssd import SSDMixer, SSDSpec

__all__ = [
    "Attention",
    "AttentionSpec",
    "CrossAttention",
    "HookPoint",
    "LinearAttention",
    "LinearAttentionSpec",
    "MLASpec",
    "Mixer",
    "MixerSpec",
    "MultiLatentAttention",
    "Performer",
    "PerformerSpec",
    "RWKVMixer",
    "RWKVSpec",
    "SSDMixer",
    "SSDSpec",
    "gqa_to_mha",
    "hook_points",
    "mha_to_gqa",
]
