"""Q22: linear attention decodes as an RNN — state bytes flat in N, KV cache bytes growing."""
from __future__ import annotations

import torch

from ...cache.contiguous import ContiguousKVCache
from ...layers.linear_attention import LinearAttention
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    torch.manual_seed(ctx.seed)
    d_model, H, D, B = 64, 4, 16, 1
    layer = LinearAttention(d_model, H, head_dim=D, chunk_size=32)
    lengths = [256, 1024, 4096] + ([16384, 65536] if ctx.full else [])
    steps = 64
    x = torch.randn(B, max(lengths), d_model)
    state_bytes, kv_bytes, kv_formula = [], [], []
    with torch.no_grad():
        for N in lengths:
            cache = layer.new_cache(B, N + steps)
            layer(x[:, :N], cache)  # prefill N tokens into the state
            state_bytes.append(cache.nbytes)
            kv = ContiguousKVCache(1, B, H, D, N)  # what softmax attention would hold
            kv_bytes.append(kv.nbytes)
            kv_formula.append(2 * N * H * D * 4 * B)  # 2 · N · H · D · bytes (one layer)
        # decode token by token from the state and compare with one parallel pass
        n0 = 48
        seq = torch.randn(B, n0 + steps, d_model)
        full = layer(seq)
        cache = layer.new_cache(B, n0 + steps)
        outs = [layer(seq[:, :n0], cache)] + [layer(seq[:, t:t + 1], cache)
                                              for t in range(n0, n0 + steps)]
        inc = torch.cat(outs, 1)
    diff = float((full - inc).abs().max())
    ev.measurements["layer"] = f"d_model {d_model}, {H} heads × d {D}, φ = elu+1, fp32, batch {B}"
    ev.measurements["prefill lengths N"] = lengths
    ev.measurements["state nbytes after N tokens"] = state_bytes
    ev.measurements["softmax KV cache nbytes for N tokens"] = kv_bytes
    ev.measurements["state formula H·(D·D + D)·4 B"] = H * (D * D + D) * 4 * B
    ev.measurements["max |parallel − recurrent decode|"] = diff
    ev.check("state bytes are the same at every N", len(set(state_bytes)) == 1, str(state_bytes))
    ev.check("state bytes equal H·(D·Dv + D)·bytes", state_bytes[0] == H * (D * D + D) * 4 * B)
    ev.check("KV cache bytes equal 2·N·H·D·bytes and grow linearly",
             kv_bytes == kv_formula and kv_bytes[-1] / kv_bytes[0] == lengths[-1] / lengths[0],
             f"{kv_bytes}")
    ev.check("decoding from the state reproduces the parallel output", diff < 1e-4, f"{diff:.2e}")
    ratio = kv_bytes[-1] / state_bytes[-1]
    ev.key_figure = (f"state {state_bytes[0]:,} B at every N; a KV cache holds {kv_bytes[-1]:,} B "
                     f"at N={lengths[-1]} ({ratio:.0f}× more)")
    return ev


QUESTION = Question(
    id=22,
    title=TITLES[22],
    short=(
        'With a causal mask, what query t reads is two running sums over the past, the matrix '
        'S_t = Σ φ(k_j)ᵀv_j and the normaliser z_t = Σ φ(k_j). Each new token adds one outer product '
        'and one vector, and old keys and values are never needed again, so decoding is an RNN with '
        'a fixed-size state and constant time and memory per step.'
    ),
    rubric=[
        KeyPoint("running state S = Σ φ(k)ᵀv (plus normaliser z)",
                 [r"running (sum|state)", r"prefix sum", r"s_?t", r"state"],
                 formula="S_t = S_{t−1} + φ(k_t)ᵀ v_t;  z_t = z_{t−1} + φ(k_t)"),
        KeyPoint("output from the state", [r"φ\(q", r"phi\(q", r"read", r"o_?t"],
                 formula="o_t = φ(q_t) S_t / (φ(q_t) · z_t)"),
        KeyPoint("constant time and memory per step",
                 [r"constant (time|memory|state|size)", r"o\(1\)", r"fixed[- ]size",
                  r"doesn'?t grow", r"independent of (n|length)"]),
        KeyPoint("like an RNN: old K/V not needed, no growing KV cache",
                 [r"rnn", r"recurren", r"no (kv )?cache", r"never needed", r"discard"]),
    ],
    answer=(
        "With a causal mask, what query t reads is a function of two running sums over the "
        "past: the d×d_v matrix S_t = Σ_{j≤t} φ(k_j)ᵀ v_j and the d-vector z_t = Σ_{j≤t} φ(k_j). "
        "Both can be updated in place when a token arrives — add one outer product and one "
        "vector — and the old keys and values are never needed again. So generation is an "
        "RNN: the hidden state is (S, z), each step costs O(d·d_v) whatever the position, and "
        "memory per layer and head is d·d_v + d numbers instead of 2·N·d for a softmax KV "
        "cache. attnlab stores that state behind the same cache interface as the KV caches "
        "(RecurrentStateCache), and decoding token by token from it reproduces the parallel "
        "forward exactly. The same argument covers any model whose mixing is a running sum "
        "with a fixed-size state: decayed variants (RetNet, GLA, Mamba-2, RWKV) only multiply "
        "S by a decay before adding."
    ),
    formulas=[
        "S_t = S_{t−1} + φ(k_t)ᵀ v_t      z_t = z_{t−1} + φ(k_t)",
        "o_t = φ(q_t) S_t / (φ(q_t) · z_t)",
        "per step: O(d·d_v) time;  state: d·d_v + d numbers per head (constant in N)",
        "softmax KV cache per layer: 2 · N · H_kv · d · bytes (grows with N)",
    ],
    seed_note=(
        "The seed's formulas were lost (restored above). It also leaves out the normaliser "
        "state z_t, which a normalised linear attention must carry alongside S_t."
    ),
    evidence=evidence,
)
