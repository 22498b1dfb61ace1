"""Property tests of the engine's memory: a windowed paged pool under random reserve /
swap / free keeps every sequence's in-window keys, releases blocks behind the window
(O(W) blocks per sequence) and leaks none; state slots swap and restore exactly."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.cache.block_allocator import PoolExhaustedError
from attnlab.cache.layout import StateLayout
from attnlab.cache.paged import EVICTED, PagedKVCache
from attnlab.serving.state_slots import StateSlots

W, BS, MAX_N = 5, 2, 4
OPS = st.lists(st.tuples(st.sampled_from(["add", "reserve", "swap", "free"]),
                         st.integers(0, 3), st.integers(1, MAX_N)), max_size=40)


def key(sid, pos):
    return float(1000 * sid + pos)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(OPS)
def test_windowed_pool_keeps_the_window_and_releases_the_rest(ops):
    c = PagedKVCache(1, 1, 1, num_blocks=12, block_size=BS, prefix_caching=False, window=W)
    lens: dict[int, int] = {}
    swapped: dict = {}
    for op, sid, n in ops:
        if op == "add" and sid not in lens and sid not in swapped:
            c.add_sequence(sid)
            lens[sid] = 0
        elif op == "reserve" and sid in lens:
            try:
                slots = c.reserve(sid, n)
            except PoolExhaustedError:
                continue
            L = lens[sid]
            k = torch.tensor([key(sid, p) for p in range(L, L + n)]).view(1, n, 1)
            c.write(0, slots, k, -k)
            lens[sid] = L + n
        elif op == "swap" and sid in lens:
            swapped[sid] = (c.swap_out(sid), lens.pop(sid))
        elif op == "swap" and sid in swapped:
            saved, L = swapped[sid]
            try:
                c.swap_in(sid, saved)
            except PoolExhaustedError:
                continue
            del swapped[sid]
            lens[sid] = L
        elif op == "free" and sid in lens:
            c.free(sid)
            del lens[sid]
        c.check_invariants()  # no leak, ref counts = table references
        for s, L in lens.items():
            table = c.block_table(s)
            assert c.live_blocks(s) <= -(-(W - 1 + MAX_N) // BS) + 1
            lo = max(0, L - W)  # every position a next query could see is held
            assert all(b != EVICTED for b in table[lo // BS:])
            if L > lo:
                got = c.k_pool[0, 0].reshape(-1)[c.slots(s, lo, L - lo)]
                assert got.tolist() == [key(s, p) for p in range(lo, L)]


def test_state_slots_swap_and_restore_exactly():
    lay = StateLayout((("S", (2, 3)), ("p", (3,))), (("p", -1e38),))
    slots = StateSlots({0: lay, 2: lay}, n_slots=2)
    slots.add("a")
    slots.add("b")
    view = slots.view(2, slots.indices(["a", "b"]), 1)
    assert bool((view.state(0)["p"] == torch.tensor(-1e38)).all())  # fill value at start
    new = {"S": torch.randn(2, 2, 3), "p": torch.randn(2, 3)}
    view.commit(0, new, 1)
    saved = slots.swap_out("a")
    assert slots.n_free == 1
    slots.add("c")  # reuses a's slot, reset to the fill
    assert float(slots.view(2, slots.indices(["c"]), 1).state(0)["S"].abs().sum()) == 0.0
    slots.free("c")
    slots.swap_in("a", saved)
    torch.testing.assert_close(slots.view(2, slots.indices(["a", "b"]), 1).state(0)["S"], new["S"])
    assert slots.bytes_per_sequence() == 2 * (6 + 3) * 4
