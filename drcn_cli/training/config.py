"""The options of a training run: ``TrainConfig`` (also the declaration of `drcn train`'s options), which of them
make the recipe, and what values can work."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..weights.files import MAX_FEATURES, MAX_RECURSIONS

__all__ = [
    "LOSSES",
    "OPTIMIZERS",
    "PRECISIONS",
    "RECIPE_FIELDS",
    "SCHEDULES",
    "TrainConfig",
    "WIDENINGS",
    "check_config",
    "duration_seconds",
    "jpeg_range",
    "read_recipe",
    "recipe_options",
    "value_problem",
]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")
LOSSES = ("l2", "l1")
PRECISIONS = ("auto", "fp32", "bf16")
WIDENINGS = ("split", "signed", "fresh")  # drcn_cli.model.WIDEN_METHODS, repeated so that start-up needs no torch
# drcn_cli.inference.pipeline.MAX_SCALE, the largest factor `drcn upscale` takes, repeated for the same reason
MAX_SCALE = 32.0
MAX_BATCH = 65536  # patches per step: far above any GPU's need, below what would exhaust memory drawing the batch


# The `drcn train` options are generated from these fields' metadata (plain data; see drcn_cli.cli.train):
# help (only a field with help is an option; "{default}" in it is replaced by the default, else the default is
# appended as "(default: X)" when it is a value), panel, flag (instead of --field-name), short, min, max, metavar
# (the value's name in the help: an uppercase word), path ("file" or "dir"), choices and duration (a time limit:
# seconds in the field, minutes or a duration with units on the command line and in a recipe: duration_seconds).
_DATA = "Data"
_MODEL = "Model and recipe"
_RUN = "Run"


def _cli(help: str, panel: str, **settings: Any) -> dict[str, Any]:
    return {"help": help, "panel": panel, **settings}


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run. Fractions (warmup, alpha_decay) are of ``steps``."""

    # data
    data: tuple[str, ...] = field(default=(), metadata=_cli(
        "Folder of HR training images; repeat for several (T91, BSD200).", _DATA, path="dir", metavar="DIR"))
    val: str | None = field(default=None, metadata=_cli(
        "Folder of HR validation images (Set5).", _DATA, path="dir", metavar="DIR"))
    pack: str | None = field(default=None, metadata=_cli(
        "The training images as one .npz (their luminance, and their colour for --jpeg-quality): read if it "
        "exists, else written from --data.", _DATA, path="file", metavar="FILE"))
    scales: tuple[float, ...] = field(default=(2.0, 3.0, 4.0), metadata=_cli(
        "Training scale; repeat for one model of several.", _DATA, flag="--scale", short="-s", metavar="SCALE"))
    downscales: tuple[float, ...] = field(default=(1.0, 0.9, 0.8, 0.7, 0.6), metadata=_cli(
        "HR downscale augmentation factor; repeat.", _DATA, flag="--downscale", metavar="FACTOR"))
    patch_size: int = field(default=41, metadata=_cli("Patch side.", _DATA, min=3, metavar="N"))
    stride: int = field(default=21, metadata=_cli("Patch grid stride.", _DATA, min=1, metavar="N"))
    augment: bool = True  # the 8 flips / 90-degree rotations, drawn per patch
    quantize_lr: bool = True  # round the LR image to 8 bits, as an image file is
    jpeg_quality: str | None = field(default=None, metadata=_cli(
        "Train for photos: save the LR images as JPEG at a quality drawn from LO..HI (e.g. 30..95) or at Q, "
        "before the network sees them (default: off, the paper's clean LR).", _DATA, metavar="LO..HI"))
    jpeg_clean: float = field(default=0.25, metadata=_cli(
        "With --jpeg-quality: the share of inputs left clean.", _DATA, min=0.0, max=1.0, metavar="SHARE"))
    jpeg_copies: int = field(default=2, metadata=_cli(
        "With --jpeg-quality: degraded inputs per image, downscale and scale, each drawn anew.", _DATA, min=1,
        metavar="N"))
    val_jpeg: int = field(default=75, metadata=_cli(
        "With --jpeg-quality: the JPEG quality of the validation set scored beside the clean one.", _DATA,
        min=1, max=100, metavar="Q"))
    # model
    init: str | None = field(default=None, metadata=_cli(
        "Start from these weights: a model name or a .safetensors path (a narrower model, e.g. drcn-lite "
        "for -F 256, is widened: see --widen).", _MODEL, metavar="WEIGHTS"))
    widen: str = field(default="split", metadata=_cli(
        "How a narrower --init grows: split (each new channel a copy of an old one, all alive from the first "
        "step), signed (split, the copies read with weights of both signs so that they move apart) or fresh (new "
        "channels from zero, which stayed near zero in a CPU run).", _MODEL,
        choices=WIDENINGS))
    features: int = field(default=256, metadata=_cli(
        "Filters per conv (default: {default}, or --init's).", _MODEL, short="-F", min=1, max=MAX_FEATURES,
        metavar="N"))
    recursions: int = field(default=16, metadata=_cli(
        "Recursions (default: {default}, or --init's).", _MODEL, short="-D", min=1, max=MAX_RECURSIONS, metavar="K"))
    # optimisation
    batch_size: int = field(default=64, metadata=_cli("Patches per step, all processes.", _MODEL, short="-b", min=1,
                                                      max=MAX_BATCH, metavar="N"))
    steps: int = field(default=30000, metadata=_cli("Total optimiser steps.", _MODEL, min=1, metavar="N"))
    lr: float = field(default=2e-4, metadata=_cli("Peak learning rate.", _MODEL, min=0.0, metavar="LR"))
    lr_min: float = field(default=2e-6, metadata=_cli("Final learning rate of the cosine.", _MODEL, min=0.0,
                                                      metavar="LR"))
    schedule: str = field(default="cosine", metadata=_cli(
        "cosine or constant, after the warmup.", _MODEL, choices=SCHEDULES))
    warmup: float = field(default=0.02, metadata=_cli("Warmup, fraction of steps.", _MODEL, min=0.0, max=1.0,
                                                      metavar="FRACTION"))
    optimizer: str = field(default="adam", metadata=_cli(
        "adam, adamw or sgd (momentum 0.9).", _MODEL, choices=OPTIMIZERS))
    loss: str = field(default="l1", metadata=_cli(  # measured better than the paper's l2 (docs/training.md)
        "l1 (mean absolute error) or l2 (the paper's MSE).", _MODEL, choices=LOSSES))
    # on conv kernels only; coupled L2 under Adam kills dead channels (docs/training.md)
    weight_decay: float = field(default=0.0, metadata=_cli("L2 on conv kernels; use with adamw.", _MODEL, min=0.0,
                                                            metavar="DECAY"))
    # the max global gradient norm: a guard against spikes
    grad_clip: float = field(default=1.0, metadata=_cli("Max gradient norm, 0 = off.", _MODEL, min=0.0, metavar="NORM"))
    # an average of the weights scores better than the weights of any one step while the lr is high
    # (docs/training.md); 0.999 averages about the last 1,000 steps
    ema: float = field(default=0.0, metadata=_cli(
        "Decay of an exponential moving average of the weights, which validation scores and --out gets "
        "(0 = off, else in (0, 1); 0.999 averages about the last 1,000 steps).", _MODEL, min=0.0, metavar="DECAY"))
    alpha_start: float = 1.0
    alpha_end: float = 0.0
    alpha_decay: float = field(default=0.25, metadata=_cli(
        "alpha goes from 1 to 0 over this fraction of the steps.", _MODEL, min=0.0, max=1.0, metavar="FRACTION"))
    seed: int = field(default=0, metadata=_cli("Random seed of the initialisation and the batches.", _MODEL, min=0,
                                               metavar="N"))
    # run
    out: str | None = field(default=None, metadata=_cli(
        "Exported weights (.safetensors): the best validated, or the latest without --val.", _RUN, short="-o",
        path="file", metavar="FILE"))
    checkpoint_dir: str | None = field(default=None, metadata=_cli(
        "Checkpoint folder (default: .checkpoints/<out name>, or the --resume folder).", _RUN, path="dir",
        metavar="DIR"))
    resume: str | None = field(default=None, metadata=_cli(
        "Continue the run saved in this checkpoint folder, exactly where it stopped.", _RUN, path="dir", metavar="DIR"))
    val_every: int = field(default=1000, metadata=_cli(
        "Validate every N steps, 0 = only at the end.", _RUN, min=0, metavar="N"))
    checkpoint_every: int = field(default=1000, metadata=_cli(
        "Checkpoint every N steps (and at the end).", _RUN, min=0, metavar="N"))
    log_every: int = field(default=25, metadata=_cli("Log line every N steps.", _RUN, min=1, metavar="N"))
    # seconds here; on the command line and in a recipe minutes, or a duration with units (duration_seconds).
    # Checked every log_every steps, then checkpoint and stop. No min here: value_problem refuses 0 and below for
    # the option and a recipe alike (the Python API may give 0: stop at the first log step)
    time_limit: float | None = field(default=None, metadata=_cli(
        "Minutes (90, 7.5) or a duration with units h, m, s (2h, 1h30m, 45s), here and as a recipe's time_limit; "
        "then checkpoint and stop (continue with --resume).", _RUN, metavar="DURATION", duration=True))
    stop_at: int | None = field(default=None, metadata=_cli(  # a later --resume continues
        "Stop after this step (continue with --resume).", _RUN, min=1, metavar="STEP"))
    device: str = field(default="auto", metadata=_cli("auto, cpu, cuda, cuda:N, mps.", _RUN, metavar="DEVICE"))
    precision: str = field(default="auto", metadata=_cli(
        "auto (bf16 on CUDA and on CPUs with bf16 units, else fp32), fp32, bf16.", _RUN, choices=PRECISIONS))
    threads: int | None = field(default=None, metadata=_cli(  # at most drcn_cli.inference.device.max_threads()
        "CPU threads for torch, at most 4 per CPU (default: torch's).", _RUN, min=0, metavar="N"))
    # allow replacing an existing `out` / checkpoint that this run did not resume
    overwrite: bool = field(default=False, metadata=_cli(
        "Replace an existing --out or checkpoint of another run.", _RUN))


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}

