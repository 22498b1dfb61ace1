"""RoPE frequency scaling for context extension, as pure functions of a typed config.

Each kind rewrites the inverse frequencies `θ_i = base^(-2i/d)` (i < d/2) of RoPE
(Su et al. 2021) and may scale the rotated vectors by an attention factor:
- "linear" (position interpolation, Chen et al. 2023): `θ_i / factor`.
- "dynamic" (dynamic NTK): for a call whose largest position is `seq_len - 1`, the base
  becomes `base · (factor·s/L − (factor − 1))^(d/(d−2))` with `s = max(seq_len, L)` and
  L = `original_max_position` (HF reads `max_position_embeddings` here). Frequencies
  therefore depend on the call: see `RopeScaling` for what that means for caches.
- "yarn" (Peng et al. 2023, YaRN): per frequency, a ramp between interpolation
  `θ_i / factor` and extrapolation `θ_i` over the dimensions whose wavelengths fall
  between `beta_fast` and `beta_slow` rotations in L positions (`truncate` rounds the
  ramp ends to whole dimensions); the rotated vectors are multiplied by the attention
  factor `0.1·ln(factor) + 1` (or, with `mscale`/`mscale_all_dim`, the ratio
  `m(factor, mscale) / m(factor, mscale_all_dim)`, DeepSeek-V2).
- "llama3" (Llama 3.1): wavelengths longer than `L / low_freq_factor` are divided by
  `factor`, shorter than `L / high_freq_factor` kept, and a smooth blend in between.
The formulas and their defaults follow Hugging Face transformers' rope init functions
(docs/conventions.md §9); frequencies are computed in float64. O(d) per call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._checks import check_positive_int

ROPE_KINDS = ("default", "linear", "dynamic", "yarn", "llama3")


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude correction `0.1·mscale·ln(factor) + 1` (1 for factor <= 1)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} ({value!r}) must be a number > 0")
    return float(value)


@dataclass
class RopeScaling:
    """How RoPE frequencies are scaled (`kind` in ROPE_KINDS; "default" = unscaled).

    `original_max_position` (L): the pretraining context. Required for "dynamic", "yarn"
    and "llama3". `factor`: the extension ratio (yarn: None means
    `max_position / original_max_position`, which then must be given).

    Dynamic NTK makes frequencies a function of the call (`seq_len` = its largest position
    + 1, at least L): a parallel forward over a sequence longer than L rotates EVERY
    position with the scaled frequencies, while cached decode keeps the keys each earlier
    call rotated with its own. Parallel and cached decode therefore agree for sequences
    within L and differ past it; Hugging Face behaves the same way (each matches its HF
    counterpart). HF also keeps the largest `seq_len` seen until a call falls below L,
    where attnlab is stateless: they agree on any single call and on generation, whose
    positions only grow; they differ when a shorter call (still past L) follows a longer
    one on the same HF model.
    """

    kind: str = "default"
    factor: float | None = 1.0
    original_max_position: int | None = None
    max_position: int | None = None  # yarn with factor None: factor = max / original
    low_freq_factor: float | None = None  # llama3
    high_freq_factor: float | None = None  # llama3
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    mscale: float | None = None  # yarn
    mscale_all_dim: float | None = None  # yarn
    attention_factor: float | None = None  # yarn: None = derived from factor / mscale
    truncate: bool = True  # yarn: round the ramp ends to whole dimensions

    def __post_init__(self) -> None:
        if self.kind not in ROPE_KINDS:
            raise ValueError(f"kind ({self.kind!r}) must be one of {list(ROPE_KINDS)}")
        if self.original_max_position is not None:
            check_positive_int("original_max_position", self.original_max_position)
        if self.max_position is not None:
            check_positive_int("max_position", self.max_position)
        if self.kind in ("dynamic", "yarn", "llama3") and self.original_max_position is None:
            raise ValueError(f"original_max_position is required for kind {self.kind!r}")
        if self.factor is None:
            if self.kind != "yarn" or self.max_position is None:
                raise ValueError(f"factor (None) is only allowed for kind 'yarn' with "
                                 f"max_position given; got kind {self.kind!r}, max_position "
                                 f"{self.max_position}")
            self.factor = self.max_position / self.original_max_position
        self.factor = _positive("factor", self.factor)
        if self.kind == "llama3":
            lo = _positive("low_freq_factor", self.low_freq_factor)
            hi = _positive("high_freq_factor", self.high_freq_factor)
            if not hi > lo:
                raise ValueError(f"high_freq_factor ({hi}) must be > low_freq_factor ({lo})")
        if self.kind == "yarn":
            _positive("beta_fast", self.beta_fast)
            _positive("beta_slow", self.beta_slow)
        if self.attention_factor is not None:
            _positive("attention_factor", self.attention_factor)

    @property
    def rope_factor(self) -> float:
        """The factor the rotated vectors (cos and sin) are multiplied by: 1 except yarn."""
        if self.kind != "yarn":
            return 1.0
        if self.attention_factor is not None:
            return float(self.attention_factor)
        if self.mscale and self.mscale_all_dim:
            return yarn_mscale(self.factor, self.mscale) / yarn_mscale(self.factor,
                                                                       self.mscale_all_dim)
        return yarn_mscale(self.factor)

    def inv_freq(self, dim: int, base: float, seq_len: int | None = None) -> torch.Tensor:
        """Inverse frequencies (dim/2,) float64 for rotary dimension `dim`; `seq_len` (the
        call's largest position + 1) matters only for "dynamic"."""
        return rope_inv_freq(dim, base, self, seq_len)


def default_inv_freq(dim: int, base: float) -> torch.Tensor:
    """`base^(-2i/dim)` for i < dim/2, float64."""
    if dim % 2:
        raise ValueError(f"rope dim ({dim}) must be even")
    _positive("base", base)
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))


