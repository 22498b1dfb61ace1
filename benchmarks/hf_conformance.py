"""attnlab inside transformers: the conformance table and the MHA -> GQA conversion table.

`python -m benchmarks.hf_conformance` writes
- benchmarks/results/hf_conformance.md: per model family (tiny random-weight configs) and
  for the real all-MiniLM-L6-v2 checkpoint, the max |logit| error of the attnlab backend
  against `attn_implementation="eager"` on a left-padded batch, on packed documents, over
  32 teacher-forced decode steps (dynamic and static caches), and whether greedy
  generate() gives identical tokens (dense models; MoE models are compared teacher-forced);
- benchmarks/results/hf_convert.md: mean-pooled MHA -> GQA (GQA paper recipe, no
  uptraining) per group count: logit KL and measured DynamicCache bytes on a tiny random
  Llama, sentence-embedding cosine on the real MiniLM.
Correctness figures, not timings: the load on the machine does not change them.
"""
from __future__ import annotations

import torch

from attnlab.hf import gqa_sweep, logit_kl, low_rank_kv, mla_cache_floats, pool_kv_heads, register
from attnlab.hf.conformance import (
    FAMILIES,
    conformance_row,
    hidden_error,
    sentence_embeddings,
)

from .common import header, md_table, write_results

TABLE_HEAD = ("| model | exercises | padded batch | packed documents | 32 decode steps "
              "(dynamic + static) | greedy generate, 32 steps |")
SETUP = ("Max |attnlab − eager| over logits at non-padding positions (float32, CPU). Tiny "
         "configs: 2 layers, d_model 64, random weights (initializer_range 0.2), vocab 96; "
         "prompt of 3 rows left-padded by 0 / 5 / 2 of 13 tokens; packed: documents of 5, 7 "
         "and 4 tokens in one row with restarting position_ids (use_cache=False).")
PATHS = ("Every call, softcap and learned sinks included, went through attnlab.attention "
         "(its dispatch picks the backend; windows, padding and documents arrive as Mask "
         "predicates and run on the block-sparse executor).")
LLAMA_NOTE = ("## Tiny random Llama (8 heads, head_dim 8, 2 layers), attnlab.hf.mha_to_gqa\n\n"
              "KL(original || converted) of next-token distributions, mean over 2 × 32 "
              "positions; KV bytes held by a transformers DynamicCache after the 32-token "
              "prefill (measured).")
MINILM_NOTE = ("## all-MiniLM-L6-v2, real weights (12 heads, head_dim 32, 6 layers), "
               "attnlab.hf.pool_kv_heads\n\n"
               "BERT has no KV-head setting in transformers, so the pooled heads stay in the "
               "MHA layout (the computation of the GQA model). Cosine between the original "
               "and converted mean-pooled sentence embeddings over the 6 built-in sentences "
               "of `attnlab heads`.")
CONVERT_SUMMARY = ("Random weights make heads independent, so any pooling costs ~1.5-2 nats; "
                   "on the real checkpoint, halving the KV heads already drops the embedding "
                   "cosine to ~0.7: the converted checkpoint is a start point that needs the "
                   "paper's uptraining (~5% of the pre-training steps), not a drop-in "
                   "replacement.")

MLA_NOTE = ("## MHA -> MLA-style latent on all-MiniLM-L6-v2 (attnlab.hf.low_rank_kv)\n\n"
            "Joint truncated SVD of each layer's stacked key and value projections "
            "(MHA2MLA's recipe; MiniLM has no RoPE, so no decoupled rope key): the cache holds "
            "one latent of `rank` floats per token per layer instead of 2·12·32 = 768. Rank "
            "384 = hidden_size is exact (the latent can span every key and value) at half the "
            "cache; at every cache size where both exist, the latent keeps the embeddings "
            "closer than pooled GQA heads. Before any fine-tuning.")
MLA_LLAMA_NOTE = ("## Tiny random Llama (4 heads, head_dim 16 = 8 rope pairs): partial RoPE + "
                  "latent\n\nThe `rope pairs kept` highest-frequency pairs of every head stay "
                  "rotated (a decoupled key, cached as is); the other key dims lose RoPE and "
                  "join the values in the latent. 8 pairs at full rank is exact; dropping RoPE "
                  "on 6 of 8 pairs costs KL by itself on random weights.")


