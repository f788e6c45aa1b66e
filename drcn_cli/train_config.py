"""The options of a training run: ``TrainConfig``, which of them make the recipe, and what values can work."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = [
    "LOSSES",
    "OPTIMIZERS",
    "RECIPE_FIELDS",
    "SCHEDULES",
    "TrainConfig",
    "check_config",
    "read_recipe",
    "recipe_options",
]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")
LOSSES = ("l2", "l1")


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run. Fractions (warmup, alpha_decay) are of ``steps``."""

    # data
    data: tuple[str, ...] = ()  # folders of HR images
    pack: str | None = None  # .npz of the images' luminance: read if it exists, else written from `data`
    val: str | None = None  # folder of HR validation images (Set5)
    scales: tuple[float, ...] = (2.0, 3.0, 4.0)
    downscales: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6)
    patch_size: int = 41
    stride: int = 21
    augment: bool = True  # the 8 flips / 90-degree rotations, drawn per patch
    quantize_lr: bool = True  # round the LR image to 8 bits, as an image file is
    # model
    features: int = 256
    recursions: int = 16
    init: str | None = None  # weights file to start from
    # optimisation
    batch_size: int = 64  # over all processes together
    steps: int = 30000
    optimizer: str = "adam"
    lr: float = 2e-4
    lr_min: float = 2e-6
    schedule: str = "cosine"
    warmup: float = 0.02
    weight_decay: float = 0.0  # on conv kernels only; coupled L2 under Adam kills dead channels (docs/training.md)
    grad_clip: float = 1.0  # max global gradient norm, a guard against spikes; 0 = off
    alpha_start: float = 1.0
    alpha_end: float = 0.0
    alpha_decay: float = 0.25
    loss: str = "l1"  # measured better than the paper's l2 (docs/training.md)
    seed: int = 0
    # run
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    checkpoint_dir: str | None = None
    checkpoint_every: int = 1000
    val_every: int = 1000
    log_every: int = 25
    out: str | None = None  # the exported weights: best validated, or the latest without `val`
    resume: str | None = None  # checkpoint folder to continue from
    stop_at: int | None = None  # end this run after this step (a later --resume continues)
    time_limit: float | None = None  # seconds; checked every log_every steps, then checkpoint and stop
    overwrite: bool = False  # allow replacing an existing `out` / checkpoint that this run did not resume


# Fields that define the optimisation path: a resumed run must keep them, or it would not continue the same run.
RECIPE_FIELDS = (
    "scales", "downscales", "patch_size", "stride", "augment", "quantize_lr", "features", "recursions",
    "batch_size", "optimizer", "lr", "lr_min", "schedule", "warmup", "weight_decay", "grad_clip",
    "alpha_start", "alpha_end", "alpha_decay", "loss", "seed",
)  # fmt: skip


def check_config(cfg: TrainConfig) -> None:
    """ConfigError (a usage error) naming the first option of ``cfg`` that cannot work."""
    problems = []
    if not cfg.data and not cfg.pack:
        problems.append("no training data (give data folders or a pack)")
    if not cfg.scales or any(not math.isfinite(s) or s <= 1 for s in cfg.scales):
        problems.append(f"scales must be > 1, got {cfg.scales}")
    if cfg.patch_size < 3 or cfg.stride < 1:
        problems.append(f"patch size must be >= 3 and stride >= 1, got {cfg.patch_size} and {cfg.stride}")
    if cfg.features < 1 or cfg.recursions < 1:
        problems.append(f"features and recursions must be >= 1, got {cfg.features} and {cfg.recursions}")
    if cfg.batch_size < 1 or cfg.steps < 1:
        problems.append(f"batch size and steps must be >= 1, got {cfg.batch_size} and {cfg.steps}")
    if cfg.optimizer not in OPTIMIZERS:
        problems.append(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {cfg.optimizer!r}")
    if cfg.schedule not in SCHEDULES:
        problems.append(f"schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")
    if cfg.loss not in LOSSES:
        problems.append(f"loss must be one of {', '.join(LOSSES)}, got {cfg.loss!r}")
    if not (cfg.lr > 0 and 0 <= cfg.lr_min <= cfg.lr):
        problems.append(f"need lr > 0 and 0 <= lr_min <= lr, got {cfg.lr:g} and {cfg.lr_min:g}")
    if not (0 <= cfg.warmup <= 1 and 0 <= cfg.alpha_decay <= 1):
        problems.append("warmup and alpha_decay are fractions of the steps, in [0, 1]")
    if not (0 <= cfg.alpha_end <= 1 and 0 <= cfg.alpha_start <= 1):
        problems.append("alpha_start and alpha_end must be in [0, 1]")
    if cfg.weight_decay < 0 or cfg.grad_clip < 0:
        problems.append("weight decay and grad clip must be >= 0")
    if cfg.checkpoint_every < 0 or cfg.val_every < 0 or cfg.log_every < 1:
        problems.append("checkpoint_every and val_every must be >= 0 and log_every >= 1")
    if problems:
        raise ConfigError(problems[0])


# -- recipe files ------------------------------------------------------------------------------------------------

# What each TrainConfig annotation accepts from a TOML recipe (TOML has no null: a field is set or left out).
_TOML_TYPES: dict[str, tuple[type | tuple[type, ...], str]] = {
    "int": (int, "a whole number"),
    "int | None": (int, "a whole number"),
    "float": ((int, float), "a number"),
    "float | None": ((int, float), "a number"),
    "bool": (bool, "true or false"),
    "str": (str, "a string"),
    "str | None": (str, "a string"),
    "tuple[str, ...]": (str, "a list of strings"),
    "tuple[float, ...]": ((int, float), "a list of numbers"),
}


def _fits(value: Any, annotation: str) -> bool:
    kind = _TOML_TYPES[annotation][0]
    if annotation.startswith("tuple"):
        return isinstance(value, list) and all(isinstance(v, kind) and not isinstance(v, bool) for v in value)
    return isinstance(value, kind) and (annotation == "bool" or not isinstance(value, bool))


def recipe_options(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """TrainConfig fields from a recipe's table (keys as the fields, ``-`` allowed for ``_``; lists become
    tuples). Raises ConfigError naming ``source`` and the first key that is unknown or of the wrong type."""
    fields = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    options = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in fields or name == "resume":
            known = ", ".join(name for name in fields if name != "resume")
            raise ConfigError(f"{source}: unknown option {key!r}; a recipe holds these: {known}")
        if not _fits(value, fields[name]):
            raise ConfigError(f"{source}: {key!r} should be {_TOML_TYPES[fields[name]][1]}, got {value!r}")
        if fields[name].startswith(("float", "tuple[float")):  # TOML's 2 is an int; the field holds floats
            value = [float(v) for v in value] if isinstance(value, list) else float(value)
        options[name] = tuple(value) if isinstance(value, list) else value
    return options


def read_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """The options of a TOML recipe file (see :func:`recipe_options`); ConfigError if it cannot be read."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise ConfigError("recipe files need Python 3.11 or later (tomllib)") from None
    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the recipe ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not a TOML recipe ({exc})") from None
    return recipe_options(values, str(path))
