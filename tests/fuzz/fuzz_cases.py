"""Hypothesis strategies and comparisons for the differential fuzz suite (tests/fuzz/).

A `Case` is one attention call drawn over everything the contract covers: batch, GQA
heads, Nq != Nk (0 and 1 included), D and Dv, dtype (fp32, fp64, bf16, fp16), strides
(contiguous, transposed (B, N, H, D) views, interleaved qkv slices), every mask factory
and combinations with `| & ~`, bool tensors with fully masked rows, explicit positions,
score_mods (softcap, ALiBi, a −inf mod, a bias), sinks (−inf included) and NaN/inf placed
anywhere in q, k or v (so in visible and in hidden positions). Comparisons follow
docs/conventions.md §2 and §5: the non-finite pattern must be identical, finite entries
within tolerance (fp32 atol 1e-5 / rtol 1e-4, fp64 1e-10, fp16/bf16 FlashAttention's rule).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from hypothesis import strategies as st

from attnlab import masks as M
from attnlab.ops.softmax import alibi, alibi_slopes, repeat_kv, softcap
from attnlab.ops.softmax.reference import dense_mask

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
LOWP_FLOOR = {torch.bfloat16: 1e-3, torch.float16: 2e-4}
TOL = {torch.float32: {"atol": 1e-5, "rtol": 1e-4}, torch.float64: {"atol": 1e-10, "rtol": 1e-10}}
LENGTHS = [0, 1, 2, 3, 5, 7, 9, 16, 17, 33, 64, 70]


def neg_inf_every_third(score, b, h, q, k):
    """FlexAttention's idiom: a score_mod that hides keys by scoring them −inf."""
    return torch.where((q - k) % 3 == 0, torch.full_like(score, -math.inf), score)


def head_bias(score, b, h, q, k):
    return score + 0.1 * h.to(score.dtype) - 0.01 * (q - k).to(score.dtype)


@dataclass
class Case:
    """One drawn call. Tensors are built by `tensors()` (fresh leaves each time)."""

    B: int
    Hq: int
    Hkv: int
    Nq: int
    Nk: int
    D: int
    Dv: int
    dtype: torch.dtype
    layout: str
    mask_name: str
    mask: object
    q_pos: torch.Tensor | None
    kv_pos: torch.Tensor | None
    mod_name: str
    score_mod: object
    sink: torch.Tensor | None
    bad: list = field(default_factory=list)  # (tensor index 0..2, index tuple, value)
    seed: int = 0

    def __repr__(self) -> str:
        return (f"Case(B={self.B}, Hq={self.Hq}, Hkv={self.Hkv}, Nq={self.Nq}, Nk={self.Nk}, "
                f"D={self.D}, Dv={self.Dv}, {self.dtype}, layout={self.layout}, "
                f"mask={self.mask_name}, pos={self.q_pos is not None}, mod={self.mod_name}, "
                f"sink={None if self.sink is None else self.sink.tolist()}, bad={self.bad}, "
                f"seed={self.seed})")

    @property
    def finite(self) -> bool:
        return not self.bad

    def tensors(self, grad: bool = False):
        """q, k, v in the case's dtype and layout (views when strided), leaves."""
        g = torch.Generator().manual_seed(self.seed)
        B, Hq, Hkv, Nq, Nk, D, Dv = self.B, self.Hq, self.Hkv, self.Nq, self.Nk, self.D, self.Dv
        shapes = [(B, Hq, Nq, D), (B, Hkv, Nk, D), (B, Hkv, Nk, Dv)]
        base = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
        for i, idx, val in self.bad:
            t = base[i]
            if t.numel():
                base[i][tuple(j % n for j, n in zip(idx, t.shape))] = val
        out = []
        for x in base:
            x = x.to(self.dtype)
            if self.layout == "transposed":  # a (B, N, H, D) buffer seen as (B, H, N, D)
                x = x.transpose(1, 2).contiguous().transpose(1, 2)
            elif self.layout == "interleaved":  # every third column of a wider buffer
                wide = torch.zeros(*x.shape[:-1], 3 * x.shape[-1], dtype=self.dtype)
                wide[..., 1::3] = x
                x = wide[..., 1::3]
            out.append(x.requires_grad_(grad) if grad else x)
        return out

    def kwargs(self) -> dict:
        return {"mask": self.mask, "q_pos": self.q_pos, "kv_pos": self.kv_pos,
                "score_mod": self.score_mod, "sink": self.sink}


