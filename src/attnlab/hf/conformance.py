"""Whole-model conformance of the attnlab backend against transformers' eager attention.

Tiny configs of each architecture family (random weights, no downloads, CPU, float32),
the inputs that exercise the mask (left padding, packed documents), and the comparisons:
logits at non-padding positions, greedy `generate()` tokens with the dynamic (and, where
the model has windows, sliding-window) and static caches, and for mixture-of-experts models,
whose random routers have near-ties that can flip a greedy token on float rounding,
teacher-forced logits over the same steps. Used by tests/test_hf_models.py and
benchmarks/hf_conformance.py.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .backend import NAME, register

VOCAB = 96


@dataclass(frozen=True)
class Family:
    """A tiny config of one architecture and what to check on it."""

    name: str
    make_config: Callable[[], object]
    moe: bool = False  # compare teacher-forced logits instead of greedy tokens
    encoder: bool = False  # bidirectional: no generate, no packed documents
    feature: str = ""  # what this family exercises


def _common(**kw):
    base = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
                "initializer_range": 0.2, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    base.update(kw)
    return base


def _llama():
    from transformers import LlamaConfig
    return LlamaConfig(**_common())


def _mistral():
    from transformers import MistralConfig
    return MistralConfig(**_common(sliding_window=8))


def _qwen2():
    from transformers import Qwen2Config
    return Qwen2Config(**_common())  # q/k/v bias, none on o_proj


def _qwen3():
    from transformers import Qwen3Config
    return Qwen3Config(**_common(head_dim=24))  # q/k RMSNorm, head_dim != d_model / H


def _gemma2():
    from transformers import Gemma2Config
    return Gemma2Config(**_common(head_dim=16, query_pre_attn_scalar=16, sliding_window=6,
                                  attn_logit_softcapping=2.0, final_logit_softcapping=30.0,
                                  layer_types=["sliding_attention", "full_attention"]))


def _gpt_oss():
    from transformers import GptOssConfig
    return GptOssConfig(**_common(head_dim=16, sliding_window=6, num_local_experts=4,
                                  num_experts_per_tok=2,
                                  layer_types=["sliding_attention", "full_attention"]))


def _deepseek_v2():
    from transformers import DeepseekV2Config
    return DeepseekV2Config(**_common(num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=None,
                                      qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12,
                                      n_routed_experts=4, num_experts_per_tok=2,
                                      n_shared_experts=1, moe_intermediate_size=32,
                                      first_k_dense_replace=1))


def _deepseek_v3():
    from transformers import DeepseekV3Config
    return DeepseekV3Config(**_common(num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=24,
                                      qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12,
                                      n_routed_experts=4, num_experts_per_tok=2, n_group=1,
                                      topk_group=1, n_shared_experts=1,
                                      moe_intermediate_size=32, first_k_dense_replace=1))


def _bert():
    from transformers import BertConfig
    return BertConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96,
                      num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                      initializer_range=0.2, pad_token_id=0)


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("llama", _llama, feature="GQA"),
    Family("mistral", _mistral, feature="sliding window 8 on every layer"),
    Family("qwen2", _qwen2, feature="q/k/v bias"),
    Family("qwen3", _qwen3, feature="q/k norm, head_dim 24 != 64/4"),
    Family("gemma2", _gemma2, feature="softcap 2.0, window 6 on alternate layers"),
    Family("gpt_oss", _gpt_oss, moe=True, feature="learned sinks, window 6 alternate, MoE"),
    Family("deepseek_v2", _deepseek_v2, moe=True, feature="MLA (no q LoRA), Dv != D, MoE"),
    Family("deepseek_v3", _deepseek_v3, moe=True, feature="MLA (q LoRA), interleaved rope, MoE"),
    Family("bert", _bert, encoder=True, feature="bidirectional encoder, padding"),
]}


def build(name: str, seed: int = 0) -> torch.nn.Module:
    """The family's tiny model with seeded random weights, eager attention, eval mode."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    fam = FAMILIES[name]
    register()
    torch.manual_seed(seed)
    auto = AutoModelForMaskedLM if fam.encoder else AutoModelForCausalLM
    return auto.from_config(fam.make_config(), attn_implementation="eager").float().eval()


def padded_batch(seed: int = 0, n: int = 13, pads=(0, 5, 2)) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of len(pads) rows, row r left-padded by pads[r]."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (len(pads), n), generator=g)
    mask = torch.ones_like(ids)
    for r, p in enumerate(pads):
        ids[r, :p], mask[r, :p] = 0, 0
    return ids, mask


def packed_batch(seed: int = 1, lengths=(5, 7, 4)) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids (1, N), position_ids (1, N)): documents of `lengths` packed in one row,
    positions restarting at 0 for each."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (1, sum(lengths)), generator=g)
    pos = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    return ids, pos


