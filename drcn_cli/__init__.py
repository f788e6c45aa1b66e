"""drcn: image super-resolution with the Deeply-Recursive Convolutional Network (Kim et al., CVPR 2016).

Importing the package is cheap: torch is imported only when :func:`upscale_image` is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "upscale_image"]

if TYPE_CHECKING:
    from .inference.pipeline import upscale_image


def __getattr__(name: str) -> Any:
    if name == "upscale_image":
        from .inference.pipeline import upscale_image

        return upscale_image
    raise AttributeError(f"module 'drcn_cli' has no attribute {name!r}")
