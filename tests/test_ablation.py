"""Ablation: zero/mean head ablation, importance == finite differences, pruning curve."""
import pytest
import torch

from attnlab.analysis.ablation import (
    ablate,
    gated_loss,
    head_importance,
    head_means,
    lm_loss,
    ones_gates,
    pruning_curve,
    single_head_ablation,
)
from attnlab.analysis.hooks import run_with_cache
from attnlab.layers.attention import AttentionSpec
from attnlab.layers.linear_attention import LinearAttentionSpec
from attnlab.models import ModelConfig, TinyLM


def lm(n_kv=2, dtype=torch.float32, spec=None):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=23, d_model=32, n_layers=2,
                      mixers=spec or AttentionSpec(4, n_kv), max_seq_len=64, init_std=0.3)
    return TinyLM(cfg).to(dtype).eval()


def toks(B=3, N=11, seed=1):
    return torch.randint(0, 23, (B, N), generator=torch.Generator().manual_seed(seed))


def test_zero_ablation_zeroes_head_and_restores():
    model, t = lm(), toks()
    with ablate(model, [(1, 2)]), torch.no_grad():
        abl = model(t)
    assert not torch.allclose(abl, model(t))  # ablation changed the output ...
    torch.testing.assert_close(run_with_cache(model, t).logits, model(t))  # ... and is gone
    with ablate(model, [(1, 2)]), torch.no_grad():
        seen = {}
        h = model.blocks[1].mixer.o_proj.register_forward_pre_hook(
            lambda m, args: seen.setdefault("x", args[0]))
        model(t)
        h.remove()
    x = seen["x"].view(3, 11, 4, 8)  # (B, N, H, D) before o_proj
    assert float(x[:, :, 2].abs().max()) == 0.0 and float(x[:, :, 1].abs().max()) > 0


def test_mean_ablation_uses_mean():
    model, t = lm(), toks()
    means = head_means(model, t)
    assert means[0].shape == (4, 8)
    with ablate(model, [(0, 1)], "mean", means):
        seen = {}
        h = model.blocks[0].mixer.o_proj.register_forward_pre_hook(
            lambda m, args: seen.setdefault("x", args[0]))
        with torch.no_grad():
            model(t)
        h.remove()
    x = seen["x"].view(3, 11, 4, 8)
    torch.testing.assert_close(x[:, :, 1], means[0][1].expand(3, 11, 8))
    # ablating all heads of a layer with their means == a constant layer output
    d = single_head_ablation(model, t, "mean", means)
    assert d.shape == (2, 4) and bool(torch.isfinite(d).all())


def test_importance_matches_finite_differences():
    # float64 end to end: the reference backend keeps float64; apply_rope computes in
    # float32 whatever the input, so RoPE is off here (its rounding would swamp the FD)
    model = lm(dtype=torch.float64, spec=AttentionSpec(4, 2, rope=False, backend="reference"))
    t = toks()
    imp_signed = []
    xi = ones_gates(model, requires_grad=True)
    grads = torch.autograd.grad(gated_loss(model, t, xi), xi)
    eps = 1e-5
    for layer in range(2):
        for head in range(4):
            g_plus, g_minus = ones_gates(model), ones_gates(model)
            g_plus[layer][head] += eps
            g_minus[layer][head] -= eps
            with torch.no_grad():
                fd = (gated_loss(model, t, g_plus) - gated_loss(model, t, g_minus)) / (2 * eps)
            imp_signed.append(float(fd))
            assert float(grads[layer][head]) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)
    imp = head_importance(model, [t])
    torch.testing.assert_close(imp.flatten(), torch.tensor(imp_signed, dtype=imp.dtype).abs())
    assert imp.min() > 0
    # expectation over batches = mean of the per-batch absolute gradients
    t2 = toks(seed=5)
    both = head_importance(model, [t, t2])
    torch.testing.assert_close(both, (head_importance(model, [t]) + head_importance(model, [t2])) / 2)
    normed = head_importance(model, [t], normalize=True)
    torch.testing.assert_close(normed.norm(dim=-1), torch.ones(2, dtype=normed.dtype))


def test_gates_one_equals_plain_and_zero_equals_ablation():
    model, t = lm(), toks()
    with torch.no_grad():
        torch.testing.assert_close(gated_loss(model, t, ones_gates(model)), lm_loss(model(t), t))
        g = ones_gates(model)
        g[0][3] = 0.0
        with ablate(model, [(0, 3)]):
            ref = lm_loss(model(t), t)
        torch.testing.assert_close(gated_loss(model, t, g), ref)


def test_pruning_curve():
    model, t = lm(), toks()
    curve = pruning_curve(model, [t], toks(seed=9), step=3)
    assert curve.fraction[0] == 0.0 and curve.fraction[-1] == 7 / 8
    assert len(curve.loss) == len(curve.fraction) == 4
    assert len(set(curve.order)) == 7
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(curve.loss[0]),
                                   lm_loss(model(toks(seed=9)), toks(seed=9)))


def test_bad_heads():
    model = lm()
    with pytest.raises(ValueError, match=r"head \(4\) out of range"), ablate(model, [(0, 4)]):
        pass
    with pytest.raises(ValueError, match=r"layer \(2\) does not exist"), ablate(model, [(2, 0)]):
        pass
    with pytest.raises(TypeError, match="tuples"), ablate(model, [3]):
        pass
    with pytest.raises(ValueError, match="mode"), ablate(model, [(0, 0)], "resample"):
        pass
    with pytest.raises(ValueError, match="means"), ablate(model, [(0, 0)], "mean"):
        pass
    with pytest.raises(ValueError, match="empty"):
        head_importance(model, [])
    linear = lm(spec=LinearAttentionSpec(4))
    with pytest.raises(TypeError, match="hook_head_out"), ablate(linear, [(0, 0)]):
        pass