def right_padded_batch(seed: int = 2, n: int = 11, pads=(0, 4)) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder input: rows right-padded by pads[r]."""
    ids, mask = padded_batch(seed, n, pads)
    return ids.flip(-1), mask.flip(-1)


def _logits(model, impl: str, **inputs) -> torch.Tensor:
    register()
    model.set_attn_implementation(impl)
    with torch.no_grad():
        return model(**inputs).logits


def logit_error(model, **inputs) -> float:
    """max |logits(attnlab) - logits(eager)| over positions whose attention_mask is 1."""
    ref, out = _logits(model, "eager", **inputs), _logits(model, NAME, **inputs)
    keep = inputs.get("attention_mask")
    diff = (ref - out).abs()
    return float(diff[keep.bool()].max() if keep is not None else diff.max())


def generate_tokens(model, impl: str, ids, mask, steps: int, cache: str | None) -> torch.Tensor:
    model.set_attn_implementation(impl)
    kw = {"cache_implementation": cache} if cache else {}
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps,
                              do_sample=False, pad_token_id=0, **kw)


def teacher_forced(model, impl: str, ids, mask, cont: torch.Tensor, cache: str) -> torch.Tensor:
    """Logits (B, steps, V): prefill `ids`, then feed `cont[:, t]` one token at a time with a
    `cache` ("dynamic" or "static") cache; positions from the padding mask as generate()."""
    from transformers import DynamicCache, StaticCache

    model.set_attn_implementation(impl)
    steps = cont.shape[1]
    kv = (DynamicCache(config=model.config) if cache == "dynamic"
          else StaticCache(config=model.config, max_cache_len=ids.shape[1] + steps))
    outs = []
    with torch.no_grad():
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(ids, attention_mask=mask, position_ids=pos, cache=kv, use_cache=True)
        for t in range(steps):
            outs.append(out.logits[:, -1])
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], -1)
            pos = (mask.sum(-1, keepdim=True) - 1)
            out = model(cont[:, t:t + 1], attention_mask=mask, position_ids=pos, cache=kv,
                        use_cache=True)
    return torch.stack(outs, 1)


@dataclass
class Row:
    model: str
    feature: str
    padded_err: float
    packed_err: float | None
    generate: str  # "identical (dynamic, static)" / "n/a" / teacher-forced error
    decode_err: float | None

    def markdown(self) -> str:
        def f(x):
            return "–" if x is None else f"{x:.1e}"
        return (f"| {self.model} | {self.feature} | {f(self.padded_err)} | {f(self.packed_err)} | "
                f"{f(self.decode_err)} | {self.generate} |")


def conformance_row(name: str, model=None, steps: int = 32) -> Row:
    """Every check for one family; errors are max |attnlab - eager| on logits."""
    fam = FAMILIES[name]
    model = model if model is not None else build(name)
    if fam.encoder:
        ids, mask = right_padded_batch()
        err = logit_error(model, input_ids=ids, attention_mask=mask)
        return Row(name, fam.feature, err, None, "n/a (encoder)", None)
    ids, mask = padded_batch()
    err = logit_error(model, input_ids=ids, attention_mask=mask)
    pids, pos = packed_batch()
    packed = logit_error(model, input_ids=pids, position_ids=pos, use_cache=False)
    ref = generate_tokens(model, "eager", ids, mask, steps, None)
    cont = ref[:, ids.shape[1]:]
    dec = 0.0
    for cache in ("dynamic", "static"):
        a = teacher_forced(model, "eager", ids, mask, cont, cache)
        b = teacher_forced(model, NAME, ids, mask, cont, cache)
        dec = max(dec, float((a - b).abs().max()))
    if fam.moe:
        gen = f"teacher-forced {steps} steps"
    else:
        same = [torch.equal(ref, generate_tokens(model, NAME, ids, mask, steps, c))
                for c in (None, "static")]
        gen = "identical (dynamic, static)" if all(same) else f"DIFFERS {same}"
    return Row(name, fam.feature, err, packed, gen, dec)


def hidden_error(model, **inputs) -> float:
    """max |last_hidden_state(attnlab) - (eager)| over positions whose attention_mask is 1
    (encoders without an LM head, e.g. a sentence-embedding checkpoint)."""
    register()
    outs = []
    for impl in ("eager", NAME):
        model.set_attn_implementation(impl)
        with torch.no_grad():
            outs.append(model(**inputs).last_hidden_state)
    return float((outs[0] - outs[1]).abs()[inputs["attention_mask"].bool()].max())


def sentence_embeddings(model, **inputs) -> torch.Tensor:
    """Mean-pooled, L2-normalised last hidden states over real tokens (B, d): the
    sentence-transformers pooling of all-MiniLM-L6-v2."""
    with torch.no_grad():
        h = model(**inputs).last_hidden_state  # (B, N, d)
    m = inputs["attention_mask"].unsqueeze(-1).to(h.dtype)  # (B, N, 1)
    e = (h * m).sum(1) / m.sum(1)
    return torch.nn.functional.normalize(e, dim=-1)
