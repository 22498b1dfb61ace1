"""`attention(backend=...)`: every backend == reference; what "auto" picks; errors."""
import pytest
import torch
from softmax_cases import MASKS, SHAPES, TOL, check_against_reference, make_mask, rand_qkv

from attnlab import masks as M
from attnlab.layers.attention import Attention
from attnlab.ops.softmax import (
    BACKENDS,
    Backend,
    attention,
    attention_reference,
    register_backend,
    softcap,
)
from attnlab.ops.softmax.dispatch import choose_backend

TRAINING = ["reference", "flash", "block_sparse", "decode"]


def _fn(backend):
    return lambda q, k, v, **kw: attention(q, k, v, backend=backend, **kw)


@pytest.mark.parametrize("backend", ["flash", "block_sparse", "decode", "auto"])
@pytest.mark.parametrize("shape", SHAPES[1:4])
@pytest.mark.parametrize("mask", MASKS)
def test_every_backend_matches_reference(backend, shape, mask):
    q, k, v = rand_qkv(*shape, grad=True)
    m = make_mask(mask, shape[3], shape[4])
    grads = backend in TRAINING or choose_backend(q, k, v, m) in TRAINING
    check_against_reference(_fn(backend), q, k, v, m, grads=grads)


@pytest.mark.parametrize("mask", MASKS)
def test_sdpa_backend_matches_reference(mask):
    """SDPA has no lse: out and gradients (fully masked rows included) equal the reference."""
    q, k, v = rand_qkv(2, 4, 2, 33, 33, 16, grad=True)
    m = make_mask(mask, 33, 33)
    out = attention(q, k, v, mask=m, backend="sdpa")
    ref = attention_reference(q, k, v, mask=m)
    torch.testing.assert_close(out, ref, **TOL)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    for a, b in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        torch.testing.assert_close(a, b, **TOL)


def test_auto_choices():
    q, k, v = rand_qkv(1, 4, 2, 64, 64, 8)
    assert choose_backend(q, k, v, None) == "sdpa"
    assert choose_backend(q, k, v, M.causal()) == "sdpa"
    assert choose_backend(q, k, v, M.sliding_window(8)) == "block_sparse"
    assert choose_backend(q, k, v, M.causal(), q_pos=torch.arange(64)) == "block_sparse"
    assert choose_backend(q[:, :, :10], k, v, M.causal()) == "block_sparse"  # Nq != Nk
    assert choose_backend(q, k, v, torch.ones(64, 64, dtype=torch.bool)) == "sdpa"
    # what SDPA lacks (lse, score_mod, sink) goes to a backend that has it
    assert choose_backend(q, k, v, None, return_lse=True) == "block_sparse"
    assert choose_backend(q, k, v, M.causal(), score_mod=softcap(5.0)) == "block_sparse"
    assert choose_backend(q, k, v, None, sink=torch.zeros(4)) == "block_sparse"
    # structure, not the name: a user predicate labelled "causal" is any other Mask
    assert choose_backend(q, k, v, M.Mask(lambda b, h, i, j: i >= j, "causal")) == "block_sparse"
    qd, kd, vd = rand_qkv(1, 4, 2, 1, 4096, 8)
    assert choose_backend(qd, kd, vd, M.causal()) == "decode"
    assert choose_backend(qd, kd, vd, M.causal(), score_mod=softcap(5.0)) == "decode"
    assert {"reference", "sdpa", "flash", "block_sparse", "decode"} <= set(BACKENDS)


def test_unsupported_feature_names_it_and_the_backends_that_have_it():
    q, k, v = rand_qkv(1, 2, 2, 5, 5, 8)
    with pytest.raises(ValueError, match=r"backend 'sdpa' does not support return_lse; "
                                         r"backends that do: \['block_sparse', 'decode', "
                                         r"'flash', 'reference'\]"):
        attention(q, k, v, backend="sdpa", return_lse=True)
    with pytest.raises(ValueError, match="does not support score_mod"):
        attention(q, k, v, backend="sdpa", score_mod=softcap(5.0))
    with pytest.raises(ValueError, match="does not support sink"):
        attention(q, k, v, backend="sdpa", sink=torch.zeros(2))


def test_a_backend_is_one_record():
    """Registering a record is all a backend needs: "auto" considers it by rank."""
    calls = []

    def run(call):
        calls.append(call.Nq)
        return BACKENDS["reference"].fn(call)

    try:
        register_backend(Backend("test_only", run, return_lse=True, rank=0,
                                 prefers=lambda call: call.Nq == 3))
        q, k, v = rand_qkv(1, 2, 1, 3, 6, 8)
        out = attention(q, k, v, mask=M.causal())
        assert calls == [3]
        torch.testing.assert_close(out, attention_reference(q, k, v, mask=M.causal()))
        attention(*rand_qkv(1, 2, 1, 4, 6, 8))
        assert calls == [3]  # not preferred for Nq = 4
    finally:
        BACKENDS.pop("test_only", None)


def test_attention_layer_backends_agree():
    torch.manual_seed(0)
    x = torch.randn(2, 37, 32)
    outs = {}
    for backend in ("reference", "sdpa", "flash", "block_sparse", "decode", "auto"):
        torch.manual_seed(0)
        layer = Attention(32, 4, 2, window=8, backend=backend)
        outs[backend] = layer(x)
    for name, out in outs.items():
        torch.testing.assert_close(out, outs["reference"], atol=1e-5, rtol=1e-4,
                                   msg=lambda m, n=name: f"{n}: {m}")


def test_unknown_backend():
    q, k, v = rand_qkv(1, 1, 1, 2, 2, 4)
    with pytest.raises(ValueError, match="backend"):
        attention(q, k, v, backend="triton")
    with pytest.raises(TypeError, match="backend"):
        attention(q, k, v, backend=None)
