"""Attention geometry of real models, each number with its source (see docs/sources.md).

An `ArchConfig` holds what the KV cache depends on: layers, query and KV heads, head
sizes, sliding windows per layer, MLA latent sizes, and the encoder for encoder-decoder
models. `get_config(name)` looks a model up case-insensitively (aliases allowed);
`ArchConfig.variant(kind)` gives the same model re-headed as MHA / GQA-g / MQA / MLA,
and `ArchConfig.scaled(...)` a smaller copy for building real caches in tests.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .._checks import check_divisible, check_positive_int

KINDS = ("mha", "gqa", "mqa", "mla")
# all: every layer local; alternate: even layers local (layer 0 local), odd global;
# layers: the layers listed in `local_layers` are local (e.g. HF `layer_types`)
WINDOW_PATTERNS = ("all", "alternate", "layers")


@dataclass(frozen=True)
class MLAGeometry:
    """DeepSeek-V2 multi-head latent attention sizes (DeepSeek-V2 report §2.1)."""

    kv_lora_rank: int  # d_c: the cached joint KV latent
    qk_rope_head_dim: int  # d_R: the cached RoPE key, shared by all heads
    qk_nope_head_dim: int  # d_h: per-head non-RoPE query/key part
    v_head_dim: int
    q_lora_rank: int | None = None  # d'_c; None = no query compression (V2-Lite)

    def __post_init__(self) -> None:
        for name in ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"):
            check_positive_int(name, getattr(self, name))
        if self.q_lora_rank is not None:
            check_positive_int("q_lora_rank", self.q_lora_rank)

    @property
    def cached_elements(self) -> int:
        """Elements cached per token per layer: d_c + d_R (576 for DeepSeek-V2)."""
        return self.kv_lora_rank + self.qk_rope_head_dim


@dataclass(frozen=True)
class ArchConfig:
    """The attention geometry of one model (decoder side, plus the encoder if any).

    `head_dim` is the key head size and `v_head_dim` the value head size (default equal).
    For MLA models `n_kv_heads` is None (the cache holds no per-head K/V) and `head_dim`
    is the paper's d_h. `window`: keys seen per query including itself (conventions §2), applied
    to every layer (`window_pattern="all"`), to even layers only (`"alternate"`,
    Gemma-2), or to the layers in `local_layers` (`"layers"`, any mix such as Gemma-3's
    five local to one global). `encoder_layers > 0` marks an encoder-decoder model whose `n_layers`
    decoder layers each cross-attend to the encoder output with `n_kv_heads` heads.
    """

    name: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int | None
    head_dim: int
    max_context: int
    source: str
    v_head_dim: int | None = None
    window: int | None = None
    window_pattern: str = "all"
    local_layers: tuple[int, ...] = ()  # window_pattern "layers": the local layers
    mla: MLAGeometry | None = None
    encoder_layers: int = 0
    aliases: tuple[str, ...] = ()
    notes: str = ""
    fp16_kib_per_token: float | None = None  # the figure docs/sources.md states, for cross-checks
    # derived
    kind: str = field(init=False)
    layer_windows: tuple[int | None, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "n_heads", "head_dim", "max_context"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("encoder_layers", self.encoder_layers, minimum=0)
        if self.v_head_dim is None:
            object.__setattr__(self, "v_head_dim", self.head_dim)
        check_positive_int("v_head_dim", self.v_head_dim)
        if self.window is not None:
            check_positive_int("window", self.window)
        if self.window_pattern not in WINDOW_PATTERNS:
            raise ValueError(f"window_pattern ({self.window_pattern!r}) must be one of "
                             f"{list(WINDOW_PATTERNS)}")
        if (self.window_pattern == "layers") != bool(self.local_layers) or any(
                not 0 <= i < self.n_layers for i in self.local_layers):
            raise ValueError(f"local_layers ({self.local_layers}) must list layers in "
                             f"[0, {self.n_layers}) exactly when window_pattern is 'layers' "
                             f"(got {self.window_pattern!r})")
        if self.mla is not None:
            if self.n_kv_heads is not None:
                raise ValueError(f"n_kv_heads ({self.n_kv_heads}) must be None for an MLA "
                                 "model: the latent cache has no per-head K/V")
            if self.encoder_layers:
                raise ValueError("encoder_layers must be 0 for an MLA model")
            kind = "mla"
        else:
            if self.n_kv_heads is None:
                raise ValueError("n_kv_heads must be given unless mla is set")
            check_positive_int("n_kv_heads", self.n_kv_heads)
            check_divisible("n_heads", self.n_heads, "n_kv_heads", self.n_kv_heads)
            kind = ("mha" if self.n_kv_heads == self.n_heads
                    else "mqa" if self.n_kv_heads == 1 else "gqa")
        object.__setattr__(self, "kind", kind)
        local = {"all": range(self.n_layers), "alternate": range(0, self.n_layers, 2),
                 "layers": self.local_layers}[self.window_pattern]
        windows = tuple(self.window if i in local else None for i in range(self.n_layers))
        object.__setattr__(self, "layer_windows", windows)

    # --- derived quantities ------------------------------------------------------------
    @property
    def group_size(self) -> int | None:
        """Query heads per KV head (None for MLA)."""
        return None if self.n_kv_heads is None else self.n_heads // self.n_kv_heads

    @property
    def is_encoder_decoder(self) -> bool:
        return self.encoder_layers > 0

    @property
    def cached_elements_per_token_per_layer(self) -> int:
        """K and V elements one token adds to one layer's cache (MLA: d_c + d_R)."""
        if self.mla is not None:
            return self.mla.cached_elements
        return self.n_kv_heads * (self.head_dim + self.v_head_dim)

    @property
    def label(self) -> str:
        if self.kind == "gqa":
            return f"GQA-{self.n_kv_heads}"
        return self.kind.upper()

    # --- derived configs ---------------------------------------------------------------
    def scaled(self, **changes) -> ArchConfig:
        """A copy with some fields replaced (e.g. fewer layers), re-validated."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self) if f.init}
        if unknown:
            raise ValueError(f"scaled() got unknown field(s) {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def variant(self, kind: str, n_kv_heads: int | None = None) -> ArchConfig:
        """The same model with its KV sharing changed.

        mha: n_kv_heads = n_heads; gqa: `n_kv_heads` groups (must divide n_heads);
        mqa: one KV head; mla: a latent of d_c = 4·d_h plus d_R = d_h/2 (DeepSeek-V2's
        ratios, 512 and 64 at d_h = 128 → 4.5·d_h, report Table 1) unless the model is
        already MLA. From an MLA model, head counts apply to d_h-sized K and V heads.
        """
        if kind not in KINDS:
            raise ValueError(f"kind ({kind!r}) must be one of {list(KINDS)}")
        d = self.mla.qk_nope_head_dim if self.mla is not None else self.head_dim
        dv = self.mla.v_head_dim if self.mla is not None else self.v_head_dim
        if kind == "mla":
            if self.mla is not None:
                return self
            if self.is_encoder_decoder:
                raise ValueError(f"kind 'mla' is not defined for encoder-decoder {self.name}")
            geo = MLAGeometry(kv_lora_rank=4 * d, qk_rope_head_dim=max(1, d // 2),
                              qk_nope_head_dim=d, v_head_dim=dv)
            return dataclasses.replace(self, name=f"{self.name} (MLA)", n_kv_heads=None,
                                       mla=geo, aliases=(), notes="", fp16_kib_per_token=None)
        if kind == "gqa":
            if n_kv_heads is None:
                raise ValueError("kind 'gqa' needs n_kv_heads (the number of groups)")
            check_positive_int("n_kv_heads", n_kv_heads)
            check_divisible("n_heads", self.n_heads, "n_kv_heads", n_kv_heads)
            heads = n_kv_heads
        else:
            heads = self.n_heads if kind == "mha" else 1
        return dataclasses.replace(self, name=f"{self.name} ({kind.upper()})", n_kv_heads=heads,
                                   head_dim=d, v_head_dim=dv, mla=None, aliases=(), notes="",
                                   fp16_kib_per_token=None)


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def register(cfg: ArchConfig) -> ArchConfig:
    """Add a config to the lookup table under its name and aliases."""
    for n in (cfg.name, *cfg.aliases):
        k = _key(n)
        if k in _BY_KEY and _BY_KEY[k] is not cfg:
            raise ValueError(f"model name {n!r} is already registered")
        _BY_KEY[k] = cfg
    CONFIGS[cfg.name] = cfg
    return cfg


CONFIGS: dict[str, ArchConfig] = {}
_BY_KEY: dict[str, ArchConfig] = {}


def get_config(name: str) -> ArchConfig:
    """Look a model up by name or alias; case, '-', '_', '.' and spaces are ignored."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    cfg = _BY_KEY.get(_key(name))
    if cfg is None:
        raise ValueError(f"unknown model ({name!r}); known models: {', '.join(CONFIGS)}")
    return cfg


