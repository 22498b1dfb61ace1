"""Continuous-batching generation over a paged KV cache (Orca-style iteration-level
scheduling, Yu et al. OSDI 2022; vLLM's block manager and preemption, Kwon et al. 2023).

Every `step()` builds one ragged batch under a token budget:
1. running sequences first, oldest first: one decode token each, or their next prefill
   chunk. When the pool holds all of them (the common step), one batched reserve
   (`ServingCache.reserve_many`, token ids on every ask) takes their slots; otherwise they
   are reserved one by one, and when the pool cannot hold a sequence's new tokens, the
   youngest running sequence is preempted (possibly the one asking) until it fits:
   - "swap": its blocks are copied to a host-side store and freed; it resumes by copying
     them back into fresh blocks;
   - "recompute": its blocks are freed; it resumes by prefilling prompt + generated
     tokens again (prefix caching may find some of its old blocks still intact).
   Either way, no other sequence's blocks are touched, and with greedy decoding the
   continuation is token-for-token the uninterrupted one.
2. if nothing was preempted: swapped sequences come back (oldest first); once none is
   left swapped, waiting requests are admitted with a first prefill chunk, while blocks,
   budget and `max_running` allow.
The model's own forward runs the step (`TinyLM.forward(tokens, ctx)`, with an
`AttentionContext` whose cache is the step's per-layer views, `pool.ServingCache.step`):
one call for every sequence with one token this step (the decode batch, each row at its
own position), one call per longer prefill chunk. A sequence whose chunk reaches its last
token gets its next token (greedy), and stops on EOS or max tokens.

Memory (`pool.ServingCache`): one paged pool per layer group (full attention, each
window size, MLA's latent) and state slots for recurrent layers, so every mixer kind of
the model zoo is servable; windowed groups hold O(W) blocks per sequence.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .._checks import check_positive_int
from ..cache.block_allocator import PoolExhaustedError
from ..cache.context import AttentionContext
from ..cache.paged_step import long_tensor
from ..models.lm import TinyLM
from .pool import ServingCache

PREEMPTION_MODES = ("swap", "recompute")


@dataclass
class EngineConfig:
    """num_blocks: pool size; max_batch_tokens: tokens per step (prefill + decode);
    prefill_chunk: most prompt tokens one sequence prefills per step."""

    num_blocks: int
    block_size: int = 16  # vLLM default (docs/sources.md, PagedAttention)
    max_batch_tokens: int = 256
    max_running: int = 64
    prefill_chunk: int = 128
    preemption: str = "swap"
    prefix_caching: bool = True

    def __post_init__(self) -> None:
        for name in ("num_blocks", "block_size", "max_batch_tokens", "max_running",
                     "prefill_chunk"):
            check_positive_int(name, getattr(self, name))
        if self.preemption not in PREEMPTION_MODES:
            raise ValueError(f"preemption ({self.preemption!r}) must be one of "
                             f"{list(PREEMPTION_MODES)}")


@dataclass
class Request:
    prompt: list[int]
    max_new_tokens: int
    eos_id: int | None = None
    arrival_step: int = 0  # the step at which the request becomes visible


@dataclass
class Result:
    request_id: int
    prompt: list[int]
    tokens: list[int]  # generated tokens (EOS included when it stopped the request)
    finish_reason: str  # "eos" or "length"
    preemptions: int


@dataclass(eq=False)  # identity: `in running` / `remove` must not compare token lists
class _Seq:
    rid: int
    req: Request
    generated: list[int] = field(default_factory=list)
    computed: int = 0  # tokens whose K/V are in the pool
    swapped: dict | None = None
    preemptions: int = 0

    @property
    def all_tokens(self) -> list[int]:
        return self.req.prompt + self.generated

    @property
    def n_tokens(self) -> int:
        return len(self.req.prompt) + len(self.generated)

    def tokens(self, a: int, b: int) -> list[int]:
        """Token ids of positions a..b−1 (without copying the whole history)."""
        p = self.req.prompt
        if b <= len(p):
            return p[a:b]
        return p[a:] + self.generated[max(0, a - len(p)):b - len(p)]


@dataclass
class EngineStats:
    steps: int = 0
    preemptions: int = 0
    swapped_bytes: int = 0
    recomputed_tokens: int = 0
    peak_blocks: int = 0
    prefix_hit_tokens: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    tokens: int = 0  # tokens run through the model (prefill + decode)
    generated: int = 0
    peak_used_nbytes: int = 0  # KV blocks + state slots in use, at the fullest step


class Engine:
    """`Engine(model, EngineConfig(num_blocks=...))`; `add_request`, `step`, `run`."""

    def __init__(self, model: TinyLM, cfg: EngineConfig):
        if not isinstance(cfg, EngineConfig):
            raise TypeError(f"cfg must be an EngineConfig, got {type(cfg).__name__}")
        if not isinstance(model, TinyLM):
            raise TypeError(f"model must be a TinyLM, got {type(model).__name__}")
        self.model, self.cfg = model.eval(), cfg
        self.cache = ServingCache(model, cfg.num_blocks, cfg.block_size,
                                  prefix_caching=cfg.prefix_caching,
                                  max_sequences=cfg.max_running)
        self.waiting: list[_Seq] = []  # arrived or future requests, FCFS
        self.running: list[_Seq] = []  # resident in the pool, oldest first
        self.swapped: list[_Seq] = []  # preempted, oldest first
        self.results: dict[int, Result] = {}
        self.stats = EngineStats()
        self._next_id = 0

    # --- requests --------------------------------------------------------------------
    def add_request(self, req: Request) -> int:
        if not isinstance(req, Request):
            raise TypeError(f"req must be a Request, got {type(req).__name__}")
        if not req.prompt:
            raise ValueError("req.prompt must hold at least one token")
        check_positive_int("max_new_tokens", req.max_new_tokens)
        vocab = self.model.cfg.vocab_size
        if min(req.prompt) < 0 or max(req.prompt) >= vocab:
            raise ValueError(f"req.prompt tokens must lie in [0, {vocab})")
        total = len(req.prompt) + req.max_new_tokens
        if total > self.model.cfg.max_seq_len:
            raise ValueError(f"prompt + max_new_tokens ({total}) exceeds the model's "
                             f"max_seq_len ({self.model.cfg.max_seq_len})")
        need = self.cache.blocks_for(total, self.cfg.prefill_chunk)
        if need > self.cfg.num_blocks:
            raise ValueError(f"request needs up to {need} blocks but the pool has num_blocks "
                             f"({self.cfg.num_blocks})")
        rid = self._next_id
        self._next_id += 1
        self.waiting.append(_Seq(rid, req))
        return rid

    @property
    def done(self) -> bool:
        return not (self.waiting or self.running or self.swapped)

    # --- preemption ------------------------------------------------------------------
    def _preempt(self, s: _Seq) -> None:
        self.running.remove(s)
        s.preemptions += 1
        self.stats.preemptions += 1
        if self.cfg.preemption == "swap":
            s.swapped = self.cache.swap_out(s.rid)
            self.stats.swapped_bytes += self.cache.swapped_nbytes(s.swapped)
            self.swapped.append(s)
        else:
            self.cache.free(s.rid)
            self.stats.recomputed_tokens += s.computed
            s.computed = 0
            self.waiting.insert(0, s)  # first in line to come back

    def preempt(self, rid: int) -> bool:
        """Preempt running request `rid` now, with the configured mode (an operator's or a
        test's preemption; the scheduler preempts by itself when memory runs out).
        Returns False when `rid` is not running (waiting, swapped or finished)."""
        s = next((s for s in self.running if s.rid == rid), None)
        if s is None:
            return False
        self._preempt(s)
        return True

    def _fit(self, s: _Seq, n: int) -> bool:
        """Preempt the youngest running sequences until `s` can take n tokens; False if
        `s` itself had to go."""
        while not self.cache.fits(s.rid, n):
            victim = self.running[-1]
            self._preempt(victim)
            if victim is s:
                return False
        return True

    # --- scheduling ------------------------------------------------------------------
    def _schedule(self) -> list[tuple[_Seq, int, list[int], int]]:
        budget, chunk, plan, asks = self.cfg.max_batch_tokens, self.cfg.prefill_chunk, [], []
        for s in self.running:  # oldest first, within the budget
            if budget == 0:
                break
            c = s.computed
            n = min(len(s.req.prompt) + len(s.generated) - c, chunk, budget)
            toks = s.tokens(c, c + n)
            plan.append((s, n, toks, c))
            asks.append((s.rid, n, toks))
            budget -= n
        if plan:  # the common step: every running sequence fits and no one is preempted,
            # so the sequential reserves below would all succeed: one batched reserve
            try:
                self.cache.reserve_many(asks)
            except PoolExhaustedError:  # refused before any change: one by one, preempting
                plan = []
            else:
                return self._admit(plan, budget)
        budget = self.cfg.max_batch_tokens
        preempted = False
        for s in list(self.running):
            if s not in self.running or budget == 0:
                continue
            n = min(s.n_tokens - s.computed, self.cfg.prefill_chunk, budget)
            before = self.stats.preemptions
            if self._fit(s, n):
                plan.append(self._reserve(s, n))
                budget -= n
            preempted |= self.stats.preemptions != before
        if preempted:
            return plan
        return self._admit(plan, budget)

    def _admit(self, plan: list, budget: int) -> list[tuple[_Seq, int, list[int], int]]:
        """Bring swapped sequences back, then admit waiting requests, into `plan`."""
        while self.swapped and len(self.running) < self.cfg.max_running and budget > 0:
            s = self.swapped[0]
            n = min(s.n_tokens - s.computed, self.cfg.prefill_chunk, budget)
            if not self.cache.fits_swap_in(s.swapped, n):
                break
            self.swapped.pop(0)
            self.cache.swap_in(s.rid, s.swapped)
            s.swapped = None
            self.running.append(s)
            plan.append(self._reserve(s, n))
            budget -= n
        if self.swapped:  # swapped sequences come back before anyone new is admitted
            return plan
        step = self.stats.steps
        for s in list(self.waiting):
            full = len(self.running) >= self.cfg.max_running
            if s.req.arrival_step > step or budget == 0 or full:
                continue
            if not self.cache.has_sequence(s.rid):
                s.computed = self.cache.add_sequence(s.rid, s.all_tokens)  # prefix hit
            n = min(s.n_tokens - s.computed, self.cfg.prefill_chunk, budget)
            if not self.cache.fits(s.rid, n):
                self.cache.free(s.rid)  # give shared prefix blocks back; retry later
                s.computed = 0
                break
            self.waiting.remove(s)
            self.running.append(s)
            self.stats.prefix_hit_tokens += s.computed
            plan.append(self._reserve(s, n))
            budget -= n
        return plan

    def _reserve(self, s: _Seq, n: int) -> tuple[_Seq, int, list[int], int]:
        """Claim pool slots for s's next n tokens now, so later decisions see them taken."""
        toks = s.tokens(s.computed, s.computed + n)
        self.cache.reserve(s.rid, n, tokens=toks)
        return s, n, toks, s.computed

    def _forward(self, items: list[tuple[_Seq, int, list[int], int]]) -> torch.Tensor:
        """The model's own forward on a batch of sequences with n tokens each, each at its
        own position; returns the logits of each row's last token (B, vocab)."""
        dev = self.model.embed.weight.device
        n = items[0][1]
        toks = long_tensor([t for _, _, ts, _ in items for t in ts]).view(len(items), n)
        toks = toks.to(dev)  # (B, n)
        pos = long_tensor([st for _, _, _, st in items]).view(-1, 1)  # (B, 1)
        if n > 1:
            pos = pos + torch.arange(n)  # (B, n) absolute positions
        step = self.cache.step([s.rid for s, _, _, _ in items], n)
        return self.model(toks, AttentionContext(step, positions=pos))[:, -1]  # (B, vocab)

    def step(self) -> list[Result]:
        """One iteration: schedule, run the model on the batch, sample, retire finished.
        Runs without autograd (switched off for the step unless the caller already has)."""
        if torch.is_grad_enabled():
            with torch.no_grad():
                return self._step()
        return self._step()

    def _step(self) -> list[Result]:
        plan = self._schedule()
        self.stats.steps += 1
        if not plan:
            return []
        nxt: dict[int, int] = {}  # plan index -> greedy next token of its last position
        decode = [i for i, p in enumerate(plan) if p[1] == 1]
        if decode:  # every one-token sequence in one call: the decode batch
            logits = self._forward([plan[i] for i in decode])  # (B, vocab)
            nxt.update(zip(decode, logits.argmax(-1).tolist()))  # greedy, one call
        for i, p in enumerate(plan):
            if p[1] > 1:  # a prefill chunk: its own call
                nxt[i] = int(self._forward([p])[0].argmax())
        stats = self.stats
        stats.batch_sizes.append(len(plan))
        stats.tokens += sum(p[1] for p in plan)
        stats.peak_blocks = max(stats.peak_blocks, self.cache.n_owned)
        stats.peak_used_nbytes = max(stats.peak_used_nbytes, self.cache.used_nbytes)
        finished, bs = [], self.cfg.block_size
        for i, (s, n, _, c) in enumerate(plan):
            s.computed = c + n
            if (c + n) // bs != c // bs:  # a block filled: index it
                self.cache.register_full_blocks(s.rid)
            gen = s.generated
            if c + n < len(s.req.prompt) + len(gen):
                continue  # mid-prefill: no token yet
            tok = nxt[i]  # greedy
            gen.append(tok)
            stats.generated += 1
            eos = tok == s.req.eos_id
            if eos or len(gen) >= s.req.max_new_tokens:
                self.running.remove(s)
                self.cache.free(s.rid)
                res = Result(s.rid, list(s.req.prompt), list(s.generated),
                             "eos" if eos else "length", s.preemptions)
                self.results[s.rid] = res
                finished.append(res)
        return finished

    def run(self, requests: Sequence[Request] = (), max_steps: int = 1_000_000) -> list[Result]:
        """Add `requests`, step until every request finished; results in request order."""
        ids = [self.add_request(r) for r in requests]
        for _ in range(max_steps):
            if self.done:
                break
            self.step()
        else:
            raise RuntimeError(f"engine did not finish within max_steps ({max_steps})")
        return [self.results[i] for i in ids]


def generate_one(model: TinyLM, prompt: list[int], max_new_tokens: int,
                 eos_id: int | None = None) -> list[int]:
    """Greedy tokens of one request with the model's contiguous cache (the reference)."""
    from ..models.generate import generate

    out = generate(model, torch.tensor([prompt]), max_new_tokens)[0, len(prompt):].tolist()
    if eos_id is not None and eos_id in out:
        out = out[: out.index(eos_id) + 1]
    return out
