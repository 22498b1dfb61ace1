"""Q41: multi-head attention comes from Vaswani et al. 2017 — its base model, rebuilt."""
from __future__ import annotations

import math

import torch

from ...analysis.configs import ArchConfig
from ...analysis.memory import build_cache, kv_memory
from ...layers.attention import Attention
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES

# "Attention Is All You Need", base model: §3.1 N = 6 encoder and 6 decoder layers,
# d_model = 512; §3.2.2 h = 8 heads, d_k = d_v = d_model / h = 64 (Table 3, row "base").
D_MODEL, H, D_K, N_LAYERS = 512, 8, 64, 6
TRANSFORMER_BASE = ArchConfig(
    "Transformer-base", n_layers=N_LAYERS, d_model=D_MODEL, n_heads=H, n_kv_heads=H,
    head_dim=D_K, encoder_layers=N_LAYERS,
    max_context=512,  # not a limit of the paper (sinusoidal positions); only flags long inputs
    source="Vaswani et al. 2017, §3.1, §3.2.2, Table 3 (base)")


def _multihead_by_hand(layer: Attention, x: torch.Tensor) -> torch.Tensor:
    """MultiHead(x) = Concat(head_1..head_h) W_O with head_i = softmax(Q_i K_iᵀ/√d_k) V_i."""
    heads = []
    for i in range(layer.n_heads):
        rows = slice(i * layer.head_dim, (i + 1) * layer.head_dim)
        q = x @ layer.q_proj.weight[rows].T  # (B, N, d_k): x W_i^Q
        k = x @ layer.k_proj.weight[rows].T  # (B, N, d_k)
        v = x @ layer.v_proj.weight[rows].T  # (B, N, d_v)
        p = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(layer.head_dim), dim=-1)  # (B, N, N)
        heads.append(p @ v)  # (B, N, d_v)
    return torch.cat(heads, dim=-1) @ layer.o_proj.weight.T  # (B, N, h·d_v) W_O


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    torch.manual_seed(ctx.seed)
    ev.cite("multi-head attention introduced: MultiHead(Q, K, V) = Concat(head_1..head_h) W_O, "
            "head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V), scaled dot-product with 1/√d_k",
            "Vaswani et al. 2017, \"Attention Is All You Need\", §3.2.1–3.2.2")
    ev.cite("base model: N = 6 encoder and 6 decoder layers, d_model = 512, h = 8 heads, "
            "d_k = d_v = d_model / h = 64", "Vaswani et al. 2017, §3.1, §3.2.2, Table 3 (base)")
    layer = Attention(D_MODEL, H, rope=False, causal=False)  # encoder self-attention, MHA
    ev.measurements["layer heads, head size (from d_model 512, h 8)"] = (layer.n_heads,
                                                                         layer.head_dim)
    n_params = sum(p.numel() for n, p in layer.named_parameters() if n.endswith("weight"))
    ev.measurements["projection parameters W_Q, W_K, W_V, W_O (counted on the layer)"] = n_params
    ev.check("splitting into heads adds no parameters: the layer holds 4 · d_model² projection "
             "weights", n_params == 4 * D_MODEL ** 2, f"{n_params:,} vs {4 * D_MODEL ** 2:,}")

    x = torch.randn(2, 9 if not ctx.full else 65, D_MODEL)
    with torch.no_grad():
        fast, ref = layer(x), _multihead_by_hand(layer, x)
    err = float((fast - ref).abs().max())
    ev.measurements["max |layer − per-head formula|"] = err
    ev.check("attnlab's MHA equals Concat(head_i) W_O computed head by head", err < 1e-4,
             f"max abs diff {err:.2e}")

    # the base decoder's caches, allocated for real: self-attention per target token, cross
    # per source token, against 2 · N · h · d_k · tokens · 4 bytes evaluated here
    T, S = 32, 48
    stack, cross = build_cache(TRANSFORMER_BASE, context=T, batch=1, dtype="fp32",
                               encoder_length=S)
    per_token = 2 * N_LAYERS * H * D_K * 4
    ev.measurements["decoder KV elements per token (2·N·h·d_k)"] = 2 * N_LAYERS * H * D_K
    ev.measurements[f"real caches nbytes, self ({T} target) / cross ({S} source tokens)"] = (
        stack.nbytes, cross.nbytes)
    ev.check("real caches hold 2·N·h·d_k·4 bytes per target token (self) and per source "
             "token (cross)", stack.nbytes == per_token * T and cross.nbytes == per_token * S,
             f"{stack.nbytes:,} + {cross.nbytes:,} B")
    mem = kv_memory(TRANSFORMER_BASE, context=T, batch=1, dtype="fp32", encoder_length=S)
    ev.check("the calculator agrees with the real caches", mem.bytes_total ==
             stack.nbytes + cross.nbytes, f"{mem.bytes_total:,} B")
    ev.key_figure = (f"d_model 512 = 8 heads · 64; MHA == per-head formula (err {err:.1e}); "
                     f"{2 * N_LAYERS * H * D_K} KV elements per decoder token")
    return ev


QUESTION = Question(
    id=41,
    title=TITLES[41],
    short=(
        "Vaswani et al., \"Attention Is All You Need\" (NeurIPS 2017): the Transformer paper, "
        "whose base model ran 8 heads of size 64 on a 512-wide model."
    ),
    rubric=[
        KeyPoint("Vaswani et al. 2017", [r"vaswani", r"2017"]),
        KeyPoint("\"Attention Is All You Need\"", [r"attention is all you need", r"transformer"]),
        KeyPoint("base model: 8 heads of 64 on d_model 512", [r"\b8 heads", r"\b64\b", r"512"],
                 formula="d_k = d_model / h = 512 / 8 = 64"),
    ],
    answer=(
        "Multi-head attention was introduced by Vaswani, Shazeer, Parmar, Uszkoreit, Jones, "
        "Gomez, Kaiser and Polosukhin in \"Attention Is All You Need\" (NeurIPS 2017), the "
        "paper that replaced recurrence in machine translation with an encoder-decoder built "
        "only from attention and feed-forward layers. Its base model used 6 encoder and 6 "
        "decoder layers of width 512 with 8 heads of size 64 each, so splitting into heads "
        "costs no extra compute compared with one 512-wide head; each head projects queries, "
        "keys and values on its own, attends with the 1/√d_k scale, and an output projection "
        "mixes the concatenated heads. The same paper used the mechanism three ways: encoder "
        "self-attention, masked decoder self-attention, and decoder-to-encoder "
        "(cross) attention. Every later variant in this section — MQA, GQA, MLA — changes "
        "only how many key/value heads are kept, to shrink the decoding cache."
    ),
    formulas=[
        "Attention(Q, K, V) = softmax(Q Kᵀ / √d_k) V",
        "MultiHead(X) = Concat(head_1, …, head_h) W_O,  head_i = Attention(X W_i^Q, X W_i^K, X W_i^V)",
        "base model: h = 8, d_k = d_v = d_model / h = 512 / 8 = 64, N = 6",
        "decoder KV per token = 2 · N · h · d_k = 2 · 6 · 8 · 64 = 6144 elements",
    ],
    seed_note=(
        "The seed gives only the citation. We add the title, what the paper defined, its base "
        "hyper-parameters (from the paper, §3.1–3.2 and Table 3), and check the per-head "
        "definition against attnlab's layer."
    ),
    evidence=evidence,
)
