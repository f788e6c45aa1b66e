"""Tests for drcn_cli.inference.resize: MATLAB test vectors, a naive reference, and hand-checkable facts."""

import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from drcn_cli.inference.resize import imresize, output_size

# Crops of MATLAB's test vectors (tests/data/README.md; tests/data/make_matlab_crops.py makes them).
VECTORS = Path(__file__).resolve().parent / "data" / "matlab_imresize"
CROPS = json.loads((VECTORS / "crops.json").read_text())

# (file suffix, scale passed to MATLAB's imresize)
CASES = [("down_x2", 1 / 2), ("down_x3", 1 / 3), ("down_x4", 1 / 4), ("up_x2", 2.0), ("up_x3", 3.0)]


@lru_cache(maxsize=8)
def _load_png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.array(img.convert("RGB"), dtype=np.int16)


def _assert_near(got: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    """Same shape and max |difference| <= atol (torch.testing's first call costs seconds of imports)."""
    assert got.shape == expected.shape
    assert (got.double() - expected.double()).abs().max().item() <= atol


def _to_uint8_like_imwrite(y: torch.Tensor) -> np.ndarray:
    """im2uint8 as imwrite applies it to doubles: clip to [0, 1], then round half up of value * 255."""
    return y.double().clamp_(0, 1).mul_(255).add_(0.5).floor_().to(torch.int16).numpy()


def _margin(scale: float) -> int:
    """Output pixels next to a side of a crop that may read input pixels beyond it: bicubic reaches 2 input pixels
    either way, 2 * scale output pixels when enlarging; when shrinking its kernel is widened by 1 / scale, which
    makes 2 output pixels. Two more to spare (the test below checks that the margin is enough)."""
    return math.ceil(2 * max(scale, 1.0)) + 2


def _interior(crop: dict, image_size: tuple[int, int], scale: float) -> tuple[slice, slice]:
    """The output rows and columns of a crop that depend on the crop's pixels alone: all but a margin on the sides
    inside the image; on a side that is the image's border both MATLAB and imresize mirror the crop's pixels."""
    image_h, image_w = image_size
    m = _margin(scale)
    top = 0 if crop["top"] == 0 else m
    left = 0 if crop["left"] == 0 else m
    bottom = 0 if crop["top"] + crop["height"] == image_h else m
    right = 0 if crop["left"] + crop["width"] == image_w else m
    out_h, out_w = round(crop["height"] * scale), round(crop["width"] * scale)
    return slice(top, out_h - bottom), slice(left, out_w - right)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(("name", "scale"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("crop", sorted(CROPS["crops"]))
def test_matches_matlab_imresize_vectors(crop, name, scale, dtype):
    src = _load_png(VECTORS / f"baboon_{crop}.png")
    ref = _load_png(VECTORS / f"baboon_{crop}_{name}_matlab.png").transpose(2, 0, 1)  # (C, H, W)
    x = torch.from_numpy(src).permute(2, 0, 1).to(dtype) / 255  # im2double
    got = _to_uint8_like_imwrite(imresize(x, scale))
    assert got.shape == ref.shape
    rows, cols = _interior(CROPS["crops"][crop], CROPS["image_size"], scale)
    diff = np.abs(got - ref)[:, rows, cols]
    assert min(diff.shape[1:]) >= 8  # the margins leave something to compare
    # The values that differ sit on a rounding tie (value * 255 = k + 0.5 up to rounding error),
    # which the order of summation decides; MATLAB's own order is not reproducible through GEMMs.
    assert diff.max() <= 1
    assert np.count_nonzero(diff) <= 0.0005 * diff.size


@pytest.mark.parametrize(("name", "scale"), CASES, ids=[c[0] for c in CASES])
def test_a_crops_interior_is_what_the_whole_image_gives_there(name, scale):
    # What the MATLAB test above relies on: away from the margin, imresize of a crop is imresize of the whole
    # image, cropped; on a side that is the image's border, too.
    image = torch.rand(3, 96, 120, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    whole = imresize(image, scale)
    for top, left in ((24, 36), (0, 0), (48, 72)):  # inside, the top-left corner, the bottom-right corner
        crop = {"top": top, "left": left, "height": 48, "width": 48}
        part = imresize(image[:, top : top + 48, left : left + 48], scale)
        rows, cols = _interior(crop, (96, 120), scale)
        expected = whole[:, round(top * scale) :, round(left * scale) :][:, rows, cols]
        _assert_near(part[:, rows, cols], expected, 1e-12)


def _naive_weights(in_len: int, out_len: int, scale: float, antialias: bool) -> torch.Tensor:
    """Dense (out_len, in_len) weight matrix, one output and one tap at a time, straight from imresize.m."""

    def cubic(t: float) -> float:
        t = abs(t)
        if t <= 1:
            return 1.5 * t**3 - 2.5 * t**2 + 1
        if t <= 2:
            return -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2
        return 0.0

    shrink = antialias and scale < 1
    width = 4 / scale if shrink else 4.0
    m = torch.zeros(out_len, in_len, dtype=torch.float64)
    for j in range(1, out_len + 1):
        u = j / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        taps = [
            (i, scale * cubic(scale * (u - i)) if shrink else cubic(u - i))
            for i in range(left, left + math.ceil(width) + 2)
        ]
        total = sum(w for _, w in taps)
        mirror = list(range(in_len)) + list(range(in_len - 1, -1, -1))  # 0-based [1:n, n:-1:1]
        for i, w in taps:
            m[j - 1, mirror[(i - 1) % (2 * in_len)]] += w / total
    return m


@pytest.mark.parametrize(
    ("in_hw", "kwargs"),
    [
        ((40, 90), {"scale": 1.7}),  # several bands per axis, non-integer factor
        ((70, 50), {"scale": (0.37, 2.5)}),  # shrink one axis, enlarge the other (columns go first)
        ((200, 30), {"scale": 0.3, "antialias": False}),
        ((9, 6), {"size": (4, 13)}),
        ((2, 3), {"scale": 5.0}),  # taps reach far past the border: mirrored periodically
        ((300, 1), {"size": (77, 1)}),
    ],
)
def test_matches_naive_reference(in_hw, kwargs):
    x = torch.rand(2, *in_hw, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = imresize(x, **kwargs)
    if "size" in kwargs:
        out = kwargs["size"]
        sy, sx = out[0] / in_hw[0], out[1] / in_hw[1]
    else:
        sy, sx = (kwargs["scale"],) * 2 if isinstance(kwargs["scale"], float) else kwargs["scale"]
        out = output_size(in_hw, kwargs["scale"])
    aa = kwargs.get("antialias", True)
    expected = _naive_weights(in_hw[0], out[0], sy, aa) @ x @ _naive_weights(in_hw[1], out[1], sx, aa).T
    _assert_near(y, expected, 1e-12)


@pytest.mark.parametrize("scale", [0.25, 1 / 3, 0.5, 0.77, 1.5, 2.0, 3.0, (0.5, 4.0)])
@pytest.mark.parametrize("antialias", [True, False])
def test_constant_image_stays_constant(scale, antialias):
    x = torch.full((1, 3, 25, 31), 0.6, dtype=torch.float64)
    y = imresize(x, scale, antialias=antialias)
    assert y.shape[-2:] == output_size((25, 31), scale)
    _assert_near(y, torch.full_like(y, 0.6), 1e-14)


def test_output_size_follows_the_ceil_rule():
    assert output_size((492, 480), 1 / 3) == (164, 160)
    assert output_size((492, 480), 1 / 4) == (123, 120)
    assert output_size((5, 7), 1.5) == (8, 11)  # 7.5 -> 8, 10.5 -> 11
    assert output_size((5, 7), 0.5) == (3, 4)
    assert output_size((5, 7), (2, 3)) == (10, 21)
    assert imresize(torch.rand(5, 7), 0.5).shape == (3, 4)


def test_size_with_one_axis_changed_only_resizes_that_axis():
    x = torch.rand(3, 10, 12, dtype=torch.float64)
    wide = imresize(x, size=(10, 17))
    assert wide.shape == (3, 10, 17)
    # Resizing only the columns is the same as resizing only the rows of the transposed image.
    _assert_near(wide, imresize(x.mT, size=(17, 10)).mT, 1e-14)
    tall = imresize(x, size=(4, 12))
    assert tall.shape == (3, 4, 12)
    _assert_near(tall, imresize(x, (4 / 10, 1.0)), 0)


def test_leading_dims_and_batching():
    x = torch.rand(2, 3, 16, 20, generator=torch.Generator().manual_seed(2))
    y = imresize(x, 2.0)
    assert y.shape == (2, 3, 32, 40)
    for n in range(2):
        _assert_near(imresize(x[n], 2.0), y[n], 1e-6)
        for c in range(3):
            _assert_near(imresize(x[n, c], 2.0), y[n, c], 1e-6)
    assert imresize(torch.rand(4, 1, 2, 9, 9), 1 / 3).shape == (4, 1, 2, 3, 3)


def test_float32_and_float64_agree():
    x = torch.rand(3, 33, 29, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for scale in (0.25, 1 / 3, 2.0, 3.0):
        y32, y64 = imresize(x.float(), scale), imresize(x, scale)
        assert y32.dtype == torch.float32 and y64.dtype == torch.float64
        _assert_near(y32.double(), y64, 1e-5)


def test_per_axis_scale():
    x = torch.rand(1, 8, 5, dtype=torch.float64)
    y = imresize(x, (2, 3))
    assert y.shape == (1, 16, 15)
    # Separable: resizing rows then columns in two calls gives the same result.
    _assert_near(y, imresize(imresize(x, (2.0, 1.0)), (1.0, 3.0)), 1e-12)


def test_linear_ramp_stays_linear_away_from_the_border():
    # Keys' cubic (a = -0.5) reproduces linear functions; only the mirrored border breaks the ramp.
    i = torch.arange(20, dtype=torch.float64)
    x = 0.03 * i[:, None] - 0.02 * i[None, :] + 0.5
    y = imresize(x, 2.0)
    # 0-based output pixel k sits at input coordinate (k + 0.5) / 2 - 0.5.
    u = (torch.arange(40, dtype=torch.float64) + 0.5) / 2 - 0.5
    expected = 0.03 * u[:, None] - 0.02 * u[None, :] + 0.5
    _assert_near(y[4:-4, 4:-4], expected[4:-4, 4:-4], 1e-13)
    assert not torch.allclose(y[0, 0], expected[0, 0])  # the border really is mirrored, not extrapolated


def test_identity_scale_returns_an_equal_copy():
    x = torch.rand(2, 6, 7)
    y = imresize(x, 1.0)
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()


def test_gradients_flow_and_match_the_no_grad_result():
    x = torch.rand(1, 12, 10, dtype=torch.float64, requires_grad=True)
    y = imresize(x, (0.5, 1.5))
    _assert_near(y, imresize(x.detach(), (0.5, 1.5)), 1e-15)
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


def test_reduced_precision_inputs_and_settings_keep_accuracy():
    x = torch.rand(3, 20, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    exact = imresize(x, 1.5)
    y16 = imresize(x.bfloat16(), 1.5)
    assert y16.dtype == torch.bfloat16
    _assert_near(y16.double(), exact, 2e-2)
    previous = torch.get_float32_matmul_precision()
    try:  # TF32/bf16 products must not leak into the result
        torch.set_float32_matmul_precision("medium")
        y32 = imresize(x.float(), 1.5)
    finally:
        torch.set_float32_matmul_precision(previous)
    assert y32.dtype == torch.float32
    _assert_near(y32.double(), exact, 1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # would run the products in bf16
        y_auto = imresize(x.float(), 1.5)
    assert y_auto.dtype == torch.float32
    _assert_near(y_auto.double(), exact, 1e-6)


def test_empty_batch_gives_an_empty_result():
    assert imresize(torch.rand(0, 3, 10, 12), 0.5).shape == (0, 3, 5, 6)


def test_bad_arguments_are_refused():
    x = torch.rand(4, 4)
    with pytest.raises(ValueError, match="exactly one"):
        imresize(x)
    with pytest.raises(ValueError, match="exactly one"):
        imresize(x, 2.0, size=(8, 8))
    with pytest.raises(ValueError, match="positive"):
        imresize(x, -1.0)
    with pytest.raises(ValueError, match="size"):
        imresize(x, size=(0, 4))
    with pytest.raises(TypeError, match="floating"):
        imresize(torch.ones(4, 4, dtype=torch.uint8), 2.0)
    with pytest.raises(ValueError, match="H, W"):
        imresize(torch.rand(4), 2.0)
