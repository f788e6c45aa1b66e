"""DRCN weights files: safetensors with metadata; the network's shape is read from the tensors.

Only safetensors are read, so loading a file never runs code from it. ``load_weights`` accepts the
state dict of a training checkpoint too (it strips the ``module.`` / ``_orig_mod.`` prefixes that DDP and
torch.compile add), and refuses anything that is not a DRCN with a :class:`WeightsError` naming the file.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..errors import DrcnError
from ..io.atomic import write_atomic

if TYPE_CHECKING:  # torch is imported where tensors are handled, so finding files stays instant
    import torch

    from ..model import DRCN, DRCNConfig

__all__ = [
    "BUNDLED_DIR",
    "DEFAULT_MODELS",
    "MAX_FEATURES",
    "MAX_RECURSIONS",
    "WeightsError",
    "bundled_weights",
    "canonical_state_dict",
    "config_from_state_dict",
    "flush_tiny",
    "load_weights",
    "save_weights",
]

FORMAT = "drcn-weights/1"
DEFAULT_MODELS = ("drcn", "drcn-lite")  # the default model is the first of these that is bundled
SUFFIX = ".safetensors"

_EXPECTED_KEYS = {
    f"{layer}.{kind}"
    for layer in ("embed1", "embed2", "recursive", "recon1", "recon2")
    for kind in ("weight", "bias")
} | {"ensemble_logits"}
_CONVS = ("embed1", "embed2", "recursive", "recon1", "recon2")

# The largest network a weights file (and a training run) may describe. The paper's model is F=256, D=16 (it
# measured D up to 20); a file claiming more, e.g. an ensemble_logits of 2000 entries, would make a tiny image run
# for minutes, so it is refused rather than believed.
MAX_FEATURES = 1024
MAX_RECURSIONS = 64


def _bundled_dir() -> Path:
    # A wheel carries the files inside the package (drcn_cli/bundled_weights/); a source checkout has them in the
    # repo's weights/. This module is drcn_cli/weights/files.py.
    package = Path(__file__).resolve().parents[1]
    packaged = package / "bundled_weights"
    return packaged if packaged.is_dir() else package.parent / "weights"


BUNDLED_DIR = _bundled_dir()


class WeightsError(DrcnError, ValueError):
    """A weights file that cannot be read or does not describe a DRCN (or whose network gives NaN)."""


def bundled_weights(name: str) -> Path | None:
    """The bundled file for model ``name`` (e.g. ``drcn-lite``), or None when it is not shipped."""
    path = BUNDLED_DIR / f"{name}{SUFFIX}"
    return path if path.is_file() else None


def canonical_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes (DDP's ``module.``, torch.compile's ``_orig_mod.``) from every key."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


# Magnitudes below this are set to zero when weights are loaded or saved. Training leaves dead weights decaying
# towards zero; once subnormal, x86 cores multiply them on a slow path, many times slower (docs/speed.md). A
# weight of 1e-10 moves an output by less than 1e-6 of full scale, far below one 8-bit step
# (tests/test_weights_files.py).
TINY = 1e-10


def flush_tiny(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of ``state`` with every float value of magnitude below TINY set to exactly zero."""
    import torch

    return {
        key: torch.where(value.abs() < TINY, torch.zeros_like(value), value) if value.is_floating_point() else value
        for key, value in state.items()
    }


def _majority(values: list[int]) -> int:
    """The most common of ``values``; on a tie, the first given (the recursive conv's, the core of the network)."""
    return Counter(values).most_common(1)[0][0]


