"""KV-cache memory calculator (docs/sources.md, "KV cache formulas").

- Standard / GQA / MQA layer: `2 · n_kv_heads · head_dim · bytes` per token (K and V; the
  two halves use `head_dim` and `v_head_dim` when they differ).
- MLA layer (DeepSeek-V2 §2.1): `(kv_lora_rank + qk_rope_head_dim) · bytes` per token.
- Sliding-window layer: a sequence holds `min(T, W)` tokens (Gemma-2: every other layer).
- Encoder-decoder: each decoder layer also holds cross-attention K/V for the `S` encoder
  tokens, written once per request.

So for a plain decoder `KV bytes = 2 · L · H_kv · d_head · T · bytes · batch`. Every
figure here equals `nbytes` of the real attnlab caches `build_cache` allocates for the
same config (tested), which is what keeps the formula honest.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .._checks import check_positive_int
from ..cache.base import CacheStack, KVCache
from ..cache.contiguous import ContiguousKVCache
from ..cache.latent import LatentKVCache
from ..cache.static import StaticCrossCache
from .configs import ArchConfig

DTYPES: dict[str, tuple[int, torch.dtype]] = {
    "fp32": (4, torch.float32),
    "fp16": (2, torch.float16),
    "bf16": (2, torch.bfloat16),
    "int8": (1, torch.int8),  # element bytes only; quantization scales are not counted
}
_DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16",
                  "bfloat16": "bf16"}


def dtype_bytes(dtype: str) -> int:
    """Bytes per cached element for a dtype name (fp32, fp16, bf16, int8)."""
    return DTYPES[_canonical_dtype(dtype)][0]


def _canonical_dtype(dtype: str) -> str:
    if not isinstance(dtype, str):
        raise TypeError(f"dtype must be a str such as 'fp16', got {type(dtype).__name__}")
    name = _DTYPE_ALIASES.get(dtype.lower(), dtype.lower())
    if name not in DTYPES:
        raise ValueError(f"dtype ({dtype!r}) must be one of {list(DTYPES)}")
    return name


def standard_kv_bytes(n_layers: int, n_kv_heads: int, head_dim: int, tokens: int,
                      bytes_per_element: int, batch: int = 1) -> int:
    """`2 · L · H_kv · d_head · T · bytes · batch`: the cache of a plain decoder."""
    return 2 * n_layers * n_kv_heads * head_dim * tokens * bytes_per_element * batch


@dataclass(frozen=True)
class KVMemory:
    """KV-cache bytes of one model at one context length, batch and cache dtype.

    `bytes_per_token`: what one token costs when every layer keeps it (the cost at a
    context no longer than any window). `tokens_per_layer`: tokens each decoder layer
    holds (`min(T, W)` on window layers). `bytes_per_sequence` adds cross-attention K/V
    for `encoder_length` tokens on encoder-decoder models.
    """

    model: str
    label: str
    context: int
    batch: int
    dtype: str
    bytes_per_element: int
    n_layers: int
    cached_elements_per_token_per_layer: int
    bytes_per_token: int
    tokens_per_layer: tuple[int, ...]
    self_bytes_per_sequence: int
    encoder_length: int
    cross_bytes_per_encoder_token: int
    cross_bytes_per_sequence: int
    bytes_per_sequence: int
    bytes_total: int
    exceeds_max_context: bool

    @property
    def effective_bytes_per_token(self) -> float:
        """Bytes per sequence divided by context (below bytes_per_token when windows cap)."""
        return self.bytes_per_sequence / self.context

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tokens_per_layer"] = list(self.tokens_per_layer)
        d["effective_bytes_per_token"] = self.effective_bytes_per_token
        return d


def kv_memory(cfg: ArchConfig, context: int, batch: int = 1, dtype: str = "fp16",
              encoder_length: int | None = None) -> KVMemory:
    """The KV-cache memory of `cfg` holding `context` tokens for each of `batch` sequences.

    `encoder_length` (encoder-decoder models only; default: `context`) is the number of
    encoder tokens whose cross-attention K/V every decoder layer keeps.
    """
    if not isinstance(cfg, ArchConfig):
        raise TypeError(f"cfg must be an ArchConfig, got {type(cfg).__name__}")
    check_positive_int("context", context)
    check_positive_int("batch", batch)
    name = _canonical_dtype(dtype)
    b = DTYPES[name][0]
    if encoder_length is not None and not cfg.is_encoder_decoder:
        raise ValueError(f"encoder_length ({encoder_length}) applies only to encoder-decoder "
                         f"models; {cfg.name} is decoder-only")
    S = 0
    if cfg.is_encoder_decoder:
        S = context if encoder_length is None else check_positive_int("encoder_length",
                                                                      encoder_length)
    per_layer = cfg.cached_elements_per_token_per_layer * b  # bytes per token per layer
    held = tuple(context if w is None else min(context, w) for w in cfg.layer_windows)
    self_seq = sum(held) * per_layer
    cross_tok = cfg.n_layers * per_layer if cfg.is_encoder_decoder else 0
    per_seq = self_seq + cross_tok * S
    return KVMemory(
        model=cfg.name, label=cfg.label, context=context, batch=batch, dtype=name,
        bytes_per_element=b, n_layers=cfg.n_layers,
        cached_elements_per_token_per_layer=cfg.cached_elements_per_token_per_layer,
        bytes_per_token=cfg.n_layers * per_layer, tokens_per_layer=held,
        self_bytes_per_sequence=self_seq, encoder_length=S,
        cross_bytes_per_encoder_token=cross_tok, cross_bytes_per_sequence=cross_tok * S,
        bytes_per_sequence=per_seq, bytes_total=per_seq * batch,
        exceeds_max_context=context > cfg.max_context or S > cfg.max_context)


EXPANDED_MLA = "expanded K/V"  # per-head K/V of a naive MLA decode


def compare_variants(cfg: ArchConfig, context: int, batch: int = 1, dtype: str = "fp16",
                     encoder_length: int | None = None) -> list[tuple[str, bool, KVMemory]]:
    """The model re-headed as MHA, GQA-g, MQA and MLA: `(label, is_released, memory)` rows.

    GQA rows: the model's own group count and 8 groups where 8 divides the heads. The
    MLA row uses the model's own latent, or DeepSeek-V2's 4.5·d_h ratio otherwise (not
    offered for encoder-decoder models). MLA models also get the row of a decode that
    caches expanded per-head K/V (K of d_h + d_R, V of d_v per head, uncompressed: what a
    naive MLA implementation holds). transformers 5.x does not: its `DynamicCache` holds
    the latent and the RoPE key, the released MLA row (measured with 5.24, tested).
    """
    H = cfg.n_heads
    kinds: list[tuple[str, int | None]] = [("mha", None)]
    groups = sorted({g for g in (cfg.n_kv_heads, 8)
                     if g is not None and 1 < g < H and H % g == 0}, reverse=True)
    kinds += [("gqa", g) for g in groups]
    kinds.append(("mqa", None))
    if not cfg.is_encoder_decoder:
        kinds.append(("mla", None))
    rows = []
    for kind, g in kinds:
        v = cfg.variant(kind, g)
        released = v.kind == cfg.kind and v.n_kv_heads == cfg.n_kv_heads and \
            v.head_dim == cfg.head_dim and v.mla == cfg.mla
        rows.append((v.label, released, kv_memory(v, context, batch, dtype, encoder_length)))
    if cfg.mla is not None:
        m = cfg.mla
        ex = cfg.scaled(name=f"{cfg.name} (MHA, expanded K/V)", mla=None, n_kv_heads=H,
                        head_dim=m.qk_nope_head_dim + m.qk_rope_head_dim,
                        v_head_dim=m.v_head_dim, aliases=(), notes="", fp16_kib_per_token=None)
        rows.append((EXPANDED_MLA, False, kv_memory(ex, context, batch, dtype)))
    return rows


def build_cache(cfg: ArchConfig, context: int, batch: int = 1, dtype: str = "fp16",
                encoder_length: int | None = None,
                device: torch.device | str = "cpu") -> tuple[CacheStack, StaticCrossCache | None]:
    """Allocate the real attnlab caches for `cfg` (use a `scaled` copy to keep it small).

    Self-attention: a `CacheStack` with one cache per decoder layer — a `LatentKVCache`
    for MLA, otherwise a `ContiguousKVCache` of capacity `min(context, W)` (what a rolling
    window buffer allocates). Encoder-decoder models also get a `StaticCrossCache` set
    with zero K/V for `encoder_length` tokens. The calculator's `bytes_total` equals the
    sum of their `nbytes`.
    """
    mem = kv_memory(cfg, context, batch, dtype, encoder_length)  # validates the arguments
    torch_dtype = DTYPES[mem.dtype][1]
    layers: list[KVCache] = []
    for held in mem.tokens_per_layer:
        if cfg.mla is not None:
            layers.append(LatentKVCache(1, batch, cfg.mla.kv_lora_rank,
                                        cfg.mla.qk_rope_head_dim, held, dtype=torch_dtype,
                                        device=device))
        else:
            layers.append(ContiguousKVCache(1, batch, cfg.n_kv_heads, cfg.head_dim, held,
                                            v_head_dim=cfg.v_head_dim, dtype=torch_dtype,
                                            device=device))
    cross = None
    if cfg.is_encoder_decoder:
        S = mem.encoder_length
        cross = StaticCrossCache(cfg.n_layers, capacity=S)
        for i in range(cfg.n_layers):
            k = torch.zeros(batch, cfg.n_kv_heads, S, cfg.head_dim, dtype=torch_dtype,
                            device=device)  # (B, Hkv, S, D)
            v = torch.zeros(batch, cfg.n_kv_heads, S, cfg.v_head_dim, dtype=torch_dtype,
                            device=device)  # (B, Hkv, S, Dv)
            cross.set(i, k, v)
    return CacheStack(layers), cross


def format_bytes(n: float) -> str:
    """Binary units: '1.25 GiB', '320 KiB', '576 B'."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while abs(n) >= 1024 and i < len(units) - 1:
        n /= 1024
        i += 1
    if i == 0:
        return f"{n:,.0f} B"
    return f"{n:,.2f}".rstrip("0").rstrip(".") + f" {units[i]}"
