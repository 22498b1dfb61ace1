"""Performer FAVOR+: unbiased kernel estimate (iid and orthogonal with the QR sign fix), the
bias without the fix, ~1/√m error scaling, causal forms agree, stabilised, bad input.

Statistical tests use fixed seeds and state their bounds: a mean over R draws must lie
within 4 standard errors of the exact kernel (a false alarm has probability ~6e-5)."""
import math

import pytest
import torch
from torch.testing import assert_close

from attnlab.masks import causal as causal_mask
from attnlab.ops.linear import (
    LinearState,
    draw_random_features,
    favor_kernel_estimate,
    performer_attention,
)
from attnlab.ops.softmax import attention_reference

TOL = {"atol": 1e-5, "rtol": 1e-4}


def kernel_draws(x, y, R, *, orthogonal, sign_fix, m=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([favor_kernel_estimate(x, y, draw_random_features(
        m, x.shape[-1], orthogonal=orthogonal, sign_fix=sign_fix, generator=g)) for _ in range(R)])


@pytest.mark.parametrize("orthogonal", [False, True])
def test_kernel_estimate_is_unbiased(orthogonal):
    d = 8
    x = torch.zeros(d)
    x[0] = 1.2  # an axis-aligned pair: where an unfixed QR shows its bias
    y = x.clone()
    exact = math.exp(float(x @ y) / math.sqrt(d))
    est = kernel_draws(x, y, 1500, orthogonal=orthogonal, sign_fix=True)
    se = float(est.std()) / math.sqrt(len(est))
    assert abs(float(est.mean()) - exact) < 4 * se, (float(est.mean()), exact, se)


def test_orthogonal_features_without_sign_fix_are_biased():
    """Householder QR leaves R's diagonal with a fixed sign, so Q's diagonal is skewed
    negative; the kernel estimate is then off by far more than its standard error."""
    d = 8
    x = torch.zeros(d)
    x[0] = 0.8  # measured: |bias| ≈ 0.24 standard errors per √draw, so ~7.7 at 1000 draws
    exact = math.exp(float(x @ x) / math.sqrt(d))
    est = kernel_draws(x, x.clone(), 1000, orthogonal=True, sign_fix=False)
    se = float(est.std()) / math.sqrt(len(est))
    assert abs(float(est.mean()) - exact) > 4 * se, (float(est.mean()), exact, se)


def test_kernel_error_falls_like_inverse_sqrt_m():
    """Relative RMS error of φ(x)·φ(y) vs exp(x·y/√d): log-log slope in m within 0.5 ± 0.1."""
    d, P = 16, 256
    g = torch.Generator().manual_seed(1)
    x = torch.randn(P, d, generator=g) * 0.6
    y = torch.randn(P, d, generator=g) * 0.6
    exact = torch.exp((x * y).sum(-1) / math.sqrt(d))
    ms, errs = [16, 64, 256, 1024], []
    for m in ms:
        rel = torch.stack([(favor_kernel_estimate(x, y, draw_random_features(
            m, d, orthogonal=False, generator=g)) - exact) / exact for _ in range(20)])
        errs.append(float(rel.square().mean().sqrt()))
    slope = torch.linalg.lstsq(torch.tensor([[math.log(m), 1.0] for m in ms]),
                               torch.tensor(errs).log().unsqueeze(1)).solution[0, 0]
    assert -0.6 < float(slope) < -0.4, (errs, float(slope))


def make(B=2, Hq=4, Hkv=2, N=37, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, Hq, N, D, generator=g), torch.randn(B, Hkv, N, D, generator=g),
            torch.randn(B, Hkv, N, D, generator=g))


@pytest.mark.parametrize("causal", [True, False])
def test_attention_error_vs_softmax_shrinks_with_m(causal):
    q, k, v = make(seed=2)
    q, k = q * 0.5, k * 0.5  # |q̂|² ≈ 1: the estimator's variance grows like exp(|q̂|² + |k̂|²)
    exact = attention_reference(q, k, v, mask=causal_mask() if causal else None)
    errs = []
    for m in (16, 256, 4096):
        om = draw_random_features(m, 16, generator=torch.Generator().manual_seed(3))
        errs.append(float((performer_attention(q, k, v, om, causal=causal) - exact).abs().mean()))
    assert errs[0] > errs[1] > errs[2], errs
    assert errs[2] < 0.03, errs  # 4096 features: mean |error| below 0.03


def test_causal_modes_agree_and_state_splits():
    q, k, v = make(N=29, seed=4)
    om = draw_random_features(24, 16, generator=torch.Generator().manual_seed(5))
    outs = {mode: performer_attention(q, k, v, om, mode=mode, chunk_size=8,
                                      output_final_state=True) for mode in
            ("parallel", "chunked", "recurrent")}
    for mode in ("chunked", "recurrent"):
        assert_close(outs[mode][0], outs["parallel"][0], **TOL)
        assert_close(outs[mode][1].S, outs["parallel"][1].S, **TOL)
    a, st = performer_attention(q[:, :, :10], k[:, :, :10], v[:, :, :10], om,
                                output_final_state=True)
    b = performer_attention(q[:, :, 10:], k[:, :, 10:], v[:, :, 10:], om, initial_state=st)
    assert_close(torch.cat([a, b], 2), outs["chunked"][0], **TOL)


def test_large_inputs_stay_finite():
    q, k, v = make(seed=6)
    om = draw_random_features(64, 16, generator=torch.Generator().manual_seed(7))
    out = performer_attention(q * 40, k * 40, v, om)
    assert torch.isfinite(out).all()


def test_bad_input():
    q, k, v = make()
    with pytest.raises(ValueError, match="omega has shape"):
        performer_attention(q, k, v, torch.randn(8, 5))
    with pytest.raises(ValueError, match="m \\(0\\)"):
        draw_random_features(0, 16)
    with pytest.raises(ValueError, match="initial_state.S has shape"):
        performer_attention(q, k, v, torch.randn(8, 16),
                            initial_state=LinearState(torch.zeros(2, 2, 9, 16), torch.zeros(2, 2, 9)))
