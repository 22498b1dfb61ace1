"""Q38: the KV cache grows linearly with context — measured on real caches while decoding."""
from __future__ import annotations

import torch

from ...analysis.configs import get_config
from ...analysis.memory import kv_memory, standard_kv_bytes
from ...cache.base import CacheStack
from ...cache.paged import PagedKVCache
from ...layers.attention import Attention
from ..registry import Evidence, EvidenceContext, KeyPoint, Question
from ..titles import TITLES
from ._context_parallel import add_context_parallel_memory
from ._serving import add_sequence_memory


def _fit_line(xs: list[int], ys: list[int]) -> tuple[float, float, float]:
    """Least-squares slope, intercept and max |residual| of ys against xs (float64)."""
    x = torch.tensor(xs, dtype=torch.float64)
    y = torch.tensor(ys, dtype=torch.float64)
    A = torch.stack([x, torch.ones_like(x)], dim=1)  # (n, 2)
    sol = torch.linalg.lstsq(A, y.unsqueeze(1)).solution.squeeze(1)  # (2,)
    resid = (A @ sol - y).abs().max()
    return float(sol[0]), float(sol[1]), float(resid)


def evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    torch.manual_seed(ctx.seed)
    # a small GQA decoder stack: 3 layers, 8 query heads sharing 2 KV heads of size 16
    L, H, Hkv, D, d_model, B = 3, 8, 2, 16, 128, 2
    # default: append 8 tokens per call (12 calls per layer); --full: one token per call
    steps, chunk = (256, 1) if ctx.full else (96, 8)
    layers = [Attention(d_model, H, Hkv, D, layer_idx=i) for i in range(L)]
    cache = CacheStack([layer.new_cache(B, steps) for layer in layers])
    allocated = cache.nbytes
    lengths, used = [], []
    x = torch.randn(B, chunk, d_model)
    with torch.no_grad():
        for t in range(chunk, steps + 1, chunk):  # the next chunk through every layer
            h = x
            for layer in layers:
                h = h + layer(h, cache=cache)
            x = torch.tanh(h)
            if t % 8 == 0:
                lengths.append(t)
                used.append(cache.used_nbytes)
    slope, intercept, resid = _fit_line(lengths, used)
    per_token = standard_kv_bytes(L, Hkv, D, 1, 4, batch=B)  # 2·L·H_kv·d_head·bytes·batch
    ev.measurements["decoder"] = f"{L} layers, {H} query / {Hkv} KV heads, d_head {D}, batch {B}, fp32"
    ev.measurements["lengths measured"] = lengths
    ev.measurements["used_nbytes at those lengths"] = used
    ev.measurements["fitted slope (bytes/token, whole batch)"] = round(slope, 3)
    ev.measurements["fitted intercept (bytes)"] = round(intercept, 3)
    ev.measurements["formula 2·L·H_kv·d_head·bytes·batch"] = per_token
    ev.measurements["allocated nbytes (preallocated, constant)"] = allocated
    ev.check("slope of used bytes vs length equals the formula", abs(slope - per_token) < 1e-6,
             f"fit {slope:.3f} vs formula {per_token}")
    ev.check("the line goes through zero and fits exactly", abs(intercept) < 1e-6 and resid < 1e-6,
             f"intercept {intercept:.3g}, max residual {resid:.3g}")
    ev.check("preallocated bytes equal the formula at capacity",
             allocated == standard_kv_bytes(L, Hkv, D, steps, 4, batch=B) == cache.nbytes,
             f"{allocated} B for {steps} slots")

    # a paged cache allocates the same law in 16-token blocks, on demand
    paged = PagedKVCache(L, Hkv, D, num_blocks=64, block_size=16)
    paged.add_sequence("s")
    reserved, slack = [], []
    for t in range(1, 161):
        paged.reserve("s", 1)
        reserved.append(paged.reserved_nbytes)
        slack.append(paged.reserved_nbytes - paged.used_nbytes)
    per_token_1 = standard_kv_bytes(L, Hkv, D, 1, 4)  # one sequence
    block_bytes = 16 * per_token_1
    at_blocks = [reserved[t - 1] for t in range(16, 161, 16)]
    ps, pi, pr = _fit_line(list(range(16, 161, 16)), at_blocks)
    ev.measurements["paged: reserved bytes after 1, 16, 17, 160 tokens"] = (
        reserved[0], reserved[15], reserved[16], reserved[-1])
    ev.measurements["paged: largest reserved − used (bytes)"] = max(slack)
    ev.measurements["paged: pool bytes allocated up front"] = paged.nbytes
    ev.check("paged reservation grows one 16-token block at a time, on the same slope",
             abs(ps - per_token_1) < 1e-6 and abs(pi) < 1e-6 and pr < 1e-6
             and reserved[0] == reserved[15] == block_bytes and reserved[16] == 2 * block_bytes,
             f"slope {ps:.1f} B/token vs formula {per_token_1}")
    ev.check("paging wastes less than one block per sequence", max(slack) < block_bytes,
             f"max slack {max(slack)} B < block {block_bytes} B")

    # the same law at real scale: Llama-2-70B through the calculator
    cfg = get_config("llama-2-70b")
    ctxs = [1024, 2048, 4096, 8192]
    seq = [kv_memory(cfg, T, 1, "fp16").bytes_per_sequence for T in ctxs]
    s70, i70, r70 = _fit_line(ctxs, seq)
    ev.measurements["Llama-2-70B fp16 bytes/sequence at 1K..8K"] = seq
    ev.measurements["Llama-2-70B slope (bytes/token)"] = round(s70, 3)
    f70 = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 2  # from the config's fields
    ev.check(f"Llama-2-70B: the calculator's line has slope 2·L·H_kv·d·2 = {f70:,} B/token "
             "through zero", abs(s70 - f70) < 1e-3 and abs(i70) < 1e-3 and r70 < 1e-3,
             f"slope {s70:.1f}")
    # where the law bends: a sliding window caps the per-sequence bytes (Mistral, W = 4096)
    mis = get_config("mistral-7b")
    m8k, m32k = (kv_memory(mis, T).bytes_per_sequence for T in (8192, 32768))
    ev.measurements["Mistral-7B fp16 bytes/sequence at 8K and 32K (W = 4096)"] = (m8k, m32k)
    ev.check("a sliding window stops the growth (Mistral 8K == 32K)", m8k == m32k,
             f"{m8k} vs {m32k}")
    # served: the engine's pools hold a windowed sequence flat, an MLA latent on the line
    served = add_sequence_memory(ev)
    # beyond one device: context parallelism splits the line P ways (attnlab.distributed)
    cp = add_context_parallel_memory(ev, ctx, focus="kv")
    ev.key_figure = (f"used bytes grow {slope:,.0f} B/token (formula {per_token:,}); "
                     f"Llama-2-70B {s70:,.0f} B/token fp16; {served}" + (f"; {cp}" if cp else ""))
    return ev


