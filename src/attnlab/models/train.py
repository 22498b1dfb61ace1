"""A small deterministic trainer for TinyLM on CPU.

AdamW (Loshchilov & Hutter 2019; weight decay on matrices only) with linear warmup then
cosine decay to `min_lr_ratio·lr`, gradient clipping, next-token cross-entropy (masked
where the task says so). Deterministic: parameters come from `seed`, batch `s` from the
task's (seed, s) generator, and a checkpoint (safetensors: model + AdamW moments, JSON
metadata: step, configs, metrics) restores everything the next step reads, so a resumed
run reproduces the uninterrupted run's losses bit for bit (same machine, same threads).
Metrics go to `metrics.jsonl` in `out_dir` and to `Trainer.history`.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from .._checks import check_positive_int
from .data import Batch
from .lm import TinyLM


class Task(Protocol):
    vocab_size: int

    def batch(self, step: int) -> Batch: ...


@dataclass
class TrainConfig:
    steps: int
    lr: float = 3e-3
    warmup: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    log_every: int = 10
    eval_every: int = 0  # 0 = never call the evaluation callback during training
    checkpoint_every: int = 0  # 0 = only when `save` is called
    progress: bool = True  # rich progress bar

    def __post_init__(self) -> None:
        check_positive_int("steps", self.steps)
        check_positive_int("warmup", self.warmup, minimum=0)
        check_positive_int("log_every", self.log_every)
        check_positive_int("eval_every", self.eval_every, minimum=0)
        check_positive_int("checkpoint_every", self.checkpoint_every, minimum=0)
        if not self.lr > 0:
            raise ValueError(f"lr ({self.lr}) must be > 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio ({self.min_lr_ratio}) must be in [0, 1]")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay ({self.weight_decay}) must be >= 0")
        if not self.grad_clip > 0:
            raise ValueError(f"grad_clip ({self.grad_clip}) must be > 0")
        self.betas = tuple(self.betas)

    def lr_at(self, step: int) -> float:
        """Linear warmup over `warmup` steps, then cosine from lr to min_lr_ratio·lr."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        t = (step - self.warmup) / max(1, self.steps - self.warmup)
        lo = self.min_lr_ratio * self.lr
        return lo + 0.5 * (self.lr - lo) * (1 + math.cos(math.pi * min(1.0, t)))


def task_loss(model: TinyLM, batch: Batch) -> torch.Tensor:
    """Mean next-token cross-entropy over the batch's scored targets."""
    logits = model(batch.tokens)  # (B, N, V)
    V = logits.shape[-1]
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), batch.tokens[:, 1:].reshape(-1),
                           reduction="none")  # (B·(N−1),)
    if batch.loss_mask is None:
        return loss.mean()
    m = batch.loss_mask.reshape(-1).to(loss.dtype)
    return (loss * m).sum() / m.sum().clamp_min(1.0)


EVAL_OFFSET = 10**9  # evaluation batches use steps no training run reaches


@torch.no_grad()
def evaluate(model: TinyLM, task: Task, n_batches: int = 1) -> dict[str, float]:
    """Mean loss and accuracy over `n_batches` held-out batches (steps EVAL_OFFSET + i)."""
    check_positive_int("n_batches", n_batches)
    was = model.training
    model.eval()
    loss = acc = 0.0
    for i in range(n_batches):
        b = task.batch(EVAL_OFFSET + i)
        loss += float(task_loss(model, b)) / n_batches
        acc += masked_accuracy(model, b) / n_batches
    model.train(was)
    return {"loss": loss, "acc": acc}


@torch.no_grad()
def masked_accuracy(model: TinyLM, batch: Batch) -> float:
    """Fraction of scored targets predicted by argmax."""
    logits = model(batch.tokens)[:, :-1]  # (B, N−1, V)
    hit = logits.argmax(-1) == batch.tokens[:, 1:]  # (B, N−1)
    mask = torch.ones_like(hit) if batch.loss_mask is None else batch.loss_mask
    return float(hit[mask].float().mean())


def config_fingerprint(model: TinyLM) -> str:
    """What a checkpoint must match: the model config and every parameter's shape."""
    shapes = {n: list(p.shape) for n, p in model.state_dict().items()}
    return json.dumps({"config": repr(model.cfg), "shapes": shapes}, sort_keys=True)