def config_from_state_dict(state: Mapping[str, torch.Tensor]) -> DRCNConfig:
    """F, D and the kernel size from tensor shapes; raises WeightsError naming the tensor that is not a DRCN's
    (of another type than floating point, another rank or shape), or a size over MAX_FEATURES / MAX_RECURSIONS."""
    missing = sorted(_EXPECTED_KEYS - state.keys())
    unexpected = sorted(state.keys() - _EXPECTED_KEYS)
    if missing or unexpected:
        detail = "; ".join(
            part
            for part in (
                f"missing {', '.join(missing[:4])}" if missing else "",
                f"unexpected {', '.join(unexpected[:4])}" if unexpected else "",
            )
            if part
        )
        raise WeightsError(f"not DRCN weights ({detail})")
    from ..model import DRCNConfig

    for key in sorted(state):
        value = state[key]
        if not value.is_floating_point():
            raise WeightsError(f"not DRCN weights ({key} holds {str(value.dtype).removeprefix('torch.')} values, "
                               "expected floating point)")
        rank = 4 if key.endswith(".weight") else 1
        if value.dim() != rank:
            raise WeightsError(f"not DRCN weights ({key} has shape {tuple(value.shape)}, expected {rank} dimensions)")
    # F and the kernel size are what most layers agree on (the recursive conv's on a tie), so that the one layer of
    # another shape is the one named, whichever it is.
    weights = {name: tuple(state[f"{name}.weight"].shape) for name in _CONVS}
    k = _majority([shape[2] for shape in (weights["recursive"], *weights.values())])
    features = _majority([
        *weights["recursive"][:2], *weights["embed2"][:2], *weights["recon1"][:2], weights["embed1"][0],
        weights["recon2"][1], *(state[f"{name}.bias"].shape[0] for name in _CONVS if name != "recon2"),
    ])  # fmt: skip
    recursions = state["ensemble_logits"].shape[0]
    if k % 2 == 0:
        raise WeightsError(f"not DRCN weights (kernels of {k}x{k}: a DRCN's are odd, 3x3)")
    if not 1 <= features <= MAX_FEATURES:
        raise WeightsError(f"not DRCN weights (F={features} filters; drcn reads 1 to {MAX_FEATURES})")
    if not 1 <= recursions <= MAX_RECURSIONS:
        raise WeightsError(f"not DRCN weights (ensemble_logits holds {recursions} entries, so D={recursions} "
                           f"recursions; drcn reads 1 to {MAX_RECURSIONS})")
    config = DRCNConfig(features=int(features), recursions=int(recursions), kernel_size=int(k))
    shapes = {
        "recursive.weight": (features, features, k, k),
        "embed1.weight": (features, 1, k, k),
        "embed2.weight": (features, features, k, k),
        "recon1.weight": (features, features, k, k),
        "recon2.weight": (1, features, k, k),
        "recursive.bias": (features,),
        "embed1.bias": (features,),
        "embed2.bias": (features,),
        "recon1.bias": (features,),
        "recon2.bias": (1,),
        "ensemble_logits": (recursions,),
    }
    for key, shape in shapes.items():
        if tuple(state[key].shape) != shape:
            raise WeightsError(
                f"inconsistent DRCN weights: {key} has shape {tuple(state[key].shape)}, "
                f"expected {shape} for F={features}, D={recursions}, {k}x{k} kernels"
            )
    return config


def load_weights(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[DRCN, dict[str, str]]:
    """Build the DRCN stored in a ``.safetensors`` file. Returns (model in eval mode, metadata)."""
    import torch
    from safetensors import SafetensorError, safe_open

    from ..model import DRCN

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            state = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from exc
    state = canonical_state_dict(state)
    try:
        config = config_from_state_dict(state)
    except WeightsError as exc:
        raise WeightsError(f"{path}: {exc}") from None
    if not all(torch.isfinite(value).all() for value in state.values() if value.is_floating_point()):
        raise WeightsError(f"{path}: the weights hold NaN or infinite values")
    model = DRCN(config)
    model.load_state_dict(flush_tiny({k: v.float() for k, v in state.items()}))
    return model.to(device).eval(), metadata


def save_weights(model: DRCN, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> None:
    """Write the model's tensors and metadata as safetensors, atomically (:func:`drcn_cli.io.atomic.write_atomic`:
    an existing regular file is replaced, anything else in the way refused)."""
    from safetensors.torch import save

    path = Path(path)
    config = model.config
    meta = {
        "format": FORMAT,
        "architecture": "DRCN",
        "features": str(config.features),
        "recursions": str(config.recursions),
        "kernel_size": str(config.kernel_size),
        "color_space": "Y of BT.601 YCbCr (MATLAB rgb2ycbcr), input bicubic-upsampled, values in [0, 1]",
        "drcn_cli_version": __version__,
    }
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    state = canonical_state_dict(model.state_dict())
    state = flush_tiny({k: v.detach().float().cpu().contiguous() for k, v in state.items()})
    # In memory first: safetensors' save_file writes a private (0600) file of its own and renames it into place.
    write_atomic(path, save(state, metadata=meta), overwrite=True)
