"""Q28: the online softmax recurrence vs two-pass and naive softmax on adversarial logits."""
from __future__ import annotations

import math

import torch

from ...ops.softmax import attention_reference, flash_attention, merge
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES


def online_softmax(x: torch.Tensor, block: int) -> tuple[torch.Tensor, float, float]:
    """One pass over x in blocks (float64): returns softmax(x), the max m and the sum l.
    The probabilities need the final (m, l), so they are formed from the stored logits;
    attention avoids that second read by accumulating exp(x − m)·v on the fly."""
    m, l = -math.inf, 0.0
    for s in range(0, x.numel(), block):
        blk = x[s:s + block]
        m_new = max(m, float(blk.max()))
        l = l * math.exp(m - m_new) + float(torch.exp(blk - m_new).sum())  # rescale old sum
        m = m_new
    return torch.exp(x - m) / l, m, l


def two_pass_softmax(x: torch.Tensor) -> torch.Tensor:
    m = x.max()  # pass 1: the max
    e = torch.exp(x - m)  # pass 2: exponentials and their sum
    return e / e.sum()


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    g = torch.Generator().manual_seed(ctx.seed)
    # adversarial: values near ±1e4, the max arriving late so the running max jumps
    x = torch.cat([torch.full((100,), -1e4), torch.randn(900, generator=g, dtype=torch.float64)
                   * 50, torch.tensor([1e4, 1e4 - 1.0, 9990.0], dtype=torch.float64)])
    on, m, l = online_softmax(x, block=64)
    tp = two_pass_softmax(x)
    naive = torch.exp(x.float()) / torch.exp(x.float()).sum()
    diff = float((on - tp).abs().max())
    ev.measurements["the recurrence above vs two-pass (float64): max |Δ|"] = diff
    ev.measurements["final running max, sum"] = (m, round(l, 6))
    ev.measurements["naive exp(x)/Σexp(x) at 1e4: NaN entries"] = int(torch.isnan(naive).sum())
    ev.measurements["exp(1e4) in float32 / float64"] = (float(torch.exp(torch.tensor(1e4))),
                                                       float(torch.exp(torch.tensor(1e4, dtype=torch.float64))))
    ev.measurements["the recurrence above (float64): sum of probabilities"] = float(on.sum())
    # the library's tiled kernel on the same ±1e4 logits: one query, keys x (d = 1, scale 1),
    # one-hot values, so its output row is its softmax and its lse the log-normaliser
    n = x.numel()
    qx = torch.ones(1, 1, 1, 1)
    kx = x.float().view(1, 1, n, 1)
    eye = torch.eye(n).view(1, 1, n, n)
    p_lib, lse_lib = flash_attention(qx, kx, eye, scale=1.0, q_block=16, kv_block=64,
                                     return_lse=True)
    d_p = float((p_lib[0, 0, 0].double() - tp).abs().max())
    d_lse = abs(float(lse_lib[0, 0, 0]) - float(torch.logsumexp(x, 0)))
    ev.measurements["attnlab flash_attention on the ±1e4 logits: max |p − two-pass|, |lse − "
                    "logsumexp (float64)|"] = (d_p, d_lse)
    ev.check("attnlab's tiled kernel (online softmax over 64-key blocks) gives the float64 "
             "two-pass softmax and log-sum-exp on ±1e4 logits", bool(torch.isfinite(p_lib).all())
             and d_p < 1e-5 and d_lse < 2e-3,  # float32's resolution at 1e4 is ≈ 1e-3
             f"|Δp| {d_p:.1e}, |Δlse| {d_lse:.1e}")
    # the same rescaling one level up: two halves of the row attended separately, then
    # combined with attnlab's merge rule (lse = logaddexp, weights exp(lse_i − lse))
    h = n // 2
    o1, l1 = flash_attention(qx, kx[:, :, :h], eye[:, :, :h], scale=1.0, return_lse=True)
    o2, l2 = flash_attention(qx, kx[:, :, h:], eye[:, :, h:], scale=1.0, return_lse=True)
    p_m, lse_m = merge(o1, l1, o2, l2)
    d_m = float((p_m[0, 0, 0].double() - tp).abs().max())
    ev.measurements["halves merged by lse: max |p − two-pass|"] = d_m
    ev.check("two halves attended separately and merged by their log-sum-exp give the "
             "whole-row softmax", bool(torch.isfinite(p_m).all()) and d_m < 1e-5
             and abs(float(lse_m[0, 0, 0]) - float(lse_lib[0, 0, 0])) < 2e-3, f"|Δp| {d_m:.1e}")
    # attention with huge logits: the tiled online recurrence matches the dense reference
    q = torch.randn(1, 1, 64, 16, generator=g) * 30  # logits of order 1e3
    k = torch.randn(1, 1, 200, 16, generator=g) * 30
    v = torch.randn(1, 1, 200, 16, generator=g)
    out = flash_attention(q, k, v, q_block=16, kv_block=32)
    ref = attention_reference(q, k, v)
    d_att = float((out - ref).abs().max())
    ev.measurements["max logit in the attention test"] = float((q @ k.transpose(-1, -2) / 4).max())
    ev.measurements["max |tiled − dense| attention output"] = d_att
    ev.check("tiled online-softmax attention is finite and exact with logits ~1e3",
             bool(torch.isfinite(out).all()) and d_att < 1e-4, f"{d_att:.1e}")
    ev.key_figure = (f"±1e4 logits: attnlab's tiled kernel matches float64 two-pass softmax to "
                     f"{d_p:.0e} (merged halves {d_m:.0e}); naive float32 gives "
                     f"{int(torch.isnan(naive).sum())} NaNs")
    return ev


