"""The known DRCN weights, as data: one :class:`KnownWeights` entry per published file (its sha256 and size pin its
contents), and which model an input gets when none is named (:func:`model_for_input`: the photo model for lossy
inputs, else :func:`default_model_name`).

Maintainers regenerate the table's checksum lines from files with ``python -m drcn_cli.weights.publish FILE...``;
how a name becomes a verified file on disk is :mod:`drcn_cli.weights.resolve`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .files import DEFAULT_MODELS, bundled_weights

__all__ = [
    "DEFAULT_REPO_ID",
    "KNOWN_WEIGHTS",
    "LOSSY_FORMATS",
    "PHOTO_MODEL",
    "REPO_ID_ENV",
    "KnownWeights",
    "bundled_path",
    "default_model_name",
    "model_for_input",
]

DEFAULT_REPO_ID = "drcn-sr/drcn-weights"
PHOTO_MODEL = "drcn-lite-photo"  # the model for lossy inputs when none is named (model_for_input)
# Inputs whose pixels went through a lossy codec: JPEG files (MPO: a phone's multi-picture JPEG) and video frames.
LOSSY_FORMATS = frozenset({"JPEG", "MPO", "video"})
REPO_ID_ENV = "DRCN_REPO_ID"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class KnownWeights:
    """One published weights file.

    ``sha256`` and ``size`` (bytes) pin its contents; both None means not published yet (cannot be downloaded).
    ``bundled`` says the release ships a copy in ``weights/``.
    """

    name: str
    filename: str
    sha256: str | None
    size: int | None
    description: str
    revision: str = "main"
    bundled: bool = False
    repo_id: str = DEFAULT_REPO_ID

    def __post_init__(self) -> None:
        if (self.sha256 is None) != (self.size is None):
            raise ValueError(f"{self.name}: give both sha256 and size, or neither")
        if self.sha256 is not None and not _SHA256.match(self.sha256):
            raise ValueError(f"{self.name}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if self.size is not None and self.size <= 0:
            raise ValueError(f"{self.name}: size must be positive, got {self.size}")


# The table. sha256/size are None until the trained files are published; fill them with the output of
# `python -m drcn_cli.weights.publish weights/*.safetensors` (see weights/README.md) and pin `revision` to the
# commit hash of the upload.
KNOWN_WEIGHTS: dict[str, KnownWeights] = {
    entry.name: entry
    for entry in (
        KnownWeights(
            name="drcn",
            filename="drcn.safetensors",
            sha256=None,
            size=None,
            description="DRCN as in the paper: F=256 filters, D=16 recursions",
            revision="main",
            bundled=False,
        ),
        KnownWeights(
            name="drcn-lite",
            filename="drcn-lite.safetensors",
            sha256="1f2537e95542260e1ab49c0d518bff65a078a8f2593d71f4a5deb6e59947b545",
            size=449964,
            description="Light DRCN: F=64 filters, D=16 recursions; about 16x fewer operations, for CPUs",
            revision="main",
            bundled=True,
        ),
        KnownWeights(
            name="drcn-lite-photo",
            filename="drcn-lite-photo.safetensors",
            sha256="3219db607f77aad5841d4b796ea4b4462a81b4b2e4285b5eaa204544747aee91",
            size=450212,
            description="drcn-lite trained on JPEG inputs as well as clean ones: the model for photos (JPEG files, "
            "video frames)",
            revision="main",
            bundled=True,
        ),
    )
}


bundled_path = bundled_weights  # the bundled file for a name, or None


def default_model_name() -> str:
    """``drcn`` if its file is bundled, else ``drcn-lite`` if bundled, else ``drcn`` (to be downloaded)."""
    for name in DEFAULT_MODELS:
        if bundled_path(name) is not None:
            return name
    return "drcn"


def model_for_input(source_format: str | None) -> str:
    """The model for an input when none is named: the bundled photo model (:data:`PHOTO_MODEL`, trained on JPEG
    inputs as well as clean ones) for a lossy input, else :func:`default_model_name`.

    ``source_format`` is the decoder's name for the input ("JPEG", "PNG" ... as Pillow gives it), "video" for
    video frames, or None when unknown (an array): only those in :data:`LOSSY_FORMATS` are lossy.
    """
    if source_format in LOSSY_FORMATS and bundled_path(PHOTO_MODEL) is not None:
        return PHOTO_MODEL
    return default_model_name()