# Fields that define the optimisation path: a resumed run must keep them, or it would not continue the same run.
RECIPE_FIELDS = (
    "scales", "downscales", "patch_size", "stride", "augment", "quantize_lr", "jpeg_quality", "jpeg_clean",
    "jpeg_copies", "features", "recursions",
    "batch_size", "optimizer", "lr", "lr_min", "schedule", "warmup", "weight_decay", "grad_clip",
    "alpha_start", "alpha_end", "alpha_decay", "loss", "seed", "ema",
)  # fmt: skip


def jpeg_range(text: str) -> tuple[int, int]:
    """``"LO..HI"`` or ``"Q"`` -> (lo, hi), qualities in 1..100. Raises ConfigError."""
    lo, sep, hi = text.strip().partition("..")
    try:
        bounds = (int(lo), int(hi)) if sep else (int(lo), int(lo))
    except ValueError:
        raise ConfigError(f"JPEG quality must be LO..HI or Q (whole numbers, e.g. 30..95), got {text!r}") from None
    if not 1 <= bounds[0] <= bounds[1] <= 100:
        raise ConfigError(f"JPEG quality must be LO..HI with 1 <= LO <= HI <= 100, got {text!r}")
    return bounds


_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([hms])")
_DURATION_FORMS = "must be minutes (90, 7.5) or a duration with units h, m, s (2h, 1h30m, 45s)"


