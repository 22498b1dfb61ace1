"""Reformer LSH attention, chunked (Kitaev, Kaiser & Levskaya 2020, "Reformer", §2–3).

Per hash round: hash the shared query/key vectors with a random rotation, stable-sort the
tokens by (bucket, position), cut the sorted order into chunks of `chunk_size` and let
each chunk attend to itself and the chunk before it. Keys are the unit-normalised queries
(shared-QK); a token attends to itself only when nothing else is visible to it. Rounds are
combined exactly with `merge_many` through their log-sum-exp.

Duplicates: a key seen by a query in several rounds would be counted several times by a
plain lse merge. With `dedup=True` (default, the paper's §2 correction) every score is
lowered by log(number of rounds in which the pair is co-chunked), so the merged result is
exactly softmax over the *union* of visible keys, each counted once
(`reference.lsh_attention_reference`). `dedup=False` is the cheaper multiset merge.

Any N: the sequence is padded internally to a multiple of `chunk_size` (padding tokens
sort last and are never visible). Cost O(n_hashes · N · chunk · D + n_hashes · N log N)
time for attention and sorting, plus O(n_hashes² · N · chunk) for dedup and
O(n_hashes · N · D · n_buckets/2) for hashing (see `hashing`: with n_buckets ∝ N that term
is N²·D/(2·chunk) per round); O(n_hashes · N · (chunk + D)) memory.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..._checks import check_positive_int, check_tensor
from ..softmax.merge import merge_many
from .hashing import (
    Rotations,
    check_n_buckets,
    check_rotations,
    default_n_buckets,
    hash_buckets,
    random_rotations,
    rotation_parts,
    total_buckets,
)
from .reference import normalized_keys


def _check_inputs(qk, v) -> None:
    check_tensor("qk", qk, 4)
    check_tensor("v", v, 4)
    if v.shape[:3] != qk.shape[:3]:
        raise ValueError(f"v shape {tuple(v.shape)} must match qk {tuple(qk.shape)} in "
                         "(B, H, N); shared-QK attention has one key per query")
    if qk.dtype != v.dtype or qk.device != v.device:
        raise TypeError(f"qk ({qk.dtype}, {qk.device}) and v ({v.dtype}, {v.device}) must "
                        "share dtype and device")
    if qk.shape[2] == 0:
        raise ValueError(f"qk must hold at least one token, got shape {tuple(qk.shape)}")


def lsh_attention(qk: torch.Tensor, v: torch.Tensor, *, n_hashes: int = 4,
                  chunk_size: int = 64, n_buckets: int | tuple[int, ...] | None = None,
                  causal: bool = False, rotations: Rotations | None = None, seed: int = 0,
                  scale: float | None = None, dedup: bool = True, return_lse: bool = False):
    """Shared-QK LSH attention. qk (B, H, N, D), v (B, H, N, Dv) -> out (B, H, N, Dv).

    `rotations` (n_hashes, D, n_buckets // 2) overrides `n_hashes`, `n_buckets`, `seed`;
    by default they come from `random_rotations(D, n_hashes, n_buckets, seed)` with
    `n_buckets = default_n_buckets(N, chunk_size)`. A tuple `n_buckets = (n1, n2)` (or a
    tuple of rotations) hashes with factorised rotations: n1·n2 buckets for the hashing
    cost of n1 + n2. With `return_lse`, also returns lse
    (B, H, N) float32 over the union of visible keys.
    """
    _check_inputs(qk, v)
    check_positive_int("chunk_size", chunk_size)
    B, H, N, D = qk.shape
    if rotations is None:
        check_positive_int("n_hashes", n_hashes)
        n_buckets = default_n_buckets(N, chunk_size) if n_buckets is None else \
            check_n_buckets(n_buckets)
        rotations = random_rotations(D, n_hashes, n_buckets, seed, device=qk.device)
    else:
        check_rotations(rotations, D)
    R = rotation_parts(rotations)[0].shape[0]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)

    c = chunk_size
    nc = -(-N // c)
    Np = nc * c
    buckets = hash_buckets(qk, rotations)  # (B, H, R, N)
    if Np != N:  # padding tokens get bucket n_buckets: they sort after every real token
        buckets = F.pad(buckets, (0, Np - N), value=total_buckets(rotations))
    pos = torch.arange(Np, device=qk.device)
    order = torch.argsort(buckets * Np + pos, dim=-1)  # (B, H, R, Np), stable by construction
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, pos.expand_as(order))  # rank[token] = its place in the order
    chunk_of = (rank // c).float()  # (B, H, R, Np): chunk of each token in each round

    qf = F.pad(qk.float(), (0, 0, 0, Np - N))  # (B, H, Np, D)
    kf = F.pad(normalized_keys(qk), (0, 0, 0, Np - N))  # (B, H, Np, D)
    vf = F.pad(v.float(), (0, 0, 0, Np - N))  # (B, H, Np, Dv)
    Dv = v.shape[-1]

    def by_order(x: torch.Tensor) -> torch.Tensor:  # (B, H, Np, d) -> (B, H, R, nc, c, d)
        d = x.shape[-1]
        idx = order.unsqueeze(-1).expand(B, H, R, Np, d)
        return x.unsqueeze(2).expand(B, H, R, Np, d).gather(3, idx).view(B, H, R, nc, c, d)

    sq, sk, sv = by_order(qf), by_order(kf), by_order(vf)  # sorted, chunked
    spos = order.view(B, H, R, nc, c)  # original position of each sorted token
    # chunk of every sorted token in every round: (B, H, R, nc, c, R)
    scq = chunk_of.transpose(2, 3).unsqueeze(2).expand(B, H, R, Np, R) \
        .gather(3, order.unsqueeze(-1).expand(B, H, R, Np, R)).view(B, H, R, nc, c, R)
    alone = _alone(spos, N, causal)  # (B, H, R, nc, c) -> (B, H, Np) via order
    alone_tok = torch.ones(B, H, Np, dtype=torch.bool, device=qk.device)
    for r in range(R):  # a token is alone only if it sees nobody else in any round
        alone_tok &= torch.empty_like(alone_tok).scatter_(-1, order[:, :, r],
                                                         alone[:, :, r].reshape(B, H, Np))
    salone = alone_tok.gather(-1, order.view(B, H, R * Np)).view(B, H, R, nc, c)

    tile = max(1, (1 << 18) // max(1, B * H * c * 2 * c))  # chunks per tile (~1 MiB scores)
    outs, lses = [], []
    for r in range(R):
        rnd = _Round(sq[:, :, r], sk[:, :, r], sv[:, :, r], spos[:, :, r], scq[:, :, r],
                     salone[:, :, r], r, N, Np, scale, causal, dedup and R > 1)
        o_r, l_r = [], []
        for n0 in range(0, nc, tile):
            o_t, l_t = _tile(rnd, n0, min(nc, n0 + tile))
            o_r.append(o_t)
            l_r.append(l_t)
        o = torch.cat(o_r, dim=2).view(B, H, Np, Dv)  # sorted order of round r
        lse = torch.cat(l_r, dim=2).view(B, H, Np)
        outs.append(o.gather(2, rank[:, :, r].unsqueeze(-1).expand(B, H, Np, Dv)))
        lses.append(lse.gather(2, rank[:, :, r]))  # back to original order
    out, lse = merge_many(outs, lses)  # (B, H, Np, Dv), (B, H, Np)
    out = out[:, :, :N].to(v.dtype)
    lse = lse[:, :, :N]
    return (out, lse) if return_lse else out


def _prev(x: torch.Tensor, n0: int, n1: int, fill) -> torch.Tensor:
    """Chunks n0-1 .. n1-2 of x (…, nc, c, ·); chunk 0's predecessor is `fill`."""
    if n0 > 0:
        return x[:, :, n0 - 1:n1 - 1]
    pad = torch.full_like(x[:, :, :1], fill)
    return torch.cat([pad, x[:, :, 0:n1 - 1]], dim=2)


def _alone(spos: torch.Tensor, N: int, causal: bool) -> torch.Tensor:
    """Per sorted token and round: True when its window (own + previous chunk) holds no
    other visible key. Causal: no valid key at an earlier position; else: < 2 valid keys."""
    valid = spos < N  # (B, H, R, nc, c)
    if causal:
        big = torch.iinfo(spos.dtype).max
        cmin = torch.where(valid, spos, torch.full_like(spos, big)).amin(-1)  # (B, H, R, nc)
        prev = torch.cat([torch.full_like(cmin[..., :1], big), cmin[..., :-1]], dim=-1)
        return torch.minimum(cmin, prev).unsqueeze(-1) >= spos
    cnt = valid.sum(-1)  # (B, H, R, nc)
    prev = torch.cat([torch.zeros_like(cnt[..., :1]), cnt[..., :-1]], dim=-1)
    return (cnt + prev < 2).unsqueeze(-1).expand_as(spos)


class _Round(NamedTuple):
    """One hash round, sorted by (bucket, position) and cut into nc chunks of c tokens."""

    q: torch.Tensor  # (B, H, nc, c, D) queries
    k: torch.Tensor  # (B, H, nc, c, D) unit keys
    v: torch.Tensor  # (B, H, nc, c, Dv)
    pos: torch.Tensor  # (B, H, nc, c) original position of each sorted token
    chunks: torch.Tensor  # (B, H, nc, c, R) chunk of each sorted token in every round
    alone: torch.Tensor  # (B, H, nc, c) token sees nobody else in any round
    index: int  # this round's index r
    n: int  # real tokens N
    n_padded: int  # N rounded up to whole chunks (also the "invalid position" marker)
    scale: float
    causal: bool
    dedup: bool


def _tile(rnd: _Round, n0: int, n1: int):
    """Attention of sorted chunks [n0, n1) of one round to themselves and their
    predecessors. Returns o (B, H, t, c, Dv) and lse (B, H, t, c)."""
    q = rnd.q[:, :, n0:n1]  # (B, H, t, c, D)
    k = torch.cat([rnd.k[:, :, n0:n1], _prev(rnd.k, n0, n1, 0.0)], dim=3)  # (B, H, t, 2c, D)
    v = torch.cat([rnd.v[:, :, n0:n1], _prev(rnd.v, n0, n1, 0.0)], dim=3)  # (B, H, t, 2c, Dv)
    qp = rnd.pos[:, :, n0:n1]  # (B, H, t, c)
    kp = torch.cat([qp, _prev(rnd.pos, n0, n1, rnd.n_padded)], dim=3)  # (B, H, t, 2c)
    qpe, kpe = qp.unsqueeze(-1), kp.unsqueeze(-2)  # (…, c, 1), (…, 1, 2c)
    is_self = qpe == kpe
    allowed = (kpe < rnd.n) & ~is_self  # (B, H, t, c, 2c)
    if rnd.causal:
        allowed &= kpe < qpe
    allowed |= is_self & rnd.alone[:, :, n0:n1].unsqueeze(-1)
    scores = torch.einsum("bhtqd,bhtkd->bhtqk", q, k) * rnd.scale  # (B, H, t, c, 2c)
    if rnd.dedup:
        # rounds in which the key sits in the query's chunk or the one before it; this
        # round always counts, so start at 1 and skip it
        scq = rnd.chunks
        cq = scq[:, :, n0:n1] - 0.5  # (B, H, t, c, R)
        ck = torch.cat([scq[:, :, n0:n1], _prev(scq, n0, n1, -1e9)], dim=3)  # (B, H, t, 2c, R)
        count = torch.ones_like(scores)
        for r2 in range(scq.shape[-1]):
            if r2 != rnd.index:
                d = (cq[..., r2].unsqueeze(-1) - ck[..., r2].unsqueeze(-2)).abs_()
                count += d < 1.0  # |Δchunk − 0.5| < 1  <=>  Δchunk in {0, 1}
        scores = scores - torch.log(count)
    scores = scores.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # (B, H, t, c); -inf for padding queries
    safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    p = torch.exp(scores - safe.unsqueeze(-1))
    o = torch.einsum("bhtqk,bhtkd->bhtqd", p, v)  # (B, H, t, c, Dv)
    return o, lse
