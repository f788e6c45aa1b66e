"""Regenerate tests/data/matlab_imresize/: crops of MATLAB's imresize test vectors, small enough to commit.

Inputs: the folder ``reference/matlab_imresize`` of the maintainers' shared data (by default
``../shared/reference/matlab_imresize`` beside the repository; another folder can be given as the first argument).
It holds ``baboon.png`` (492x480 RGB, the Set14 benchmark image) and what MATLAB R2017b made of it with
``imwrite(imresize(im2double(img), s, 'bicubic'))``: ``baboon_{down_x2,down_x3,down_x4,up_x2,up_x3}_matlab.png``
for s = 1/2, 1/3, 1/4, 2, 3.

Writes, into ``tests/data/matlab_imresize/`` (beside this script), for each crop in CROPS:

* ``baboon_{crop}.png``: the crop of baboon.png (rows top..top+height, columns left..left+width);
* ``baboon_{crop}_{case}_matlab.png``: the same region of each MATLAB output (its rows top*s..(top+height)*s and
  columns likewise), which is what MATLAB computed there from the whole image;
* ``crops.json``: the size of the whole image and each crop's box, for tests/test_inference_resize.py to know which
  sides of a crop are the image's own border (there MATLAB mirrored the crop's pixels; elsewhere it read pixels the
  crop lacks, so the test leaves out a margin).

Every box is aligned to 12 (a multiple of 2, 3 and 4), so that each MATLAB output's pixels fall on the crop's grid.
Run from anywhere: ``python tests/data/make_matlab_crops.py [FOLDER]``.
"""

from __future__ import annotations

import json
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parents[2] / "shared" / "reference" / "matlab_imresize"
TARGET = HERE / "matlab_imresize"

# name: (top, left, height, width) in baboon.png (480 rows, 492 columns)
CROPS = {
    "eye": (0, 288, 72, 72),  # the right eye, fur and the image's top border
    "corner": (432, 444, 48, 48),  # the bottom-right corner: the image's bottom and right borders
}
CASES = {"down_x2": Fraction(1, 2), "down_x3": Fraction(1, 3), "down_x4": Fraction(1, 4), "up_x2": 2, "up_x3": 3}


def load(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def save(pixels: np.ndarray, path: Path) -> None:
    Image.fromarray(np.ascontiguousarray(pixels), "RGB").save(path, optimize=True)


def main(source: Path) -> None:
    image = load(source / "baboon.png")
    height, width = image.shape[:2]
    TARGET.mkdir(exist_ok=True)
    for name, (top, left, h, w) in CROPS.items():
        assert top % 12 == left % 12 == h % 12 == w % 12 == 0, name
        assert top + h <= height and left + w <= width, name
        save(image[top : top + h, left : left + w], TARGET / f"baboon_{name}.png")
        for case, scale in CASES.items():
            out = load(source / f"baboon_{case}_matlab.png")
            assert out.shape[:2] == (height * scale, width * scale), (case, out.shape)
            rows = slice(int(top * scale), int((top + h) * scale))
            cols = slice(int(left * scale), int((left + w) * scale))
            save(out[rows, cols], TARGET / f"baboon_{name}_{case}_matlab.png")
    meta = {
        "source": "baboon.png and baboon_*_matlab.png of ../shared/reference/matlab_imresize (MATLAB R2017b)",
        "image_size": [height, width],
        "crops": {name: dict(zip(("top", "left", "height", "width"), box, strict=True)) for name, box in CROPS.items()},
        "cases": {case: str(scale) for case, scale in CASES.items()},
    }
    (TARGET / "crops.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE)
