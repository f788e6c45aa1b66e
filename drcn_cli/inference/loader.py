"""One way to get a model: a name, a path or a module -> :class:`ReadyModel`, the network ready to run.

:func:`open_model` is the only door. Names go through the resolve order of :mod:`drcn_cli.weights.resolve` (bundled
-> hub cache -> download, each verified), paths are read as safetensors, a module is copied (the caller's stays as
it was). What comes out holds everything a run needs to know about the network: its prepared copy, the device, the
resolved precision, the memory layout, the receptive radius and the tile policy. ``upscale_image``,
``drcn upscale``, ``drcn bench`` and training validation all run what this returns, so they time and score the same
path.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..model import DRCN, DRCNConfig
from ..weights import resolve
from ..weights.files import load_weights
from . import autoprecision
from .device import memory_format as preferred_memory_format
from .device import resolve_device, resolve_precision, reuse_freed_memory
from .int8 import Int8Error, Int8Network, calibration_path, load_calibration, runtime_problem

__all__ = [
    "InferenceSettings",
    "ReadyModel",
    "compute_dtype",
    "load_model",
    "open_model",
    "prepare_for_inference",
]


@dataclass(frozen=True)
class InferenceSettings:
    """How the network runs: resolved device and precision, tile side (0 = auto), recursions (None = all).

    ``self_ensemble``: average the network's outputs over the 8 flips and 90-degree rotations of its input
    (Lim et al.'s "self-ensemble", EDSR+, CVPRW 2017): 8 times the work for a slightly better estimate.
    """

    device: torch.device
    precision: str = "fp32"
    tile: int = 0
    recursions: int | None = None
    self_ensemble: bool = False


def compute_dtype(device: torch.device, precision: str) -> torch.dtype:
    """The dtype the prepared network's conv weights hold: bf16 for a CPU bf16 run, else fp32."""
    # On the CPU, bf16 weights cast once beat autocast, which casts them at every call and cannot use oneDNN's
    # fused conv+ReLU; CUDA keeps autocast.
    return torch.bfloat16 if device.type == "cpu" and precision == "bf16" else torch.float32


def prepare_for_inference(model: DRCN, device: torch.device, precision: str = "fp32") -> DRCN:
    """A copy of ``model`` ready to run: in eval mode on ``device``, in the faster memory layout there, with its
    conv weights in the compute dtype where the precision runs natively (bf16 on the CPU). The caller's
    module is left as it was."""
    ready = copy.deepcopy(model).to(device=device, memory_format=preferred_memory_format(device)).eval()  # type: ignore[call-overload]  # Module.to takes memory_format; torch's overloads omit it
    dtype = compute_dtype(device, precision)
    for module in ready.modules():
        # embed1 stays fp32: its input is the image itself, and bf16's 8-bit mantissa would round it to steps of
        # up to half an 8-bit level, enough to fail the bf16 quality bound at x4 (docs/speed.md); it is 1/128 of
        # the work.
        if isinstance(module, torch.nn.Conv2d) and module is not ready.embed1:
            module.to(dtype)
    return ready


# -- the ready model -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadyModel:
    """A network prepared to run (see :func:`prepare_for_inference`) and the facts a run needs about it.

    ``network`` is drcn's own copy: never the caller's module. ``source`` is the weights file, or None for a
    module passed in. ``precision`` is resolved (never 'auto').
    """

    network: DRCN | Int8Network
    device: torch.device
    precision: str
    source: Path | None = None
    reason: str = ""  # why ``precision`` where auto chose it by measurement (the device line says it)

    @property
    def config(self) -> DRCNConfig:
        return self.network.config

    def settings(self, tile: int = 0, recursions: int | None = None, self_ensemble: bool = False) -> InferenceSettings:
        """The settings to run this network with (its device and precision)."""
        return InferenceSettings(self.device, self.precision, tile, recursions, self_ensemble)


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int, device: str, precision: str) -> DRCN:
    model, _metadata = load_weights(path)
    return prepare_for_inference(model, torch.device(device), precision)


@functools.lru_cache(maxsize=4)
def _load_int8(path: str, mtime_ns: int, calibration: str, calibration_mtime_ns: int) -> Int8Network:
    model, _metadata = load_weights(path)
    return Int8Network(model, load_calibration(calibration, model.config, resolve.sha256_file(path)))