def list_configs() -> list[ArchConfig]:
    return list(CONFIGS.values())



# --- built-in models (sources: docs/sources.md, "Model configs") -------------------
_LLAMA2 = "HF config.json; Llama-2 model card (GQA only on 70B)"
_LLAMA3 = "llama-models model cards (Meta Llama 3 / 3.1)"
_DS_V2 = "DeepSeek-V2 report §2.1, §3.1.2 (d_c 512, d'_c 1536, d_h 128, d_R 64)"

register(ArchConfig(
    "Llama-2-7B", n_layers=32, d_model=4096, n_heads=32, n_kv_heads=32, head_dim=128,
    max_context=4096, source=_LLAMA2, aliases=("llama2-7b", "llama-2-7b-hf"),
    fp16_kib_per_token=512))
register(ArchConfig(
    "Llama-2-13B", n_layers=40, d_model=5120, n_heads=40, n_kv_heads=40, head_dim=128,
    max_context=4096, source=_LLAMA2, aliases=("llama2-13b",), fp16_kib_per_token=800))
register(ArchConfig(
    "Llama-2-70B", n_layers=80, d_model=8192, n_heads=64, n_kv_heads=8, head_dim=128,
    max_context=4096, source=_LLAMA2, aliases=("llama2-70b", "llama-2-70b-hf"),
    notes="GQA with 8 KV heads: group size 64/8 = 8", fp16_kib_per_token=320))
