"""Prefill + decode demo of context-parallel attention on CPU with gloo.

    torchrun --nproc-per-node 4 -m attnlab.distributed.demo [--tokens 4096] [--window W]

Every rank builds the same random problem (seeded), keeps its shard, and runs each method
that fits the world size (ring, zigzag, Ulysses, hybrid at 4 ranks) forward + backward,
then prefills a sequence-sharded KV cache and decodes a few tokens. Rank 0 prints, per
rank: the work (visible query–key pairs of its queries), bytes sent, time, and the max
error of its output rows against one-process attention of those rows over all keys.
"""
from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist

from .. import masks as M
from ..ops.softmax import attention
from .api import context_parallel_attention
from .comm import Comm, record_comm
from .decode import ShardedKVCache, sharded_decode
from .plan import visible_pairs
from .sharding import shard_positions
from .ulysses import head_groups


def _methods(world: int, heads: int, kv_heads: int) -> list[tuple[str, int | None]]:
    out = [("ring", None), ("zigzag", None)]
    try:
        head_groups(heads, kv_heads, world)
        out.append(("ulysses", None))
    except ValueError:
        pass
    if world % 2 == 0 and world >= 4:
        out.append(("hybrid", 2))
    return out


def _work(method, mask, n, world, rank, heads, pu) -> int:
    """Visible query–key pairs (times heads) this rank computes."""
    keys = torch.arange(n)
    if method == "ulysses":  # all positions, heads/P
        return visible_pairs(mask, keys, keys, block=128) * heads // world
    if method == "hybrid":  # its Ulysses group's positions, heads/Pu
        grp = rank // pu
        pos = torch.cat([shard_positions(n, world, r) for r in range(grp * pu, (grp + 1) * pu)])
        return visible_pairs(mask, pos, keys, block=128) * heads // pu
    layout = "zigzag" if method == "zigzag" else "contiguous"
    return visible_pairs(mask, shard_positions(n, world, rank, layout), keys, block=128) * heads


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--window", type=int, default=None, help="sliding window W (default causal)")
    ap.add_argument("--decode-steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    n, H, Hkv, D = args.tokens, args.heads, args.kv_heads, args.head_dim
    mask = M.causal() if args.window is None else M.sliding_window(args.window)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, H, n + args.decode_steps, D, generator=g)
    k = torch.randn(1, Hkv, n + args.decode_steps, D, generator=g)
    v = torch.randn(1, Hkv, n + args.decode_steps, D, generator=g)
    rows = []
    for method, pu in _methods(world, H, Hkv):
        layout = "zigzag" if method == "zigzag" else "contiguous"
        pos = shard_positions(n, world, rank, layout)
        ql, kl, vl = (x[:, :, :n].index_select(2, pos).clone().requires_grad_() for x in (q, k, v))
        for _ in range(2):  # the second run is reported (the first warms up)
            dist.barrier()
            with record_comm() as stats:
                t0 = time.perf_counter()
                out = context_parallel_attention(ql, kl, vl, mask=mask, method=method,
                                                 ulysses_size=pu, q_block=128, kv_block=128)
                t1 = time.perf_counter()
                out.backward(torch.ones_like(out))
                t2 = time.perf_counter()
        want = attention(q[:, :, :n].index_select(2, pos), k[:, :, :n], v[:, :, :n], mask=mask,
                         backend="flash", q_pos=pos, kv_pos=torch.arange(n))
        err = float((out.detach() - want).abs().max())
        rows.append((method, rank, _work(method, mask, n, world, rank, H, pu), stats.total(),
                     t1 - t0, t2 - t1, err))
    # decode: the cache holds the prefill shard of this rank, new tokens go round the ranks
    pos = shard_positions(n, world, rank)
    cache = ShardedKVCache(Comm(), 1, Hkv, D, -(-(n + args.decode_steps) // world) + 1)
    cache.prefill(k[:, :, :n].index_select(2, pos), v[:, :, :n].index_select(2, pos), pos)
    with record_comm() as stats:
        t0 = time.perf_counter()
        err = 0.0
        for t in range(n, n + args.decode_steps):
            cache.append(k[:, :, t:t + 1], v[:, :, t:t + 1], t)
            o, _ = sharded_decode(q[:, :, t:t + 1], cache, mask=mask, q_pos=torch.tensor([t]))
            ref = attention(q[:, :, t:t + 1], k[:, :, :t + 1], v[:, :, :t + 1], mask=mask,
                            q_pos=torch.tensor([t]))
            err = max(err, float((o - ref).abs().max()))
        dt = (time.perf_counter() - t0) / args.decode_steps
    rows.append(("decode", rank, cache.seq_len, stats.total(), dt, 0.0, err))
    everything = [None] * world
    dist.all_gather_object(everything, rows)
    if rank == 0:
        print(f"context-parallel attention on {world} gloo ranks x {args.threads} thread(s): "
              f"N={n}, Hq={H}, Hkv={Hkv}, D={D}, mask={mask.name}")
        print(f"{'method':8} {'rank':>4} {'work (q-k pairs)':>17} {'bytes sent':>12} "
              f"{'forward s':>10} {'backward s':>10} {'max err':>9}")
        for method, *_ in _methods(world, H, Hkv) + [("decode", None)]:
            for rs in everything:
                for row in rs:
                    if row[0] == method:
                        m, r, w, b, tf, tb, e = row
                        label = f"{w} slots" if m == "decode" else str(w)
                        tfs = f"{tf * 1e3:.2f} ms/tok" if m == "decode" else f"{tf:.3f}"
                        print(f"{m:8} {r:>4} {label:>17} {b:>12} {tfs:>10} {tb:>10.3f} {e:>9.1e}")
    dist.barrier()
    if os.environ.get("TORCHELASTIC_RUN_ID") is not None or "RANK" in os.environ:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
