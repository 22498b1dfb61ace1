"""Hypothesis state machine of the paged cache against a simple model: random allocate /
fork / append (with and without token ids) / batch-view steps / the engine's batched
reserve / free / preempt (swap out) / resume (swap in) with prefix caching, invariants
after every op (the tensor mirror of the block tables included).

Each stored key is a function of the token prefix it belongs to (like a real model's K),
so every check compares a sequence's gathered keys with what its tokens imply: a wrong
prefix-cache hit, a missed copy-on-write or a write into someone else's block fails.
"""
import os

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from attnlab.cache.block_allocator import PoolExhaustedError
from attnlab.cache.paged import PagedKVCache

BS, NUM_BLOCKS, VOCAB = 4, 24, 3  # tiny vocabulary: identical prefixes are common


def key_of(prefix: list[int]) -> float:
    """A deterministic 'key' for the last token of `prefix` (a polynomial hash)."""
    h = 0
    for t in prefix:
        h = (h * 7 + t + 1) % 10007
    return float(h)


class PagedMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self):
        self.c = PagedKVCache(1, 1, 1, NUM_BLOCKS, BS)
        self.tokens: dict[int, list[int]] = {}  # live sequences
        self.swapped: dict[int, tuple] = {}
        self.next_id = 0
        self.ops = 0

    def _append(self, sid: int, toks: list[int], tracked: bool = True) -> bool:
        try:
            slots = self.c.reserve(sid, len(toks), tokens=toks if tracked else None)
        except PoolExhaustedError:
            return False
        base = self.tokens[sid]
        keys = [key_of(base + toks[:i + 1]) for i in range(len(toks))]
        k = torch.tensor(keys).view(1, len(toks), 1)  # (Hkv, T, D)
        self.c.write(0, slots, k, -k)
        base.extend(toks)
        self.c.register_full_blocks(sid)
        return True

    @rule(toks=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=14),
          copy=st.booleans())
    def add(self, toks, copy):
        if copy and self.tokens:  # reuse a live prompt: exercises prefix hits
            toks = list(next(iter(self.tokens.values()))) + toks[:2]
        sid, self.next_id = self.next_id, self.next_id + 1
        hit = self.c.add_sequence(sid, toks)
        assert hit % BS == 0 and hit < len(toks)
        self.tokens[sid] = list(toks[:hit])
        if not self._append(sid, toks[hit:]):
            self.c.free(sid)  # refused: give the shared prefix back
            del self.tokens[sid]

    @precondition(lambda self: self.tokens)
    @rule(pick=st.integers(0, 10 ** 6),
          toks=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=6))
    def append(self, pick, toks):
        sid = sorted(self.tokens)[pick % len(self.tokens)]
        self._append(sid, toks)

    @precondition(lambda self: self.tokens)
    @rule(pick=st.integers(0, 10 ** 6),
          toks=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=6))
    def append_untracked(self, pick, toks):
        """The cache is not told the token ids (as a batch view's update does): it must
        stop sharing this sequence's later blocks, never misalign them."""
        sid = sorted(self.tokens)[pick % len(self.tokens)]
        self._append(sid, toks, tracked=False)

    @precondition(lambda self: len(self.tokens) >= 2)
    @rule(pick=st.integers(0, 10 ** 6))
    def batch_step(self, pick):
        """One decode token for every live sequence of the longest equal-length group
        through a batch view (copy-on-write counted as reserve does)."""
        by_len: dict[int, list[int]] = {}
        for sid, toks in self.tokens.items():
            by_len.setdefault(len(toks), []).append(sid)
        group = max(by_len.values(), key=len)
        view = self.c.batch_view(group)
        need = view.blocks_needed(1)
        k = torch.stack([torch.tensor([key_of(self.tokens[s] + [pick % VOCAB])])
                         for s in group]).view(len(group), 1, 1, 1)  # (B, Hkv, 1, D)
        try:
            view.update(0, k, -k)
        except PoolExhaustedError:
            assert need > self.c.allocator.n_free
            return
        for s in group:
            self.tokens[s].append(pick % VOCAB)

    @precondition(lambda self: self.tokens)
    @rule(picks=st.lists(st.integers(0, 10 ** 6), min_size=1, max_size=4),
          n=st.integers(1, 3), tok=st.integers(0, VOCAB - 1))
    def reserve_many(self, picks, n, tok):
        """The engine's batched reserve (token ids on every ask), written through the
        slots of `step_tensors`: refused exactly when the exact block count (copy-on-write
        of shared last blocks counted once per copy) exceeds the free blocks."""
        ids = sorted(self.tokens)
        group = sorted({ids[p % len(ids)] for p in picks})
        asks = [(s, n, [(tok + s + j) % VOCAB for j in range(n)]) for s in group]
        need, free = self.c.blocks_needed_many(asks), self.c.allocator.n_free
        try:
            self.c.reserve_many(asks)
        except PoolExhaustedError:
            assert need > free
            return
        assert free - self.c.allocator.n_free == need  # the count is exact, not a bound
        tables, lens, slots, _ = self.c.step_tensors(group, n)
        assert lens.tolist() == [len(self.tokens[s]) + n for s in group]
        assert torch.equal(tables, self.c.tables_tensor(group))
        keys = [key_of(self.tokens[s] + toks[:j + 1]) for s, _, toks in asks for j in range(n)]
        k = torch.tensor(keys).view(1, len(keys), 1)  # (Hkv, B·n, D)
        self.c.write(0, slots, k, -k)
        for s, _, toks in asks:
            self.tokens[s].extend(toks)
            self.c.register_full_blocks(s)

    @precondition(lambda self: self.tokens)
    @rule(pick=st.integers(0, 10 ** 6))
    def fork(self, pick):
        sid = sorted(self.tokens)[pick % len(self.tokens)]
        child, self.next_id = self.next_id, self.next_id + 1
        self.c.fork(sid, child)
        self.tokens[child] = list(self.tokens[sid])

    @precondition(lambda self: self.tokens)
    @rule(pick=st.integers(0, 10 ** 6))
    def free(self, pick):
        sid = sorted(self.tokens)[pick % len(self.tokens)]
        self.c.free(sid)
        del self.tokens[sid]

    @precondition(lambda self: self.tokens)
    @rule(pick=st.integers(0, 10 ** 6))
    def preempt(self, pick):
        sid = sorted(self.tokens)[pick % len(self.tokens)]
        self.swapped[sid] = (self.c.swap_out(sid), self.tokens.pop(sid))

    @precondition(lambda self: self.swapped)
    @rule(pick=st.integers(0, 10 ** 6))
    def resume(self, pick):
        sid = sorted(self.swapped)[pick % len(self.swapped)]
        saved, toks = self.swapped[sid]
        try:
            self.c.swap_in(sid, saved)
        except PoolExhaustedError:
            return
        del self.swapped[sid]
        self.tokens[sid] = toks

    @invariant()
    def consistent(self):
        if not hasattr(self, "c"):
            return
        self.c.check_invariants()  # free xor owned, ref counts = table references, ≥ 0
        assert set(self.c.sequences) == set(self.tokens)
        for sid, toks in self.tokens.items():
            k, v = self.c.gather(sid, 0)
            want = torch.tensor([key_of(toks[:i + 1]) for i in range(len(toks))])
            assert torch.equal(k.view(-1), want), f"sequence {sid} keys changed"
            assert torch.equal(v.view(-1), -want)
        live = sorted(self.tokens)
        if live:  # the tensor mirror of the block tables (what the kernels read) agrees
            t = self.c.tables_tensor(live)
            for i, sid in enumerate(live):
                table = self.c.block_table(sid)
                assert t[i, :len(table)].tolist() == table, f"sequence {sid} table mirror"
        for sid, (saved, toks) in self.swapped.items():
            got = saved.k.reshape(-1)[: saved.length]
            assert torch.equal(got, torch.tensor([key_of(toks[:i + 1]) for i in range(len(toks))]))


# `make fuzz` sets ATTNLAB_FUZZ_PAGED_EXAMPLES for a long randomised run (400 examples ×
# 50 steps = 20,000 steps); the default run is short and derandomised for CI.
_DEEP = int(os.environ.get("ATTNLAB_FUZZ_PAGED_EXAMPLES", "0"))
PagedMachine.TestCase.settings = settings(
    max_examples=_DEEP or 80, stateful_step_count=50, deadline=None, derandomize=not _DEEP,
    database=None, suppress_health_check=[HealthCheck.too_slow])
TestPagedStress = PagedMachine.TestCase