QUESTION = Question(
    id=38,
    title=TITLES[38],
    short=(
        "Every token leaves a key and a value in every layer and KV head, and nothing is "
        "ever dropped because any later query may attend to it, so each token adds the same "
        "2·L·H_kv·d·bytes. The total is that constant times the context length — a straight "
        "line (times the batch) — which is what GQA, MLA, quantisation and sliding windows "
        "attack."
    ),
    rubric=[
        KeyPoint("each token stores K and V in every layer and KV head",
                 [r"every (token|layer)", r"per token", r"each (new )?token", r"k and v"]),
        KeyPoint("nothing is evicted: later queries may attend to any earlier token",
                 [r"(never|ever) (dropped|evicted|thrown)", r"attend to (any|it)",
                  r"all (previous|earlier)", r"any later query"]),
        KeyPoint("the formula", [r"2\s*(·|\*|x)?\s*l", r"n_?layers", r"h_?kv", r"head_?dim"],
                 formula="KV bytes = 2 · L · H_kv · d_head · T · bytes · batch"),
        KeyPoint("what bends the line: GQA/MQA/MLA, quantisation, sliding window",
                 [r"gqa", r"mqa", r"mla", r"quanti", r"sliding", r"window"]),
    ],
    answer=(
        "During generation every layer stores, for every token it has seen, that token's key "
        "and value in each KV head; nothing already stored is ever thrown away, because later "
        "queries may attend to any earlier position. Each new token therefore adds the same "
        "fixed number of bytes — 2 (K and V) times layers times KV heads times head size "
        "times bytes per element — and the total is that constant times the number of "
        "tokens: a straight line through the origin, multiplied again by the batch size. For "
        "Llama-2-70B in fp16 the constant is 320 KiB per token, so one 4096-token sequence "
        "holds 1.25 GiB and a batch of 8 holds 10 GiB, more than the layers' activations. "
        "The slope is what the attention variants attack: GQA and MQA shrink H_kv, MLA "
        "replaces 2·H_kv·d_head by a small latent, quantization shrinks the bytes, and a "
        "sliding window or a recurrent state stops the growth altogether (the cache then "
        "stays at W tokens or a fixed state size)."
        " How the line is allocated is a separate choice: a preallocated cache reserves "
        "the whole context up front, a paged cache (vLLM) reserves 16-token blocks as "
        "tokens arrive and wastes under one block per sequence."
        " attnlab's serving engine shows both shapes on real pools: an MLA sequence's "
        "latent bytes grow on the line, a windowed sequence's stay flat past W."
        " Beyond one device, context parallelism splits the line itself: each of P ranks "
        "holds the K/V of its N/P positions (contiguous or zigzag shards), so a 1M-token "
        "context with Llama-3-8B-like heads needs 128 GiB of bf16 cache on one device but "
        "16 GiB on each of 8 and 2 GiB on each of 64; ring attention then streams the other "
        "ranks' K/V past each rank's queries one shard at a time instead of storing them. "
        "The evidence shards real K/V tensors and shows a measured ring run's per-rank bytes."
    ),
    formulas=[
        "KV bytes = 2 · L · H_kv · d_head · T · bytes_per_element · batch",
        "bytes/token = 2 · L · H_kv · d_head · bytes   (Llama-2-70B fp16: 2·80·8·128·2 = 327,680)",
        "MLA: bytes/token = L · (d_c + d_R) · bytes;  sliding window: T → min(T, W)",
        "context parallel over P devices: KV bytes per device = 2 · L · H_kv · d_head · ⌈N/P⌉ · bytes",
    ],
    seed_note=(
        "The seed's formula was lost. It also speaks of one vector per head; with GQA/MQA the "
        "count is per KV head (H_kv), not per query head, which is exactly where GQA saves. "
        "Calling linear growth the fundamental cost overstates it: it holds for full softmax "
        "attention only — window layers cap at W tokens and recurrent mixers keep a constant "
        "state (the evidence shows the Mistral cap)."
    ),
    evidence=evidence,
)
