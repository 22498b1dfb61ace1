"""Shared pieces of the experiments: model builders, result files, optional plots."""
from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..models.config import ModelConfig
from ..models.lm import TinyLM


class NoMLP(nn.Module):
    """Stands in for a block's MLP in attention-only models (Elhage et al. 2021): adds 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def build_lm(cfg: ModelConfig, seed: int, attention_only: bool = False) -> TinyLM:
    """A TinyLM initialised from `seed`; attention-only drops every MLP (ModelConfig has no
    switch for that, so the MLPs are replaced before training and never hold parameters)."""
    torch.manual_seed(seed)
    model = TinyLM(cfg)
    if attention_only:
        for b in model.blocks:
            b.mlp = NoMLP()
    return model


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class Run:
    """Where an experiment writes and how it was invoked."""

    name: str
    out_dir: Path
    quick: bool
    seed: int = 0

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.t0 = time.perf_counter()

    @property
    def json_path(self) -> Path:
        return self.out_dir / f"{self.name}{'_quick' if self.quick else ''}.json"

    @property
    def png_path(self) -> Path:
        return self.out_dir / f"{self.name}{'_quick' if self.quick else ''}.png"

    def finish(self, result: dict) -> dict:
        """Add the command, machine and wall time, write the JSON; returns the result."""
        mode = "--quick" if self.quick else "--full"
        result = {"experiment": self.name, "mode": mode[2:],
                  "command": f"attnlab experiment {self.name} {mode} --seed {self.seed} "
                             f"--out {self.out_dir}",
                  "machine": f"{platform.processor() or platform.machine()}; "
                             f"{torch.get_num_threads()} torch threads; torch {torch.__version__}; "
                             f"Python {sys.version.split()[0]}",
                  "seconds": round(time.perf_counter() - self.t0, 2), **result}
        self.json_path.write_text(json.dumps(result, indent=1, default=float) + "\n")
        return result


def pyplot():
    """matplotlib.pyplot with the Agg backend, or None without the viz extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return str(path)
