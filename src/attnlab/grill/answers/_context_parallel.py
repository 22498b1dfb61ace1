"""Context-parallel memory for Q38 and Q48: how the linear K/V growth and FlashAttention's
O(N) working set split across P devices (attnlab.distributed, docs/conventions.md §8).

Live and cheap: real K/V tensors sharded with `attnlab.distributed.shard` (contiguous and
zigzag) must hold N/P tokens' bytes per rank and add up to the whole; the per-device
formula for a 1M-token Llama-3-8B-like context. Measured on a run of spawned gloo ranks
(seconds each, so the default grill quotes the committed run in experiments/results/ and
`--full` remeasures): each rank's K/V bytes and peak attention memory against the same
ring on one rank.
"""
from __future__ import annotations

import torch

from ...distributed import shard
from ...distributed.memory import paper_memory_per_device, per_rank_memory
from ..registry import Evidence, EvidenceContext
from ._committed import committed

MIB, GIB = 2 ** 20, 2 ** 30


def _shard_bytes(n: int, world: int, layout: str, kv_heads: int = 8, head_dim: int = 128):
    """Bytes of K+V each rank holds for an n-token bf16 sequence, from real shards."""
    k = torch.zeros(1, kv_heads, n, head_dim, dtype=torch.bfloat16)  # (B, Hkv, N, D)
    per_rank = []
    for r in range(world):
        s = shard(k, world, r, layout)  # (B, Hkv, ~N/P, D)
        per_rank.append(2 * s.numel() * s.element_size())  # K and V
    return per_rank, 2 * k.numel() * k.element_size()


def add_context_parallel_memory(ev: Evidence, ctx: EvidenceContext, *, focus: str) -> str:
    """Add the context-parallel lines to `ev`; returns a sentence for the key figure.
    `focus` is "kv" (Q38: the linear cache) or "activations" (Q48: FlashAttention's O(N))."""
    n = 4099  # not divisible by any P below: shards differ by at most one chunk
    for world in (2, 4, 8):
        for layout in ("contiguous", "zigzag"):
            per_rank, whole = _shard_bytes(n, world, layout)
            tok = whole // n
            ev.check(f"{layout} shards over P={world} hold the whole K/V once, "
                     f"≤ ⌈N/P⌉ (+1 per zigzag chunk) tokens each",
                     sum(per_rank) == whole
                     and max(per_rank) <= (-(-n // world) + (layout == "zigzag")) * tok
                     and min(per_rank) >= (n // world - (layout == "zigzag")) * tok,
                     f"max {max(per_rank)} B, whole/P {whole / world:.0f} B")
    paper = {p: paper_memory_per_device(2 ** 20, p) for p in (1, 8, 64)}
    ev.measurements["1M tokens, Llama-3-8B-like heads (32 layers, Hkv 8, D 128, bf16): K/V "
                    "cache per device for P = 1 / 8 / 64 (GiB)"] = tuple(
        round(paper[p]["kv_cache"] / GIB, 2) for p in (1, 8, 64))
    ev.measurements["same: one layer's attention working set (q, out, lse) per device "
                    "for P = 1 / 8 / 64 (MiB)"] = tuple(
        round(paper[p]["attention_io"] / MIB, 1) for p in (1, 8, 64))

    runs = []
    if ctx.full:
        r = per_rank_memory(2048, 2)  # spawns 2 ranks, then 1: seconds
        runs.append({"world": r.world, "n_tokens": r.n_tokens,
                     "kv_bytes_per_rank": r.kv_bytes_per_rank,
                     "peak_bytes_per_rank": r.peak_bytes_per_rank,
                     "one_rank_peak_bytes": r.one_rank_peak_bytes,
                     "single_kv_bytes": r.single_kv_bytes, "source": "measured now"})
    else:
        saved = committed("context_parallel_memory")
        if saved is not None:
            runs = [dict(x, source=f"committed run ({saved['command']})")
                    for x in saved["runs"]]
    sentence = ""
    for x in runs:
        P, N = x["world"], x["n_tokens"]
        kv, peak = max(x["kv_bytes_per_rank"]), max(x["peak_bytes_per_rank"])
        one = x["one_rank_peak_bytes"]
        ev.measurements[f"ring, causal, P={P}, N={N}, fwd+bwd fp32 ({x['source']}): K/V per "
                        "rank / whole (MiB)"] = (round(kv / MIB, 2),
                                                 round(x["single_kv_bytes"] / MIB, 2))
        ev.measurements[f"ring, P={P}, N={N}: peak attention memory per rank / same ring on "
                        "one rank (MiB)"] = (round(peak / MIB, 1), round(one / MIB, 1))
        if x["source"] == "measured now":
            ev.check(f"P={P}: each rank holds 1/P of the K/V and peaks below the one-rank run",
                     kv * P == x["single_kv_bytes"] and peak < one,
                     f"{kv / MIB:.2f} of {x['single_kv_bytes'] / MIB:.2f} MiB; "
                     f"peak {peak / MIB:.1f} vs {one / MIB:.1f} MiB")
        if focus == "kv":
            sentence = (f"ring over P={P}: K/V per rank {kv / MIB:.2f} of "
                        f"{x['single_kv_bytes'] / MIB:.2f} MiB")
        else:
            sentence = (f"ring over P={P}: peak attention memory per rank {peak / MIB:.1f} "
                        f"MiB vs {one / MIB:.1f} MiB on one rank")
    return sentence
