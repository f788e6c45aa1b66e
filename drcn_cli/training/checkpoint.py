"""Training checkpoints: one folder per run, written atomically, read back with every part checked.

    state.json               format, step, run config, best validation PSNR, data fingerprint, file list
    model.safetensors        the weights (readable by ``drcn upscale --weights``)
    ema.safetensors          with --ema: the moving average of the weights (what validation scores)
    optimizer-NN.safetensors the optimiser state, split so that no file exceeds MAX_FILE_BYTES
    rng.pt                   torch / CUDA / numpy / python RNG states as plain tensors (weights_only load)
    log.csv                  the training log up to this point (appended to while the run goes on)

Resuming checks that the checkpoint is whole (every field of state.json of its type, the random state
applicable, the optimizer moments of their parameters' shapes) and that the run keeps its recipe
(:data:`drcn_cli.training.config.RECIPE_FIELDS`), so that a resumed run continues bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ..errors import DrcnError
from ..io.atomic import write_atomic
from ..model import DRCN
from ..weights.files import WeightsError, canonical_state_dict, config_from_state_dict, save_weights
from .config import RECIPE_FIELDS, TrainConfig, check_config

__all__ = [
    "CHECKPOINT_FORMAT",
    "MAX_FILE_BYTES",
    "Checkpoint",
    "CheckpointError",
    "check_optimizer_shapes",
    "check_same_recipe",
    "config_from_dict",
    "read_checkpoint",
    "read_state_json",
    "restore_rng",
    "resume_config",
    "rng_state",
    "write_checkpoint",
]

CHECKPOINT_FORMAT = "drcn-train-checkpoint/1"
MAX_FILE_BYTES = 15 * 2**20  # every checkpoint file stays under 16 MB, the device tool's per-file limit


class CheckpointError(DrcnError, ValueError):
    """A checkpoint that cannot be read, does not match the run, or would overwrite something else."""


@dataclass
class Checkpoint:
    path: Path
    state: dict[str, Any]  # state.json
    model: dict[str, torch.Tensor]
    optimizer: dict[int, dict[str, torch.Tensor]]  # the `state` part of an optimizer state dict
    rng: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None = None  # the moving average of the weights, where the run keeps one


def rng_state() -> dict[str, torch.Tensor]:
    # the MT19937 tuple (legacy=True is the default); numpy's stubs give the default as legacy=False
    np_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
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


def restore_rng(state: Mapping[str, torch.Tensor]) -> None:
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
        pieces: list[torch.Tensor] = []
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
    ema: DRCN | None = None,
) -> Path:
    """Write a checkpoint folder atomically: everything goes into a temporary sibling, which then replaces
    ``path`` (the old folder is removed only once the new one is in place). ``log`` is copied in; ``ema``, the
    moving average of the weights, is written beside them. Each file is written by
    :func:`drcn_cli.io.atomic.write_atomic` (fsync'ed), state.json last; ``path`` may only be a folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise CheckpointError(f"{path}: not a checkpoint folder, left as it is (a checkpoint replaces only a folder)")
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    old = path.parent / f".{path.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        # The steps behind these weights, their init's included, so that `--init` from a checkpoint counts them.
        steps_total = int(state.get("init_steps", 0)) + int(state["step"])
        metadata = {"checkpoint_step": str(state["step"]), "training_steps_total": str(steps_total)}
        save_weights(model, tmp / "model.safetensors", metadata)
        if ema is not None:
            save_weights(ema, tmp / "ema.safetensors", {**metadata, "average": "exponential moving average"})
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
            write_atomic(tmp / files[-1], save(shard), overwrite=False)
        rng = rng_state()
        write_atomic(tmp / "rng.pt", lambda file: torch.save(rng, file), overwrite=False)
        log_file = Path(log) if log is not None else None
        if log_file is not None and log_file.is_file():
            write_atomic(tmp / "log.csv", lambda file: shutil.copyfile(log_file, file), overwrite=False)
        document = {
            "format": CHECKPOINT_FORMAT,
            **state,
            "model": "model.safetensors",
            **({"ema": "ema.safetensors"} if ema is not None else {}),
            "optimizer_files": files,
            "optimizer_split": split,
        }
        write_atomic(tmp / "state.json", (json.dumps(document, indent=2) + "\n").encode(), overwrite=False)
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


def read_state_json(path: Path) -> dict[str, Any]:
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
    "ema": (False, _is_file_name, "a file name"),
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
    """CheckpointError unless ``rng`` is a random-state table that restore_rng can apply: tried on fresh
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
    path = Path(path)
    state = read_state_json(path)
    try:
        model_state = canonical_state_dict(load_file(str(path / state["model"])))
        config_from_state_dict(model_state)
        ema_state = canonical_state_dict(load_file(str(path / state["ema"]))) if "ema" in state else None
        if ema_state is not None and config_from_state_dict(ema_state) != config_from_state_dict(model_state):
            raise ValueError("the moving average is of another architecture than the weights")
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
    return Checkpoint(path, state, model_state, optimizer_state, rng, ema_state)


def config_from_dict(values: Mapping[str, Any]) -> TrainConfig:
    known = {f.name: f for f in dataclasses.fields(TrainConfig)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key in known:
            kwargs[key] = tuple(value) if isinstance(value, list) else value
    return TrainConfig(**kwargs)


def check_same_recipe(stored: TrainConfig, cfg: TrainConfig, path: Path) -> None:
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
    state = read_state_json(path)
    stored = config_from_dict(state.get("config", {}))
    try:
        check_config(stored)
    except ValueError as exc:
        raise CheckpointError(f"{path}: damaged checkpoint (config: {exc})") from None
    changes = {k: v for k, v in (overrides or {}).items() if v is not None}
    # Options of one invocation are not inherited: the stored run may have been cut by stop_at or time_limit.
    per_call = {name: changes.get(name, getattr(TrainConfig, name)) for name in ("stop_at", "time_limit", "overwrite")}
    cfg = dataclasses.replace(stored, **(changes | per_call), resume=str(path))
    check_same_recipe(stored, cfg, path)
    return cfg


def check_optimizer_shapes(optimizer: torch.optim.Optimizer, path: Path) -> None:
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
