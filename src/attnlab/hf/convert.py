"""KV-layout conversions applied to Hugging Face models, and what they cost and save.

`mha_to_gqa(model, n_kv_heads)`: the GQA paper's uptraining start point (Ainslie et al.
2023, §2.1) on a whole transformers model: in every attention layer the key and value
projection heads of each group are mean-pooled (bias too), queries, the output projection
and everything else are copied, and the config says `num_key_value_heads = n_kv_heads`, so
transformers' caches allocate the smaller KV. Query head h keeps reading the pool that
contains the KV head it read before. Works on the Llama family layout (`q_proj`, `k_proj`,
`v_proj`, `o_proj`, `num_key_value_heads`: Llama, Mistral, Qwen2/3, Gemma-2, ...). The
result is a start point: the paper uptrains it for ~5% of the original steps.

`pool_kv_heads(model, n_kv_heads)`: the same pooling for architectures transformers gives
no KV-head setting (BERT's `key` / `value`): each group's heads are replaced by their mean
inside the MHA layout, which computes exactly what the GQA model would (every query head of
a group reads the same pooled head), so the damage pooling does to a real checkpoint can be
measured on encoders too (tests/test_hf_convert.py on all-MiniLM-L6-v2).

`low_rank_kv(model, rank, rope_pairs)`: MHA/GQA -> an MLA-style latent (MHA2MLA / TransMLA,
2025): partial RoPE plus a joint truncated SVD of the key and value projections; the
cache holds one latent per token and layer plus the kept rotated key dims.

`logit_kl` and `kv_cache_bytes` measure the two sides: the KL divergence of the converted
model's next-token distribution from the original's, and the bytes a real `DynamicCache`
holds after a prefill (so the saving is measured, not computed from a formula).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from .._checks import check_divisible, check_positive_int
from ..layers.convert import _pool_heads


def _attention_modules(model: torch.nn.Module, names=("q_proj", "k_proj", "v_proj")):
    mods = [m for m in model.modules() if all(hasattr(m, p) for p in names)]
    if not mods:
        raise ValueError(f"model ({type(model).__name__}) has no attention layer with "
                         f"{' / '.join(names)}; expected a transformers model with per-head "
                         "key and value projections")
    return mods


def _heads(cfg) -> tuple[int, int]:
    n_heads = cfg.num_attention_heads
    return n_heads, getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads


@torch.no_grad()
def pool_kv_heads(model: torch.nn.Module, n_kv_heads: int) -> torch.nn.Module:
    """A copy of an MHA transformers model in which the key and value heads of each of
    `n_kv_heads` groups (consecutive heads) are replaced by their mean: GQA's computation
    inside the MHA layout. Projections named `k_proj`/`v_proj` or `key`/`value`. O(params)."""
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "num_attention_heads"):
        raise ValueError(f"model ({type(model).__name__}) has no config.num_attention_heads")
    n_heads, head_dim = _heads(cfg)
    if getattr(cfg, "num_key_value_heads", n_heads) != n_heads:
        raise ValueError(f"pool_kv_heads expects MHA (num_key_value_heads == {n_heads}), got "
                         f"{cfg.num_key_value_heads}; use mha_to_gqa")
    check_positive_int("n_kv_heads", n_kv_heads)
    check_divisible("num_attention_heads", n_heads, "n_kv_heads", n_kv_heads)
    new = copy.deepcopy(model)
    names = ("k_proj", "v_proj") if _has_any(new, ("k_proj", "v_proj")) else ("key", "value")
    rep = n_heads // n_kv_heads
    for mod in _attention_modules(new, names):
        for proj in names:
            lin = getattr(mod, proj)
            for t in (lin.weight, lin.bias):
                if t is not None:
                    pooled = _pool_heads(t, n_heads, n_kv_heads, head_dim)  # (G·D, ...)
                    g = pooled.view(n_kv_heads, 1, head_dim, *t.shape[1:])
                    t.copy_(g.expand(-1, rep, *g.shape[2:]).reshape_as(t))
    return new


def _has_any(model, names) -> bool:
    return any(all(hasattr(m, p) for p in names) for m in model.modules())


@torch.no_grad()
def mha_to_gqa(model: torch.nn.Module, n_kv_heads: int) -> torch.nn.Module:
    """A new transformers model of the same class with `n_kv_heads` KV heads, each the mean
    of the KV heads it replaces. The config's `num_key_value_heads` must be divisible by
    `n_kv_heads`; `n_kv_heads` equal to it returns an exact copy. O(params)."""
    cfg = getattr(model, "config", None)
    old = getattr(cfg, "num_key_value_heads", None)
    if old is None:
        raise ValueError(f"model ({type(model).__name__}) config has no num_key_value_heads; "
                         "expected a Llama-family transformers model")
    check_positive_int("n_kv_heads", n_kv_heads)
    check_divisible("config.num_key_value_heads", old, "n_kv_heads", n_kv_heads)
    _, head_dim = _heads(cfg)
    new_cfg = copy.deepcopy(cfg)
    new_cfg.num_key_value_heads = n_kv_heads
    new = type(model)(new_cfg).to(dtype=next(model.parameters()).dtype)
    state = model.state_dict()
    attn = {id(m) for m in _attention_modules(model, ("q_proj", "k_proj", "v_proj", "o_proj"))}
    for name, mod in model.named_modules():
        if id(mod) in attn:
            for proj in ("k_proj", "v_proj"):
                for p in ("weight", "bias"):
                    t = getattr(getattr(mod, proj), p, None)
                    if t is not None:
                        key = f"{name}.{proj}.{p}"
                        state[key] = _pool_heads(t, old, n_kv_heads, head_dim)
    shapes = {k: v.shape for k, v in new.state_dict().items()}
    bad = [k for k, v in state.items() if k in shapes and shapes[k] != v.shape]
    if bad:  # e.g. OLMo-2's k_norm spans every KV head together: no per-head pooling
        raise ValueError(f"cannot pool {bad[0]} (shape {tuple(state[bad[0]].shape)}) to "
                         f"{n_kv_heads} KV heads (expected {tuple(shapes[bad[0]])}); only "
                         "per-head key/value parameters can be mean-pooled")
    missing, unexpected = new.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if not m.endswith("lm_head.weight")]:
        raise ValueError(f"state dict does not fit the converted model: missing {missing}, "
                         f"unexpected {unexpected}")
    if getattr(new_cfg, "tie_word_embeddings", False):
        new.tie_weights()
    new.train(model.training)
    return new


@torch.no_grad()
def logit_kl(reference: torch.nn.Module, model: torch.nn.Module, input_ids: torch.Tensor,
             attention_mask: torch.Tensor | None = None) -> float:
    """Mean over (non-padding) positions of KL(p_reference || p_model) of the next-token
    distributions, in nats."""
    lp = torch.log_softmax(reference(input_ids, attention_mask=attention_mask).logits.double(), -1)
    lq = torch.log_softmax(model(input_ids, attention_mask=attention_mask).logits.double(), -1)
    kl = (lp.exp() * (lp - lq)).sum(-1)  # (B, N)
    if attention_mask is not None:
        return float(kl[attention_mask.bool()].mean())
    return float(kl.mean())


@torch.no_grad()
def kv_cache_bytes(model: torch.nn.Module, input_ids: torch.Tensor) -> int:
    """Bytes of keys and values a transformers `DynamicCache` holds after prefilling
    `input_ids` (measured on the cache's tensors)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    model(input_ids, cache=cache, use_cache=True)
    total = 0
    for layer in cache.layers:
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


@dataclass(frozen=True)
class ConversionReport:
    """One row of the MHA -> GQA table."""

    n_kv_heads: int
    group_size: int
    kl: float
    kv_bytes: int
    kv_saved: float  # fraction of the original model's KV bytes saved

    def row(self) -> str:
        return (f"| {self.n_kv_heads} | {self.group_size} | {self.kl:.4f} | {self.kv_bytes} | "
                f"{100 * self.kv_saved:.1f}% |")


def gqa_sweep(model: torch.nn.Module, input_ids: torch.Tensor,
              n_kv_list: list[int] | None = None) -> list[ConversionReport]:
    """`mha_to_gqa` for every divisor of the model's KV head count (or `n_kv_list`):
    logit KL against the original and measured KV bytes."""
    old = model.config.num_key_value_heads
    n_kv_list = n_kv_list or [d for d in range(old, 0, -1) if old % d == 0]
    base = kv_cache_bytes(model, input_ids)
    rows = []
    for n in n_kv_list:
        conv = mha_to_gqa(model, n)
        b = kv_cache_bytes(conv, input_ids)
        rows.append(ConversionReport(n, model.config.num_attention_heads // n,
                                     logit_kl(model, conv, input_ids), b, 1 - b / base))
    return rows


# ---- MHA / GQA -> MLA-style low-rank KV (MHA2MLA / TransMLA, 2025) ---------------------

class PartialRotary(torch.nn.Module):
    """A transformers rotary-embedding module with RoPE switched off outside `keep` (D,)
    bool: there cos = the module's attention scaling and sin = 0, so those q/k dims pass
    unrotated (MHA2MLA's partial RoPE). rotate-half layout: pair i is dims i and i + D/2."""

    def __init__(self, inner: torch.nn.Module, keep: torch.Tensor):
        super().__init__()
        self.inner = inner
        self.register_buffer("keep", keep, persistent=False)

    def forward(self, x, position_ids, *args, **kwargs):
        cos, sin = self.inner(x, position_ids, *args, **kwargs)  # (B, N, D)
        scale = float(getattr(self.inner, "attention_scaling", 1.0))
        return (torch.where(self.keep, cos, torch.full_like(cos, scale)),
                torch.where(self.keep, sin, torch.zeros_like(sin)))


def _kv_projections(model) -> tuple[str, str]:
    return ("k_proj", "v_proj") if _has_any(model, ("k_proj", "v_proj")) else ("key", "value")


@torch.no_grad()
def low_rank_kv(model: torch.nn.Module, rank: int, rope_pairs: int = 0) -> torch.nn.Module:
    """A copy of `model` whose keys and values come from one rank-`rank` latent per layer,
    with `rope_pairs` RoPE frequency pairs per KV head kept as a decoupled rotated key.

    MHA2MLA's recipe (2025): keep RoPE on the `rope_pairs` highest-frequency pairs of every
    head (q and k), drop it on the rest (partial RoPE), then factorise the stacked
    non-RoPE key rows and all value rows of a layer jointly by truncated SVD,
    [W_k,nope; W_v] ≈ U_r (S_r V_rᵀ): the cache holds c = S_r V_rᵀ x (`rank` floats per
    token per layer) plus the rotated keys of the kept pairs (2 · rope_pairs per KV head),
    and K_nope = U_r,k c, V = U_r,v c (absorbable into the query / output projections as
    in MLA). Biases are kept as they are. `rope_pairs=None` for models without RoPE (BERT).
    The weights returned compute exactly that model (the factors multiplied back). O(L·
    (H·D)²·d) for the SVDs."""
    cfg = model.config
    n_heads, head_dim = _heads(cfg)
    n_kv = getattr(cfg, "num_key_value_heads", n_heads)
    rotary = [(n, m) for n, m in model.named_modules() if n.endswith("rotary_emb")]
    if rope_pairs is None:
        if rotary:
            raise ValueError(f"rope_pairs is None but the model ({type(model).__name__}) "
                             "applies RoPE; expected 0..head_dim/2 pairs to keep")
    else:
        check_positive_int("rope_pairs", rope_pairs, minimum=0)
        if not rotary:
            raise ValueError(f"rope_pairs ({rope_pairs}) given but the model has no "
                             "rotary_emb module; pass None for models without RoPE")
        if rope_pairs > head_dim // 2:
            raise ValueError(f"rope_pairs ({rope_pairs}) must be <= head_dim / 2 "
                             f"({head_dim // 2})")
    keep = torch.zeros(head_dim, dtype=torch.bool)  # dims that stay rotated (rotate-half)
    if rope_pairs:
        keep[:rope_pairs] = keep[head_dim // 2: head_dim // 2 + rope_pairs] = True
    nope_rows = (~keep).repeat(n_kv)  # (Hkv·D,) key rows that go into the latent
    max_rank = min(int(nope_rows.sum()) + n_kv * head_dim, cfg.hidden_size)
    check_positive_int("rank", rank)
    if rank > max_rank:
        raise ValueError(f"rank ({rank}) must be <= {max_rank} (min of the stacked K_nope/V "
                         f"rows and hidden_size)")
    new = copy.deepcopy(model)
    if rope_pairs is not None and rope_pairs < head_dim // 2:
        for name, mod in [(n, m) for n, m in new.named_modules() if n.endswith("rotary_emb")]:
            parent = new.get_submodule(name.rsplit(".", 1)[0]) if "." in name else new
            setattr(parent, name.rsplit(".", 1)[-1], PartialRotary(mod, keep))
    kname, vname = _kv_projections(new)
    for mod in _attention_modules(new, (kname, vname)):
        wk, wv = getattr(mod, kname).weight, getattr(mod, vname).weight
        stacked = torch.cat([wk[nope_rows], wv]).double()  # (rows, d)
        u, s, vh = torch.linalg.svd(stacked, full_matrices=False)
        approx = (u[:, :rank] * s[:rank]) @ vh[:rank]  # rank-r product U_r S_r V_rᵀ
        n_nope = int(nope_rows.sum())
        wk[nope_rows] = approx[:n_nope].to(wk.dtype)
        wv.copy_(approx[n_nope:].to(wv.dtype))
    return new


def mla_cache_floats(model: torch.nn.Module, rank: int, rope_pairs: int | None) -> tuple[int, int]:
    """(floats cached per token per layer by `low_rank_kv`, by the original K/V cache):
    rank + 2·rope_pairs·Hkv against 2·Hkv·D."""
    n_heads, head_dim = _heads(model.config)
    n_kv = getattr(model.config, "num_key_value_heads", n_heads)
    return rank + 2 * (rope_pairs or 0) * n_kv, 2 * n_kv * head_dim