def _int8_for(located: Path) -> Int8Network:
    """The int8 network of a weights file, from its calibration (:func:`drcn_cli.inference.int8.calibration_path`).
    Raises Int8Error when ONNX Runtime is missing or the file has no calibration that fits."""
    if (problem := runtime_problem()) is not None:
        raise Int8Error(problem)
    calibration = calibration_path(located)
    if not calibration.is_file():
        raise Int8Error(f"{located.name} has no int8 calibration ({calibration.name} beside it): "
                        "make one with `drcn quantize`")
    real = located.resolve()  # the calibration is beside ``located``, which may be a link (hub cache: to a blob)
    return _load_int8(str(real), real.stat().st_mtime_ns, str(calibration), calibration.stat().st_mtime_ns)


def _auto_int8(located: Path, network: DRCN, candidate: str) -> autoprecision.Choice | None:
    """int8 instead of ``candidate`` where it can run, its calibration is within the quality bound and it
    measured faster on this CPU kind; None where int8 is not a candidate at all."""
    try:
        int8 = _int8_for(located)
    except Int8Error:  # no runtime, no calibration, or one for other weights: int8 is not a candidate
        return None
    if not int8.calibration.within_bound():
        return None
    radius = network.config.receptive_radius
    return autoprecision.choose(
        candidate, lambda: autoprecision.measure(network, int8, radius), network.config.features
    )


def load_model(
    weights: str | os.PathLike | None = None, *, on_download: Callable[[str], None] | None = None
) -> tuple[DRCN, dict[str, str], Path]:
    """The plain fp32 module of a model name or a weights path, resolved as :func:`open_model` resolves it, with
    its metadata and its file: for code that trains or exports the module rather than running it. Raises as
    :func:`open_model`."""
    name, path = resolve.split_source(weights)
    located = Path(resolve.resolve_weights(name, path, on_download=on_download))
    model, metadata = load_weights(located)
    return model, metadata, located


def open_model(
    weights: str | os.PathLike | DRCN | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    *,
    download: bool = True,
    on_download: Callable[[str], None] | None = None,
    repo_id: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> ReadyModel:
    """The model to run, from a module, a weights file, or a model name (None: the default model).

    A name goes through the resolve order (:mod:`drcn_cli.weights.resolve`): bundled, then the hub cache, then a
    download (``download=False`` forbids it); every file from the hub is checked against its sha256. A string is a
    path when it names a file, has a suffix or a folder separator (:func:`drcn_cli.weights.resolve.split_source`).
    Files are cached by path, modification time, device and precision, so a batch loads them once. On the CPU it also
    makes the C allocator keep freed feature maps for reuse (:func:`drcn_cli.inference.device.reuse_freed_memory`).

    Raises:
        ValueError: an unknown device or an unsupported precision.
        WeightsNotFoundError, ChecksumError: from :mod:`drcn_cli.weights.resolve` (the message says what to run).
        WeightsError: a file that is not DRCN weights.
    """
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    resolved = resolve_precision(precision, dev)
    if dev.type == "cpu":
        reuse_freed_memory()  # the conv maps' page faults cost a sizeable share of a CPU forward (device.py)
    if isinstance(weights, DRCN):
        if resolved == "int8":
            raise Int8Error("int8 needs a weights file with its calibration, not a module")
        return ReadyModel(prepare_for_inference(weights, dev, resolved), dev, resolved)
    name, path = resolve.split_source(weights)
    located = resolve.resolve_weights(
        name,
        path,
        download=download,
        on_download=on_download,
        repo_id=repo_id,
        revision=revision,
        cache_dir=cache_dir,
    )
    if resolved == "int8":
        return ReadyModel(_int8_for(Path(located)), dev, resolved, Path(located))
    real = Path(located).resolve()  # the cache key; ``source`` keeps the name (hub cache files are links to blobs)
    network = _load_cached(str(real), real.stat().st_mtime_ns, str(dev), resolved)
    if precision == "auto" and dev.type == "cpu":
        choice = _auto_int8(Path(located), network, resolved)
        if choice is not None and choice.precision == "int8":
            return ReadyModel(_int8_for(Path(located)), dev, "int8", Path(located), choice.reason)
        if choice is not None:
            return ReadyModel(network, dev, resolved, Path(located), choice.reason)
    return ReadyModel(network, dev, resolved, Path(located))

