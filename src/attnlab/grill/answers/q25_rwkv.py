"""Q25: RWKV — the WKV operator in GPT (parallel) and RNN (recurrent) modes, measured."""
from __future__ import annotations

import torch

from ...layers.rwkv import RWKVMixer
from ...ops.rwkv import wkv4, wkv6
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    g = torch.Generator().manual_seed(ctx.seed)
    B, H, N, D = 2, 4, (512 if ctx.full else 128), 16
    w = torch.rand(H, D, generator=g) * 2  # decay rates: factor e^{−w} per step
    u = torch.randn(H, D, generator=g)
    k = torch.randn(B, H, N, D, generator=g)
    v = torch.randn(B, H, N, D, generator=g)
    with torch.no_grad():
        gpt = wkv4(w, u, k, v, mode="parallel")
        rnn = wkv4(w, u, k, v, mode="recurrent")
        chk = wkv4(w, u, k, v, mode="chunked", chunk_size=32)
        k_big = k.clone()
        k_big[:, :, ::3] = 1e30  # e^k overflows fp32 beyond 88.7
        big = wkv4(w, u, k_big, v, mode="chunked")
        r = torch.randn(B, H, N, D, generator=g)
        log_w = -torch.exp(torch.randn(B, H, N, D, generator=g) - 1)  # data-dependent decay
        o6c, S6c = wkv6(r, k * 0.5, v, log_w, u, output_final_state=True)
        o6r, S6r = wkv6(r, k * 0.5, v, log_w, u, mode="recurrent", output_final_state=True)
    d4 = float((gpt - rnn).abs().max())
    d4c = float((chk - rnn).abs().max())
    d6 = max(float((o6c - o6r).abs().max()), float((S6c - S6r).abs().max()))
    m4, m6 = RWKVMixer(H * D, H, version=4), RWKVMixer(H * D, H, version=6)
    b4, b6 = m4.new_cache(1, 1 << 20).nbytes, m6.new_cache(1, 1 << 20).nbytes
    ev.measurements["shape"] = f"B={B}, H={H}, N={N}, D={D} (channels {H * D}), fp32"
    ev.measurements["RWKV-4 max |GPT mode − RNN mode|"] = d4
    ev.measurements["RWKV-4 max |chunked − RNN mode|"] = d4c
    ev.measurements["RWKV-4 finite with k = 1e30"] = bool(torch.isfinite(big).all())
    ev.measurements["RWKV-6 max |chunked − recurrent| (outputs, state)"] = d6
    ev.measurements["decode state bytes per layer: RWKV-4 / RWKV-6 (any length)"] = (b4, b6)
    ev.check("RWKV-4 GPT mode equals RNN mode", d4 < 1e-4, f"{d4:.2e}")
    ev.check("RWKV-4 chunked equals RNN mode", d4c < 1e-4, f"{d4c:.2e}")
    ev.check("running-max form stays finite where e^k overflows", bool(torch.isfinite(big).all()))
    ev.check("RWKV-6 chunked equals recurrent (outputs and matrix state)", d6 < 1e-3, f"{d6:.2e}")
    ev.check("RWKV-6's matrix state is larger than RWKV-4's vector state", b6 > b4, f"{b6} > {b4}")
    ev.cite("RWKV-7 'Goose' replaces the decayed sum with a generalised delta rule: the state "
            "is partly erased along the current key before the new value is written, with a "
            "vector-valued decay w_t and a vector-valued in-context learning rate a_t",
            "RWKV-7 'Goose' paper (Peng et al. 2025) (docs/sources.md)")
    ev.cite("RWKV versions 4, 5 (Eagle), 6 (Finch, data-dependent decay) and 7 (Goose); "
            "RWKV-7 models up to about 3B parameters released in 2025",
            "RWKV-5/6 paper (Peng et al. 2024); RWKV-7 paper (2025) (docs/sources.md)")
    ev.key_figure = (f"GPT == RNN mode to {d4:.1e}; finite at k = 1e30; state {b4:,} B (v4) / "
                     f"{b6:,} B (v6) per layer at any length")
    return ev


