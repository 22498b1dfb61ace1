"""Q11: cross-attention."""
from __future__ import annotations

import math

import torch

from ...layers.cross import CrossAttention
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    torch.manual_seed(ctx.seed)
    d, H, S, N = 64, 4, 23, 7  # decoder length N differs from encoder length S
    layer = CrossAttention(d, H, d_encoder=48).eval()
    dec = torch.randn(2, N, d)
    enc = torch.randn(2, S, 48)
    with torch.no_grad():
        out = layer(dec, enc)
        D = d // H
        q = (dec @ layer.q_proj.weight.T).view(2, N, H, D).transpose(1, 2)  # (B, H, N, D)
        k = (enc @ layer.k_proj.weight.T).view(2, S, H, D).transpose(1, 2)  # (B, H, S, D)
        v = (enc @ layer.v_proj.weight.T).view(2, S, H, D).transpose(1, 2)
        p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D), -1)  # (B, H, N, S), no mask
        manual = (p @ v).transpose(1, 2).reshape(2, N, d) @ layer.o_proj.weight.T
        enc2 = enc.clone()
        enc2[:, -1] += 1.0  # the LAST encoder token
        moved = float((layer(dec, enc2)[:, 0] - out[:, 0]).abs().max())
    err = float((out - manual).abs().max())
    ev.measurements["attention matrix shape (decoder × encoder)"] = tuple(p.shape[-2:])
    ev.measurements["max |layer − softmax(Q_dec K_encᵀ/√d) V_enc|"] = err
    ev.measurements["first decoder output change when the last encoder token changes"] = moved
    ev.check("layer == formula with Q from decoder, K/V from encoder", err < 1e-5, f"{err:.1e}")
    ev.check("no causal mask: decoder position 0 sees the last encoder token", moved > 1e-4,
             f"{moved:.3f}")
    ev.key_figure = f"{N}×{S} decoder-by-encoder attention, formula match {err:.0e}"
    return ev


QUESTION = Question(
    id=11,
    title=TITLES[11],
    short=(
        "Cross-attention takes its queries from one sequence, the decoder's hidden states, and its "
        "keys and values from another, the encoder's output. Each decoder position mixes encoder "
        'positions through a rectangular N × S score matrix with no causal mask; encoder-decoder '
        'models like T5 and BART have it in every decoder layer.'
    ),
    rubric=[
        KeyPoint("Q from the decoder", [r"q(uer(y|ies))? (come )?from (the )?decoder",
                                         r"decoder.{0,30}quer"]),
        KeyPoint("K and V from the encoder output",
                 [r"k(eys)? and v(alues)? (come )?from (the )?encoder",
                  r"k(eys)? and v(alues)? from (another|the other|a second)",
                  r"encoder.{0,30}(keys|k/v|kv)"],
                 formula="softmax((X_dec W_Q)(H_enc W_K)ᵀ / √d_k)(H_enc W_V)"),
        KeyPoint("rectangular N × S scores, no causal mask",
                 [r"no (causal )?mask", r"rectangular", r"n ?[×x] ?s", r"whole source"]),
        KeyPoint("encoder-decoder models: original transformer, T5, BART",
                 [r"\bt5\b", r"bart", r"encoder[- ]decoder", r"original transformer"]),
    ],
    answer=(
        "Cross-attention is attention whose queries and keys come from different sequences: "
        "Q = X_dec W_Q from the decoder's hidden states, K = H_enc W_K and V = H_enc W_V from "
        "the encoder's output. Each decoder position takes a weighted mix of encoder "
        "positions, so the N × S score matrix is rectangular and needs no causal mask "
        "(the whole source is known; padding masks still apply). In the original "
        "transformer, T5 and BART every decoder layer has self-attention (causal, over the "
        "target so far), then cross-attention (over the source), then the MLP; it is also "
        "how text-to-image and speech models condition on another modality."
    ),
    formulas=[
        "CrossAttn(X_dec, H_enc) = softmax((X_dec W_Q)(H_enc W_K)ᵀ / √d_k) (H_enc W_V)",
        "scores ∈ ℝ^{N_dec × S_enc}, no causal mask",
    ],
    seed_note="The seed lost which of Q, K, V come from where: Q from the decoder, K and V "
              "from the encoder output.",
    evidence=evidence,
)
