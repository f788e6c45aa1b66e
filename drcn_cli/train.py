"""Training DRCN: ``TrainConfig`` -> ``train(cfg, reporter)`` -> ``TrainResult``.

``train`` reads top to bottom: setup (processes, device, seeds) -> data -> model -> optimizer -> resume
-> loop (schedule, batch, loss, step) -> validation -> export of the best weights -> checkpoint.

The objective is the paper's recursive supervision (eq. 11-13):

    L = alpha * mean_d loss(y_d, y) + (1 - alpha) * loss(sum_d w_d y_d, y) + weight decay

with ``loss`` the mean squared error (the paper) or the mean absolute error, and alpha decaying linearly
from ``alpha_start`` to ``alpha_end`` over the first ``alpha_decay`` of the steps. The weight decay is the
paper's beta * |theta|^2 on the conv kernels, applied as MatConvNet did (the gradient gets ``beta * theta``)
by the optimiser's ``weight_decay`` (coupled for adam and sgd, decoupled for adamw).

The learning rate and alpha are pure functions of the step; each step's batch is drawn from a generator
seeded by (seed, step), the same on every device and for any number of processes. A checkpoint therefore
needs only the weights, the optimiser moments and the step to continue bit for bit.

Checkpoint folder (written into a temporary sibling folder, then swapped in by renaming):
    state.json               format, step, run config, best validation PSNR, data fingerprint, file list
    model.safetensors        the weights (readable by ``drcn upscale --weights``)
    optimizer-NN.safetensors the optimiser state, split so that no file exceeds 15 MiB
    rng.pt                   torch / CUDA / numpy / python RNG states as plain tensors (weights_only load)
    log.csv                  the training log up to this point (appended to while the run goes on)
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import (
    DataError,
    PatchBank,
    TrainImage,
    build_patch_bank,
    fingerprint,
    list_images,
    load_image8,
    load_images,
    load_pack,
    mod_crop_size,
    quantize,
    random_batch,
    sample_batch,
    save_pack,
)
from .device import autocast_dtype, resolve_device, resolve_precision, set_threads
from .device import memory_format as preferred_memory_format
from .metrics import SSIM_WINDOW, luma_8bit, psnr, ssim
from .model import DRCN, DRCNConfig
from .pipeline import InferenceSettings, prepare_for_inference, upscale_tensor
from .resize import imresize
from .weights import (
    TINY,
    WeightsError,
    canonical_state_dict,
    config_from_state_dict,
    load_weights,
    save_weights,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "RECIPE_FIELDS",
    "Checkpoint",
    "CheckpointError",
    "StepStats",
    "TrainConfig",
    "TrainReporter",
    "TrainResult",
    "TrainingError",
    "ValidationItem",
    "ValidationStats",
    "alpha_at",
    "batch_seed",
    "init_architecture",
    "lr_at",
    "prepare_validation",
    "read_checkpoint",
    "recursive_loss",
    "resume_config",
    "train",
    "validate",
    "write_checkpoint",
]

CHECKPOINT_FORMAT = "drcn-train-checkpoint/1"
MAX_FILE_BYTES = 15 * 2**20  # every checkpoint file stays under 16 MB, the device tool's per-file limit
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")
LOSSES = ("l2", "l1")


class TrainingError(RuntimeError):
    """Training cannot go on (the loss diverged, a process group failed ...)."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, does not match the run, or would overwrite something else."""


# ----------------------------------------------------------------------------------------------- config


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


def _check_config(cfg: TrainConfig) -> None:
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
        raise ValueError(problems[0])


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


# -------------------------------------------------------------------------------------------- reporting


@dataclass(frozen=True)
class StepStats:
    """Means over the last ``log_every`` steps; ``step`` counts completed steps."""

    step: int
    steps: int
    loss: float
    loss_intermediate: float
    loss_final: float
    grad_norm: float
    lr: float
    alpha: float
    steps_per_s: float
    elapsed_s: float  # training time over all resumed parts


@dataclass(frozen=True)
class ValidationStats:
    step: int
    psnr: dict[float, float]  # mean PSNR (dB) over the validation images, per scale
    ssim: dict[float, float]
    mean_psnr: float  # the mean over scales of `psnr`: what "best" compares
    best_psnr: float
    best_step: int
    seconds: float


class TrainReporter:
    """Receives the progress of :func:`train` (on the main process only). Every method here does nothing;
    subclass it to display or record what you need."""

    def preparing(self, done: int, total: int) -> None: ...

    def data_ready(self, patches: dict[float, int], images: int, megabytes: float, seconds: float) -> None: ...

    def started(self, start_step: int, cfg: TrainConfig, device: str, world_size: int, parameters: int) -> None: ...

    def step(self, stats: StepStats) -> None: ...

    def validated(self, stats: ValidationStats) -> None: ...

    def exported(self, path: Path, step: int, psnr: float | None) -> None: ...

    def checkpointed(self, path: Path, step: int) -> None: ...


