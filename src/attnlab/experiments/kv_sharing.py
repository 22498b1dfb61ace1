"""KV-sharing quality at matched parameter count: MHA, GQA-4, GQA-2, MQA, MLA (+ sliding
window, linear attention and Mamba-2 SSD in the full run) on MQAR (Arora et al. 2023,
Zoology) and on the byte-level stdlib corpus. Quality (MQAR accuracy, validation loss)
against KV-cache bytes per token (fp32; 0 for constant-state mixers), with the Pareto
front. Parameter counts are matched to MHA's within a few percent by sizing each
variant's MLP (fewer KV heads free parameters that go to d_ff).

Scale caveat: a ~0.1M-parameter model trained for seconds to minutes on 2 CPU cores.
The published gaps (GQA paper, DeepSeek-V2 Table 8) come from billion-parameter models;
these runs can rank variants on a recall-heavy synthetic task, not reproduce those sizes.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

from ..layers.attention import AttentionSpec
from ..layers.linear_attention import LinearAttentionSpec
from ..layers.mla import MLASpec
from ..layers.ssd import SSDSpec
from ..models.config import ModelConfig
from ..models.data import MQAR, ByteCorpus
from ..models.train import TrainConfig, Trainer, evaluate
from .common import Run, build_lm, n_params, pyplot, save_figure


@dataclass
class KVConfig:
    d_model: int = 64
    n_heads: int = 8
    n_layers: int = 2
    steps: int = 60
    lr: float = 3e-3
    batch_size: int = 16
    text_seq_len: int = 64
    mqar_pairs: int = 8
    mqar_queries: int = 8
    mqar_vocab: int = 32  # keys and values each
    window: int = 8
    seeds: tuple[int, ...] = (0,)
    variants: tuple[str, ...] = ("MHA", "GQA-4", "GQA-2", "MQA", "MLA")
    eval_batches: int = 4

    @classmethod
    def preset(cls, quick: bool, seed: int = 0) -> KVConfig:
        if quick:
            return cls(steps=40, d_model=32, n_heads=4, variants=("MHA", "GQA-2", "MQA", "MLA"),
                       seeds=(seed,), eval_batches=2)
        return cls(steps=500, lr=1e-2, mqar_pairs=6, mqar_queries=6, mqar_vocab=24,
                   seeds=(seed, seed + 1, seed + 2),
                   variants=("MHA", "GQA-4", "GQA-2", "MQA", "MLA", f"SWA-{cls.window}",
                             "linear", "SSD"))


def mixer_spec(name: str, c: KVConfig):
    H, D = c.n_heads, c.d_model // c.n_heads
    if name == "MHA":
        return AttentionSpec(H, backend="sdpa")
    if name.startswith("GQA-"):  # GQA-G: G KV heads (groups), as "GQA-8" in Ainslie et al.
        return AttentionSpec(H, int(name[4:]), backend="sdpa")
    if name == "MQA":
        return AttentionSpec(H, 1, backend="sdpa")
    if name == "MLA":  # latent of 2·D: between MQA (2·D per layer) and GQA-2 in cache bytes
        return MLASpec(n_heads=H, kv_lora_rank=2 * D, qk_nope_head_dim=D,
                       qk_rope_head_dim=max(2, D // 2), v_head_dim=D)
    if name.startswith("SWA-"):
        return AttentionSpec(H, window=int(name[4:]), backend="sdpa")
    if name == "linear":
        return LinearAttentionSpec(H)
    if name == "SSD":
        return SSDSpec(d_state=16, head_dim=2 * D, expand=2)
    raise ValueError(f"variant ({name!r}) is unknown")


def model_cfg(name: str, c: KVConfig, vocab: int, seq: int, d_ff: int) -> ModelConfig:
    return ModelConfig(vocab_size=vocab, d_model=c.d_model, n_layers=c.n_layers,
                       mixers=mixer_spec(name, c), d_ff=d_ff, max_seq_len=seq)


def matched_d_ff(name: str, c: KVConfig, vocab: int, seq: int, target: int) -> int:
    """d_ff whose model has the parameter count closest to `target` (params linear in d_ff)."""
    p1 = n_params(build_lm(model_cfg(name, c, vocab, seq, 8), 0))
    p2 = n_params(build_lm(model_cfg(name, c, vocab, seq, 16), 0))
    per = (p2 - p1) / 8
    return max(8, round(8 + (target - p1) / per))


def train_eval(name: str, c: KVConfig, task, val_task, seed: int) -> dict:
    vocab, seq = task.vocab_size, task.seq_len
    target = n_params(build_lm(model_cfg("MHA", c, vocab, seq, 4 * c.d_model), 0))
    d_ff = 4 * c.d_model if name == "MHA" else matched_d_ff(name, c, vocab, seq, target)
    model = build_lm(model_cfg(name, c, vocab, seq, d_ff), seed)
    Trainer(model, task, TrainConfig(steps=c.steps, lr=c.lr, warmup=min(20, c.steps // 4),
                                     log_every=c.steps, progress=False)).run()
    ev = evaluate(model, val_task, c.eval_batches)
    return {"params": n_params(model), "d_ff": d_ff,
            "kv_bytes_per_token": model.kv_bytes_per_token(4), **ev}


def pareto(rows: list[dict], key: str, higher_better: bool) -> list[str]:
    """Variants no other variant beats on both KV bytes (≤) and quality (≥, strictly on one)."""
    def better(a, b):  # a dominates b
        qa, qb = (a[key], b[key]) if higher_better else (-a[key], -b[key])
        return a["kv_bytes_per_token"] <= b["kv_bytes_per_token"] and qa >= qb and \
            (a["kv_bytes_per_token"] < b["kv_bytes_per_token"] or qa > qb)
    return [r["variant"] for r in rows if not any(better(o, r) for o in rows if o is not r)]


def run(quick: bool = True, out_dir: str = "experiments/results", seed: int = 0) -> dict:
    c = KVConfig.preset(quick, seed)
    r = Run("kv_sharing", out_dir, quick, seed)
    tables = {}
    for task_name in ("mqar", "text"):
        rows = []
        for name in c.variants:
            per_seed = []
            for s in c.seeds:
                if task_name == "mqar":
                    mk = lambda sd: MQAR(c.mqar_vocab, c.mqar_vocab, c.mqar_pairs,
                                         c.mqar_queries, c.batch_size, seed=sd)
                    task, val = mk(s), mk(10_000 + s)
                else:
                    task = ByteCorpus(c.text_seq_len, c.batch_size, seed=s)
                    val = ByteCorpus(c.text_seq_len, c.batch_size, split="val", seed=s)
                per_seed.append(train_eval(name, c, task, val, s))
            accs = [x["acc"] for x in per_seed]
            losses = [x["loss"] for x in per_seed]
            rows.append({"variant": name, "params": per_seed[0]["params"],
                         "d_ff": per_seed[0]["d_ff"],
                         "kv_bytes_per_token": per_seed[0]["kv_bytes_per_token"],
                         "acc": statistics.fmean(accs),
                         "acc_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                         "loss": statistics.fmean(losses),
                         "loss_sd": statistics.stdev(losses) if len(losses) > 1 else 0.0,
                         "per_seed": per_seed})
        front = pareto(rows, "acc", True) if task_name == "mqar" else pareto(rows, "loss", False)
        tables[task_name] = {"rows": rows, "pareto": front}
    result = {"config": asdict(c), "tables": tables, "markdown": markdown(tables)}
    plt = pyplot()
    if plt is not None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for ax, (tn, key) in zip(axes, (("mqar", "acc"), ("text", "loss"))):
            for row in tables[tn]["rows"]:
                ax.errorbar(row["kv_bytes_per_token"], row[key], yerr=row[f"{key}_sd"], fmt="o")
                ax.annotate(row["variant"], (row["kv_bytes_per_token"], row[key]), fontsize=8)
            ax.set(xlabel="KV cache bytes / token (fp32, all layers)",
                   ylabel="MQAR accuracy" if key == "acc" else "val loss (nats/byte)",
                   title=f"{tn}: Pareto front {', '.join(tables[tn]['pareto'])}")
        result["plot"] = save_figure(fig, r.png_path)
    return r.finish(result)


def markdown(tables: dict) -> str:
    lines = ["| variant | params | KV B/token | MQAR acc | text val loss | Pareto |",
             "|---|---|---|---|---|---|"]
    text = {row["variant"]: row for row in tables["text"]["rows"]}
    for row in tables["mqar"]["rows"]:
        t = text[row["variant"]]
        mark = "/".join(k for k in ("mqar", "text") if row["variant"] in tables[k]["pareto"])
        lines.append(f"| {row['variant']} | {row['params']} | {row['kv_bytes_per_token']} | "
                     f"{row['acc']:.3f} ± {row['acc_sd']:.3f} | {t['loss']:.3f} ± "
                     f"{t['loss_sd']:.3f} | {mark or '-'} |")
    return "\n".join(lines)
