"""Training images: HR files -> 8-bit luminance (and RGB for a JPEG step) as :class:`TrainImage`; packs of them
(one compressed file, read without pickles) and their fingerprint."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..bench.datasets import load_image8
from ..bench.degradation import DataError, _levels
from ..bench.metrics import quantize_8bit
from ..inference.color import rgb_to_ycbcr
from ..io.atomic import write_atomic
from ..io.formats import IMAGE_EXTENSIONS

__all__ = [
    "IMAGE_SUFFIXES",
    "PACK_FORMAT",
    "TrainImage",
    "fingerprint",
    "list_images",
    "load_images",
    "load_pack",
    "load_y",
    "save_pack",
]

IMAGE_SUFFIXES = IMAGE_EXTENSIONS  # the one list of image extensions (io.formats)
PACK_FORMAT = "drcn-train-pack/1"


@dataclass(frozen=True)
class TrainImage:
    """One HR image's luminance: ``y`` (H, W) uint8, as MATLAB's rgb2ycbcr gives it for an 8-bit image; and,
    where the image is in colour and was read with its colour, ``rgb`` (3, H, W) uint8 (a JPEG step needs it)."""

    name: str
    y: torch.Tensor
    rgb: torch.Tensor | None = None

    def as_float(self) -> torch.Tensor:
        """(H, W) float32 in [0, 1]."""
        return self.y.float() / 255.0


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name. Raises DataError if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return files


def _luma8(image: torch.Tensor) -> torch.Tensor:
    """(C, H, W) float on 8-bit levels -> (H, W) uint8: MATLAB's rgb2ycbcr Y for colour, rounded as MATLAB does
    for uint8; the grey level for one channel."""
    luma = rgb_to_ycbcr(image.double())[0] if image.shape[0] == 3 else image[0]
    return (quantize_8bit(luma) * 255.0).round().to(torch.uint8)


def load_y(path: str | Path) -> torch.Tensor:
    """The 8-bit luminance of an image file: (H, W) uint8.

    RGB goes through MATLAB's rgb2ycbcr (BT.601, Y in 16..235) and is rounded as MATLAB does for uint8;
    grey images are taken as they are.
    """
    return _luma8(load_image8(path))


def load_images(folders: Iterable[str | Path], color: bool = False) -> list[TrainImage]:
    """The luminance of every image in the folders, in folder order then name order; with ``color`` the RGB
    pixels of colour images too (what a JPEG step degrades)."""
    images = []
    for folder in folders:
        for path in list_images(folder):
            image = load_image8(path)
            rgb = _levels(image) if color and image.shape[0] == 3 else None
            images.append(TrainImage(f"{Path(folder).name}/{path.name}", _luma8(image), rgb))
    return images


def save_pack(path: str | Path, images: Sequence[TrainImage]) -> None:
    """Write the images' luminance (and RGB, where the images hold it) to a compressed ``.npz`` (uint8; ~25 MB for
    T91 + BSD200 without colour), atomically (:func:`drcn_cli.io.atomic.write_atomic`)."""
    arrays = {f"y{i:05d}": image.y.numpy() for i, image in enumerate(images)}
    arrays |= {f"c{i:05d}": image.rgb.numpy() for i, image in enumerate(images) if image.rgb is not None}
    names = np.array([image.name for image in images])

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file, not its name: numpy would add ".npz" to the temporary's name
            np.savez_compressed(f, format=np.array(PACK_FORMAT), names=names, **arrays)  # type: ignore[arg-type]  # keys are yNNNNN, never allow_pickle

    write_atomic(path, write, overwrite=True)


def load_pack(path: str | Path) -> list[TrainImage]:
    """Read a pack written by :func:`save_pack` (no pickles are loaded)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as pack:
            if "format" not in pack.files or str(pack["format"]) != PACK_FORMAT:
                raise DataError(f"{path}: not a drcn training pack")
            names = [str(n) for n in pack["names"]]
            images = [
                TrainImage(name, torch.from_numpy(pack[f"y{i:05d}"].copy()), _pack_rgb(pack, f"c{i:05d}"))
                for i, name in enumerate(names)
            ]
    except (OSError, ValueError, KeyError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: not a readable training pack ({exc})") from None
    if not images:
        raise DataError(f"{path}: the training pack holds no images")
    return images


def _pack_rgb(pack: Any, key: str) -> torch.Tensor | None:
    return torch.from_numpy(pack[key].copy()) if key in pack.files else None


def fingerprint(images: Sequence[TrainImage]) -> str:
    """A short hash of the pixels (not the names), so a resumed run can check that it sees the same data."""
    digest = hashlib.sha256()
    for image in images:
        digest.update(repr(tuple(image.y.shape)).encode())
        digest.update(image.y.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