def rope_inv_freq(dim: int, base: float, scaling: RopeScaling | None = None,
                  seq_len: int | None = None) -> torch.Tensor:
    """Inverse frequencies (dim/2,) float64 of RoPE with `scaling` (None = unscaled)."""
    if scaling is not None and not isinstance(scaling, RopeScaling):
        raise TypeError(f"scaling must be a RopeScaling or None, got {type(scaling).__name__}")
    if scaling is None or scaling.kind == "default":
        return default_inv_freq(dim, base)
    s, f = scaling, scaling.factor
    if s.kind == "linear":
        return default_inv_freq(dim, base) / f
    if s.kind == "dynamic":
        L = s.original_max_position
        n = L if seq_len is None else max(int(seq_len), L)
        return default_inv_freq(dim, base * ((f * n / L) - (f - 1)) ** (dim / (dim - 2)))
    if s.kind == "llama3":
        return _llama3(default_inv_freq(dim, base), s)
    return _yarn(dim, base, s)


def _llama3(inv: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    L, f, lo, hi = s.original_max_position, s.factor, s.low_freq_factor, s.high_freq_factor
    wavelen = 2 * math.pi / inv  # (dim/2,)
    scaled = torch.where(wavelen > L / lo, inv / f, inv)  # long wavelengths interpolated
    smooth = (L / wavelen - lo) / (hi - lo)  # 0 at L/lo, 1 at L/hi
    blended = (1 - smooth) * scaled / f + smooth * scaled
    medium = (wavelen >= L / hi) & (wavelen <= L / lo)
    return torch.where(medium, blended, scaled)


def _yarn(dim: int, base: float, s: RopeScaling) -> torch.Tensor:
    L, f = s.original_max_position, s.factor

    def correction_dim(rotations: float) -> float:
        # the dimension whose wavelength completes `rotations` turns in L positions
        return dim * math.log(L / (rotations * 2 * math.pi)) / (2 * math.log(base))

    lo, hi = correction_dim(s.beta_fast), correction_dim(s.beta_slow)
    if s.truncate:
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, dim - 1)
    if lo == hi:
        hi += 0.001  # a zero-width ramp (as transformers does)
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - lo) / (hi - lo)).clamp(0, 1)
    extrapolate = 1 - ramp  # 1: keep θ_i (high frequencies), 0: θ_i / factor
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    return (1 / (f * pos_freqs)) * (1 - extrapolate) + (1 / pos_freqs) * extrapolate