@dataclass(frozen=True)
class TrainResult:
    step: int  # completed steps (== cfg.steps unless the run stopped early)
    finished: bool  # all cfg.steps done
    last_loss: float
    best_psnr: float | None
    best_step: int | None
    out: Path | None
    checkpoint: Path | None
    seconds: float  # wall time of this call


# ------------------------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class ValidationItem:
    name: str
    scale: float
    lr: torch.Tensor  # (C, h, w) float32 on 8-bit levels: the LR image a user would have
    hr: torch.Tensor  # (C, H, W) float32 on 8-bit levels, mod-cropped so that H = h * scale


def prepare_validation(paths: Sequence[str | os.PathLike], scales: Sequence[float]) -> list[ValidationItem]:
    """The bench protocol's degradation, done once: mod-crop, MATLAB bicubic down, LR rounded to 8 bits.

    Colour images stay RGB (the network sees the Y of their bicubic upsample, as in `drcn upscale`).
    """
    items = []
    for path in paths:
        image = load_image8(path)
        for scale in scales:
            (hh, ww), (lh, lw) = mod_crop_size(image.shape[-2], image.shape[-1], scale)
            if min(hh, ww) < SSIM_WINDOW + 2 * math.ceil(scale):
                raise DataError(f"{path}: too small to validate at x{scale:g}")
            hr = image[:, :hh, :ww]
            items.append(ValidationItem(Path(path).name, float(scale), quantize(imresize(hr, size=(lh, lw))), hr))
    return items


def validate(
    model: DRCN, items: Sequence[ValidationItem], settings: InferenceSettings
) -> dict[float, tuple[float, float]]:
    """Mean (PSNR dB, SSIM) per scale with the bench protocol: the output of the `drcn upscale` pipeline rounded
    to 8 bits, then MATLAB's 8-bit Y of both images, ``ceil(scale)`` border pixels cropped."""
    ready = prepare_for_inference(model, settings.device, settings.precision)  # a copy, as `drcn upscale` runs it
    scores: dict[float, list[tuple[float, float]]] = {}
    for item in items:
        size = (item.hr.shape[-2], item.hr.shape[-1])
        # An integer factor is passed on, so the resize uses it exactly as MATLAB would; a fractional one by size.
        factor = item.scale if item.scale.is_integer() else None
        sr = quantize(upscale_tensor(item.lr, size, ready, settings, scale=factor).cpu())
        y_sr, y_hr = luma_8bit(sr), luma_8bit(item.hr)
        border = math.ceil(item.scale)
        scores.setdefault(item.scale, []).append((psnr(y_sr, y_hr, border), ssim(y_sr, y_hr, border)))
    return {s: (sum(p for p, _ in v) / len(v), sum(q for _, q in v) / len(v)) for s, v in scores.items()}


# ------------------------------------------------------------------------------------------ checkpoints


@dataclass
class Checkpoint:
    path: Path
    state: dict[str, Any]  # state.json
    model: dict[str, torch.Tensor]
    optimizer: dict[int, dict[str, torch.Tensor]]  # the `state` part of an optimizer state dict
    rng: dict[str, torch.Tensor]


