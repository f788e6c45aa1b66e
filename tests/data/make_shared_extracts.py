"""Regenerate the other files of tests/data taken from the maintainers' shared data: two photo crops and a table.

Inputs: the shared data folder (by default ``../shared`` beside the repository; another can be given as the first
argument), which holds ``datasets/Set5/butterfly.png`` (256x256 RGB), ``datasets/Set14/bridge.png`` (512x512,
one grey channel) and ``reference/published_results.tsv``.

Writes, beside this script:

* ``butterfly_crop.png``: rows and columns 96..192 of Set5's butterfly (RGB), a real photo for the bundled
  weights' golden numbers;
* ``bridge_crop.png``: rows and columns 192..288 of Set14's bridge, kept one grey channel (mode L);
* ``published_results.tsv``: a byte-for-byte copy of the published PSNR/SSIM table.

Run from anywhere: ``python tests/data/make_shared_extracts.py [SHARED]``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[2] / "shared"

# output name: (path under the shared folder, top, left, side)
CROPS = {
    "butterfly_crop.png": ("datasets/Set5/butterfly.png", 96, 96, 96),
    "bridge_crop.png": ("datasets/Set14/bridge.png", 192, 192, 96),
}


def main(shared: Path) -> None:
    for name, (source, top, left, side) in CROPS.items():
        with Image.open(shared / source) as image:
            image.load()
            assert image.mode in ("RGB", "L"), (source, image.mode)
            image.crop((left, top, left + side, top + side)).save(HERE / name, optimize=True)  # the mode is kept
    shutil.copyfile(shared / "reference" / "published_results.tsv", HERE / "published_results.tsv")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else SHARED)
