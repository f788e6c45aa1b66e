import numpy as np
import pytest
import torch
from conftest import random_drcn
from PIL import Image

from drcn_cli.inference.pipeline import InferenceSettings, open_model, super_resolve_y, target_size, upscale_image
from drcn_cli.inference.resize import imresize
from drcn_cli.inference.tiling import TilePlan
from drcn_cli.model import DRCN
from drcn_cli.weights.files import WeightsError, save_weights
from drcn_cli.weights.resolve import WeightsNotFoundError


@pytest.fixture(scope="module")
def model() -> DRCN:
    return random_drcn()


def rng_image(shape, dtype=np.uint8, seed=0):
    top = 65536 if dtype == np.uint16 else 256
    return np.random.default_rng(seed).integers(0, top, shape).astype(dtype)


def test_target_size_rules():
    assert target_size(10, 20, scale=2) == (20, 40)
    assert target_size(101, 33, scale=2.5) == (253, 83)  # ceil, as MATLAB's imresize
    assert target_size(10, 20, out_width=50) == (25, 50)
    assert target_size(10, 20, out_height=15) == (15, 30)
    assert target_size(10, 20, out_width=21, out_height=31) == (31, 21)
    for bad in (dict(scale=0.5), dict(scale=1000.0), dict(scale=float("nan")), dict(out_width=10), dict()):
        with pytest.raises(ValueError):
            target_size(10, 20, **bad)


def test_rgb_numpy_in_numpy_out(model):
    image = rng_image((9, 11, 3))
    out = upscale_image(image, 2, weights=model)
    assert out.shape == (18, 22, 3) and out.dtype == np.uint8


def test_bicubic_method_is_matlab_bicubic_rounded(model):
    image = rng_image((9, 11, 3))
    out = upscale_image(image, 3, method="bicubic")
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    expected = torch.floor(imresize(x, 3).clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).numpy()
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1


def test_network_changes_only_luma(model):
    # A grey RGB image has Cb = Cr = 128, so after the network its output is still grey.
    grey = np.repeat(rng_image((8, 8, 1)), 3, axis=2)
    out = upscale_image(grey, 2, weights=model).astype(int)
    assert np.abs(out[..., 0] - out[..., 1]).max() <= 1 and np.abs(out[..., 0] - out[..., 2]).max() <= 1
    assert not np.array_equal(out, upscale_image(grey, 2, method="bicubic").astype(int))


def test_grayscale_stays_one_channel(model):
    assert upscale_image(rng_image((7, 6)), 2, weights=model).shape == (14, 12)
    assert upscale_image(rng_image((7, 6, 1)), 2, weights=model).shape == (14, 12, 1)
    pil = upscale_image(Image.fromarray(rng_image((7, 6))), 2, weights=model)
    assert pil.mode == "L" and pil.size == (12, 14)


def test_rgba_keeps_alpha_upscaled_with_bicubic(model):
    image = rng_image((8, 10, 4))
    image[..., 3] = 255
    image[:4, :, 3] = 0
    out = upscale_image(image, 2, weights=model)
    assert out.shape == (16, 20, 4)
    alpha = torch.from_numpy(image[..., 3]).float() / 255
    expected = torch.floor(imresize(alpha, 2).clamp(0, 1) * 255 + 0.5).byte().numpy()
    assert np.abs(out[..., 3].astype(int) - expected.astype(int)).max() <= 1
    assert out[0, 0, 3] == 0 and out[-1, -1, 3] == 255
    pil = upscale_image(Image.fromarray(image), 2, weights=model)
    assert pil.mode == "RGBA"


def test_16bit_in_16bit_out_computed_in_float(model):
    # A smooth 16-bit ramp whose steps are far finer than 1/255: the output must keep them.
    ramp = np.linspace(20000, 20300, 12 * 12).reshape(12, 12).astype(np.uint16)
    out = upscale_image(ramp, 2, method="bicubic")
    assert out.dtype == np.uint16 and out.shape == (24, 24)
    assert len(np.unique(out)) > 200  # through 8 bits this ramp would have 2 or 3 values
    rgb16 = np.stack([ramp, ramp, ramp], axis=2)
    net = upscale_image(rgb16, 2, weights=model)
    assert net.dtype == np.uint16 and net.shape == (24, 24, 3)
    pil = upscale_image(Image.fromarray(ramp), 2, weights=model)
    assert pil.mode == "I;16" and np.asarray(pil).dtype == np.uint16