def _rng_state() -> dict[str, torch.Tensor]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_key": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": torch.tensor([int(np_state[2]), int(np_state[3])], dtype=torch.int64),
        "numpy_gauss": torch.tensor(float(np_state[4]), dtype=torch.float64),
        "python": torch.tensor(py_state[1], dtype=torch.int64),
        "python_gauss": torch.tensor(math.nan if py_state[2] is None else py_state[2], dtype=torch.float64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def _restore_rng(state: Mapping[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    key = state["numpy_key"].numpy().astype(np.uint32)
    pos, has_gauss = (int(v) for v in state["numpy_pos"])
    np.random.set_state(("MT19937", key, pos, has_gauss, float(state["numpy_gauss"])))
    gauss = float(state["python_gauss"])
    random.setstate((3, tuple(int(v) for v in state["python"]), None if math.isnan(gauss) else gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def _shard_tensors(
    tensors: Mapping[str, torch.Tensor], max_bytes: int
) -> tuple[list[dict[str, torch.Tensor]], dict[str, list[int]]]:
    """Group tensors into files of at most ``max_bytes``; a larger tensor is cut into flat pieces
    ``key@0``, ``key@1`` ... whose original shape is returned in the second value."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    used = 0
    split: dict[str, list[int]] = {}
    for key, tensor in tensors.items():
        tensor = tensor.detach().cpu().contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        if nbytes > max_bytes:
            split[key] = list(tensor.shape)
            per_piece = max(1, max_bytes // tensor.element_size())
            pieces = [(f"{key}@{i}", piece.clone()) for i, piece in enumerate(tensor.flatten().split(per_piece))]
        else:
            pieces = [(key, tensor)]
        for name, piece in pieces:
            size = piece.numel() * piece.element_size()
            if used + size > max_bytes and shards[-1]:
                shards.append({})
                used = 0
            shards[-1][name] = piece
            used += size
    return shards, split


def _unshard(parts: Mapping[str, torch.Tensor], split: Mapping[str, Sequence[int]]) -> dict[str, torch.Tensor]:
    tensors = {key: value for key, value in parts.items() if "@" not in key}
    for key, shape in split.items():
        pieces = []
        while f"{key}@{len(pieces)}" in parts:
            pieces.append(parts[f"{key}@{len(pieces)}"])
        tensors[key] = torch.cat(pieces).view(*shape)
    return tensors


def write_checkpoint(
    path: str | os.PathLike,
    model: DRCN,
    optimizer: torch.optim.Optimizer,
    state: Mapping[str, Any],
    log: str | os.PathLike | None = None,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> Path:
    """Write a checkpoint folder atomically: everything goes into a temporary sibling, which then replaces
    ``path`` (the old folder is removed only once the new one is in place). ``log`` is copied in."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    old = path.parent / f".{path.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_weights(model, tmp / "model.safetensors", {"checkpoint_step": str(state["step"])})
        flat = {
            f"{index}.{name}": value
            for index, entries in optimizer.state_dict()["state"].items()
            for name, value in entries.items()
            if isinstance(value, torch.Tensor)
        }
        shards, split = _shard_tensors(flat, max_file_bytes)
        files = []
        for number, shard in enumerate(shards):
            files.append(f"optimizer-{number:02d}.safetensors")
            save_file(shard, str(tmp / files[-1]))
        torch.save(_rng_state(), tmp / "rng.pt")
        if log is not None and Path(log).is_file():
            shutil.copyfile(log, tmp / "log.csv")
        document = {
            "format": CHECKPOINT_FORMAT,
            **state,
            "model": "model.safetensors",
            "optimizer_files": files,
            "optimizer_split": split,
        }
        (tmp / "state.json").write_text(json.dumps(document, indent=2) + "\n")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return path


def _read_state_json(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        hint = ""
        leftovers = sorted(path.parent.glob(f".{path.name}.old-*")) if path.parent.is_dir() else []
        if leftovers:
            hint = f" (an interrupted checkpoint write left {leftovers[0].name}; rename it to {path.name})"
        raise CheckpointError(f"{path}: no such checkpoint folder{hint}")
    state_file = path / "state.json"
    try:
        state = json.loads(state_file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not a drcn training checkpoint (no state.json)") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{state_file}: unreadable ({exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a drcn training checkpoint (state.json holds a {type(state).__name__})")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a drcn training checkpoint (format {state.get('format')!r})")
    _check_state(state, path)
    return state


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_file_name(value: Any) -> bool:
    # A plain name inside the checkpoint folder: never a path that could lead elsewhere.
    return isinstance(value, str) and value not in ("", ".", "..") and "/" not in value and "\\" not in value


def _is_shape_table(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(key, str) and isinstance(shape, list) and all(_is_int(n) and n >= 0 for n in shape)
        for key, shape in value.items()
    )


# state.json fields: (required, valid, what a valid value is). Others (lr, alpha, world_size ...) are informative.
_STATE_FIELDS: dict[str, tuple[bool, Any, str]] = {
    "step": (True, lambda v: _is_int(v) and v >= 0, "a whole number >= 0"),
    "model": (True, _is_file_name, "a file name"),
    "optimizer_files": (True, lambda v: isinstance(v, list) and all(map(_is_file_name, v)), "a list of file names"),
    "optimizer_split": (False, _is_shape_table, "a table of tensor shapes"),
    "config": (False, lambda v: isinstance(v, dict), "a table of options"),
    "best_psnr": (False, lambda v: v is None or _is_number(v), "a number or null"),
    "best_step": (False, lambda v: v is None or (_is_int(v) and v >= 0), "a whole number >= 0 or null"),
    "elapsed_s": (False, lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "init_steps": (False, lambda v: _is_int(v) and v >= 0, "a whole number >= 0"),
    "data_fingerprint": (False, lambda v: v is None or isinstance(v, str), "a string or null"),
}

# TrainConfig annotations -> whether a JSON value fits.
_CONFIG_TYPES: dict[str, tuple[Any, str]] = {
    "int": (_is_int, "a whole number"),
    "float": (_is_number, "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "str | None": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "int | None": (lambda v: v is None or _is_int(v), "a whole number or null"),
    "float | None": (lambda v: v is None or _is_number(v), "a number or null"),
    "tuple[str, ...]": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    "tuple[float, ...]": (lambda v: isinstance(v, list) and all(map(_is_number, v)), "a list of numbers"),
}


def _check_state(state: Mapping[str, Any], path: Path) -> None:
    """CheckpointError naming the first field of state.json (or of its config) that is missing or of the wrong
    type, so that a damaged checkpoint is refused before anything is loaded from it."""
    for name, (required, valid, wanted) in _STATE_FIELDS.items():
        if name not in state:
            if required:
                raise CheckpointError(f"{path}: damaged checkpoint (state.json has no {name!r})")
            continue
        if not valid(state[name]):
            raise CheckpointError(f"{path}: damaged checkpoint (state.json: {name!r} should be {wanted})")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for key, value in state.get("config", {}).items():
        if key in fields and str(fields[key].type) in _CONFIG_TYPES:
            valid, wanted = _CONFIG_TYPES[str(fields[key].type)]
            if not valid(value):
                raise CheckpointError(f"{path}: damaged checkpoint (state.json: config {key!r} should be {wanted})")


def _check_rng(rng: Any, path: Path) -> None:
    """CheckpointError unless ``rng`` is a random-state table that _restore_rng can apply: tried on fresh
    generators, so the process's own random state is left alone."""
    problem = f"{path}: damaged checkpoint (rng.pt does not hold the random generators' state)"
    keys = ("torch", "numpy_key", "numpy_pos", "numpy_gauss", "python", "python_gauss")
    if not isinstance(rng, dict) or any(not isinstance(rng.get(key), torch.Tensor) for key in keys):
        raise CheckpointError(problem)
    try:
        torch.Generator().set_state(rng["torch"])
        pos, has_gauss = (int(v) for v in rng["numpy_pos"])
        key = rng["numpy_key"].numpy().astype(np.uint32)
        np.random.RandomState().set_state(("MT19937", key, pos, has_gauss, float(rng["numpy_gauss"])))
        gauss = float(rng["python_gauss"])
        random.Random().setstate((3, tuple(int(v) for v in rng["python"]), None if math.isnan(gauss) else gauss))
        if "cuda" in rng and not (isinstance(rng["cuda"], torch.Tensor) and rng["cuda"].dtype == torch.uint8):
            raise ValueError("cuda state")
    except (RuntimeError, ValueError, TypeError, OverflowError):
        raise CheckpointError(problem) from None


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load every part of a checkpoint on the CPU; raises CheckpointError naming what is wrong."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    state = _read_state_json(path)
    try:
        model_state = canonical_state_dict(load_file(str(path / state["model"])))
        config_from_state_dict(model_state)
        parts: dict[str, torch.Tensor] = {}
        for name in state["optimizer_files"]:
            parts.update(load_file(str(path / name)))
    except (OSError, SafetensorError, KeyError, RuntimeError, WeightsError, ValueError) as exc:
        raise CheckpointError(f"{path}: damaged checkpoint ({exc})") from None
    try:
        rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: damaged checkpoint (no rng.pt)") from None
    except Exception:  # noqa: BLE001 - garbage gives unpickling errors of many kinds, whose text misleads
        raise CheckpointError(f"{path}: damaged checkpoint (rng.pt is not a saved random state)") from None
    _check_rng(rng, path)
    optimizer_state: dict[int, dict[str, torch.Tensor]] = {}
    try:
        for key, value in _unshard(parts, state.get("optimizer_split", {})).items():
            index, name = key.split(".", 1)
            optimizer_state.setdefault(int(index), {})[name] = value
    except (ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: damaged checkpoint (optimizer state: {exc})") from None
    return Checkpoint(path, state, model_state, optimizer_state, rng)


def _config_from_dict(values: Mapping[str, Any]) -> TrainConfig:
    known = {f.name: f for f in dataclasses.fields(TrainConfig)}
    kwargs = {}
    for key, value in values.items():
        if key in known:
            kwargs[key] = tuple(value) if isinstance(value, list) else value
    return TrainConfig(**kwargs)


def _check_same_recipe(stored: TrainConfig, cfg: TrainConfig, path: Path) -> None:
    for name in RECIPE_FIELDS:
        old, new = getattr(stored, name), getattr(cfg, name)
        if old != new:
            what = "architecture" if name in ("features", "recursions") else "recipe"
            raise CheckpointError(
                f"{path}: checkpoint has {name}={old!r} but this run asks for {new!r}; a resumed run keeps its {what}"
            )


def resume_config(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """The stored config of a checkpoint with ``overrides`` (None values ignored) applied, and ``resume`` set.

    Run options (data paths, steps, intervals, device, out ...) may change; a recipe field (see
    RECIPE_FIELDS) that differs from the checkpoint raises CheckpointError.
    """
    path = Path(path)
    state = _read_state_json(path)
    stored = _config_from_dict(state.get("config", {}))
    try:
        _check_config(stored)
    except ValueError as exc:
        raise CheckpointError(f"{path}: damaged checkpoint (config: {exc})") from None
    changes = {k: v for k, v in (overrides or {}).items() if v is not None}
    # Options of one invocation are not inherited: the stored run may have been cut by stop_at or time_limit.
    per_call = {name: changes.get(name, getattr(TrainConfig, name)) for name in ("stop_at", "time_limit", "overwrite")}
    cfg = dataclasses.replace(stored, **(changes | per_call), resume=str(path))
    _check_same_recipe(stored, cfg, path)
    return cfg


def init_architecture(path: str | os.PathLike) -> DRCNConfig:
    """F and D of a weights file, to size a model that starts from it. Raises WeightsError."""
    model, _metadata = load_weights(path)
    return model.config


# ---------------------------------------------------------------------------------------- distribution


@dataclass(frozen=True)
class _Processes:
    rank: int = 0
    world: int = 1
    distributed: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_processes(device_name: str) -> tuple[_Processes, torch.device]:
    """Join the process group when started by torchrun (RANK and WORLD_SIZE set), even with one process."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return _Processes(), resolve_device(device_name)
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world)
    return _Processes(rank, world, True), device


def _barrier(procs: _Processes) -> None:
    if procs.distributed:
        import torch.distributed as dist

        dist.barrier()


def _all_mean(values: torch.Tensor, procs: _Processes) -> torch.Tensor:
    if procs.distributed:
        import torch.distributed as dist

        dist.all_reduce(values)
        values = values / procs.world
    return values


def _any(flag: bool, procs: _Processes, device: torch.device) -> bool:
    if not procs.distributed:
        return flag
    import torch.distributed as dist

    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


class _AllPredictions(nn.Module):
    """Routes ``forward`` to DRCN.forward_all, so DistributedDataParallel sees the training forward."""

    def __init__(self, model: DRCN) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_all(x)


# ------------------------------------------------------------------------------------------------ helpers


def _load_training_images(cfg: TrainConfig) -> list[TrainImage]:
    if cfg.pack and Path(cfg.pack).is_file():
        return load_pack(cfg.pack)
    if not cfg.data:
        raise DataError(f"{cfg.pack}: no such pack, and no data folders to build it from")
    return load_images(cfg.data)


def _check_targets(cfg: TrainConfig) -> None:
    """Refuse, before anything is written, to replace files this run does not own."""
    if cfg.out and Path(cfg.out).exists():
        if Path(cfg.out).is_dir():
            raise CheckpointError(f"{cfg.out}: is a folder, expected a .safetensors file path")
        if not (cfg.overwrite or cfg.resume):
            raise CheckpointError(f"{cfg.out}: exists; use --overwrite (overwrite=True) to replace it")
    if cfg.checkpoint_dir:
        folder = Path(cfg.checkpoint_dir)
        if folder.exists() and not folder.is_dir():
            raise CheckpointError(f"{folder}: exists and is not a folder")
        # A folder with only a log is what a run that stopped before its first checkpoint leaves behind.
        if folder.is_dir() and any(p.name != "log.csv" for p in folder.iterdir()):
            if not (folder / "state.json").is_file():
                raise CheckpointError(f"{folder}: exists and is not a drcn checkpoint; refusing to replace it")
            same = cfg.resume and Path(cfg.resume).resolve() == folder.resolve()
            if not (same or cfg.overwrite):
                raise CheckpointError(
                    f"{folder}: holds a checkpoint; continue it with --resume, or use --overwrite to start over"
                )


def _param_groups(model: DRCN, weight_decay: float) -> list[dict[str, Any]]:
    # Decay only the conv kernels: biases and the ensemble logits have no scale to keep in check.
    decay = [p for name, p in model.named_parameters() if name.endswith("weight") and p.dim() == 4]
    rest = [p for name, p in model.named_parameters() if not (name.endswith("weight") and p.dim() == 4)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _make_optimizer(model: DRCN, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    # Adam by default: the gradients of the recursive convolution sum over 16 unrolled uses and are far larger
    # than those of the embedding and output layers; a per-parameter step size copes with that, where the
    # paper's SGD needed a hand-tuned step decay over days. The paper's weight decay stays (coupled, as in
    # its objective). Fused Adam on CUDA saves a few launches per step and is deterministic there too.
    groups = _param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9)
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return kind(groups, lr=cfg.lr, betas=(0.9, 0.999), fused=device.type == "cuda")


@torch.no_grad()
def _zero_tiny_(params: Sequence[torch.Tensor]) -> None:
    """Zero the weights that decayed below TINY: x86 multiplies subnormals on a slow path (fp32 inference with
    the old drcn-lite's 49k subnormal weights took 39x longer; flush-to-zero on one thread did not cure it)."""
    for param in params:
        param.masked_fill_(param.abs() < TINY, 0.0)


def _match_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each loaded moment its parameter's memory layout (checkpoints store NCHW; channels_last
    parameters on CUDA want NHWC moments, which fused Adam expects)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param).copy_(value)


_LOG_COLUMNS = (
    "kind", "step", "elapsed_s", "lr", "alpha", "loss", "loss_intermediate", "loss_final", "grad_norm",
    "steps_per_s", "val_psnr", "val_ssim",
)  # fmt: skip


def _check_optimizer_shapes(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """CheckpointError when a restored moment tensor does not have its parameter's shape (it would fail, or
    broadcast silently, at the first step)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for name, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                    raise CheckpointError(
                        f"{path}: damaged checkpoint (optimizer {name!r} has shape {list(value.shape)}, "
                        f"its parameter {list(param.shape)})"
                    )


def _log_columns(scales: Sequence[float]) -> list[str]:
    return [*_LOG_COLUMNS, *(f"val_psnr_x{s:g}" for s in scales), *(f"val_ssim_x{s:g}" for s in scales)]


def _start_log(path: Path, scales: Sequence[float], keep_until: int | None) -> None:
    """Create the CSV log; when resuming, keep the rows up to the checkpoint's step and drop later ones."""
    rows: list[dict[str, str]] = []
    if keep_until is not None and path.is_file():
        with path.open(newline="") as f:
            rows = [
                row for row in csv.DictReader(f) if row.get("step", "").isdigit() and int(row["step"]) <= keep_until
            ]
    columns = _log_columns(scales)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _append_log(path: Path, scales: Sequence[float], row: Mapping[str, Any]) -> None:
    def fmt(value: Any) -> str:
        return f"{value:.6g}" if isinstance(value, float) else str(value)

    with path.open("a", newline="") as f:
        csv.DictWriter(f, fieldnames=_log_columns(scales), extrasaction="ignore").writerow(
            {key: fmt(value) for key, value in row.items()}
        )


def _steps_behind(metadata: Mapping[str, str]) -> int:
    """Training steps that went into a weights file, its own --init's included (0 when it does not say)."""
    for key in ("training_steps_total", "training_steps"):
        value = metadata.get(key, "")
        if value.isdigit():
            return int(value)
    return 0


def _export_metadata(
    cfg: TrainConfig,
    images: Sequence[TrainImage],
    step: int,
    scores: Mapping[float, tuple[float, float]] | None,
    init_steps: int = 0,
) -> dict[str, str]:
    """What a weights file says about its training; ``scores`` maps scale -> (PSNR, SSIM) on the validation set.
    ``training_steps`` counts this run's steps; ``training_steps_total`` adds those behind its --init weights."""
    recipe = {name: getattr(cfg, name) for name in RECIPE_FIELDS if name not in ("features", "recursions")}
    folders = sorted({image.name.split("/", 1)[0] for image in images})
    meta = {
        "training_data": f"{', '.join(folders)} ({len(images)} images, Y channel, MATLAB bicubic degradation)",
        "training_recipe": json.dumps(recipe),
        "training_steps": str(step),
        "scales": ",".join(f"{s:g}" for s in cfg.scales),
    }
    if cfg.init:
        meta["training_init"] = Path(cfg.init).name
        meta["training_steps_total"] = str(init_steps + step)
    if scores and cfg.val:
        mean = sum(p for p, _ in scores.values()) / len(scores)
        per_scale = ", ".join(f"x{s:g} {p:.2f} dB / {q:.4f}" for s, (p, q) in scores.items())
        meta["validation"] = f"{Path(cfg.val).name} at step {step} (PSNR/SSIM on Y, border = scale): {per_scale}"
        meta["val_psnr"] = f"{mean:.4f}"
    return meta


# --------------------------------------------------------------------------------------------------- train


def train(
    cfg: TrainConfig, reporter: TrainReporter | None = None, should_stop: Callable[[], bool] | None = None
) -> TrainResult:
    """Train (or continue training) a DRCN as ``cfg`` says. Raises DataError, CheckpointError, WeightsError
    or ValueError for bad input before anything is written; TrainingError if the loss diverges.

    ``should_stop`` is asked after every step (under DDP at every log step, all processes together); when it
    answers True the run stops there as at ``stop_at``: a checkpoint is written and the result is unfinished.
    """
    reporter = reporter or TrainReporter()
    wall_start = time.perf_counter()
    _check_config(cfg)

    # -- setup ---------------------------------------------------------------------------------------------
    set_threads(cfg.threads)
    procs, device = _setup_processes(cfg.device)
    try:
        return _train(cfg, reporter if procs.main else TrainReporter(), procs, device, wall_start, should_stop)
    finally:
        if procs.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _train(
    cfg: TrainConfig,
    reporter: TrainReporter,
    procs: _Processes,
    device: torch.device,
    wall_start: float,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    precision = resolve_precision(cfg.precision, device)
    if precision == "fp16":
        raise ValueError("fp16 training is not supported (use bf16 or fp32)")
    amp_dtype = autocast_dtype(precision)
    if cfg.batch_size % procs.world:
        raise ValueError(f"batch size {cfg.batch_size} does not split over {procs.world} processes")
    local_batch = cfg.batch_size // procs.world
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    memory_format = preferred_memory_format(device)
    _check_targets(cfg)
    checkpoint = read_checkpoint(cfg.resume) if cfg.resume else None
    if checkpoint is not None:
        _check_same_recipe(_config_from_dict(checkpoint.state.get("config", {})), cfg, checkpoint.path)

    # -- data ----------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    images = _load_training_images(cfg)
    data_id = fingerprint(images)
    if checkpoint is not None and checkpoint.state.get("data_fingerprint") not in (None, data_id):
        raise CheckpointError(f"{checkpoint.path}: the checkpoint was trained on other images than these")
    val_items = prepare_validation(list_images(cfg.val), cfg.scales) if cfg.val else []
    init_state, init_steps = None, 0
    if checkpoint is not None:
        init_steps = int(checkpoint.state.get("init_steps", 0))
    elif cfg.init:  # a resumed run has its weights; the init file need not travel with it
        init_model, init_meta = load_weights(cfg.init)
        init_steps = _steps_behind(init_meta)
        if (init_model.config.features, init_model.config.recursions) != (cfg.features, cfg.recursions):
            raise WeightsError(
                f"{cfg.init}: weights are F={init_model.config.features}, D={init_model.config.recursions}, "
                f"but the run trains F={cfg.features}, D={cfg.recursions}"
            )
        init_state = init_model.state_dict()
    bank: PatchBank = build_patch_bank(
        images, cfg.scales, cfg.patch_size, cfg.stride, cfg.downscales,
        quantize_lr=cfg.quantize_lr, device=device, on_image=reporter.preparing,
    )  # fmt: skip
    # Everything that can be refused has been checked: from here on, files may be written.
    if cfg.pack and not Path(cfg.pack).is_file() and procs.main:
        save_pack(cfg.pack, images)
    reporter.data_ready(bank.patches_per_scale(), len(images), bank.nbytes / 2**20, time.perf_counter() - t0)

    # -- model -----------------------------------------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    model = DRCN(DRCNConfig(cfg.features, cfg.recursions))
    if init_state is not None:
        model.load_state_dict(init_state)
    if checkpoint is not None:
        try:
            model.load_state_dict({k: v.float() for k, v in checkpoint.model.items()})
        except RuntimeError as exc:
            reason = " ".join(str(exc).split())
            raise CheckpointError(f"{checkpoint.path}: damaged checkpoint (model: {reason})") from None
    model = model.to(device, memory_format=memory_format).train()
    trainer: nn.Module = _AllPredictions(model)
    if procs.distributed:
        from torch.nn.parallel import DistributedDataParallel

        trainer = DistributedDataParallel(trainer, device_ids=[device.index] if on_cuda else None)

    # -- optimizer ---------------------------------------------------------------------------------------------
    optimizer = _make_optimizer(model, cfg, device)

    # -- resume --------------------------------------------------------------------------------------------------
    step, best_psnr, best_step, elapsed_before = 0, None, None, 0.0
    if checkpoint is not None:
        # load_state_dict moves each tensor where its parameter lives (Adam's step stays on the CPU unless fused).
        try:
            optimizer.load_state_dict(
                {"state": checkpoint.optimizer, "param_groups": optimizer.state_dict()["param_groups"]}
            )
        except (ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{checkpoint.path}: damaged checkpoint (optimizer state: {exc})") from None
        _check_optimizer_shapes(optimizer, checkpoint.path)
        _match_layouts(optimizer)
        _restore_rng(checkpoint.rng)
        step = int(checkpoint.state["step"])
        best_psnr, best_step = checkpoint.state.get("best_psnr"), checkpoint.state.get("best_step")
        elapsed_before = float(checkpoint.state.get("elapsed_s", 0.0))
    stop = min(cfg.steps, cfg.stop_at) if cfg.stop_at is not None else cfg.steps
    ckpt_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    log_path = ckpt_dir / "log.csv" if ckpt_dir else None
    if procs.main and log_path is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if (
            checkpoint is not None
            and checkpoint.path.resolve() != ckpt_dir.resolve()
            and (checkpoint.path / "log.csv").is_file()
        ):
            shutil.copyfile(checkpoint.path / "log.csv", log_path)
        _start_log(log_path, cfg.scales, step if checkpoint is not None else None)
    reporter.started(step, cfg, str(device), procs.world, sum(p.numel() for p in model.parameters()))
    settings = InferenceSettings(device, precision)
    out_path = Path(cfg.out) if cfg.out else None

    def save_checkpoint() -> None:
        if procs.main and ckpt_dir is not None:
            state = {
                "step": step,
                "best_psnr": best_psnr,
                "best_step": best_step,
                "elapsed_s": elapsed_before + (time.perf_counter() - loop_start),
                "lr": lr_at(max(step - 1, 0), cfg),
                "alpha": alpha_at(max(step - 1, 0), cfg),
                "data_fingerprint": data_id,
                "init_steps": init_steps,
                "world_size": procs.world,
                "torch_version": torch.__version__,
                "config": dataclasses.asdict(cfg),
            }
            write_checkpoint(ckpt_dir, model, optimizer, state, log_path)
            reporter.checkpointed(ckpt_dir, step)
        _barrier(procs)

    def export(scores: Mapping[float, tuple[float, float]] | None) -> None:
        if procs.main and out_path is not None:
            save_weights(model, out_path, _export_metadata(cfg, images, step, scores, init_steps))
            mean = sum(p for p, _ in scores.values()) / len(scores) if scores else None
            reporter.exported(out_path, step, mean)

    def run_validation() -> None:
        nonlocal best_psnr, best_step
        if procs.main:
            t = time.perf_counter()
            scores = validate(model, val_items, settings)
            by_psnr = {scale: value[0] for scale, value in scores.items()}
            by_ssim = {scale: value[1] for scale, value in scores.items()}
            mean = sum(by_psnr.values()) / len(by_psnr)
            if best_psnr is None or mean > best_psnr:
                best_psnr, best_step = mean, step
                export(scores)
            seconds = time.perf_counter() - t
            reporter.validated(ValidationStats(step, by_psnr, by_ssim, mean, best_psnr, best_step, seconds))
            if log_path is not None:
                row = {"kind": "val", "step": step, "val_psnr": mean, "val_ssim": sum(by_ssim.values()) / len(by_ssim)}
                row.update({f"val_psnr_x{s:g}": v for s, v in by_psnr.items()})
                row.update({f"val_ssim_x{s:g}": v for s, v in by_ssim.items()})
                _append_log(log_path, cfg.scales, row)
        _barrier(procs)

    # -- loop ------------------------------------------------------------------------------------------------------
    loop_start = time.perf_counter()
    window_start, window_steps = loop_start, 0
    sums = torch.zeros(4, device=device)  # loss, intermediate, final, grad norm: synced only at log steps
    last_loss = math.nan
    params = list(model.parameters())
    while step < stop:
        lr, alpha = lr_at(step, cfg), alpha_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        generator = torch.Generator().manual_seed(batch_seed(cfg.seed, step))
        index, transform = random_batch(bank, cfg.batch_size, generator, cfg.augment)
        share = slice(procs.rank * local_batch, (procs.rank + 1) * local_batch)
        net_input, target = sample_batch(bank, index[share], transform[share])
        net_input = net_input.contiguous(memory_format=memory_format)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            predictions, final = trainer(net_input)
        loss, intermediate, last = recursive_loss(predictions, final, target, alpha, cfg.loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        optimizer.step()
        _zero_tiny_(params)
        step += 1
        window_steps += 1
        sums += torch.stack([loss.detach(), intermediate.detach(), last.detach(), grad_norm.detach().float()])
        stop_asked = should_stop is not None and should_stop()
        if stop_asked and not procs.distributed:
            stop = step

        if step % cfg.log_every == 0 or step == stop:
            means = (_all_mean(sums, procs) / window_steps).tolist()
            sums.zero_()
            last_loss = means[0]
            if not math.isfinite(last_loss):
                raise TrainingError(f"the loss became {last_loss} by step {step}; lower the learning rate")
            now = time.perf_counter()
            stats = StepStats(
                step, cfg.steps, means[0], means[1], means[2], means[3], lr, alpha,
                window_steps / max(now - window_start, 1e-9), elapsed_before + now - loop_start,
            )  # fmt: skip
            window_start, window_steps = now, 0
            reporter.step(stats)
            if procs.main and log_path is not None:
                row = dataclasses.asdict(stats) | {"kind": "train", "elapsed_s": stats.elapsed_s}
                _append_log(log_path, cfg.scales, row)
            out_of_time = cfg.time_limit is not None and now - wall_start > cfg.time_limit
            if _any(out_of_time or stop_asked, procs, device):
                stop = step
        finishing = step == stop
        if val_items and ((cfg.val_every and step % cfg.val_every == 0) or step == cfg.steps):
            run_validation()
        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or finishing:
            if not val_items:
                export(None)
            save_checkpoint()

    return TrainResult(
        step=step,
        finished=step >= cfg.steps,
        last_loss=last_loss,
        best_psnr=best_psnr,
        best_step=best_step,
        out=out_path if out_path is not None and out_path.exists() else None,
        checkpoint=ckpt_dir if ckpt_dir is not None and (ckpt_dir / "state.json").is_file() else None,
        seconds=time.perf_counter() - wall_start,
    )
