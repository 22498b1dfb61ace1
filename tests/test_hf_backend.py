"""attnlab as a transformers attention backend: registration, the mask it rebuilds, the
mask objects it accepts, softcap / sinks / position bias, errors (docs/conventions.md §9)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AttentionInterface
from transformers.masking_utils import (
    AttentionMaskInterface,
    bidirectional_mask_function,
    causal_mask_function,
    eager_mask,
    sdpa_mask,
    sliding_window_bidirectional_mask_function,
    sliding_window_causal_mask_function,
)
from transformers.models.gemma2.modeling_gemma2 import (
    eager_attention_forward as gemma2_eager,
)
from transformers.models.gpt_oss.modeling_gpt_oss import (
    eager_attention_forward as gpt_oss_eager,
)
from transformers.models.llama.modeling_llama import (
    eager_attention_forward as llama_eager,
)

import attnlab.hf as ah
from attnlab.hf import backend
from attnlab.hf.conformance import build, packed_batch, padded_batch
from attnlab.masks import Mask
from attnlab.ops.softmax.dispatch import choose_backend

ATOL, RTOL = 1e-5, 1e-4  # conventions §5, exact algorithms in float32


class Module(torch.nn.Module):
    def __init__(self, groups=2, causal=True, n_heads=4):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = causal
        self.head_dim = 8
        self.sinks = torch.nn.Parameter(torch.randn(n_heads))


def qkv(B=2, Hq=4, Hkv=2, Nq=6, Nk=6, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, Hq, Nq, D, generator=g), torch.randn(B, Hkv, Nk, D, generator=g),
            torch.randn(B, Hkv, Nk, D, generator=g))


def test_register_names_both_interfaces():
    assert ah.register() == "attnlab" == ah.register()  # idempotent
    assert AttentionInterface._global_mapping["attnlab"] is ah.attnlab_attention_forward
    assert AttentionMaskInterface._global_mapping["attnlab"] is ah.attnlab_mask
    with pytest.raises(ValueError, match="name"):
        ah.register("")


def test_hfmask_is_a_lazy_4d_bool_tensor():
    pad = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    m = ah.attnlab_mask(batch_size=2, q_length=5, kv_length=5, attention_mask=pad.bool())
    assert isinstance(m, torch.Tensor) and m.shape == (2, 1, 5, 5) and m.dtype == torch.bool
    assert m.stride() == (0, 0, 0, 0)  # nothing stored per entry
    assert m.contiguous() is m and m.clone() is m  # generate() keeps the description
    want = sdpa_mask(batch_size=2, q_length=5, kv_length=5, attention_mask=pad.bool(),
                     allow_is_causal_skip=False)
    assert torch.equal(m[:, :, :, :], want)  # any tensor op sees transformers' own mask
    assert torch.equal(m.dense(), want)
    assert m.info.padding is not None and m.info.q_offset == 0


class Spy:
    """Wraps backend.attention; checks every call's attnlab mask against the dense mask
    transformers built from its own closure."""

    def __init__(self, monkeypatch):
        self.calls = []
        monkeypatch.setattr(backend, "attention", self._wrap(backend.attention))
        real_masks = backend._mask_and_positions

        def masks(attention_mask, **kw):
            out = real_masks(attention_mask, **kw)
            self.calls.append((attention_mask, kw, out))
            return out

        monkeypatch.setattr(backend, "_mask_and_positions", masks)

    def _wrap(self, real):
        def f(q, k, v, **kw):
            self.calls[-1] = self.calls[-1] + ((q, k, v, kw),)
            return real(q, k, v, **kw)
        return f

    def check_against_hf(self):
        assert self.calls
        for hf_mask, kw, (mask, q_pos, kv_pos, _), (q, k, v, _kw) in self.calls:
            assert isinstance(hf_mask, ah.HFMask)
            assert isinstance(mask, Mask), "structure, not a dense tensor, reaches attention"
            B, Nq, Nk = kw["B"], kw["Nq"], kw["Nk"]
            mine = mask.to_dense(Nq, Nk, q_pos=q_pos, kv_pos=kv_pos, batch=B, heads=1)
            assert torch.equal(mine.expand(B, 1, Nq, Nk), hf_mask.dense())


@pytest.mark.parametrize("name", ["llama", "mistral", "gemma2", "bert"])
def test_rebuilt_mask_equals_transformers_mask(name, monkeypatch):
    model = build(name)
    model.set_attn_implementation("attnlab")
    spy = Spy(monkeypatch)
    ids, mask = padded_batch(n=11)
    if name == "bert":
        ids, mask = ids.flip(-1), mask.flip(-1)
    with torch.no_grad():
        model(ids, attention_mask=mask)
        if name != "bert":
            pids, pos = packed_batch()
            model(pids, position_ids=pos, use_cache=False)
            for cache in (None, "static"):
                kw = {"cache_implementation": cache} if cache else {}
                model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                               pad_token_id=0, **kw)
    spy.check_against_hf()


def test_static_cache_passes_query_offset(monkeypatch):
    model = build("llama")
    model.set_attn_implementation("attnlab")
    spy = Spy(monkeypatch)
    ids, mask = padded_batch(n=7)
    with torch.no_grad():
        model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                       pad_token_id=0, cache_implementation="static")
    decode = [c for c in spy.calls if c[1]["Nq"] == 1]
    assert len(decode) == 3 * 2  # 3 decode steps x 2 layers
    for step, (_hf, kw, (_mask, q_pos, kv_pos, _), _call) in enumerate(decode):
        # keys are the whole capacity (7 + 4 - 1 slots: generate() never caches the last
        # token); the query sits after the tokens seen, not at the last slot where
        # bottom-right alignment would put it
        assert kw["Nk"] == 10
        at = kw["Nk"] - 1 if q_pos is None else int(q_pos[0])  # None: the bottom-right default
        assert at == 7 + step // 2
        assert (q_pos is None) == (at == kw["Nk"] - 1) and (kv_pos is None or int(kv_pos[0]) == 0)


def test_windowed_padded_prefill_takes_block_sparse(monkeypatch):
    model = build("mistral")
    model.set_attn_implementation("attnlab")
    spy = Spy(monkeypatch)
    with torch.no_grad():
        model(*padded_batch(n=40))
    for _hf, _kw, (mask, q_pos, kv_pos, _), (q, k, v, _) in spy.calls:
        assert choose_backend(q, k, v, mask, q_pos, kv_pos) == "block_sparse"
        lay = mask.block_layout(q.shape[2], k.shape[2], 8, batch=q.shape[0])
        assert lay.counts()["empty"] > 0  # the window leaves blocks the executor skips


def test_packed_documents_equal_documents_run_alone():
    model = build("llama")
    ids, pos = packed_batch(lengths=(5, 7, 4))
    for impl in ("eager", "attnlab"):
        model.set_attn_implementation(impl)
        with torch.no_grad():
            packed = model(ids, position_ids=pos, use_cache=False).logits
            start = 0
            for n in (5, 7, 4):
                alone = model(ids[:, start:start + n]).logits
                torch.testing.assert_close(packed[:, start:start + n], alone, atol=1e-4, rtol=1e-4)
                start += n


# ---- the attention function on transformers' own mask objects ------------------------

def _hf_masks(B, Nq, Nk, pad):
    kw = {"batch_size": B, "q_length": Nq, "kv_length": Nk, "q_offset": Nk - Nq,
              "mask_function": causal_mask_function, "attention_mask": pad}
    return sdpa_mask(allow_is_causal_skip=False, **kw), eager_mask(dtype=torch.float32, **kw)


@pytest.mark.parametrize("Nq,Nk", [(6, 6), (1, 9), (3, 9)])
def test_accepts_bool_and_additive_float_masks(Nq, Nk):
    q, k, v = qkv(Nq=Nq, Nk=Nk)
    pad = torch.ones(2, Nk, dtype=torch.bool)
    pad[1, :3] = False
    bool_m, float_m = _hf_masks(2, Nq, Nk, pad)
    mod = Module()
    want, _ = llama_eager(mod, q, k, v, float_m, scaling=0.3)
    rows = bool_m.any(-1).view(2, 1, Nq).transpose(1, 2)  # rows with a visible key
    for m in (bool_m, float_m, float_m.masked_fill(~bool_m, float("-inf")),
              ah.attnlab_mask(batch_size=2, q_length=Nq, kv_length=Nk, q_offset=Nk - Nq, attention_mask=pad)):
        got, w = ah.attnlab_attention_forward(mod, q, k, v, m, scaling=0.3)
        assert w is None and got.shape == (2, Nq, 4, 8)  # (B, N, H, D)
        torch.testing.assert_close(got * rows[..., None], want * rows[..., None],
                                   atol=ATOL, rtol=RTOL)


def test_additive_bias_in_float_mask_is_added():
    q, k, v = qkv()
    bias = torch.randn(1, 1, 6, 6)
    _, float_m = _hf_masks(2, 6, 6, None)
    want, _ = llama_eager(Module(), q, k, v, float_m + bias, scaling=0.5)
    got, _ = ah.attnlab_attention_forward(Module(), q, k, v, float_m + bias, scaling=0.5)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    pb = torch.randn(2, 4, 6, 6)  # T5-style position_bias
    want, _ = llama_eager(Module(), q, k, v, float_m + pb, scaling=0.5)
    got, _ = ah.attnlab_attention_forward(Module(), q, k, v, None, scaling=0.5, position_bias=pb)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("causal", [True, False])
def test_none_mask_follows_module_is_causal(causal):
    q, k, v = qkv(Nq=3, Nk=7)
    kw = {"batch_size": 2, "q_length": 3, "kv_length": 7, "q_offset": 4}
    m = (sdpa_mask(allow_is_causal_skip=False, **kw) if causal
         else torch.ones(2, 1, 3, 7, dtype=torch.bool))
    want, _ = llama_eager(Module(), q, k, v, torch.zeros(()).masked_fill(~m, -1e30), scaling=0.4)
    got, _ = ah.attnlab_attention_forward(Module(causal=causal), q, k, v, None, scaling=0.4)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    got, _ = ah.attnlab_attention_forward(Module(causal=not causal), q, k, v, None, scaling=0.4,
                                          is_causal=causal)  # the call's flag wins
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)


def test_block_mask_is_converted():
    from torch.nn.attention.flex_attention import create_block_mask

    q, k, v = qkv(Nq=5, Nk=5)
    bm = create_block_mask(lambda b, h, i, j: (i >= j) & (i - j < 3), 2, None, 5, 5, device="cpu")
    m = sdpa_mask(batch_size=2, q_length=5, kv_length=5, allow_is_causal_skip=False,
                  mask_function=sliding_window_causal_mask_function(3))
    want, _ = llama_eager(Module(), q, k, v, torch.zeros(()).masked_fill(~m, -1e30), scaling=0.4)
    got, _ = ah.attnlab_attention_forward(Module(), q, k, v, bm, scaling=0.4)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("window", [None, 3])
def test_softcap_and_sinks_pass_through(window):
    q, k, v = qkv(Nq=4, Nk=9)
    q = q * 4  # logits large enough for the cap to bend them
    fn = sliding_window_causal_mask_function(window) if window else causal_mask_function
    pad = torch.ones(2, 9, dtype=torch.bool)
    pad[0, :2] = False
    kw = {"batch_size": 2, "q_length": 4, "kv_length": 9, "q_offset": 5, "mask_function": fn,
              "attention_mask": pad}
    float_m, ours = eager_mask(dtype=torch.float32, **kw), ah.attnlab_mask(local_size=window, **kw)
    mod = Module()
    want, _ = gemma2_eager(mod, q, k, v, float_m, scaling=0.3, softcap=2.0)
    got, _ = ah.attnlab_attention_forward(mod, q, k, v, ours, scaling=0.3, softcap=2.0,
                                          sliding_window=window)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    want, _ = gpt_oss_eager(mod, q, k, v, float_m, scaling=0.3)
    got, _ = ah.attnlab_attention_forward(mod, q, k, v, ours, scaling=0.3, s_aux=mod.sinks,
                                          sliding_window=window)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)


def test_bidirectional_window_matches_transformers_overlay():
    q, k, v = qkv(Nq=7, Nk=7)
    m = sdpa_mask(batch_size=2, q_length=7, kv_length=7, allow_is_causal_skip=False,
                  mask_function=sliding_window_bidirectional_mask_function(2))
    want, _ = llama_eager(Module(), q, k, v, torch.zeros(()).masked_fill(~m, -1e30), scaling=0.4)
    got, _ = ah.attnlab_attention_forward(Module(causal=False), q, k, v, None, scaling=0.4,
                                          sliding_window=2)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)


# ---- errors ------------------------------------------------------------------------

def test_bad_inputs_raise_clear_errors():
    q, k, v = qkv()
    mod = Module()
    with pytest.raises(ValueError, match="dropout"):
        ah.attnlab_attention_forward(mod, q, k, v, None, dropout=0.1)
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        ah.attnlab_attention_forward(mod, q, k, v, torch.ones(2, 1, 6, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="attention_mask must be"):
        ah.attnlab_attention_forward(mod, q, k, v, "causal")
    with pytest.raises(ValueError, match="NaN"):
        ah.attnlab_attention_forward(mod, q, k, v, torch.full((2, 1, 6, 6), float("nan")))
    m = ah.attnlab_mask(batch_size=2, q_length=6, kv_length=6, local_size=4)
    with pytest.raises(ValueError, match="sliding_window"):
        ah.attnlab_attention_forward(mod, q, k, v, m, sliding_window=3)
    m = ah.attnlab_mask(batch_size=2, q_length=6, kv_length=8)
    with pytest.raises(ValueError, match="built for"):
        ah.attnlab_attention_forward(mod, q, k, v, m)


# ---- property test: the rebuilt predicate equals transformers' mask -------------------

@settings(max_examples=60, deadline=None)
@given(B=st.integers(1, 3), nq=st.integers(1, 9), extra=st.integers(0, 9),
       q_off=st.integers(0, 6), kv_off=st.integers(0, 4), window=st.one_of(st.none(),
       st.integers(1, 8)), causal=st.booleans(), pad_seed=st.integers(0, 2 ** 16),
       padded=st.booleans())
def test_rebuilt_mask_property(B, nq, extra, q_off, kv_off, window, causal, pad_seed, padded):
    nk = nq + extra  # a cache may hold more keys than queries, and start after position 0
    q_off = min(q_off, kv_off + nk - nq) if causal else q_off
    pad = None
    if padded:
        g = torch.Generator().manual_seed(pad_seed)
        pad = torch.rand(B, kv_off + nk, generator=g) > 0.3
    if causal:
        fn = sliding_window_causal_mask_function(window) if window else causal_mask_function
    else:
        fn = (sliding_window_bidirectional_mask_function(window) if window
              else bidirectional_mask_function)
    kw = {"batch_size": B, "q_length": nq, "kv_length": nk, "q_offset": q_off, "kv_offset": kv_off,
              "mask_function": fn, "attention_mask": pad}
    want = sdpa_mask(allow_is_causal_skip=False, **kw).expand(B, 1, nq, nk)
    m = ah.attnlab_mask(local_size=window if causal else None, **kw)
    mask, q_pos, kv_pos, _ = backend._mask_and_positions(
        m, is_causal=causal, window=window, position_ids=None, B=B, Nq=nq, Nk=nk)
    if mask is None:
        got = torch.ones(B, 1, nq, nk, dtype=torch.bool)
    else:
        got = mask.to_dense(nq, nk, q_pos=q_pos, kv_pos=kv_pos, batch=B, heads=1)
    assert torch.equal(got.expand(B, 1, nq, nk), want)
