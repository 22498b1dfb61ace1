"""Q12: the cross-attention cache is written once per request."""
from __future__ import annotations

import torch

from ...analysis.configs import get_config
from ...analysis.memory import kv_memory
from ...layers.cross import CrossAttention
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    torch.manual_seed(ctx.seed)
    d, H, S, steps = 64, 4, 50, 40
    layer = CrossAttention(d, H).eval()
    calls = {"k": 0, "v": 0}
    layer.k_proj.register_forward_hook(lambda *a: calls.__setitem__("k", calls["k"] + 1))
    layer.v_proj.register_forward_hook(lambda *a: calls.__setitem__("v", calls["v"] + 1))
    enc = torch.randn(1, S, d)
    cache = layer.new_cache()
    sizes = []
    with torch.no_grad():
        for t in range(steps):
            x = torch.randn(1, 1, d)
            layer(x, enc if t == 0 else None, cache=cache)
            sizes.append(cache.nbytes)
    ev.measurements["decode steps"] = steps
    ev.measurements["K projections / V projections"] = (calls["k"], calls["v"])
    ev.measurements["cross cache bytes after step 1 / after last step"] = (sizes[0], sizes[-1])
    ev.check("K and V projected once for the whole request", calls == {"k": 1, "v": 1},
             str(calls))
    expect = 2 * S * d * 4  # K and V of S encoder tokens, fp32
    ev.check("cross cache holds 2·S·H·d_k·4 B from step 1 and does not grow with generated "
             "tokens", sizes[0] == sizes[-1] == expect, f"{sizes[0]} → {sizes[-1]} vs {expect}")

    t5 = get_config("t5-base")
    mem = kv_memory(t5, context=512, encoder_length=512)
    ev.measurements["T5-base cross K/V per encoder token (fp16)"] = mem.cross_bytes_per_encoder_token
    ev.measurements["T5-base self K/V per decoder token (fp16)"] = mem.bytes_per_token
    ev.check("T5-base: 36 KiB per encoder token, written once (docs/sources.md)",
             mem.cross_bytes_per_encoder_token == 36 * 1024)
    saved = 2 * S * d * d * (steps - 1)
    ev.measurements["multiply-adds saved vs re-projecting every step"] = saved
    ev.key_figure = f"{steps} decode steps, 1 K and 1 V projection; cache fixed at {sizes[0]} B"
    return ev


QUESTION = Question(
    id=12,
    title=TITLES[12],
    short=(
        "The source doesn't change while the decoder generates, so each cross-attention layer's "
        'keys and values are projected once per request and reused at every decode step. The '
        'cross cache is written once and never grows with generated tokens, unlike the '
        'self-attention cache; it is static rather than small, costing as much per source token '
        'as the self cache costs per generated token.'
    ),
    rubric=[
        KeyPoint("encoder output fixed for the request",
                 [r"fixed", r"doesn'?t change", r"does not change", r"static", r"constant"]),
        KeyPoint("K/V projected once per request and reused",
                 [r"once", r"reused?", r"computed? (only )?once", r"precomput"]),
        KeyPoint("does not grow with generated tokens (unlike self-attention)",
                 [r"(not|never) grow", r"doesn'?t grow", r"self[- ]attention.{0,40}grow",
                  r"independent of (the )?(output|generated)"],
                 formula="cross K/V bytes = 2 · L_dec · H · d_k · S · bytes (written once)"),
        KeyPoint("cheap means static, not small: size scales with source length S",
                 [r"not small", r"source length", r"\bs\b tokens", r"scales with (the )?(input|source)",
                  r"per (source|encoder) token"]),
    ],
    answer=(
        "The source sequence does not change while the decoder generates, so the encoder's "
        "keys and values for every cross-attention layer can be computed once when the "
        "request starts and reused at every decode step. The cache is written once, its "
        "size is fixed by the source length S (2 · L_dec · H · d_k elements per encoder "
        "token), and no decode step spends FLOPs projecting it again. The self-attention "
        "cache, by contrast, gains a key and a value per layer with every generated token. "
        "Cheap is relative: for long inputs the cross cache is as large as a self-attention "
        "cache over S tokens (T5-base: 36 KiB per encoder token in fp16), it is just static."
    ),
    formulas=[
        "cross K/V bytes per request = 2 · L_dec · H · d_k · S · bytes   (written once)",
        "self K/V bytes after t generated tokens = 2 · L_dec · H · d_k · t · bytes",
    ],
    seed_note=(
        "The seed's symbols were lost (K and V from the encoder output). 'Cheap' means "
        "static, not small: the cross cache costs as much per source token as the self cache "
        "costs per generated token."
    ),
    evidence=evidence,
)
