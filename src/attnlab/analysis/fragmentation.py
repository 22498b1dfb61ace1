"""KV-memory fragmentation study: replay a request trace against three allocators.

The vLLM paper (Kwon et al. 2023, §2.3, Fig. 2) finds that systems reserving contiguous
KV memory per request use only 20.4–38.2% of it for token states (60–80% waste), while
paging wastes only part of each sequence's last block (under 4%) (docs/sources.md).

Policies, on one KV memory of `memory_tokens` token slots:
- "max":   contiguous, reserve `max_len` slots per request at admission (first-fit);
- "exact": contiguous, reserve exactly prompt + output slots (an oracle that knows the
           output length), first-fit on a linear address space, so freed holes of odd
           sizes cause external fragmentation;
- "paged": blocks of `block_size` slots allocated on demand; when a growing sequence
           finds no free block, the youngest running request is preempted (recompute).

Time advances in decode steps: every running request stores one more token per step;
an admitted request stores its prompt at once. Requests are admitted FCFS (head-of-line).
Reported, averaged over steps: waste % = 1 − stored tokens / slots held by requests
(reserved-but-unused and last-block slack both count as waste), external fragmentation %
= free slots / memory at steps where the head request was refused although enough free
slots existed in total, mean running batch, steps to drain the trace. O(steps · running).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from .._checks import check_positive_int

POLICIES = ("max", "exact", "paged")


@dataclass
class TraceConfig:
    n_requests: int = 400
    max_len: int = 2048  # model context: the "max" policy reserves this much per request
    prompt_range: tuple[int, int] = (16, 1024)
    output_range: tuple[int, int] = (16, 1024)
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive_int("n_requests", self.n_requests)
        check_positive_int("max_len", self.max_len)
        for name in ("prompt_range", "output_range"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise ValueError(f"{name} ({lo}, {hi}) must satisfy 1 <= lo <= hi")


def make_trace(cfg: TraceConfig) -> list[tuple[int, int]]:
    """(prompt_len, output_len) pairs, uniform in the ranges, total capped at max_len."""
    rng = random.Random(cfg.seed)
    out = []
    for _ in range(cfg.n_requests):
        p = min(rng.randint(*cfg.prompt_range), cfg.max_len - 1)
        o = min(rng.randint(*cfg.output_range), cfg.max_len - p)
        out.append((p, o))
    return out


@dataclass
class FragResult:
    policy: str
    waste_pct: float
    external_frag_pct: float
    mean_running: float
    max_running: int
    steps: int
    preemptions: int = 0
    per_step_waste: list[float] = field(default_factory=list, repr=False)


class _FirstFit:
    """Contiguous allocator over [0, size): first gap that fits."""

    def __init__(self, size: int):
        self.size = size
        self.spans: dict[int, tuple[int, int]] = {}  # rid -> (start, length)

    def alloc(self, rid: int, n: int) -> bool:
        pos = 0
        for s, ln in sorted(self.spans.values()):
            if s - pos >= n:
                break
            pos = max(pos, s + ln)
        if pos + n > self.size:
            return False
        self.spans[rid] = (pos, n)
        return True

    def free(self, rid: int) -> None:
        del self.spans[rid]

    @property
    def used(self) -> int:
        return sum(ln for _, ln in self.spans.values())


def simulate(trace: list[tuple[int, int]], memory_tokens: int, policy: str, *,
             max_len: int = 2048, block_size: int = 16, max_steps: int = 1_000_000) -> FragResult:
    """Replay `trace` (all requests queued at step 0) under `policy`; see module docstring."""
    if policy not in POLICIES:
        raise ValueError(f"policy ({policy!r}) must be one of {list(POLICIES)}")
    check_positive_int("memory_tokens", memory_tokens)
    check_positive_int("block_size", block_size)
    for p, o in trace:
        need = max_len if policy == "max" else p + o
        if need > memory_tokens or p + o > max_len:
            raise ValueError(f"request (prompt {p}, output {o}) cannot fit memory_tokens "
                             f"({memory_tokens}) / max_len ({max_len})")
    queue = list(range(len(trace)))
    running: dict[int, int] = {}  # rid -> stored tokens
    generated: dict[int, int] = {}
    ff = _FirstFit(memory_tokens)
    n_blocks = memory_tokens // block_size
    blocks: dict[int, int] = {}
    wastes, ext, batch = [], [], []
    preemptions = steps = 0

    def nb(tokens: int) -> int:
        return -(-tokens // block_size)

    while (queue or running) and steps < max_steps:
        # admit FCFS while the head request fits
        while queue:
            rid = queue[0]
            p, o = trace[rid]
            stored = p + generated.get(rid, 0)
            if policy == "paged":
                ok = nb(stored + 1) <= n_blocks - sum(blocks.values())
                if ok:
                    blocks[rid] = nb(stored)
            else:
                ok = ff.alloc(rid, max_len if policy == "max" else p + o)
                if not ok and policy == "exact" and memory_tokens - ff.used >= p + o:
                    ext.append((memory_tokens - ff.used) / memory_tokens)
            if not ok:
                break
            queue.pop(0)
            running[rid] = stored
        # one decode step: every running request stores one more token
        for rid in sorted(running):
            if rid not in running:
                continue
            if policy == "paged" and nb(running[rid] + 1) > blocks[rid]:
                while nb(running[rid] + 1) - blocks[rid] > n_blocks - sum(blocks.values()):
                    victim = max(running)  # youngest (largest id; FCFS admission)
                    del running[victim], blocks[victim]
                    queue.insert(0, victim)
                    preemptions += 1
                    if victim == rid:
                        break
                if rid not in running:
                    continue
                blocks[rid] = nb(running[rid] + 1)
            running[rid] += 1
            generated[rid] = generated.get(rid, 0) + 1
        held = sum(blocks.values()) * block_size if policy == "paged" else ff.used
        stored = sum(running.values())
        if held:
            wastes.append(1 - stored / held)
        batch.append(len(running))
        for rid in [r for r in running if generated[r] >= trace[r][1]]:
            del running[rid]
            if policy == "paged":
                del blocks[rid]
            else:
                ff.free(rid)
        steps += 1
    return FragResult(policy, 100 * sum(wastes) / max(1, len(wastes)),
                      100 * sum(ext) / max(1, len(ext)) if ext else 0.0,
                      sum(batch) / max(1, len(batch)), max(batch, default=0), steps,
                      preemptions, wastes)


def study(cfg: TraceConfig | None = None, memory_tokens: int = 65536,
          block_size: int = 16) -> list[FragResult]:
    """All three policies on one trace."""
    cfg = cfg or TraceConfig()
    trace = make_trace(cfg)
    return [simulate(trace, memory_tokens, p, max_len=cfg.max_len, block_size=block_size)
            for p in POLICIES]


def format_table(results: list[FragResult]) -> str:
    lines = [("| policy | waste % | external frag. % (at refusals) | mean batch | max batch | "
              "steps | preemptions |"), "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.policy} | {r.waste_pct:.1f} | {r.external_frag_pct:.1f} | "
                     f"{r.mean_running:.1f} | {r.max_running} | {r.steps} | {r.preemptions} |")
    return "\n".join(lines)
