"""Cases run inside spawned gloo ranks by tests/test_distributed*.py (one spawn per world
size, every case inside it). Each case returns None (pass) or a failure message; the
parent test asserts on them, so a failing case names itself."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attnlab import masks as M
from attnlab.distributed import context_parallel_attention, record_comm, shard_positions
from attnlab.ops.softmax import attention, merge

N = 37  # not divisible by 2, 3 or 4
D, DV = 8, 6
F32 = {"atol": 1e-5, "rtol": 1e-4}


def f64_tol() -> dict:
    """float64 paths match to 1e-10 (docs/conventions.md §5) when `merge` weighs in the
    lse's dtype (§3); a merge with float32 weights limits any merged result to ~1e-7."""
    lse = torch.zeros(1, 1, dtype=torch.float64)
    o = torch.zeros(1, 1, 1, dtype=torch.float64)
    exact = merge(o, lse, o, lse)[1].dtype == torch.float64
    return {"atol": 1e-10, "rtol": 1e-10} if exact else {"atol": 1e-6, "rtol": 1e-6}


def masks(n: int, world: int) -> dict:
    shard = n // world
    doc = torch.tensor([0] * 9 + [1] * 14 + [2] * (n - 23))
    return {"causal": M.causal(), "full": None,
            "window_small": M.sliding_window(max(2, shard // 3)),  # W < a shard
            "window_large": M.sliding_window(shard + 5),  # W > a shard
            "document": M.causal() & M.document(doc)}


def extra_masks(n: int) -> dict:
    """Masks that read the head or the batch index (checked at P = 2): Ulysses must shift
    head indices, and every path must pass the batch row to the predicate."""
    per_head = M.Mask(lambda b, h, q, k: (q >= k) & ((h % 2 == 0) | (q - k < 3)),
                      "causal, odd heads window 3", uses_head=True)
    docs = torch.stack([torch.arange(n) // 10, torch.arange(n) // 17])  # (B, N) documents
    return {"per_head": per_head, "per_batch_document": M.causal() & M.document(docs)}


def problem(hq: int, hkv: int, dtype=torch.float32, n: int = N, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, hq, n, D, generator=g, dtype=torch.float64).to(dtype)
    k = torch.randn(2, hkv, n, D, generator=g, dtype=torch.float64).to(dtype)
    v = torch.randn(2, hkv, n, DV, generator=g, dtype=torch.float64).to(dtype)
    do = torch.randn(2, hq, n, DV, generator=g, dtype=torch.float64).to(dtype)
    return q, k, v, do


def check(name: str, got, want, tol) -> str | None:
    try:
        torch.testing.assert_close(got, want.to(got.dtype), **tol)
    except AssertionError as exc:
        return f"{name}: {str(exc).splitlines()[0]} {str(exc).splitlines()[-1]}"
    return None


def exact_case(rank, world, method, mask, hq=4, hkv=2, dtype=torch.float32, pu=None):
    """Forward out, lse and grads of q, k, v of this rank's shard vs the single-process
    reference (backend="reference") on the whole sequence."""
    q, k, v, do = problem(hq, hkv, dtype)
    layout = "zigzag" if method == "zigzag" else "contiguous"
    pos = shard_positions(N, world, rank, layout)
    ql, kl, vl = (x.index_select(2, pos).clone().requires_grad_() for x in (q, k, v))
    out, lse = context_parallel_attention(ql, kl, vl, mask=mask, method=method,
                                          return_lse=True, ulysses_size=pu, q_block=8,
                                          kv_block=8)
    out.backward(do.index_select(2, pos))
    qf, kf, vf = (x.clone().requires_grad_() for x in (q, k, v))
    ro, rl = attention(qf, kf, vf, mask=mask, backend="reference", return_lse=True)
    ro.backward(do)
    tol = F32 if dtype == torch.float32 else f64_tol()
    lse_tol = tol if rl.dtype == lse.dtype else F32  # the reference's lse may be float32
    for nm, got, want, t in [("out", out, ro, tol), ("lse", lse, rl, lse_tol),
                             ("dq", ql.grad, qf.grad, tol), ("dk", kl.grad, kf.grad, tol),
                             ("dv", vl.grad, vf.grad, tol)]:
        bad = check(nm, got, want.index_select(2, pos), t)
        if bad:
            return bad
    return None


def exactness_suite(rank, world, specs) -> dict:
    """specs: list of (method, hq, hkv, dtype, pu); every mask of `masks` for each."""
    res = {}
    for method, hq, hkv, dtype, pu in specs:
        cases = dict(masks(N, world), **(extra_masks(N) if world == 2 else {}))
        for mname, mask in cases.items():
            key = f"{method}-P{world}-Hq{hq}-Hkv{hkv}-{str(dtype)[6:]}-{mname}"
            try:
                res[key] = exact_case(rank, world, method, mask, hq, hkv, dtype, pu)
            except Exception as exc:  # noqa: BLE001 — a failure inside a case is its result
                res[key] = f"{type(exc).__name__}: {exc}"
    return res


def comm_case(rank, world, method, mask, hq=4, hkv=2, backward=False, pu=None):
    """Bytes this rank sent, per kind, for one call (and its backward)."""
    q, k, v, do = problem(hq, hkv)
    layout = "zigzag" if method == "zigzag" else "contiguous"
    pos = shard_positions(N, world, rank, layout)
    ql, kl, vl = (x.index_select(2, pos).clone().requires_grad_(backward) for x in (q, k, v))
    with record_comm() as stats:
        out = context_parallel_attention(ql, kl, vl, mask=mask, method=method, ulysses_size=pu,
                                         q_block=8, kv_block=8)
        if backward:
            out.backward(do.index_select(2, pos))
    return dict(stats.bytes_sent)


def mismatch_case(rank, world, what: str) -> str:
    """One rank differs in `what`; every rank must raise ValueError up front."""
    q, k, v, _ = problem(4, 2)
    pos = shard_positions(N, world, rank)
    ql, kl, vl = (x.index_select(2, pos) for x in (q, k, v))
    method, mask = "ring", M.causal()
    if rank == world - 1:
        if what == "shape":
            ql = ql[..., :4]
            kl = kl[..., :4]
        elif what == "method":
            method = "ulysses"
        elif what == "mask":
            mask = M.sliding_window(3)
        elif what == "same_mask_other_name":  # equal layouts: must NOT raise
            mask = M.sliding_window(N + 10)
    try:
        context_parallel_attention(ql, kl, vl, mask=mask, method=method,
                                   layout="contiguous", q_block=8, kv_block=8)
    except ValueError as exc:
        return f"ValueError: {exc}"
    return "ok"


def divisibility_case(rank, world, hq, hkv) -> str:
    q, k, v, _ = problem(hq, hkv)
    pos = shard_positions(N, world, rank)
    try:
        context_parallel_attention(*(x.index_select(2, pos) for x in (q, k, v)),
                                   mask=M.causal(), method="ulysses")
    except ValueError as exc:
        return f"ValueError: {exc}"
    return "ok"


class InjectedFault(RuntimeError):
    pass


def fault_case(rank, world, bad_rank: int, timeout_s: float) -> str:
    """Two training-like iterations (forward + backward); in the first, `bad_rank` raises
    inside the backward ring (step 1) and drops out of the group (its process group is
    destroyed, as when a process dies). Every rank reports how its run ended: a rank that
    already had every block it needed finishes that call and fails at its next one."""
    import torch.distributed as dist

    q, k, v, do = problem(4, 2)
    pos = shard_positions(N, world, rank)
    ql, kl, vl = (x.index_select(2, pos).clone().requires_grad_() for x in (q, k, v))

    def hook(phase, step):
        if rank == bad_rank and phase == "backward" and step == 1:
            raise InjectedFault(f"rank {rank}: injected failure at backward ring step {step}")

    try:
        for _ in range(2):
            out = context_parallel_attention(ql, kl, vl, mask=M.causal(), method="ring",
                                             q_block=8, kv_block=8, step_hook=hook,
                                             timeout_s=timeout_s)
            out.backward(do.index_select(2, pos))
    except Exception as exc:  # noqa: BLE001 — how each rank's run ended is the result
        if rank == bad_rank:
            dist.destroy_process_group()
        return f"{type(exc).__name__}: {exc}"
    return "ok"


def suite(rank, world, specs, comm_specs, extra) -> dict:
    """Everything one world size checks, in one spawn. `extra`: names of the optional
    parts to run (mismatch, divisibility, fault)."""
    res = {"exact": exactness_suite(rank, world, specs), "comm": {}}
    for key, (method, mname, hq, hkv, backward, pu) in comm_specs.items():
        res["comm"][key] = comm_case(rank, world, method, masks(N, world)[mname], hq, hkv,
                                     backward, pu)
    if "mismatch" in extra:
        res["mismatch"] = {w: mismatch_case(rank, world, w)
                           for w in ("shape", "method", "mask", "same_mask_other_name")}
    if "decode" in extra:
        res["decode"] = {m: decode_case(rank, world, m) for m in ("causal", "window")}
    if "lm" in extra:
        res["lm"] = {m: lm_case(rank, world, m, pu=2 if m == "hybrid" else None)
                     for m in extra["lm"]}
    if "memory" in extra:
        res["memory"] = memory_case(rank, world)
    if "divisibility" in extra:
        res["divisibility"] = divisibility_case(rank, world, 4, 2)
    if "fault" in extra:  # last: the group is broken afterwards
        res["fault"] = fault_case(rank, world, bad_rank=1, timeout_s=5.0)
    return res


def decode_case(rank, world, mname: str, steps: int = 4) -> dict:
    """Prefill a sequence-sharded cache, decode `steps` tokens; every step's (out, lse)
    against single-process attention over the whole cache. Returns the failure (or None),
    this rank's cache bytes and the bytes one step sent."""
    from attnlab.distributed import Comm
    from attnlab.distributed.decode import ShardedKVCache, sharded_decode

    mask = {"causal": M.causal(), "window": M.sliding_window(7)}[mname]
    q, k, v, _ = problem(4, 2, n=N + steps, seed=3)
    pos = shard_positions(N, world, rank)
    cap = -(-(N + steps) // world) + 1
    cache = ShardedKVCache(Comm(), 2, 2, D, cap, v_head_dim=DV)
    cache.prefill(k.index_select(2, pos), v.index_select(2, pos), pos)
    res = {"error": None, "nbytes": cache.nbytes, "capacity": cap}
    for t in range(N, N + steps):
        cache.append(k[:, :, t:t + 1], v[:, :, t:t + 1], t)
        qt = q[:, :, t:t + 1]
        with record_comm() as stats:
            out, lse = sharded_decode(qt, cache, mask=mask, q_pos=torch.tensor([t]))
        ro, rl = attention(qt, k[:, :, :t + 1], v[:, :, :t + 1], mask=mask, backend="reference",
                           return_lse=True, q_pos=torch.tensor([t]))
        res["error"] = res["error"] or check(f"out@{t}", out, ro, F32) or check(
            f"lse@{t}", lse, rl, F32)
        res["step_bytes"] = dict(stats.bytes_sent)
    res["lengths"] = list(cache.lengths)
    return res


def lm_case(rank, world, method: str, steps: int = 3, pu=None) -> dict:
    """A TinyLM trained `steps` AdamW steps with context-parallel attention layers vs the
    same model trained in one process: losses and gradients at every step."""
    from attnlab.distributed.model import ContextParallelLM
    from attnlab.layers.attention import AttentionSpec
    from attnlab.models import ModelConfig, TinyLM

    cfg = ModelConfig(vocab_size=31, d_model=32, n_layers=2,
                      mixers=AttentionSpec(n_heads=4, n_kv_heads=2), max_seq_len=64)
    n = 29
    g = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, 31, (2, n + 1), generator=g)
    x, y = tokens[:, :-1], tokens[:, 1:]
    torch.manual_seed(7)
    ref = TinyLM(cfg)
    torch.manual_seed(7)
    cp = ContextParallelLM(TinyLM(cfg), method=method, ulysses_size=pu, q_block=8, kv_block=8)
    layout = "zigzag" if method == "zigzag" else "contiguous"
    pos = shard_positions(n, world, rank, layout)
    opt_r = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    opt_c = torch.optim.AdamW(cp.parameters(), lr=1e-2)
    res = {"error": None, "losses": []}
    for step in range(steps):
        opt_r.zero_grad()
        loss_r = F.cross_entropy(ref(x).reshape(-1, 31), y.reshape(-1))
        loss_r.backward()
        opt_c.zero_grad()
        share = cp.loss(x.index_select(1, pos), y.index_select(1, pos), pos, n)
        share.backward()
        cp.sync_grads()
        loss_c = cp.global_loss(share)
        res["losses"].append((loss_r.item(), loss_c))
        res["error"] = res["error"] or check(f"loss@{step}", torch.tensor(loss_c),
                                             loss_r.detach(), F32)
        for (name, pr), pc in zip(ref.named_parameters(), cp.model.parameters()):
            res["error"] = res["error"] or check(f"grad {name}@{step}", pc.grad, pr.grad, F32)
        opt_r.step()
        opt_c.step()
    return res


def memory_case(rank, world) -> dict:
    """Measured (LiveBytes) peak bytes of a causal ring forward + backward on this rank, of
    the same ring on one rank holding the whole sequence, and of the tiled FlashAttention
    path in one process."""
    from attnlab.distributed.memory import LiveBytes
    from attnlab.ops.softmax import flash_attention

    n, d = 1024, 64  # shards much larger than one (64 x 64) tile
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, n, d, generator=g)
    k, v = torch.randn(1, 2, n, d, generator=g), torch.randn(1, 2, n, d, generator=g)

    def peak(fn, *xs):
        xs = [x.clone().requires_grad_() for x in xs]
        with LiveBytes() as m:
            o = fn(*xs)
            o.backward(torch.ones_like(o))
        return m.peak

    import torch.distributed as dist

    pos = shard_positions(n, world, rank)
    shards = [x.index_select(2, pos) for x in (q, k, v)]
    mine = peak(lambda a, b, c: context_parallel_attention(a, b, c, mask=M.causal(), q_block=64,
                                                           kv_block=64), *shards)
    solo = [dist.new_group([r]) for r in range(world)][rank]  # the same ring on one rank
    one = peak(lambda a, b, c: context_parallel_attention(a, b, c, mask=M.causal(), group=solo,
                                                          q_block=64, kv_block=64), q, k, v)
    single = peak(lambda a, b, c: flash_attention(a, b, c, mask=M.causal(), q_block=64,
                                                  kv_block=64), q, k, v)
    return {"rank_peak": mine, "one_rank_peak": one, "single_peak": single,
            "kv_bytes": shards[1].numel() * 4 + shards[2].numel() * 4,
            "full_kv_bytes": k.numel() * 4 + v.numel() * 4}