@st.composite
def masks(draw, nq: int, nk: int, B: int, Hq: int):
    """(name, mask): every factory, combinations, bool tensors (fully masked rows)."""
    span = max(nq, nk) + 8  # positions are drawn inside [0, span)
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 16)))

    def leaf():
        return st.one_of(
            st.just(("causal", M.causal())),
            st.integers(1, 12).map(lambda w: (f"window({w})", M.sliding_window(w))),
            st.integers(0, 10).map(lambda p: (f"prefix_lm({p})", M.prefix_lm(p))),
            st.lists(st.integers(0, span - 1), min_size=1, max_size=3, unique=True).map(
                lambda ix: (f"global({ix})", M.global_tokens(ix))),
            st.just(("document", M.document(torch.randint(0, 3, (span,), generator=g)
                                            .sort().values))),
            st.just(("full", M.full())),
        )

    kind = draw(st.sampled_from(["none", "leaf", "and", "or", "not", "tensor", "batch_head"]))
    if kind == "none":
        return "none", None
    if kind == "tensor":
        shape = draw(st.sampled_from([(nq, nk), (1, nq, nk), (B, 1, nq, nk), (1, Hq, nq, nk)]))
        p = draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
        return f"bool{shape} p={p}", torch.rand(shape, generator=g) >= p
    if kind == "batch_head":  # a predicate reading b and h
        m = M.Mask(lambda b, h, q, k: (q - k + b + h) % 3 != 0, "bh", uses_batch=True,
                   uses_head=True)
        return "bh", m
    a = draw(leaf())
    if kind == "leaf":
        return a
    if kind == "not":
        return f"~{a[0]}", ~a[1]
    b = draw(leaf())
    if kind == "and":
        return f"{a[0]} & {b[0]}", a[1] & b[1]
    return f"{a[0]} | {b[0]}", a[1] | b[1]


@st.composite
def cases(draw, dtypes=tuple(DTYPES), nonfinite: bool | None = None, mods: bool = True):
    """A `Case`; `nonfinite`: True forces NaN/inf somewhere, False forbids, None draws."""
    Hkv = draw(st.integers(1, 2))
    Hq = Hkv * draw(st.integers(1, 3))
    B = draw(st.integers(1, 2))
    Nq, Nk = draw(st.sampled_from(LENGTHS)), draw(st.sampled_from(LENGTHS))
    D = draw(st.sampled_from([1, 4, 8, 16]))
    Dv = draw(st.sampled_from([D, D, 3, 8]))
    dtype = draw(st.sampled_from(list(dtypes)))
    layout = draw(st.sampled_from(["contiguous", "transposed", "interleaved"]))
    positions = draw(st.booleans()) and draw(st.booleans())
    mask_name, mask = draw(masks(Nq, Nk, B, Hq))
    q_pos = kv_pos = None
    if positions:
        span = max(Nq, Nk) + 8
        q_pos = torch.tensor(sorted(draw(st.lists(st.integers(0, span - 1), min_size=Nq,
                                                  max_size=Nq))), dtype=torch.long)
        kv_pos = torch.tensor(draw(st.lists(st.integers(0, span - 1), min_size=Nk,
                                            max_size=Nk)), dtype=torch.long)
    mod_name, mod = "none", None
    if mods:
        mod_name = draw(st.sampled_from(["none", "none", "softcap", "alibi", "neg_inf", "bias"]))
        mod = {"none": None, "softcap": softcap(draw(st.sampled_from([1.0, 5.0, 50.0]))),
               "alibi": alibi(alibi_slopes(Hq)), "neg_inf": neg_inf_every_third,
               "bias": head_bias}[mod_name]
    sink = None
    if mods and draw(st.booleans()):
        sink = torch.tensor(draw(st.lists(st.sampled_from([-math.inf, -1.0, 0.0, 0.5, 2.0]),
                                          min_size=Hq, max_size=Hq)), dtype=torch.float32)
    bad = []
    if nonfinite or (nonfinite is None and draw(st.integers(0, 3)) == 0):
        for _ in range(draw(st.integers(1, 3))):
            bad.append((draw(st.integers(0, 2)),
                        tuple(draw(st.integers(0, 80)) for _ in range(4)),
                        draw(st.sampled_from([math.nan, math.inf, -math.inf]))))
    return Case(B, Hq, Hkv, Nq, Nk, D, Dv, dtype, layout, mask_name, mask, q_pos, kv_pos,
                mod_name, mod, sink, bad, draw(st.integers(0, 2 ** 16)))


