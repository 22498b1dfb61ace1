"""Q13: why decoder-only LLMs have no cross-attention."""
from __future__ import annotations

import torch

from ...analysis.configs import get_config
from ...layers.cross import CrossAttention
from ...masks import causal, prefix_lm
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES
from ._tiny import tiny_lm


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    P, T = 6, 4  # prompt tokens, then generated tokens
    N = P + T
    i = torch.arange(N)
    tril = i[None, :] <= i[:, None]  # (N, N) independent expectation: key j ≤ query i
    dense = causal().to_dense(N, N)
    ev.measurements["causal mask over [prompt; output]"] = causal().describe(N).splitlines()[1:]
    ev.check("the causal mask is exactly j ≤ i, so every output row sees the whole prompt",
             torch.equal(dense, tril) and bool(dense[P:, :P].all()))
    pl = prefix_lm(P).to_dense(N, N)
    expect = tril | ((i[:, None] < P) & (i[None, :] < P))  # prompt block bidirectional
    ev.check("a prefix-LM mask = causal plus a bidirectional prompt block (encoder-like)",
             torch.equal(pl, expect), f"{int((pl != expect).sum())} entries differ")

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
    g_mid = emb.grad[0, P + 1:].abs().sum(-1)  # positions after the prompt, before the last
    ev.check("every prompt token influences the last output (non-zero gradient)",
             bool((g > 0).all()), f"min {float(g.min()):.2e}")
    emb.grad = None
    x = emb
    for block in model.blocks:
        x = block(x)
    model.norm(x)[0, P - 1].sum().backward()  # the last prompt position
    future = float(emb.grad[0, P:].abs().sum())
    ev.check("and nothing after a position reaches it (gradient exactly 0)", future == 0.0,
             f"{future:.1e}")
    ev.measurements["|∂ last output / ∂ later inputs| sum (positions P+1…)"] = float(
        g_mid.sum())

    t5 = get_config("t5-base")  # docs/sources.md: 12 decoder layers, d 768, 12 heads of 64
    d, L = t5.d_model, t5.n_layers
    cross = CrossAttention(d, t5.n_heads, head_dim=t5.head_dim)
    per_layer = sum(p.numel() for p in cross.parameters())
    ev.measurements["cross-attention params per decoder layer (T5-base shape)"] = per_layer
    ev.measurements["cross-attention params over the decoder layers"] = per_layer * L
    ev.check("cross-attention adds W_Q, W_K, W_V, W_O = 4·d·H·d_h parameters per decoder layer",
             per_layer == 4 * d * t5.n_heads * t5.head_dim, f"{per_layer:,}")
    ev.key_figure = (f"prompt reaches every output through self-attention; T5-base's cross-"
                     f"attention is {per_layer * L / 1e6:.1f}M extra params")
    return ev


QUESTION = Question(
    id=13,
    title=TITLES[13],
    short=(
        'A decoder-only model puts the input in the same context as the output, and causal '
        'self-attention lets every output token see the whole input, so a separate cross-attention '
        'path adds nothing essential. One stack, one cache and one next-token objective are simpler '
        'to scale and serve; what is lost is a bidirectional encoding of the input, which a prefix-LM '
        'mask can restore.'
    ),
    rubric=[
        KeyPoint("input placed in the context window",
                 [r"context( window)?", r"concatenat", r"same sequence", r"prompt"]),
        KeyPoint("causal self-attention already sees the whole input",
                 [r"self[- ]attention", r"sees? (the )?(whole|entire|every)"]),
        KeyPoint("simpler: one stack, one cache, one objective",
                 [r"simpl", r"one (stack|cache|objective)", r"single stack", r"scal"]),
        KeyPoint("trade-off: no bidirectional encoder (prefix-LM restores it)",
                 [r"bidirectional", r"prefix[- ]lm", r"encoder[- ]decoder.{0,40}(efficient|long)"]),
    ],
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
    seed_note=(
        "The seed's answer is right in outline; it leaves out what is given up (a "
        "bidirectional encoding of the input, which a prefix-LM mask restores in the same "
        "stack) and where cross-attention remains useful (inputs of another modality, long "
        "inputs with short outputs). The evidence checks the masks against independently "
        "built expectations and shows, by gradients, that the prompt reaches every output "
        "through self-attention alone."
    ),
    evidence=evidence,
)
