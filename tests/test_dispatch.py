"""`attention(backend=...)`: every backend == reference; what "auto" picks; errors."""
import pytest
import torch
from softmax_cases import MASKS, SHAPES, check_against_reference, make_mask, rand_qkv

from attnlab import masks as M
from attnlab.layers.attention import Attention
from attnlab.ops.softmax import BACKENDS, attention
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
    q, k, v = rand_qkv(2, 4, 2, 33, 33, 16, grad=True)
    check_against_reference(_fn("sdpa"), q, k, v, make_mask(mask, 33, 33), grads=False)


def test_auto_choices():
    q, k, v = rand_qkv(1, 4, 2, 64, 64, 8)
    assert choose_backend(q, k, v, None) == "sdpa"
    assert choose_backend(q, k, v, M.causal()) == "sdpa"
    assert choose_backend(q, k, v, M.sliding_window(8)) == "block_sparse"
    assert choose_backend(q, k, v, M.causal(), q_pos=torch.arange(64)) == "block_sparse"
    assert choose_backend(q[:, :, :10], k, v, M.causal()) == "block_sparse"  # Nq != Nk
    assert choose_backend(q, k, v, torch.ones(64, 64, dtype=torch.bool)) == "sdpa"
    qd, kd, vd = rand_qkv(1, 4, 2, 1, 4096, 8)
    assert choose_backend(qd, kd, vd, M.causal()) == "decode"
    assert {"reference", "sdpa", "flash", "block_sparse", "decode"} <= set(BACKENDS)


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