def test_float_arrays_stay_float(model):
    out = upscale_image(np.random.default_rng(0).random((6, 6, 3), dtype=np.float32), 2, weights=model)
    assert out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0


def test_fractional_scale_and_exact_size(model):
    image = rng_image((10, 8, 3))
    assert upscale_image(image, 2.5, weights=model).shape == (25, 20, 3)
    assert upscale_image(image, width=20, weights=model).shape == (25, 20, 3)
    assert upscale_image(image, width=13, height=31, weights=model).shape == (31, 13, 3)


def test_tiling_does_not_change_the_result(model):
    image = rng_image((47, 39, 3))
    whole = upscale_image(image, 2, weights=model, tile=0)
    tiled = upscale_image(image, 2, weights=model, tile=32)  # the smallest tile accepted: 3 x 3 tiles here
    assert np.abs(whole.astype(int) - tiled.astype(int)).max() <= 1
    assert np.mean(whole != tiled) < 0.001


@pytest.mark.parametrize("tile", [5, -1, 31])
def test_the_api_refuses_the_tiles_the_cli_refuses(model, tile):
    with pytest.raises(ValueError, match=f"tile {tile} is too small: give 0 \\(auto\\) or at least 32"):
        upscale_image(rng_image((8, 8, 3)), 2, weights=model, tile=tile)


def test_fewer_recursions_give_a_different_result(model):
    image = rng_image((8, 8, 3))
    one = upscale_image(image, 2, weights=model, recursions=1)
    assert not np.array_equal(one, upscale_image(image, 2, weights=model))


def test_self_ensemble_is_the_mean_over_the_eight_flips_and_rotations(model):
    y = torch.rand(1, 1, 13, 9, generator=torch.Generator().manual_seed(1))
    expected = torch.zeros_like(y)
    with torch.no_grad():
        for mirrored in (y, y.flip(-1)):
            for turns in range(4):
                out = torch.rot90(model(torch.rot90(mirrored, turns, (2, 3))), -turns, (2, 3))
                expected += out.flip(-1) if mirrored is not y else out
    expected /= 8
    calls = []
    settings = InferenceSettings(torch.device("cpu"), tile=6, self_ensemble=True)  # tiled, and not square
    ready = open_model(model, "cpu", "fp32")
    ensembled = super_resolve_y(ready, y, settings, on_tile=lambda done, total: calls.append((done, total)))
    assert ensembled.shape == y.shape
    torch.testing.assert_close(ensembled, expected, atol=1e-5, rtol=0)
    plain = super_resolve_y(ready, y, InferenceSettings(torch.device("cpu")))
    assert (ensembled - plain).abs().max() > 1e-4  # the random network is not symmetric: averaging changes it
    # one progress count over all 8 passes, ending at the total
    assert [done for done, _ in calls] == list(range(1, len(calls) + 1))
    assert {total for _, total in calls} == {len(calls)} and len(calls) % 8 == 0 and len(calls) > 8


def test_self_ensemble_through_upscale_image(model):
    image = rng_image((7, 9, 3))
    ensembled = upscale_image(image, 2, weights=model, self_ensemble=True)
    assert ensembled.shape == (14, 18, 3)
    assert not np.array_equal(ensembled, upscale_image(image, 2, weights=model))
    with pytest.raises(ValueError, match="self_ensemble"):
        upscale_image(image, 2, method="bicubic", self_ensemble=True)


