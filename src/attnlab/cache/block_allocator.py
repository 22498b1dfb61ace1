"""Free-list block allocator with reference counts and a prefix cache (vLLM, Kwon et al. 2023).

A pool of `num_blocks` physical blocks. Every block is in exactly one state:
- owned: ref count ≥ 1 (the number of block tables pointing at it);
- free: ref count 0, on the free list. A free block may still carry a prefix-cache hash
  (its content is intact and reusable until the allocator hands it out again).

`allocate` prefers never-hashed free blocks and evicts hashed ones in LRU order, as the
vLLM prefix-caching design doc describes (docs/sources.md, PagedAttention). Prefix hashes chain:
`hash(parent hash, block tokens)`, so a block is shared only when its whole prefix matches.
All operations are O(1) except `check_invariants` (O(num_blocks)).
"""
from __future__ import annotations

from collections import OrderedDict

from .._checks import check_positive_int
from .base import CacheOverflowError


class PoolExhaustedError(CacheOverflowError):
    """The pool has fewer free blocks than requested; nothing was allocated or written."""


def block_hash(parent: int | None, tokens: tuple[int, ...]) -> int:
    """Chained content hash of one full block: hash(parent hash, block tokens)."""
    return hash((parent, tokens))


class BlockAllocator:
    """Hands out physical block ids; tracks ref counts and the prefix-cache index."""

    def __init__(self, num_blocks: int):
        self.num_blocks = check_positive_int("num_blocks", num_blocks)
        self.ref = [0] * num_blocks
        # free blocks without a hash (LIFO is fine) and hashed free blocks in LRU order
        self._free_plain: list[int] = list(range(num_blocks - 1, -1, -1))
        self._free_cached: OrderedDict[int, None] = OrderedDict()
        self.block_hash: dict[int, int] = {}  # block id -> prefix hash (owned or free)
        self.by_hash: dict[int, int] = {}  # prefix hash -> block id
        # what a registered block holds: (parent block or None, its token ids); a prefix
        # hit is reused only when these match (hashes are keys, not proofs)
        self.content: dict[int, tuple[int | None, tuple[int, ...]]] = {}

    # --- queries ---------------------------------------------------------------------
    @property
    def n_free(self) -> int:
        """Blocks that `allocate` can hand out (including evictable cached blocks)."""
        return len(self._free_plain) + len(self._free_cached)

    @property
    def n_owned(self) -> int:
        return self.num_blocks - self.n_free

    def _check_id(self, block: int) -> None:
        if isinstance(block, bool) or not isinstance(block, int) or \
                not 0 <= block < self.num_blocks:
            raise ValueError(f"block ({block!r}) must be an int in [0, {self.num_blocks})")

    # --- allocation ------------------------------------------------------------------
    def allocate(self, n: int = 1) -> list[int]:
        """n fresh blocks with ref count 1; refuses (raises) before changing anything."""
        check_positive_int("n", n, minimum=0)
        if n > self.n_free:
            raise PoolExhaustedError(f"pool exhausted: {n} blocks requested, {self.n_free} of "
                                     f"{self.num_blocks} free")
        out = []
        for _ in range(n):
            if self._free_plain:
                b = self._free_plain.pop()
            else:  # evict the least recently freed cached block
                b, _ = self._free_cached.popitem(last=False)
                del self.by_hash[self.block_hash.pop(b)]
                self.content.pop(b, None)
            self.ref[b] = 1
            out.append(b)
        return out

    def incref(self, block: int) -> None:
        """Share an owned block, or revive a free cached block (prefix-cache hit)."""
        self._check_id(block)
        if self.ref[block] == 0:
            if block not in self._free_cached:
                raise ValueError(f"block ({block}) is free and holds no cached content; "
                                 "expected an owned or cached block")
            del self._free_cached[block]
        self.ref[block] += 1

    def decref(self, block: int) -> None:
        """Drop one reference; at zero the block returns to the free list (keeping its hash)."""
        self._check_id(block)
        if self.ref[block] <= 0:
            raise ValueError(f"block ({block}) is already free (ref count 0); double free")
        self.ref[block] -= 1
        if self.ref[block] == 0:
            if block in self.block_hash:
                self._free_cached[block] = None  # most recently freed at the end
            else:
                self._free_plain.append(block)

    # --- prefix cache ----------------------------------------------------------------
    def register(self, block: int, h: int, *, parent: int | None = None,
                 tokens: tuple[int, ...] = ()) -> int:
        """Record that owned `block` holds the full block with prefix hash `h`, following
        block `parent` (None for a first block) and holding token ids `tokens`.

        Returns the block the index now maps `h` to (an earlier identical block wins)."""
        self._check_id(block)
        if self.ref[block] < 1:
            raise ValueError(f"block ({block}) must be owned to be registered")
        if block in self.block_hash:
            return self.by_hash.get(self.block_hash[block], block)
        if h in self.by_hash:
            return self.by_hash[h]
        self.block_hash[block] = h
        self.by_hash[h] = block
        self.content[block] = (parent, tuple(tokens))
        return block

    def lookup(self, h: int) -> int | None:
        return self.by_hash.get(h)

    def verify(self, block: int, parent: int | None, tokens: tuple[int, ...]) -> bool:
        """Whether registered `block` really holds `tokens` right after block `parent`."""
        return self.content.get(block) == (parent, tuple(tokens))

    def forget(self, block: int) -> None:
        """Drop a block's hash (its content is about to change)."""
        h = self.block_hash.pop(block, None)
        self.content.pop(block, None)
        if h is not None:
            del self.by_hash[h]
            if block in self._free_cached:
                del self._free_cached[block]
                self._free_plain.append(block)

    # --- invariants ------------------------------------------------------------------
    def check_invariants(self, owners: dict[int, int] | None = None) -> None:
        """Raise AssertionError when the bookkeeping is inconsistent.

        `owners`: block id -> number of block-table references (from the cache); when
        given, every ref count must equal it.
        """
        free = set(self._free_plain) | set(self._free_cached)
        if len(free) != len(self._free_plain) + len(self._free_cached):
            raise AssertionError("a block appears twice on the free lists")
        for b in range(self.num_blocks):
            if self.ref[b] < 0:
                raise AssertionError(f"block {b} has negative ref count {self.ref[b]}")
            if (self.ref[b] == 0) != (b in free):
                raise AssertionError(f"block {b}: ref {self.ref[b]} but free={b in free}")
            if owners is not None and self.ref[b] != owners.get(b, 0):
                raise AssertionError(f"block {b}: ref {self.ref[b]} but "
                                     f"{owners.get(b, 0)} table references")
        for b in self._free_cached:
            if b not in self.block_hash:
                raise AssertionError(f"cached free block {b} has no hash")
        for b, h in self.block_hash.items():
            if self.by_hash.get(h) != b:
                raise AssertionError(f"hash index does not map back to block {b}")
        if len(self.by_hash) != len(self.block_hash):
            raise AssertionError("hash index and block hashes differ in size")
        if set(self.content) != set(self.block_hash):
            raise AssertionError("registered contents and block hashes name different blocks")