register(ArchConfig(
    "Llama-3-8B", n_layers=32, d_model=4096, n_heads=32, n_kv_heads=8, head_dim=128,
    max_context=8192, source=_LLAMA3, aliases=("llama3-8b", "meta-llama-3-8b"),
    notes="Llama-3.1-8B: same geometry, 131072 context", fp16_kib_per_token=128))
register(ArchConfig(
    "Llama-3.1-8B", n_layers=32, d_model=4096, n_heads=32, n_kv_heads=8, head_dim=128,
    max_context=131072, source=_LLAMA3, aliases=("llama3.1-8b",), fp16_kib_per_token=128))
register(ArchConfig(
    "Llama-3-70B", n_layers=80, d_model=8192, n_heads=64, n_kv_heads=8, head_dim=128,
    max_context=8192, source=_LLAMA3, aliases=("llama3-70b", "meta-llama-3-70b"),
    notes="Llama-3.1-70B: same geometry, 131072 context", fp16_kib_per_token=320))
register(ArchConfig(
    "Llama-3.1-70B", n_layers=80, d_model=8192, n_heads=64, n_kv_heads=8, head_dim=128,
    max_context=131072, source=_LLAMA3, aliases=("llama3.1-70b",), fp16_kib_per_token=320))
register(ArchConfig(
    "Llama-3.1-405B", n_layers=126, d_model=16384, n_heads=128, n_kv_heads=8, head_dim=128,
    max_context=131072, source=_LLAMA3, aliases=("llama3.1-405b", "llama-405b"),
    fp16_kib_per_token=504))
register(ArchConfig(
    "Mistral-7B", n_layers=32, d_model=4096, n_heads=32, n_kv_heads=8, head_dim=128,
    max_context=32768, window=4096, source="HF config (v0.1); Mistral 7B paper §2 (W = 4096)",
    aliases=("mistral-7b-v0.1", "mistral7b"),
    notes="max_position_embeddings 32768; every layer keeps at most 4096 tokens "
          "(rolling buffer) → 512 MiB per sequence in fp16 at long context",
    fp16_kib_per_token=128))
register(ArchConfig(
    "Mixtral-8x7B", n_layers=32, d_model=4096, n_heads=32, n_kv_heads=8, head_dim=128,
    max_context=32768, window=None, source="HF config (Mixtral-8x7B-v0.1)",
    aliases=("mixtral", "mixtral-8x7b-v0.1"),
    notes="no sliding window in the official config (older copies said 4096); "
          "8 experts are MLPs and do not change the KV cache", fp16_kib_per_token=128))
