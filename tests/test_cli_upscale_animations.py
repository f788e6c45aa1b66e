"""`drcn upscale` on animated GIF, WebP and PNG files and multi-page TIFFs: every frame upscaled, the animation kept;
--first-frame for today's still of the first frame."""

import io
import json

import numpy as np
import pytest
from conftest import animation_bytes
from PIL import Image, ImageSequence
from typer.testing import CliRunner

from drcn_cli import upscale_image
from drcn_cli.cli import app
from drcn_cli.inference import pipeline

runner = CliRunner()
DURATIONS = [40, 80, 120]
BICUBIC = ["--method", "bicubic"]


def run(*args, **kwargs):
    return runner.invoke(app, ["upscale", *map(str, args)], **kwargs)


def records(text):
    return {r["input"].rsplit("/", 1)[-1]: r for r in map(json.loads, text.splitlines())}


def rgba_frames(count=3, seed=0):
    """``count`` RGBA frames of 12x10 from 12 colours, each with a transparent 4x4 hole in its own place."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (12, 3)).astype(np.uint8)
    frames = []
    for index in range(count):
        rgba = np.concatenate([palette[rng.integers(0, 12, (10, 12))], np.full((10, 12, 1), 255, np.uint8)], axis=2)
        rgba[1 + 2 * index:5 + 2 * index, 2 + 2 * index:6 + 2 * index, 3] = 0
        frames.append(rgba)
    return frames


def save_animation(path, fmt, frames, loop=0):
    """An animation of ``frames`` saved by Pillow (see conftest.animation_bytes)."""
    path.write_bytes(animation_bytes(fmt, frames, DURATIONS, loop=loop))
    return path


def played(path):
    """(format, frames as shown RGBA, durations, loop, info) of an image file."""
    with Image.open(path) as image:
        info = dict(image.info)
        shown = []
        for frame in ImageSequence.Iterator(image):
            shown.append((np.asarray(frame.convert("RGBA")), frame.info.get("duration")))
        return image.format, [f for f, _ in shown], [d for _, d in shown], info.get("loop"), info


@pytest.mark.parametrize(("name", "fmt"), [("anim.gif", "GIF"), ("anim.webp", "WEBP"), ("anim.png", "PNG")])
def test_an_animation_is_upscaled_whole_into_its_own_format(tmp_path, name, fmt):
    frames = rgba_frames()
    source = save_animation(tmp_path / name, fmt, frames, loop=3)
    target = tmp_path / f"out{source.suffix}"
    result = run(source, "-s", 2, "-o", target, *BICUBIC, "--quality", 100, "--json")
    assert result.exit_code == 0, result.output
    record = records(result.stdout)[name]
    assert (record["frames"], record["frames_in_file"], record["output_size"]) == (3, 3, [24, 20])
    assert f"ok {source} -> {target} (12x10 -> 24x20, 3 frames, bicubic, " in result.stderr
    out_format, shown, durations, loop, info = played(target)
    assert (out_format, len(shown), durations, loop) == (fmt, 3, DURATIONS, 3)
    for pixels, rgba in zip(shown, frames, strict=True):
        assert pixels.shape == (20, 24, 4)
        # each hole, twice as large, is transparent at its middle and the far corner of the frame is not
        hole = np.argwhere(rgba[:, :, 3] == 0).mean(axis=0)
        centre = tuple(int(v * 2 + 1) for v in hole)
        assert pixels[centre][3] == 0
        far = (19, 0) if hole[1] > 6 else (19, 23)
        assert pixels[far][3] == 255
    if fmt == "GIF":
        assert info["transparency"] == 255  # the GIF's transparency index
    if fmt == "PNG":  # APNG keeps the alpha as upscaled: each frame is the frame alone upscaled
        with Image.open(source) as image:
            inputs = [np.asarray(frame.convert("RGBA")) for frame in ImageSequence.Iterator(image)]
        for pixels, frame in zip(shown, inputs, strict=True):
            np.testing.assert_array_equal(pixels, upscale_image(frame, 2, method="bicubic"))
        assert 0 < shown[0][:, :, 3].mean() < 255 and len(np.unique(shown[0][:, :, 3])) > 2


def test_a_gif_becomes_an_apng_by_default_and_a_gif_when_asked(tmp_path):
    source = save_animation(tmp_path / "anim.gif", "GIF", rgba_frames())
    result = run(source, "-s", 2, *BICUBIC)
    assert result.exit_code == 0, result.output
    fmt, shown, durations, loop, _ = played(tmp_path / "anim_x2_bicubic.png")
    assert (fmt, len(shown), durations, loop) == ("PNG", 3, DURATIONS, 0)
    result = run(source, "-s", 2, *BICUBIC, "--format", "gif", "-o", tmp_path / "gif")
    assert result.exit_code == 0, result.output
    fmt, shown, durations, loop, info = played(tmp_path / "gif" / "anim.gif")
    assert (fmt, len(shown), durations, loop, info["transparency"]) == ("GIF", 3, DURATIONS, 0, 255)


def test_every_frame_goes_through_the_network_loaded_once(tmp_path, weights, monkeypatch):
    source = save_animation(tmp_path / "anim.webp", "WEBP", rgba_frames())
    calls, opened = [], []
    real_upscale, real_open = pipeline.Upscaler.upscale_array, pipeline.open_upscalers
    monkeypatch.setattr(pipeline.Upscaler, "upscale_array",
                        lambda self, *a, **k: calls.append(a[0].shape) or real_upscale(self, *a, **k))  # fmt: skip
    monkeypatch.setattr(pipeline, "open_upscalers", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    result = run(source, "-s", 2, "-o", tmp_path / "out.webp", "--weights", weights)
    assert result.exit_code == 0, result.output
    assert calls == [(10, 12, 4)] * 3 and opened == [1]
    assert len(played(tmp_path / "out.webp")[1]) == 3


def test_a_multi_page_tiff_keeps_its_pages(tmp_path):
    rng = np.random.default_rng(5)
    pages = [Image.fromarray(rng.integers(0, 256, (10, 12, 3)).astype(np.uint8)),
             Image.fromarray(rng.integers(0, 65536, (6, 8)).astype(np.uint16)),
             Image.fromarray(rng.integers(0, 256, (9, 5)).astype(np.uint8))]  # fmt: skip
    pages[0].save(tmp_path / "scan.tif", save_all=True, append_images=pages[1:], compression="tiff_adobe_deflate")
    result = run(tmp_path / "scan.tif", "-s", 2, *BICUBIC, "--json")
    assert result.exit_code == 0, result.output
    assert records(result.stdout)["scan.tif"]["frames"] == 3
    with Image.open(tmp_path / "scan_x2_bicubic.tif") as image:
        assert image.n_frames == 3
        kinds = []
        for index in range(3):
            image.seek(index)
            image.load()
            kinds.append((image.size, image.mode))
    assert [size for size, _ in kinds] == [(24, 20), (16, 12), (10, 18)]  # each page upscaled at its own size
    assert (kinds[0][1], kinds[2][1]) == ("RGB", "L") and kinds[1][1].startswith("I")  # and kept its kind
    refused = run(tmp_path / "scan.tif", "-s", 2, *BICUBIC, "-o", tmp_path / "scan.png")
    assert refused.exit_code == 1 and "cannot hold the 3 pages of a TIFF" in refused.stderr


def test_first_frame_writes_the_still_of_before(tmp_path, weights):
    frames = rgba_frames()
    source = save_animation(tmp_path / "anim.png", "PNG", frames)
    Image.fromarray(frames[0]).save(tmp_path / "first.png")
    result = run(source, "-s", 2, "-o", tmp_path / "a.png", "--weights", weights, "--first-frame", "--json")
    assert result.exit_code == 0, result.output
    record = records(result.stdout)["anim.png"]
    assert (record["frames"], record["frames_in_file"]) == (1, 3)
    assert result.stderr.count("; the first of 3 frames)") == 1
    assert run(tmp_path / "first.png", "-s", 2, "-o", tmp_path / "b.png", "--weights", weights).exit_code == 0
    with Image.open(tmp_path / "a.png") as first, Image.open(tmp_path / "b.png") as still:
        assert getattr(first, "n_frames", 1) == 1
        np.testing.assert_array_equal(np.asarray(first), np.asarray(still))


@pytest.mark.parametrize("target", ["out.jpg", "out.tif"])
def test_an_animation_to_a_format_without_frames_is_refused_before_any_work(tmp_path, weights, monkeypatch, target):
    source = save_animation(tmp_path / "anim.gif", "GIF", rgba_frames())
    ran = []
    monkeypatch.setattr(pipeline.Upscaler, "upscale_array", lambda self, *a, **k: ran.append(1))
    result = run(source, "-s", 2, "-o", tmp_path / target, "--weights", weights)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot hold an animation (3 frames)" in errors[0] and "--first-frame" in errors[0]
    assert ran == [] and sorted(p.name for p in tmp_path.iterdir()) == ["anim.gif"]
    assert run(source, "-s", 2, "-o", tmp_path / "first.jpg", *BICUBIC, "--first-frame").exit_code == 1  # alpha
    assert "JPEG cannot store transparency" in run(source, "-s", 2, "-o", tmp_path / "first.jpg", *BICUBIC,
                                                    "--first-frame").stderr  # fmt: skip


def test_a_batch_of_animations_and_stills_goes_on(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    save_animation(folder / "anim.webp", "WEBP", rgba_frames())
    Image.fromarray(rgba_frames(count=1)[0][:, :, :3]).save(folder / "still.png")
    result = run(folder, "-s", 2, "-o", tmp_path / "jpeg", *BICUBIC, "--format", "jpeg", "--json")
    assert result.exit_code == 1
    got = records(result.stdout)
    assert got["anim.webp"]["status"] == "failed" and "cannot hold an animation" in got["anim.webp"]["error"]
    assert got["still.png"]["status"] == "ok"
    assert sorted(p.name for p in (tmp_path / "jpeg").iterdir()) == ["still.jpg"]
    result = run(folder, "-s", 2, "-o", tmp_path / "own", *BICUBIC, "--json")
    assert result.exit_code == 0, result.output
    assert {name: r["frames"] for name, r in records(result.stdout).items()} == {"anim.webp": 3, "still.png": 1}


def test_the_pixel_limits_apply_to_each_frame_not_to_their_sum(tmp_path):
    source = save_animation(tmp_path / "anim.gif", "GIF", rgba_frames())  # 3 frames of 120 pixels, 480 upscaled
    ok = run(source, "-s", 2, "-o", tmp_path / "ok.png", *BICUBIC, "--max-pixels", "0.00012",
             "--max-output-pixels", "0.00048")  # fmt: skip
    assert ok.exit_code == 0, ok.output
    over = run(source, "-s", 2, "-o", tmp_path / "over.png", *BICUBIC, "--max-output-pixels", "0.000479")
    assert over.exit_code == 1 and "over --max-output-pixels" in over.stderr
    assert not (tmp_path / "over.png").exists()


def test_an_animation_from_stdin_to_stdout(tmp_path):
    source = save_animation(tmp_path / "anim.gif", "GIF", rgba_frames())
    result = run("-", "-s", 2, *BICUBIC, input=source.read_bytes())
    assert result.exit_code == 0, result.stderr
    with Image.open(io.BytesIO(result.stdout_bytes)) as image:
        assert (image.format, image.n_frames, image.size) == ("PNG", 3, (24, 20))


def test_the_files_bar_moves_frame_by_frame():
    from types import SimpleNamespace

    from rich.console import Console

    from drcn_cli.cli._report import Reporter

    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    report = Reporter(console, quiet=False, json_lines=False, json_to_stderr=False, world=1, rank=0)
    job = SimpleNamespace(input_label="anim.gif", output_label="anim.png")
    with report.progress(2):
        files = report._progress.tasks[0]
        report.start(job, SimpleNamespace(width=12, height=10), (20, 24))
        report.frame(1, 4)
        assert files.completed == 0.25 and "frame 2/4" in files.fields["name"]
        report.tile(1, 2)
        assert files.completed == 0.375  # half of the second of four frames


def test_first_frame_is_refused_for_a_video(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"not read")
    result = run(tmp_path / "clip.mp4", "-s", 2, "--first-frame")
    assert result.exit_code == 2 and "--first-frame is for animated images" in result.stderr