QUESTION = Question(
    id=28,
    title=TITLES[28],
    short=(
        "Keep a running maximum m and a running sum l of exp(x − m). When a new value or "
        "block raises the maximum, rescale the old sum by exp(m_old − m_new) before adding; "
        "at the end softmax is exp(x − m)/l and log-sum-exp is m + ln l — one pass, equal to "
        "the two-pass stable softmax up to rounding, and the basis of tiled attention."
    ),
    rubric=[
        KeyPoint("running max m and running sum l", [r"running (max|maximum)", r"running sum",
                                                    r"normali[sz]er"]),
        KeyPoint("rescale the old sum by exp(m_old − m_new)",
                 [r"rescal", r"exp\(\s*m", r"e\^\{?m"],
                 formula="l_t = l_{t−1}·e^{m_{t−1} − m_t} + e^{x_t − m_t}"),
        KeyPoint("single pass, same as two-pass softmax", [r"(one|single)[- ]pass",
                                                          r"two[- ]pass", r"same result"]),
        KeyPoint("lets attention run block by block (FlashAttention)",
                 [r"block", r"til(e|ing)", r"flash"]),
    ],
    answer=(
        "A stable softmax subtracts the row maximum before exponentiating, which normally "
        "takes one pass to find the max and another to sum the exponentials. The online "
        "version (Milakov & Gimelshein 2018) keeps two numbers while reading the values once: "
        "the largest value seen so far m and the sum l of exp(x − m) over everything seen. "
        "When a new value (or block) raises the maximum, the existing sum is multiplied by "
        "exp(m_old − m_new) so that it is again relative to the current maximum. The final "
        "pair gives the same normaliser as the two-pass method, up to rounding, and "
        "log-sum-exp = m + ln l. In attention the same rescaling is applied to the running "
        "weighted sum of values, so a query block can walk over key blocks one at a time and "
        "never hold a full row of scores — the core of FlashAttention. Subtracting the max is "
        "what keeps it safe: exp(1e4) is inf in any float format, so the naive formula "
        "returns inf/inf = NaN, while every exponent in the online version is ≤ 0."
    ),
    formulas=[
        "m_0 = −∞, l_0 = 0",
        "m_t = max(m_{t−1}, x_t);  l_t = l_{t−1}·e^{m_{t−1} − m_t} + e^{x_t − m_t}",
        "softmax(x)_i = e^{x_i − m_N} / l_N;  logsumexp(x) = m_N + ln l_N",
        "attention: o_t = o_{t−1}·e^{m_{t−1} − m_t} + e^{x_t − m_t}·v_t;  output = o_N / l_N",
    ],
    seed_note=(
        "The seed's update rule lost its symbols. Also 'numerically equivalent' should read "
        "'mathematically identical, equal up to floating-point rounding' — the rescaling "
        "reorders additions. The evidence measures the difference on adversarial logits and "
        "shows the naive formula's overflow."
    ),
    evidence=evidence,
)
