"""Training data for the tiny LM: synthetic tasks and a byte-level Python corpus.

Every task draws batch `step` from a generator seeded by (seed, step), so a batch depends
on nothing but its step: a run resumed from a checkpoint sees exactly the batches the
uninterrupted run saw, with no data-loader state to save.

- `RepeatedTokens`: random blocks repeated to fill the sequence (the induction-head
  setting of Olsson et al. 2022). The period is drawn per sequence, so a head cannot
  solve the copy by a fixed relative offset; it has to match content.
- `MQAR`: multi-query associative recall (Arora et al. 2023, "Zoology"): key–value pairs,
  then queries of some of the keys; the loss is on the answers only.
- `ByteCorpus`: the Python standard library's own `.py` sources (present on every
  machine that runs this code), bytes 0..255, files split train/validation by a CRC32
  of their name (fixed across runs of the same Python version).
"""
from __future__ import annotations

import sysconfig
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._checks import check_positive_int


@dataclass
class Batch:
    """tokens (B, N) long; loss_mask (B, N−1) bool over next-token targets (None = all)."""

    tokens: torch.Tensor
    loss_mask: torch.Tensor | None = None


def step_generator(seed: int, step: int) -> torch.Generator:
    """A generator that depends only on (seed, step)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63 - 1))


def repeated_random_tokens(batch: int, period: int, repeats: int, vocab: int, *,
                           seed: int = 0, bos: int | None = None) -> torch.Tensor:
    """(batch, repeats·period [+1]) tokens: one uniform random block repeated; BOS optional."""
    for name, v in (("batch", batch), ("period", period), ("repeats", repeats), ("vocab", vocab)):
        check_positive_int(name, v)
    g = torch.Generator().manual_seed(seed)
    block = torch.randint(0, vocab, (batch, period), generator=g)  # (B, T)
    toks = block.repeat(1, repeats)  # (B, repeats·T)
    if bos is not None:
        toks = torch.cat([torch.full((batch, 1), bos, dtype=toks.dtype), toks], dim=1)
    return toks


@dataclass
class RepeatedTokens:
    """Sequences of `seq_len` tokens: a random block of period T ∈ [min_period, max_period]
    (drawn per sequence) repeated; with `bos`, token `vocab` is prepended (vocab_size
    becomes vocab + 1)."""

    vocab: int
    seq_len: int
    batch_size: int
    min_period: int
    max_period: int
    bos: bool = False
    seed: int = 0
    vocab_size: int = field(init=False)

    def __post_init__(self) -> None:
        for name in ("vocab", "seq_len", "batch_size", "min_period", "max_period"):
            check_positive_int(name, getattr(self, name))
        if not self.min_period <= self.max_period <= self.seq_len // 2:
            raise ValueError(f"periods [{self.min_period}, {self.max_period}] must satisfy "
                             f"min_period <= max_period <= seq_len // 2 ({self.seq_len // 2})")
        self.vocab_size = self.vocab + int(self.bos)

    def batch(self, step: int) -> Batch:
        g = step_generator(self.seed, step)
        B, N = self.batch_size, self.seq_len
        periods = torch.randint(self.min_period, self.max_period + 1, (B,), generator=g)
        block = torch.randint(0, self.vocab, (B, N), generator=g)  # (B, N)
        idx = torch.arange(N).unsqueeze(0) % periods.unsqueeze(1)  # (B, N): position mod T
        toks = block.gather(1, idx)  # (B, N)
        if self.bos:
            toks = torch.cat([torch.full((B, 1), self.vocab), toks[:, :-1]], dim=1)
        return Batch(toks)


@dataclass
class MQAR:
    """Zoology's MQAR: `n_pairs` pairs (k v) with distinct keys from [0, n_keys) and values
    from [n_keys, n_keys + n_values), then `n_queries` (k, v) of those pairs in random order.
    Targets scored: the value after each queried key. seq_len = 2·(n_pairs + n_queries)."""

    n_keys: int
    n_values: int
    n_pairs: int
    n_queries: int
    batch_size: int
    seed: int = 0
    vocab_size: int = field(init=False)
    seq_len: int = field(init=False)

    def __post_init__(self) -> None:
        for name in ("n_keys", "n_values", "n_pairs", "n_queries", "batch_size"):
            check_positive_int(name, getattr(self, name))
        if self.n_pairs > self.n_keys:
            raise ValueError(f"n_pairs ({self.n_pairs}) must be <= n_keys ({self.n_keys}): "
                             "keys within a sequence are distinct")
        if self.n_queries > self.n_pairs:
            raise ValueError(f"n_queries ({self.n_queries}) must be <= n_pairs ({self.n_pairs})")
        self.vocab_size = self.n_keys + self.n_values
        self.seq_len = 2 * (self.n_pairs + self.n_queries)

    def batch(self, step: int) -> Batch:
        g = step_generator(self.seed, step)
        B, P, Q = self.batch_size, self.n_pairs, self.n_queries
        keys = torch.rand(B, self.n_keys, generator=g).argsort(-1)[:, :P]  # (B, P) distinct
        vals = torch.randint(self.n_keys, self.n_keys + self.n_values, (B, P), generator=g)
        pick = torch.rand(B, P, generator=g).argsort(-1)[:, :Q]  # (B, Q)
        qk, qv = keys.gather(1, pick), vals.gather(1, pick)  # (B, Q)
        ctx = torch.stack([keys, vals], dim=-1).view(B, 2 * P)  # (B, 2P): k1 v1 k2 v2 ...
        qry = torch.stack([qk, qv], dim=-1).view(B, 2 * Q)  # (B, 2Q)
        toks = torch.cat([ctx, qry], dim=1)  # (B, N)
        mask = torch.zeros(B, toks.shape[1] - 1, dtype=torch.bool)  # (B, N−1) targets
        mask[:, 2 * P::2] = True  # target index t predicts token t+1: the value after a query key
        return Batch(toks, mask)


def stdlib_files() -> list[Path]:
    """Sorted top-level `.py` files of the running Python's standard library."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file())
    if not files:
        raise FileNotFoundError(f"no .py files under the standard library at {root}")
    return files