def duration_seconds(value: str | float) -> float:
    """A time limit as `drcn train --time-limit` and a recipe's ``time_limit`` give it, in seconds: a number of
    minutes (``90``, ``7.5``, ``"90"``), or numbers with units h, m and s, each once and in that order (``"2h"``,
    ``"1h30m"``, ``"1.5h"``, ``"45s"``; case and spaces ignored). ConfigError ("must be ...") for anything else.
    Not checked here: that it is finite and positive (:func:`value_problem`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{_DURATION_FORMS}, got {value!r}")
    text = "".join(value.split()).lower() if isinstance(value, str) else value
    try:
        return float(text) * 60.0
    except OverflowError:  # an integer beyond any float
        return math.inf
    except ValueError:
        pass
    parts = _DURATION_PART.findall(str(text))
    units = [unit for _, unit in parts]
    if not parts or "".join(n + u for n, u in parts) != text or units != sorted(set(units), key="hms".index):
        raise ConfigError(f"{_DURATION_FORMS}, got {value!r}")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def _duration_problem(value: Any, api: bool) -> str | None:
    """value_problem of a time limit: seconds from the Python API (0 passes: stop at the first log step), else
    what :func:`duration_seconds` takes; finite and positive. The value is shown as it was given."""
    if api and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return f"must be a number of seconds, got {value!r}"
    if isinstance(value, str) and not value.strip():
        return "must not be empty (an unset shell variable?)"
    try:
        seconds = float(value) if api else duration_seconds(value)
    except ConfigError as exc:
        return str(exc)
    except OverflowError:
        seconds = math.inf
    shown = value.strip() if isinstance(value, str) else _shown(value)
    if isinstance(value, int) and not math.isfinite(seconds):
        shown = "an integer beyond any float"
    if not math.isfinite(seconds):
        return f"must be a finite number, got {shown}"
    if seconds > 0 or (api and seconds == 0):
        return None
    return f"must be positive, got {shown}"


# Bounds that a field's min/max cannot say (an open end), or that the help need not show: low (excluded), high
# (included) and what they say.
_BOUNDS: dict[str, tuple[float, float, str]] = {
    "scales": (1.0, MAX_SCALE, f"must be above 1 and at most {MAX_SCALE:g}"),
    "downscales": (0.0, 1.0, "must be above 0 and at most 1"),
    "lr": (0.0, math.inf, "must be positive"),
    "seed": (-1, 2**64 - 1, "must be a whole number from 0 to 2**64 - 1"),  # what torch.manual_seed takes
}


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else repr(value) if isinstance(value, str) else str(value)


def value_problem(name: str, value: Any, *, api: bool = False) -> str | None:
    """Why ``value`` cannot be the TrainConfig field ``name``, as a phrase about the value ("must be a finite
    number, got inf"), or None; each item of a tuple is checked. NaN and infinities, an empty string, a value
    outside the field's min/max or its bounds are refused; None and flags pass (the field's own default). A time
    limit is minutes or a duration with units (:func:`duration_seconds`), or with ``api`` (a TrainConfig built in
    Python) seconds, where 0 passes: it stops the run at its first log step.

    The one check of a value: :func:`check_config` (the Python API, a resumed run), :func:`recipe_options` (a
    ``--config`` file, naming it) and `drcn train`'s options (naming the option) all call it. CPU threads are
    bounded by the machine: :func:`drcn_cli.inference.device.threads_problem`.
    """
    metadata = _FIELDS[name].metadata
    if metadata.get("duration") and value is not None:
        return _duration_problem(value, api)
    low, high = metadata.get("min"), metadata.get("max")
    bounds = _BOUNDS.get(name)
    for item in value if isinstance(value, (tuple, list)) else (value,):
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, str):
            if not item:
                return "must not be empty (an unset shell variable?)"
            continue
        if not isinstance(item, (int, float)):
            continue  # another type: the checks below, or the run, say what is wrong with it
        if isinstance(item, float) and not math.isfinite(item):
            return f"must be a finite number, got {item}"
        if low is not None and item < low:
            return f"must be >= {_shown(low)}, got {_shown(item)}"
        if high is not None and item > high:
            return f"must be <= {_shown(high)}, got {_shown(item)}"
        if bounds is not None and not bounds[0] < item <= bounds[1]:
            return f"{bounds[2]}, got {_shown(item)}"
    return None


def check_config(cfg: TrainConfig) -> None:
    """ConfigError (a usage error) naming the first option of ``cfg`` that cannot work."""
    problems = [
        f"{field.name} {problem}"
        for field in dataclasses.fields(cfg)
        if (problem := value_problem(field.name, getattr(cfg, field.name), api=True)) is not None
    ]
    if problems:  # a value that cannot be: the checks below would compare it
        raise ConfigError(problems[0])
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
    if cfg.widen not in WIDENINGS:
        problems.append(f"widen must be one of {', '.join(WIDENINGS)}, got {cfg.widen!r}")
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
    if not 0 <= cfg.ema < 1:
        problems.append(f"ema is a decay in [0, 1), got {cfg.ema:g}")
    if cfg.checkpoint_every < 0 or cfg.val_every < 0 or cfg.log_every < 1:
        problems.append("checkpoint_every and val_every must be >= 0 and log_every >= 1")
    if not 0 <= cfg.jpeg_clean <= 1 or cfg.jpeg_copies < 1 or not 1 <= cfg.val_jpeg <= 100:
        problems.append("jpeg_clean is a share in [0, 1], jpeg_copies >= 1 and val_jpeg a quality in 1..100")
    if cfg.jpeg_quality is not None:
        jpeg_range(cfg.jpeg_quality)
        if not cfg.quantize_lr:
            problems.append("the JPEG step needs quantize_lr (JPEG files hold 8-bit images)")
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
    tuples). Raises ConfigError naming ``source`` and the first key that is unknown, of the wrong type, or of a
    value that cannot work (:func:`value_problem`: ``lr = inf``, ``time_limit = -1`` ...)."""
    fields = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    options: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in fields or name == "resume":
            known = ", ".join(name for name in fields if name != "resume")
            raise ConfigError(f"{source}: unknown option {key!r}; a recipe holds these: {known}")
        if _FIELDS[name].metadata.get("duration"):  # as on the command line: minutes (90), or "2h", "1h30m"
            if (problem := value_problem(name, value)) is not None:
                raise ConfigError(f"{source}: {key!r} {problem}")
            options[name] = duration_seconds(value)
            continue
        if not _fits(value, fields[name]):
            raise ConfigError(f"{source}: {key!r} should be {_TOML_TYPES[fields[name]][1]}, got {value!r}")
        if fields[name].startswith(("float", "tuple[float")):  # TOML's 2 is an int; the field holds floats
            try:
                value = [float(v) for v in value] if isinstance(value, list) else float(value)
            except OverflowError:  # an integer beyond any float (TOML's integers have no limit here)
                raise ConfigError(f"{source}: {key!r} must be a finite number, got an integer beyond any "
                                  "float") from None
        if (problem := value_problem(name, value)) is not None:
            raise ConfigError(f"{source}: {key!r} {problem}")
        options[name] = tuple(value) if isinstance(value, list) else value
    return options


def read_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """The options of a TOML recipe file (see :func:`recipe_options`); ConfigError if it cannot be read."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # the same parser, as a package (a dependency on Python 3.10)
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the recipe ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not a TOML recipe ({exc})") from None
    except RecursionError:  # arrays nested thousands deep
        raise ConfigError(f"{path}: not a TOML recipe (nested too deeply)") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8 text; tomllib decodes the whole file first
        raise ConfigError(f"{path}: not a TOML recipe (not UTF-8 text: byte {exc.start} is "
                          f"0x{exc.object[exc.start]:02x})") from None
    return recipe_options(values, str(path))
