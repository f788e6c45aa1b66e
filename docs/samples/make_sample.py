"""Render docs/samples/pattern.png: the project's own low-resolution test card for the quickstart.

Text, thin lines at several angles, circles, a colour gradient and a fine checkerboard, drawn with
Pillow at 160x120 so that upscaling it shows the difference between bicubic and DRCN on edges.
Run from the repository root: `python docs/samples/make_sample.py` (rewrites the PNG).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 160, 120
OUT = Path(__file__).resolve().parent / "pattern.png"


def gradient(width: int, height: int) -> Image.Image:
    """Red rises left to right, blue top to bottom, green along the diagonal."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    red = 40 + 180 * x / (width - 1)
    blue = 40 + 180 * y / (height - 1)
    green = 60 + 120 * (x + y) / (width + height - 2)
    return Image.fromarray(np.stack([red, green, blue], axis=2).round().astype(np.uint8))


def render() -> Image.Image:
    image = gradient(WIDTH, HEIGHT)
    draw = ImageDraw.Draw(image)
    # Text: the small default font, where upscaling visibly helps.
    font = ImageFont.load_default(size=13)
    draw.rectangle((4, 4, 92, 40), fill=(250, 250, 245))
    draw.text((8, 6), "DRCN x3", fill=(10, 10, 10), font=font)
    draw.text((8, 22), "drcn upscale", fill=(160, 20, 20), font=ImageFont.load_default(size=10))
    # A fan of one-pixel lines: aliasing at every angle.
    cx, cy = 128, 28
    for i in range(12):
        angle = math.pi * i / 11
        draw.line((cx, cy, cx + 26 * math.cos(angle), cy + 22 * math.sin(angle)), fill=(255, 255, 255), width=1)
    # Concentric circles of growing radius.
    for r in range(4, 34, 5):
        draw.ellipse((40 - r, 82 - r, 40 + r, 82 + r), outline=(20, 20, 90), width=1)
    # A filled disc with a thick outline, and a checkerboard of 2-pixel squares.
    draw.ellipse((88, 62, 118, 92), fill=(240, 200, 40), outline=(0, 0, 0), width=2)
    for y in range(96, 116, 2):
        for x in range(124, 156, 2):
            if (x // 2 + y // 2) % 2 == 0:
                draw.rectangle((x, y, x + 1, y + 1), fill=(0, 0, 0))
    draw.rectangle((0, 0, WIDTH - 1, HEIGHT - 1), outline=(0, 0, 0))
    return image


if __name__ == "__main__":
    render().save(OUT, optimize=True)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