class Trainer:
    """train(model, task) under a TrainConfig; `run()` trains to `cfg.steps` (or `until`)."""

    def __init__(self, model: TinyLM, task: Task, cfg: TrainConfig, *,
                 out_dir: str | Path | None = None,
                 eval_fn: Callable[[TinyLM, int], dict] | None = None):
        if not isinstance(model, TinyLM):
            raise TypeError(f"model must be a TinyLM, got {type(model).__name__}")
        if not isinstance(cfg, TrainConfig):
            raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
        if task.vocab_size > model.cfg.vocab_size:
            raise ValueError(f"task vocab_size ({task.vocab_size}) exceeds the model's "
                             f"vocab_size ({model.cfg.vocab_size})")
        seq_len = getattr(task, "seq_len", None)
        if seq_len is not None and seq_len > model.cfg.max_seq_len:
            raise ValueError(f"task seq_len ({seq_len}) exceeds max_seq_len "
                             f"({model.cfg.max_seq_len})")
        self.model, self.task, self.cfg, self.eval_fn = model, task, cfg, eval_fn
        self.out_dir = None if out_dir is None else Path(out_dir)
        decay = [p for p in model.parameters() if p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.ndim < 2]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=cfg.betas, foreach=False)
        self.step = 0
        self.history: list[dict] = []

    def train_step(self) -> float:
        lr = self.cfg.lr_at(self.step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.model.train()
        loss = task_loss(self.model, self.task.batch(self.step))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.step += 1
        return float(loss.detach())

    def run(self, until: int | None = None) -> list[dict]:
        """Train from the current step to `until` (default cfg.steps); returns history."""
        end = self.cfg.steps if until is None else until
        check_positive_int("until", end, minimum=self.step)
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        cols = [TextColumn("train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn()]
        with Progress(*cols, disable=not self.cfg.progress, transient=True) as bar:
            tid = bar.add_task("train", total=end, completed=self.step, loss=float("nan"))
            while self.step < end:
                loss = self.train_step()
                bar.update(tid, completed=self.step, loss=loss)
                if self.step % self.cfg.log_every == 0 or self.step == end:
                    self._log({"step": self.step, "loss": loss, "lr": self.cfg.lr_at(self.step - 1)})
                if self.eval_fn is not None and self.cfg.eval_every and \
                        self.step % self.cfg.eval_every == 0:
                    was = self.model.training
                    self.model.eval()
                    self._log({"step": self.step, **self.eval_fn(self.model, self.step)})
                    self.model.train(was)
                if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
                    self.save()
        self.model.eval()
        return self.history

    def _log(self, rec: dict) -> None:
        self.history.append(rec)
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")

    # checkpoints ---------------------------------------------------------------
    def save(self, path: str | Path | None = None) -> Path:
        """Write `<out_dir>/step_<n>.safetensors` (or `path`): model, AdamW state, metadata."""
        from safetensors.torch import save_file

        if path is None:
            if self.out_dir is None:
                raise ValueError("save() needs a path when the trainer has no out_dir")
            path = self.out_dir / f"step_{self.step:06d}.safetensors"
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"model.{k}": v.detach().contiguous().clone()
                   for k, v in self.model.state_dict().items()}
        sd = self.opt.state_dict()
        for pid, st in sd["state"].items():
            for name, t in st.items():
                tensors[f"opt.{pid}.{name}"] = t.detach().contiguous().clone()
        groups = [{k: v for k, v in g.items() if k != "params"} | {"params": g["params"]}
                  for g in sd["param_groups"]]
        meta = {"step": str(self.step), "fingerprint": config_fingerprint(self.model),
                "train_config": json.dumps(asdict(self.cfg)),
                "param_groups": json.dumps(groups), "history": json.dumps(self.history)}
        save_file(tensors, str(path), metadata=meta)
        return path

    def load(self, path: str | Path) -> None:
        """Restore a checkpoint written by `save` for a model of the same config."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            if meta is None or "fingerprint" not in meta:
                raise ValueError(f"{path} is not a trainer checkpoint (no metadata)")
            if meta["fingerprint"] != config_fingerprint(self.model):
                raise ValueError(f"checkpoint {path} was written for another model config; "
                                 f"expected {self.model.cfg!r}")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(model_sd, strict=True)
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, pid, name = k.split(".", 2)
                state.setdefault(int(pid), {})[name] = v
        self.opt.load_state_dict({"state": state,
                                  "param_groups": json.loads(meta["param_groups"])})
        self.step = int(meta["step"])
        self.history = json.loads(meta["history"])