def test_weights_from_a_file(model, tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_weights(model, path)
    image = rng_image((6, 6, 3))
    assert np.array_equal(upscale_image(image, 2, weights=path), upscale_image(image, 2, weights=model))
    with pytest.raises(WeightsNotFoundError, match="no such weights file"):
        upscale_image(image, 2, weights=tmp_path / "missing.safetensors")
    with pytest.raises(WeightsNotFoundError, match="unknown model 'no-such-model'"):  # the registry's order
        upscale_image(image, 2, weights="no-such-model")
    (tmp_path / "junk.safetensors").write_bytes(b"not weights")
    with pytest.raises(WeightsError, match="junk.safetensors"):
        upscale_image(image, 2, weights=tmp_path / "junk.safetensors")


def test_bad_arguments(model):
    image = rng_image((6, 6, 3))
    with pytest.raises(ValueError, match="scale"):
        upscale_image(image, 0.5, weights=model)
    with pytest.raises(ValueError, match="method"):
        upscale_image(image, 2, method="lanczos")
    with pytest.raises(ValueError, match="fp16"):
        upscale_image(image, 2, weights=model, device="cpu", precision="fp16")


@pytest.mark.parametrize(
    "precision,height,width,bands",
    [("bf16", 1024, 1024, True), ("bf16", 512, 512, True), ("bf16", 768, 768, False), ("bf16", 720, 1280, False),
     ("bf16", 200, 200, False), ("fp32", 1024, 1024, True), ("fp32", 512, 512, False), ("fp32", 720, 1280, True)],
)
def test_bands_that_cut_context_rows_only_where_they_measured_faster(precision, height, width, bands):
    from drcn_cli.inference.tiling import auto_tile, plan_tiles, tile_plan
    from drcn_cli.model import DRCNConfig, context_row_cost

    config, cpu = DRCNConfig(features=64, recursions=16), torch.device("cpu")
    plan = tile_plan(config, None, cpu, precision, height, width)
    assert plan.by_area and plan.row_context_cost == (context_row_cost(config) if bands else 1.0)
    tiles = plan_tiles(height, width, plan.tile, 20, True, plan.row_context_cost)
    if bands:  # full-width bands, more than one
        assert len(tiles) > 1 and {t.window[2:] for t in tiles} == {(0, width)}
    else:
        assert plan.tile == auto_tile(config, cpu, precision)
    assert tile_plan(config, None, cpu, precision, height, width, tile=96) == TilePlan(96, by_area=False)
    assert tile_plan(config, None, torch.device("meta"), precision, height, width).row_context_cost == 1.0  # GPUs


def test_a_tiled_bf16_run_equals_the_untiled_one_with_cut_rows():
    model = random_drcn(features=8, recursions=3)
    y = torch.rand(1, 1, 61, 23, generator=torch.Generator().manual_seed(2))
    ready = open_model(model, "cpu", "bf16")
    whole = super_resolve_y(ready, y, InferenceSettings(torch.device("cpu"), tile=0, precision="bf16"))
    tiled = super_resolve_y(ready, y, InferenceSettings(torch.device("cpu"), tile=9, precision="bf16"))
    torch.testing.assert_close(tiled, whole, rtol=0, atol=0)


# -- arguments that cannot work: a precise error naming the argument ------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("method", ["bicubic", "drcn"])
def test_non_finite_pixels_are_refused_naming_image(model, method, bad):
    image = np.full((8, 9, 3), 0.5, dtype=np.float32)
    image[2, 3, 1] = bad
    weights = model if method == "drcn" else None
    with pytest.raises(ValueError, match="^image holds NaN or infinite pixel values") as info:
        upscale_image(image, 2, method=method, weights=weights)
    assert not isinstance(info.value, WeightsError)  # the input is to blame, not the weights
    grey = Image.fromarray(np.full((6, 7), bad, dtype=np.float32), "F")  # a float TIFF's mode
    with pytest.raises(ValueError, match="^image holds NaN or infinite"):
        upscale_image(grey, 2, method=method, weights=weights)
    assert upscale_image(np.full((8, 9, 3), 0.5), 2, method="bicubic").dtype == np.float64  # finite floats pass


@pytest.mark.parametrize("bad", [None, [[0, 1], [2, 3]], "photo.png", b"\x89PNG", 3, torch.zeros(3, 8, 8)])
def test_an_image_that_is_neither_pil_nor_numpy_is_a_type_error(bad):
    with pytest.raises(TypeError, match=r"^image must be a PIL\.Image\.Image or a numpy\.ndarray .*, got "):
        upscale_image(bad, 2, method="bicubic")


@pytest.mark.parametrize("mode", ["LAB", "HSV", "YCbCr"])
def test_images_in_other_colour_spaces_are_refused_rather_than_returned_as_rgb(mode):
    image = Image.fromarray(rng_image((6, 7, 3))).convert(mode) if mode != "LAB" else Image.new("LAB", (7, 6))
    assert image.mode == mode
    with pytest.raises(ValueError, match=f"^image is in mode {mode}, which drcn would return as RGB"):
        upscale_image(image, 2, method="bicubic")
    back = upscale_image(image.convert("RGB"), 2, method="bicubic")  # what the message says to do
    assert back.mode == "RGB" and back.size == (14, 12)


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "I;16", "F"])
def test_the_modes_kept_are_kept(mode):
    plain = mode not in ("I;16", "F")
    image = Image.fromarray(rng_image((6, 7, 4))).convert(mode) if plain else Image.new(mode, (7, 6))
    assert upscale_image(image, 2, method="bicubic").mode == mode


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"scale": True}, "scale"), ({"scale": "2"}, "scale"), ({"scale": [2]}, "scale"), ({"scale": 2j}, "scale"),
    ({"width": True}, "width"), ({"width": "20"}, "width"), ({"width": 20.0}, "width"), ({"height": False}, "height"),
    ({"height": None, "width": np.float32(20)}, "width"), ({"scale": 2, "threads": "2"}, "threads"),
    ({"scale": 2, "threads": True}, "threads"),
])  # fmt: skip
def test_a_size_that_is_not_a_number_is_a_type_error_naming_it(kwargs, name):
    with pytest.raises(TypeError, match=f"^{name} must be a"):
        upscale_image(rng_image((6, 7)), method="bicubic", **kwargs)


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"scale": float("nan")}, "scale nan is not a finite number"), ({"scale": float("inf")}, "scale inf is not"),
    ({"scale": 0.5}, "scale 0.5 is outside 1 to 32"), ({"scale": 33}, "scale 33 is outside 1 to 32"),
    ({"width": 0}, "width must be at least 1 pixel, got 0"), ({"height": -5}, "height must be at least 1 pixel"),
])  # fmt: skip
def test_a_size_out_of_range_is_a_value_error_naming_it(kwargs, expected):
    from drcn_cli.inference.pipeline import SizeError

    with pytest.raises(SizeError, match=f"^{expected}"):
        upscale_image(rng_image((6, 7)), method="bicubic", **kwargs)
    assert upscale_image(rng_image((6, 7)), np.float32(2.5), method="bicubic").shape == (15, 18)  # numpy scalars pass


def test_the_api_refuses_a_thread_count_the_machine_cannot_take():
    from drcn_cli.errors import ConfigError
    from drcn_cli.inference.device import max_threads

    before = torch.get_num_threads()
    with pytest.raises(ConfigError, match=f"^threads must be at most {max_threads()} "):
        upscale_image(rng_image((6, 7)), 2, method="bicubic", threads=max_threads() + 1)
    assert torch.get_num_threads() == before


def test_the_api_and_the_cli_share_one_scale_check(tmp_path, capsys):
    from drcn_cli.cli import main
    from drcn_cli.inference.pipeline import SizeError, scale_problem

    Image.fromarray(rng_image((6, 7, 3))).save(tmp_path / "in.png")
    for scale in (0.5, 40.0, float("-0.0")):
        problem = scale_problem(scale)
        with pytest.raises(SizeError, match=f"^scale {problem}$"):
            upscale_image(rng_image((6, 7)), scale, method="bicubic")
        with pytest.raises(SystemExit) as exit_info:
            main(["upscale", str(tmp_path / "in.png"), "-s", str(scale), "--method", "bicubic"])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and f"Invalid value for '-s' / '--scale': {problem}" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]
