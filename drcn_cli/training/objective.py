"""What training optimises, step by step: the paper's recursive supervision (eq. 11-13), the schedules of the
learning rate and of alpha, each step's batch seed, and the moving average of the weights.

The objective:

    L = alpha * mean_d loss(y_d, y) + (1 - alpha) * loss(sum_d w_d y_d, y) + weight decay

with ``loss`` the mean squared error (the paper) or the mean absolute error, and alpha decaying linearly
from ``alpha_start`` to ``alpha_end`` over the first ``alpha_decay`` of the steps. The weight decay is the
paper's beta * |theta|^2 on the conv kernels, applied as MatConvNet did (the gradient gets ``beta * theta``)
by the optimiser's ``weight_decay`` (coupled for adam and sgd, decoupled for adamw).

The learning rate and alpha are pure functions of the step; each step's batch is drawn from a generator
seeded by (seed, step), the same on every device and for any number of processes. A checkpoint therefore
needs only the weights, the optimiser moments and the step to continue bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..model import DRCN
from ..weights.files import TINY
from .config import TrainConfig

__all__ = ["alpha_at", "batch_seed", "ema_decay", "lr_at", "recursive_loss", "update_ema"]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of step ``step`` (0-based): linear warmup, then cosine from lr to lr_min (or constant)."""
    warmup = round(cfg.warmup * cfg.steps)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - warmup) / max(1, cfg.steps - warmup))
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1.0 + math.cos(math.pi * progress))


def alpha_at(step: int, cfg: TrainConfig) -> float:
    """Weight of the intermediate-prediction loss at step ``step``: linear from alpha_start to alpha_end."""
    span = round(cfg.alpha_decay * cfg.steps)
    if span <= 0:
        return cfg.alpha_end
    t = min(1.0, step / span)
    return cfg.alpha_start + (cfg.alpha_end - cfg.alpha_start) * t


def batch_seed(seed: int, step: int) -> int:
    """The seed of step ``step``'s batch draw: well mixed, so neighbouring steps draw unrelated batches."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1, np.uint64)[0]) & (2**63 - 1)


def recursive_loss(
    predictions: torch.Tensor, final: torch.Tensor, target: torch.Tensor, alpha: float, kind: str = "l2"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, intermediate, final) losses, computed in float32.

    predictions (D, N, 1, H, W), final and target (N, 1, H, W). ``kind`` 'l2' is the mean squared error of
    the paper (without its factor 1/2), 'l1' the mean absolute error.
    """
    error = (lambda d: d.square()) if kind == "l2" else (lambda d: d.abs())
    intermediate = error(predictions.float() - target.unsqueeze(0)).mean()
    last = error(final.float() - target).mean()
    return alpha * intermediate + (1.0 - alpha) * last, intermediate, last


def ema_decay(decay: float, step: int) -> float:
    """The decay used after optimiser step ``step`` (0-based): ``decay``, but lower over the first steps, so
    that the average does not hold on to the starting weights (timm's warm-up: (1 + step) / (10 + step))."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: DRCN, model: DRCN, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, for every parameter."""
    for average, param in zip(ema.parameters(), model.parameters(), strict=True):
        average.lerp_(param, 1.0 - decay)


@torch.no_grad()
def _zero_tiny_(params: Sequence[torch.Tensor]) -> None:
    """Zero the weights that decayed below TINY: x86 multiplies subnormals on a slow path that made fp32 inference
    many times slower, and torch's flush-to-zero reaches only the main thread (docs/training.md)."""
    for param in params:
        param.masked_fill_(param.abs() < TINY, 0.0)