def is_validation_file(name: str, val_every: int = 10) -> bool:
    """Fixed split: a file is validation when crc32(name) % val_every == 0."""
    return zlib.crc32(name.encode()) % val_every == 0


@dataclass
class ByteCorpus:
    """Random windows of `seq_len` bytes from the stdlib sources (vocab 256).

    `split` "train" or "val"; at most `max_bytes` per split (files concatenated in sorted
    order, so the corpus is fixed for a given Python version).
    """

    seq_len: int
    batch_size: int
    split: str = "train"
    max_bytes: int = 4_000_000
    seed: int = 0
    vocab_size: int = 256
    data: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_positive_int("seq_len", self.seq_len)
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("max_bytes", self.max_bytes)
        if self.split not in ("train", "val"):
            raise ValueError(f"split ({self.split!r}) must be 'train' or 'val'")
        self.data = load_bytes(self.split, self.max_bytes)
        if len(self.data) < self.seq_len + 1:
            raise ValueError(f"the {self.split} corpus has {len(self.data)} bytes, shorter than "
                             f"one sequence (seq_len + 1 = {self.seq_len + 1})")

    def batch(self, step: int) -> Batch:
        g = step_generator(self.seed, step)
        starts = torch.randint(0, len(self.data) - self.seq_len + 1, (self.batch_size,),
                               generator=g)  # (B,)
        idx = starts.unsqueeze(1) + torch.arange(self.seq_len)  # (B, N)
        return Batch(self.data[idx])


_BYTES: dict[tuple[str, int], torch.Tensor] = {}


def load_bytes(split: str, max_bytes: int) -> torch.Tensor:
    """The split's bytes as a (≤ max_bytes,) long tensor (cached per process)."""
    key = (split, max_bytes)
    if key not in _BYTES:
        want_val = split == "val"
        chunks, total = [], 0
        for p in stdlib_files():
            if is_validation_file(p.name) != want_val:
                continue
            raw = p.read_bytes()
            chunks.append(raw[:max_bytes - total])
            total += len(chunks[-1])
            if total >= max_bytes:
                break
        buf = bytearray().join(chunks)
        _BYTES[key] = torch.frombuffer(buf, dtype=torch.uint8).long() if buf else \
            torch.zeros(0, dtype=torch.long)
    return _BYTES[key]