QUESTION = Question(
    id=25,
    title=TITLES[25],
    short=(
        'RWKV is an attention-free architecture whose token mixer is a weighted average of past '
        'values with exponentially decaying weights, so it trains in parallel like a transformer and '
        'decodes as an RNN with a fixed state. Later versions grew the state: RWKV-5/6 use a matrix '
        "state per head and RWKV-6 data-dependent decay, and RWKV-7 'Goose' (2025) switches to a "
        'generalised delta rule that can overwrite stored associations.'
    ),
    rubric=[
        KeyPoint("exponentially decaying weighted average of past values (WKV)",
                 [r"wkv", r"decay", r"weighted average"]),
        KeyPoint("parallel training, RNN decoding",
                 [r"parallel", r"rnn", r"recurren"]),
        KeyPoint("fixed state / O(1) per token",
                 [r"fixed[- ]size", r"fixed state", r"constant", r"o\(1\)"]),
        KeyPoint("versions: RWKV-5/6 matrix state, data-dependent decay",
                 [r"rwkv-?[56]", r"matrix[- ]valued", r"data[- ]dependent", r"finch", r"eagle"],
                 formula="RWKV-6: S_t = diag(w_t) S_{t−1} + k_tᵀ v_t"),
        KeyPoint("RWKV-7 Goose: generalised delta rule",
                 [r"rwkv-?7", r"goose", r"delta rule"],
                 formula="RWKV-7: S_t = S_{t−1}(diag(w_t) − κ̂ᵀ(a_t ⊙ κ̂)) + v_tᵀ k_t"),
    ],
    answer=(
        "RWKV (Peng et al. 2023) is an attention-free architecture whose token mixer, WKV, is a "
        "weighted average of past values with weights e^{k_i} that decay exponentially with "
        "distance (a learned per-channel rate w), plus a bonus u for the current token. "
        "Because the decay is exponential, the sums can be carried as a state: in 'RNN mode' "
        "each token updates a few numbers per channel; in 'GPT mode' the whole sequence is "
        "computed in parallel for training. The raw exponentials overflow, so the official "
        "kernel keeps a running maximum exponent p and stores the sums scaled by e^{−p}. "
        "Each block also has token shift (mixing a token with the previous one) and a "
        "channel-mix MLP. Later versions strengthen the state: RWKV-5/6 (Peng et al. 2024) "
        "use a matrix-valued state per head, S_t = diag(w_t) S_{t−1} + k_tᵀv_t, and RWKV-6 "
        "makes the decay w_t depend on the input — which places it in the gated linear "
        "attention family alongside GLA and Mamba-2. RWKV-7 'Goose' (2025) changes the "
        "update itself to a generalised delta rule: before writing the new pair it erases part of "
        "what the state stores along the current key, S_t = S_{t−1}(diag(w_t) − κ̂_tᵀ(a_t ⊙ "
        "κ̂_t)) + v_tᵀk_t (state as values × keys, read out as S_t r_t), with a vector-valued "
        "decay w_t and "
        "a vector-valued in-context learning rate a_t, so the state can overwrite a stale "
        "association instead of only adding to it — the DeltaNet idea, which raises recall "
        "for the same state size. attnlab implements the RWKV-4 and RWKV-6 operators (checked "
        "below); RWKV-7 is cited. Decoding costs O(1) per token and a fixed state, like any "
        "linear RNN; the open question is how much exact recall a fixed state can hold."
    ),
    formulas=[
        "RWKV-4: wkv_t = (Σ_{i<t} e^{−(t−1−i)w + k_i} v_i + e^{u+k_t} v_t) / (Σ_{i<t} e^{−(t−1−i)w + k_i} + e^{u+k_t})",
        "stable RNN mode: q = max(p, u+k_t); out = (e^{p−q} a + e^{u+k_t−q} v_t) / (e^{p−q} b + e^{u+k_t−q})",
        "then q' = max(p − w, k_t); a ← e^{p−w−q'} a + e^{k_t−q'} v_t; b ← e^{p−w−q'} b + e^{k_t−q'}; p ← q'",
        "RWKV-6: o_t = r_t (S_{t−1} + diag(u) k_tᵀ v_t),  S_t = diag(w_t) S_{t−1} + k_tᵀ v_t,  w_t = exp(−exp(·))",
        ("RWKV-7: S_t = S_{t−1} (diag(w_t) − κ̂_tᵀ (a_t ⊙ κ̂_t)) + v_tᵀ k_t,  o_t = S_t r_t   "
        "(generalised delta rule; w_t, a_t vectors)"),
    ],
    seed_note=(
        "The seed's description is broadly right but loose: RWKV-4's WKV is not normalised "
        "linear attention with a feature map but an exponentially decayed softmax-like average "
        "(weights e^{k}), and only from RWKV-5 on is the state matrix-valued; RWKV-6 adds "
        "data-dependent decay. It stops at RWKV-6: RWKV-7 'Goose' (2025) replaced the "
        "additive update with a generalised delta rule. Its claim about scale ('not yet at frontier-LLM scale') is "
        "undated and not something attnlab can measure."
    ),
    evidence=evidence,
)
