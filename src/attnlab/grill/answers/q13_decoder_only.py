"""Q13: why decoder-only LLMs have no cross-attention."""
from __future__ import annotations

import torch

from ...layers.cross import CrossAttention
from ...masks import causal, prefix_lm
from ..registry import Evidence, EvidenceContext, Question
from ..titles import TITLES
from ._tiny import tiny_lm


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    P, T = 6, 4  # prompt tokens, then generated tokens
    N = P + T
    dense = causal().to_dense(N, N)
    sees_prompt = bool(dense[P:, :P].all())
    ev.measurements["causal mask over [prompt; output]"] = causal().describe(N).splitlines()[1:]
    ev.check("every output position sees the whole prompt under the plain causal mask",
             sees_prompt)
    pl = prefix_lm(P).to_dense(N, N)
    ev.check("a prefix-LM mask makes the prompt bidirectional (encoder-like) in the same stack",
             bool(pl[:P, :P].all()) and bool((pl[P:] == dense[P:]).all()))

    # gradient of the last output w.r.t. every prompt embedding is non-zero: the input
    # reaches the output through self-attention alone
    model = tiny_lm(ctx.seed)
    toks = torch.randint(0, 101, (1, N), generator=torch.Generator().manual_seed(ctx.seed))
    emb = model.embed(toks).detach().requires_grad_(True)
    x = emb
    for block in model.blocks:
        x = block(x)
    model.norm(x)[0, -1].sum().backward()
    g = emb.grad[0, :P].abs().sum(-1)
    ev.measurements["|∂ last output / ∂ prompt embedding| per prompt position"] = [
        float(v) for v in g]
    ev.check("every prompt token influences the last output", bool((g > 0).all()))

    d, L = 768, 12  # T5-base decoder (docs/sources.md)
    cross = CrossAttention(d, 12)
    per_layer = sum(p.numel() for p in cross.parameters())
    ev.measurements["cross-attention params per decoder layer (T5-base shape)"] = per_layer
    ev.measurements["cross-attention params over 12 decoder layers"] = per_layer * L
    ev.check("cross-attention adds 4·d² parameters per decoder layer", per_layer == 4 * d * d)
    ev.key_figure = (f"prompt reaches every output through self-attention; T5-base's cross-"
                     f"attention is {per_layer * L / 1e6:.1f}M extra params")
    return ev


QUESTION = Question(
    id=13,
    title=TITLES[13],
    answer=(
        "A decoder-only model concatenates the input and the output into one sequence and "
        "lets causal self-attention do both jobs: every output position already sees every "
        "input token, so the separate cross-attention path (and the separate encoder) is "
        "unnecessary. One stack, one cache, one attention kernel and one training objective "
        "(next-token prediction on everything) make scaling and serving simpler, and the "
        "same weights handle prompts, documents and conversation turns alike. What is given "
        "up is the bidirectional encoding of the input; a prefix-LM mask can restore it "
        "inside the same stack, and an encoder-decoder can still be more efficient when "
        "inputs are long and outputs short, since its encoder runs once and its decoder is "
        "smaller. Cross-attention lives on where the conditioning signal is another "
        "modality or must stay fixed (speech recognition, some multimodal and diffusion "
        "models)."
    ),
    formulas=[
        "decoder-only: p(y | x) = Π_t p(y_t | [x; y_<t])   (one causal stack)",
        "encoder-decoder: p(y | x) = Π_t p(y_t | y_<t, Enc(x))   (+4·d² cross-attn params/layer)",
    ],
    seed_note=None,
    evidence=evidence,
)