def assert_same(got: torch.Tensor, want: torch.Tensor, what: str, **tol) -> None:
    """Identical NaN / +inf / −inf pattern; finite entries close (conventions §2, §5)."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    a, b = got.detach().double(), want.detach().double()
    for name, f in (("NaN", torch.isnan), ("+inf", lambda x: x == math.inf),
                    ("-inf", lambda x: x == -math.inf)):
        fa, fb = f(a), f(b)
        if not torch.equal(fa, fb):
            i = tuple(int(j) for j in (fa ^ fb).nonzero()[0])
            raise AssertionError(f"{what}: {name} pattern differs first at {i}: got {a[i]}, "
                                 f"want {b[i]}")
    fin = torch.isfinite(b)
    torch.testing.assert_close(a[fin], b[fin], **tol, msg=lambda m: f"{what}: {m}")


def naive_lowp(q, k, v, case: Case):
    """FlashAttention's low-precision baseline (conventions §5): matmuls in the input
    dtype, softmax in float32. Returns (out, lse) as float64."""
    G = case.Hq // case.Hkv
    scale = 1.0 / math.sqrt(case.D)
    s = torch.matmul(q, repeat_kv(k, G).transpose(-1, -2)).float() * scale  # (B, Hq, Nq, Nk)
    qp = torch.arange(case.Nq) + (case.Nk - case.Nq) if case.q_pos is None else case.q_pos
    kp = torch.arange(case.Nk) if case.kv_pos is None else case.kv_pos
    if case.score_mod is not None:
        b = torch.arange(case.B).view(-1, 1, 1, 1)
        h = torch.arange(case.Hq).view(1, -1, 1, 1)
        s = case.score_mod(s, b, h, qp.view(1, 1, -1, 1), kp.view(1, 1, 1, -1))
    m = dense_mask(case.mask, case.B, case.Hq, case.Nq, case.Nk, q_pos=qp, kv_pos=kp)
    if m is not None:
        s = s.masked_fill(~m, -math.inf)
    if case.sink is not None:
        s = torch.cat([s, case.sink.view(1, -1, 1, 1).expand(case.B, case.Hq, case.Nq, 1)], -1)
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - torch.where(torch.isfinite(lse), lse, 0.0).unsqueeze(-1))[..., :case.Nk]
    out = torch.matmul(p.to(q.dtype), repeat_kv(v, G))
    return out.double(), lse.double()


def assert_lowp(got, want64, naive64, dtype: torch.dtype, floor: float, what: str) -> None:
    """max |got − ref64| <= 2 · max |naive − ref64| + floor over finite reference entries.
    The naive error is taken where the naive path is finite (its P @ V spreads a hidden NaN
    value, rule (a) of conventions §2) and is at least the rounding of ref64 to `dtype`."""
    a, b, n = got.detach().double(), want64.detach().double(), naive64.detach().double()
    fin = torch.isfinite(b)
    if not bool(fin.any()):
        return
    err = (a[fin] - b[fin]).abs().max()
    ok = fin & torch.isfinite(n)
    base = (n[ok] - b[ok]).abs().max() if bool(ok.any()) else torch.tensor(0.0)
    base = torch.maximum(base, (b[fin].to(dtype).double() - b[fin]).abs().max())
    assert err <= 2 * base + floor, f"{what}: error {err:.3g} > 2 × {base:.3g} + {floor}"
