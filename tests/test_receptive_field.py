"""Receptive field: measured by autograd == graph reach == L·(W−1)+1 for window stacks."""
import pytest
import torch

from attnlab.analysis.receptive_field import (
    RandomAttentionStack,
    field_size,
    graph_reach,
    measured_reach,
    measured_receptive_field,
    perturbation_effect,
    theoretical_receptive_field,
)
from attnlab.layers.attention import Attention
from attnlab.masks import bigbird, causal, global_tokens, sliding_window


@pytest.mark.parametrize("L,W", [(1, 1), (1, 4), (2, 4), (3, 5), (4, 3), (5, 7)])
def test_measured_field_equals_formula_for_window_stacks(L, W):
    N = L * (W - 1) + 9  # longer than the field, so the field is not clipped by position 0
    mask = sliding_window(W)
    expect = theoretical_receptive_field(L, W)
    assert expect == L * (W - 1) + 1
    assert measured_receptive_field(mask, L, N) == expect
    assert field_size(graph_reach(mask, L, N)) == expect


@pytest.mark.parametrize("L,W", [(2, 3), (3, 4)])
def test_attention_layer_stack_has_the_same_field(L, W):
    torch.manual_seed(0)
    layers = [Attention(16, 2, window=W, layer_idx=i) for i in range(L)]

    def stack(x):
        for layer in layers:
            x = x + layer(x)
        return x

    N = 20
    reach = measured_reach(stack, N, 16)
    assert field_size(reach) == theoretical_receptive_field(L, W)
    assert reach[N - field_size(reach):].all()  # contiguous band


def test_global_tokens_and_bigbird_reach_match_the_graph():
    N = 40
    # causal: a global token gathers only from positions before it, so put it mid-sequence
    glob = sliding_window(4) | (global_tokens([20]) & causal())
    one = measured_reach(RandomAttentionStack(glob, 1), N, 8)
    assert one.nonzero().flatten().tolist() == [20, 36, 37, 38, 39]  # window + the global
    two = measured_reach(RandomAttentionStack(glob, 2), N, 8)
    # token -> global -> last: all of 0..20 in two layers, plus the two-layer window
    assert two.nonzero().flatten().tolist() == list(range(21)) + list(range(33, 40))
    assert torch.equal(two, graph_reach(glob, 2, N))
    for L in (1, 2):
        bb = bigbird(64, 8, 2, (0,), 1, causal=True, seed=2)
        got = measured_reach(RandomAttentionStack(bb, L), 64, 8)
        assert torch.equal(got, graph_reach(bb, L, 64))
    assert int(measured_reach(RandomAttentionStack(bb, 1), 64, 8).sum()) < 64


def test_input_beyond_the_field_cannot_change_the_output():
    stack = RandomAttentionStack(sliding_window(4), 3)  # field 10 of the last of 30
    assert perturbation_effect(stack, 30, 8, position=19) == 0.0  # distance 10: outside
    assert perturbation_effect(stack, 30, 8, position=20) > 1e-6  # distance 9: inside


def test_bad_input():
    with pytest.raises(ValueError, match=r"window \(0\) must be >= 1"):
        theoretical_receptive_field(2, 0)
    with pytest.raises(ValueError, match=r"query \(9\) must be in \[0, 9\)"):
        graph_reach(sliding_window(2), 1, 9, query=9)
