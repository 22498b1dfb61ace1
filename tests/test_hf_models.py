"""Whole transformers models on the attnlab backend equal `attn_implementation="eager"`.

Tiny configs with random weights (attnlab.hf.conformance): Llama, Mistral, Qwen2, Qwen3,
Gemma-2, gpt-oss, DeepSeek-V2, DeepSeek-V3 and BERT. Left-padded batches and packed
documents: logits at non-padding positions within float32 tolerance. Dense models: greedy
generate() gives identical tokens for 32 steps with the dynamic (sliding-window layers
where the model has windows) and the static cache. Every decoder: teacher-forced logits
over the same 32 steps with both caches (the check for mixture-of-experts models, whose
random routers have near-ties that can flip a greedy token on rounding).
"""
import pytest
import torch

from attnlab.hf.conformance import (
    FAMILIES,
    NAME,
    build,
    generate_tokens,
    hidden_error,
    logit_error,
    packed_batch,
    padded_batch,
    right_padded_batch,
    teacher_forced,
)

TOL = 1e-4  # float32 logits of O(1-10) through 2 layers; measured errors are ~1e-5
STEPS = 32
DECODERS = [n for n, f in FAMILIES.items() if not f.encoder]
DENSE = [n for n, f in FAMILIES.items() if not f.encoder and not f.moe]


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = build(name)
        return cache[name]

    return get


def test_families_cover_the_issue():
    assert set(FAMILIES) >= {"llama", "mistral", "qwen2", "qwen3", "gemma2", "gpt_oss",
                             "deepseek_v2", "deepseek_v3", "bert"}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_padded_logits_equal_eager(name, models):
    ids, mask = right_padded_batch() if FAMILIES[name].encoder else padded_batch()
    assert logit_error(models(name), input_ids=ids, attention_mask=mask) < TOL


@pytest.mark.parametrize("name", DECODERS)
def test_packed_documents_equal_eager(name, models):
    ids, pos = packed_batch()
    assert logit_error(models(name), input_ids=ids, position_ids=pos, use_cache=False) < TOL


@pytest.mark.parametrize("name", DENSE)
@pytest.mark.parametrize("cache", [None, "static"])
def test_greedy_generate_identical(name, cache, models):
    model = models(name)
    ids, mask = padded_batch()
    ref = generate_tokens(model, "eager", ids, mask, STEPS, cache)
    out = generate_tokens(model, NAME, ids, mask, STEPS, cache)
    assert ref.shape == (3, ids.shape[1] + STEPS)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("name", DECODERS)
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_teacher_forced_decode_equal_eager(name, cache, models):
    model = models(name)
    ids, mask = padded_batch()
    g = torch.Generator().manual_seed(3)
    cont = torch.randint(3, model.config.vocab_size, (3, STEPS), generator=g)
    ref = teacher_forced(model, "eager", ids, mask, cont, cache)
    out = teacher_forced(model, NAME, ids, mask, cont, cache)
    assert ref.shape == (3, STEPS, model.config.vocab_size)
    torch.testing.assert_close(out, ref, atol=TOL, rtol=TOL)


def test_real_minilm_checkpoint_equals_eager():
    from attnlab.analysis.pretrained import SENTENCES, load_minilm

    model, tok = load_minilm()
    enc = dict(tok(list(SENTENCES), return_tensors="pt", padding=True))
    assert not bool(enc["attention_mask"].all())  # right padding is exercised
    assert hidden_error(model, **enc) < TOL
