import pytest
import torch

from attnlab.ops import apply_rope


def test_rope_relative_property_both_layouts():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 1, 16, generator=g)
    k = torch.randn(1, 1, 1, 16, generator=g)
    for inter in (False, True):
        def dot(i, j, inter=inter):
            return (apply_rope(q, torch.tensor([i]), interleaved=inter)
                    * apply_rope(k, torch.tensor([j]), interleaved=inter)).sum()
        torch.testing.assert_close(dot(7, 3), dot(104, 100), atol=1e-4, rtol=1e-4)
        # rotation preserves norm
        x = apply_rope(q, torch.tensor([12345]), interleaved=inter)
        torch.testing.assert_close(x.norm(), q.norm())


def test_layouts_are_a_permutation_of_each_other():
    x = torch.randn(2, 3, 5, 8)
    pos = torch.arange(5)
    perm = torch.tensor([0, 2, 4, 6, 1, 3, 5, 7])  # interleaved pairs -> half split
    a = apply_rope(x, pos, interleaved=True)[..., perm]
    b = apply_rope(x[..., perm], pos, interleaved=False)
    torch.testing.assert_close(a, b)


def test_rope_low_precision_and_bad_x():
    from attnlab.ops.rope import apply_rope as rope

    x = torch.randn(2, 3, 5, 8, generator=torch.Generator().manual_seed(0))
    pos = torch.arange(100, 105)
    for dtype in (torch.float16, torch.bfloat16):
        out = rope(x.to(dtype), pos)
        assert out.dtype == dtype  # computed in float32 on the rounded input, rounded once
        torch.testing.assert_close(out, rope(x.to(dtype).float(), pos).to(dtype), atol=0, rtol=0)
    with pytest.raises(TypeError, match=r"x must be a floating tensor .* torch.int64"):
        rope(torch.ones(1, 5, 8, dtype=torch.long), pos)
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor, got list"):
        rope([[1.0, 2.0]], torch.arange(1))
