"""Backends as data: one `Backend` record per implementation of `attention()`.

A record says what its function supports; `attention(backend="auto")` picks the first
record (lowest `rank` first; rank None: never) that supports the call and whose `prefers`
accepts its shapes, and
`attention(backend="x")` with a feature x lacks raises a ValueError naming the feature and
the backends that have it. Adding a backend is one file that defines its function and
calls `register_backend(Backend(...))`, imported by `dispatch.py`.

A backend's `fn(call)` receives a validated `contract.Call` and returns `(out, lse)`
(lse None when the record has `return_lse=False`); the sink, rule (b) of the non-finite
policy and the return convention are applied once, by `contract.finish`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .contract import Call

ALL_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
MASK_KINDS = ("none", "causal", "mask", "tensor")


@dataclass(frozen=True)
class Backend:
    """What one backend supports. `masks`: the kinds of `Call.mask_kind` it takes ("causal"
    is the plain causal pattern with Nq == Nk and default positions; "mask" any `Mask`);
    `positions`: custom q_pos/kv_pos; `dv_ne_d`: v head_dim different from q's;
    `unit_stride`: the function needs unit-stride last dims (the dispatcher copies);
    `prefers(call)`: whether `auto` should pick it for these shapes; `rank`: the order in
    which `auto` considers backends (lowest first; None: only by name)."""

    name: str
    fn: Callable[[Call], tuple]
    masks: frozenset = frozenset(MASK_KINDS)
    score_mod: bool = False
    sink: bool = False
    return_lse: bool = False
    grad: bool = True
    dtypes: frozenset = ALL_DTYPES
    dv_ne_d: bool = True
    positions: bool = True
    unit_stride: bool = False
    prefers: Callable[[Call], bool] | None = None
    rank: int | None = None
    doc: str = ""

    def missing(self, call: Call) -> list[str]:
        """The features `call` needs that this backend lacks (empty: supported)."""
        need = []
        kind = call.mask_kind
        if kind not in self.masks and not (kind == "causal" and "mask" in self.masks):
            need.append(f"mask kind '{kind}'")
        checks = [("score_mod", call.score_mod is not None, self.score_mod),
                  ("sink", call.sink is not None, self.sink),
                  ("return_lse", call.return_lse, self.return_lse),
                  ("grad", call.grad, self.grad),
                  (f"dtype {call.q.dtype}", True, call.q.dtype in self.dtypes),
                  ("Dv != D", call.Dv != call.D, self.dv_ne_d),
                  ("q_pos/kv_pos", not call.default_positions, self.positions)]
        need += [name for name, wanted, has in checks if wanted and not has]
        return need


BACKENDS: dict[str, Backend] = {}


def register_backend(record: Backend) -> Backend:
    """Add (or replace) a backend record."""
    if not isinstance(record, Backend):
        raise TypeError(f"record must be a Backend, got {type(record).__name__}")
    BACKENDS[record.name] = record
    return record


def who_has(feature: str) -> list[str]:
    """Names of the backends that support `feature` (for error messages)."""
    out = []
    for name, rec in sorted(BACKENDS.items()):
        ok = {"score_mod": rec.score_mod, "sink": rec.sink, "return_lse": rec.return_lse,
              "grad": rec.grad, "Dv != D": rec.dv_ne_d, "q_pos/kv_pos": rec.positions}
        if feature.startswith("mask kind"):
            kind = feature.split("'")[1]
            has = kind in rec.masks or (kind == "causal" and "mask" in rec.masks)
        elif feature.startswith("dtype "):
            has = any(str(d) == feature[6:] for d in rec.dtypes)
        else:
            has = ok[feature]
        if has:
            out.append(name)
    return out


def resolve(name: str, call: Call) -> Backend:
    """The record `attention(backend=name)` runs; raises for unknown or unsupported."""
    if not isinstance(name, str):
        raise TypeError(f"backend must be a str, got {type(name).__name__}")
    if name == "auto":
        return choose(call)
    if name not in BACKENDS:
        raise ValueError(f"backend ({name!r}) must be 'auto' or one of {sorted(BACKENDS)}")
    rec = BACKENDS[name]
    missing = rec.missing(call)
    if missing:
        f = missing[0]
        raise ValueError(f"backend {name!r} does not support {f}; backends that do: "
                         f"{who_has(f)}")
    return rec


def choose(call: Call) -> Backend:
    """`auto`: the first record by rank that supports the call and prefers it."""
    ranked = sorted((r for r in BACKENDS.values() if r.rank is not None), key=lambda r: r.rank)
    for rec in ranked:
        if not rec.missing(call) and (rec.prefers is None or rec.prefers(call)):
            return rec
    return BACKENDS["reference"]