def _minilm_inputs():
    from attnlab.analysis.pretrained import SENTENCES, load_minilm

    model, tok = load_minilm()
    enc = dict(tok(list(SENTENCES), return_tensors="pt", padding=True))
    return model, enc


def conformance() -> str:
    register()
    rows = [conformance_row(name).markdown() for name in FAMILIES]
    model, enc = _minilm_inputs()
    err = hidden_error(model, **enc)
    rows.append(f"| all-MiniLM-L6-v2 (real weights) | BERT encoder, 6 right-padded sentences | "
                f"{err:.1e} (hidden states) | – | – | n/a (encoder) |")
    head = [TABLE_HEAD, "|" + "---|" * 6]
    return "\n".join([header("attnlab backend in transformers: conformance against eager "
                             "attention"), SETUP, "", PATHS, "", *head, *rows, ""])


def convert() -> str:
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=8, initializer_range=0.2)
    llama = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    ids = torch.randint(3, 96, (2, 32), generator=torch.Generator().manual_seed(0))
    sweep = gqa_sweep(llama, ids)
    t1 = md_table(["KV heads", "group size", "logit KL (nats)", "KV bytes (DynamicCache)",
                   "KV saved"],
                  [[r.n_kv_heads, r.group_size, f"{r.kl:.4f}", r.kv_bytes,
                    f"{100 * r.kv_saved:.1f}%"] for r in sweep])
    model, enc = _minilm_inputs()
    model.set_attn_implementation("eager")
    e0 = sentence_embeddings(model, **enc)
    n_heads, head_dim = model.config.num_attention_heads, model.config.hidden_size // 12
    layers = model.config.num_hidden_layers
    rows = []
    for n in [d for d in range(n_heads, 0, -1) if n_heads % d == 0]:
        cos = (sentence_embeddings(pool_kv_heads(model, n), **enc) * e0).sum(-1)
        kv = 2 * layers * n * head_dim * 4  # K and V bytes per token, float32
        rows.append([n, n_heads // n, f"{float(cos.mean()):.3f}", f"{float(cos.min()):.3f}",
                     kv, f"{100 * (1 - n / n_heads):.1f}%"])
    t2 = md_table(["KV heads", "group size", "embedding cosine (mean)", "(min)",
                   "K/V bytes per token", "saved"], rows)
    gqa_cos = {n_heads // int(r[1]): float(r[2]) for r in rows}  # KV heads -> cosine
    mla_rows = []
    for r in (384, 256, 192, 128, 96, 64, 32):
        cos = (sentence_embeddings(low_rank_kv(model, r, None), **enc) * e0).sum(-1)
        floats, full = mla_cache_floats(model, r, None)
        same = floats // (2 * head_dim)  # pooled KV heads with this cache, if whole
        gqa = f"{gqa_cos[same]:.3f} (GQA-{same})" if floats % (2 * head_dim) == 0 and \
            same in gqa_cos else "–"
        mla_rows.append([r, f"{float(cos.mean()):.3f}", f"{float(cos.min()):.3f}",
                         f"{floats}/{full}", gqa])
    t3 = md_table(["latent rank", "embedding cosine (mean)", "(min)",
                   "cached floats / token / layer", "pooled GQA at equal cache"], mla_rows)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, head_dim=16,
                      initializer_range=0.2)
    rl = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    t4 = md_table(["rope pairs kept", "latent rank", "logit KL (nats)", "cached floats"],
                  [[rp, r, f"{logit_kl(rl, low_rank_kv(rl, r, rp), ids):.4f}",
                    "{}/{}".format(*mla_cache_floats(rl, r, rp))]
                   for rp in (8, 2) for r in (64, 48, 32, 16)])
    title = "KV-layout conversions: MHA -> GQA (mean-pooled heads) and -> MLA-style latent"
    return "\n".join([header(title), LLAMA_NOTE, "", t1, "", MINILM_NOTE, "", t2, "",
                      CONVERT_SUMMARY, "", MLA_NOTE, "", t3, "", MLA_LLAMA_NOTE, "", t4, ""])


def main() -> None:
    for name, text in (("hf_conformance", conformance()), ("hf_convert", convert())):
        print(text)
        print(f"wrote {write_results(name, text)}")


if __name__ == "__main__":
    main()