register(ArchConfig(
    "Falcon-7B", n_layers=32, d_model=4544, n_heads=71, n_kv_heads=1, head_dim=64,
    max_context=2048, source="HF config (tiiuae/falcon-7b, multi_query: true)",
    aliases=("falcon7b", "tiiuae/falcon-7b"),
    notes="MQA. Later configs carry num_kv_heads: 71 beside multi_query: true; the "
          "effective number of KV heads is 1 (71 would mean MHA, 71x the cache)",
    fp16_kib_per_token=8))
register(ArchConfig(
    "DeepSeek-V2", n_layers=60, d_model=5120, n_heads=128, n_kv_heads=None, head_dim=128,
    max_context=131072, source=_DS_V2, aliases=("deepseek-v2-236b", "deepseekv2"),
    mla=MLAGeometry(kv_lora_rank=512, qk_rope_head_dim=64, qk_nope_head_dim=128,
                    v_head_dim=128, q_lora_rank=1536),
    notes="HF config's num_key_value_heads: 128 is meaningless under MLA; transformers 5.x "
          "caches the latent and the RoPE key too (576 elements per token per layer, measured "
          "with 5.24); a decode that caches expanded per-head K/V holds about 71x",
    fp16_kib_per_token=67.5))
register(ArchConfig(
    "DeepSeek-V2-Lite", n_layers=27, d_model=2048, n_heads=16, n_kv_heads=None, head_dim=128,
    max_context=32768, source="DeepSeek config_16B.json (V2-Lite)",
    aliases=("deepseek-v2-lite-16b",),
    mla=MLAGeometry(kv_lora_rank=512, qk_rope_head_dim=64, qk_nope_head_dim=128,
                    v_head_dim=128, q_lora_rank=None),
    notes="no query compression", fp16_kib_per_token=30.375))
register(ArchConfig(
    "DeepSeek-V3", n_layers=61, d_model=7168, n_heads=128, n_kv_heads=None, head_dim=128,
    max_context=131072, source="DeepSeek config_671B.json (V3)",
    aliases=("deepseek-v3-671b", "deepseekv3"),
    mla=MLAGeometry(kv_lora_rank=512, qk_rope_head_dim=64, qk_nope_head_dim=128,
                    v_head_dim=128, q_lora_rank=1536),
    notes="61 layers; the extra multi-token-prediction layer in the HF config is not counted",
    fp16_kib_per_token=68.625))
register(ArchConfig(
    "Gemma-2-9B", n_layers=42, d_model=3584, n_heads=16, n_kv_heads=8, head_dim=256,
    max_context=8192, window=4096, window_pattern="alternate",
    source="gemma transformer.py; HF config (query_pre_attn_scalar 256, attn softcap 50, "
           "final softcap 30)", aliases=("gemma2-9b", "gemma-2-9b-it"),
    notes="local (W = 4096) and global layers alternate, layer 0 local",
    fp16_kib_per_token=336))
register(ArchConfig(
    "Gemma-2-27B", n_layers=46, d_model=4608, n_heads=32, n_kv_heads=16, head_dim=128,
    max_context=8192, window=4096, window_pattern="alternate",
    source="gemma transformer.py; HF config (queries scaled by 1/sqrt(144))",
    aliases=("gemma2-27b", "gemma-2-27b-it"),
    notes="local (W = 4096) and global layers alternate, layer 0 local",
    fp16_kib_per_token=368))
register(ArchConfig(
    "GPT-2", n_layers=12, d_model=768, n_heads=12, n_kv_heads=12, head_dim=64,
    max_context=1024, source="HF config (gpt2)", aliases=("gpt2", "gpt-2-small", "gpt2-small"),
    fp16_kib_per_token=36))
register(ArchConfig(
    "T5-base", n_layers=12, d_model=768, n_heads=12, n_kv_heads=12, head_dim=64,
    max_context=512, encoder_layers=12, source="HF config (t5-base, d_kv 64)",
    aliases=("t5", "t5base", "google-t5/t5-base"),
    notes="encoder-decoder: 12 decoder layers cache self-attention K/V per decoder token and "
          "cross-attention K/V per encoder token (written once per request)",
    fp16_kib_per_token=36))
