"""`drcn upscale clip.mp4 ...`: videos through the root app, with tiny clips and a tiny model in tmp_path."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from drcn_cli.cli import app

pytest.importorskip("av")
from tinyvideo import describe, make_clip  # noqa: E402 (needs av)

runner = CliRunner()


def run(*args, **kwargs):
    return runner.invoke(app, ["upscale", *map(str, args)], **kwargs)


def test_a_clip_is_upscaled_with_its_rate_and_audio(tmp_path, weights):
    source = make_clip(tmp_path / "clip.mp4")
    result = run(source, "-s", 2, "-o", tmp_path / "clip_x2.mp4", "--weights", weights, "--json")
    assert result.exit_code == 0, result.output
    out = describe(tmp_path / "clip_x2.mp4")
    assert out["streams"] == [("video", "h264"), ("audio", "aac")] and out["rate"] == 25
    assert out["size"] == (48, 32) and len(out["frames"]) == 6
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert (record["status"], record["frames"], record["output_size"]) == ("ok", 6, [48, 32])
    assert "1 video(s)" in result.stderr and "6 frames, 1 audio stream(s) kept" in result.stderr


def test_network_frames_match_the_image_path(tmp_path, weights):
    # A frame of the video is what `drcn upscale` gives for that frame as an image (up to the codec's loss).
    source = make_clip(tmp_path / "clip.mp4", frames=2, audio=False)
    result = run(source, "-s", 2, "--weights", weights, "-q")
    assert result.exit_code == 0, result.output
    first = describe(source)["frames"][0]
    from PIL import Image

    Image.fromarray(first).save(tmp_path / "first.png")
    assert run(tmp_path / "first.png", "-s", 2, "--weights", weights, "-q").exit_code == 0
    expected = np.asarray(Image.open(tmp_path / "first_x2.png")).astype(int)
    assert np.abs(describe(tmp_path / "clip_x2.mp4")["frames"][0].astype(int) - expected).mean() < 4


def test_default_names_skip_existing_and_refusals(tmp_path, weights):
    source = make_clip(tmp_path / "clip.mp4", audio=False)
    bicubic = run(source, "-s", 2, "--method", "bicubic", "-q")
    assert bicubic.exit_code == 0 and (tmp_path / "clip_x2_bicubic.mp4").is_file()
    again = run(source, "-s", 2, "--method", "bicubic")
    assert again.exit_code == 1 and "clip_x2_bicubic.mp4 exists (use --overwrite or --skip-existing)" in again.stderr
    skipped = run(source, "-s", 2, "--method", "bicubic", "--skip-existing", "--json")
    assert skipped.exit_code == 0 and json.loads(skipped.stdout)["status"] == "skipped"
    into = run(source, "-s", 2, "--method", "bicubic", "-o", tmp_path / "videos", "-q")
    assert into.exit_code == 0 and (tmp_path / "videos" / "clip.mp4").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-o", "-"], "a video cannot be written to stdout"),
        (["--format", "png"], "--format is for images"),
        (["-o", "still.png"], "cannot tell the video format from 'still.png'"),
    ],
)
def test_video_usage_errors(tmp_path, extra, message):
    source = make_clip(tmp_path / "clip.mp4", frames=1, audio=False)
    result = run(source, "-s", 2, "--method", "bicubic", *extra)
    assert result.exit_code == 2 and message in result.stderr


def test_mixed_with_images_is_refused(tmp_path):
    source = make_clip(tmp_path / "clip.mp4", frames=1, audio=False)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    result = run(source, tmp_path / "a.png", "-s", 2, "--method", "bicubic", "-o", tmp_path / "out")
    assert result.exit_code == 2 and "videos and images cannot be mixed" in result.stderr


def test_corrupt_and_truncated_videos_fail_cleanly(tmp_path):
    source = make_clip(tmp_path / "clip.mp4", audio=False)
    (tmp_path / "cut.mp4").write_bytes(source.read_bytes()[:200])
    (tmp_path / "junk.mkv").write_bytes(b"\x00" * 100)
    result = run(tmp_path / "cut.mp4", tmp_path / "junk.mkv", "-s", 2, "--method", "bicubic", "-o", tmp_path / "o")
    assert result.exit_code == 1
    for name in ("cut.mp4", "junk.mkv"):
        assert f"error: {tmp_path / name}: not a video, or truncated or corrupt" in result.stderr
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


def test_on_a_terminal_a_frame_bar_runs_and_the_output_is_named(tmp_path, weights):
    source = make_clip(tmp_path / "clip.mp4", frames=3, audio=False)
    result = run(source, "-s", 2, "--weights", weights, env={"TTY_COMPATIBLE": "1", "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "frames" in result.stderr and "\x1b[" in result.stderr  # the live bar, in frames
    assert f"ok {source} -> {tmp_path / 'clip_x2.mp4'} (24x16 -> 48x32, 3 frames" in result.stderr


def test_video_frames_get_the_photo_model_when_no_model_is_named(tmp_path, bundled_pair):
    source = make_clip(tmp_path / "clip.mp4", frames=2, audio=False)
    result = run(source, "-s", 2, "--json")
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["model"] == "drcn-lite-photo" and "drcn-lite-photo, " in result.stderr


def test_a_video_whose_output_name_is_too_long_is_one_line_and_the_others_are_done(tmp_path):
    good = make_clip(tmp_path / "good.mp4", frames=2, audio=False)
    long = make_clip(tmp_path / ("v" * 236 + ".mp4"), frames=2, audio=False)  # its output: 251 bytes, fits
    longer = tmp_path / ("w" * 250 + ".mp4")  # its output, with _x2_bicubic: 265 bytes, over 255
    longer.write_bytes(long.read_bytes())
    result = run(good, long, longer, "-s", 2, "--method", "bicubic")
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "name too long" in errors[0] and "Traceback" not in result.output
    assert (tmp_path / "good_x2_bicubic.mp4").is_file() and (tmp_path / ("v" * 236 + "_x2_bicubic.mp4")).is_file()


def test_a_video_output_that_is_a_link_is_refused_before_any_work(tmp_path):
    source = make_clip(tmp_path / "clip.mp4", frames=2, audio=False)
    (tmp_path / "out.mp4").symlink_to(tmp_path / "nowhere.mp4")
    result = run(source, "-s", 2, "--method", "bicubic", "-o", tmp_path / "out.mp4", "--overwrite")
    assert result.exit_code == 1 and "symbolic link" in result.stderr
    assert (tmp_path / "out.mp4").is_symlink()


@pytest.mark.parametrize("extension", [".mkv", ".mp4"])
def test_a_truncated_video_is_an_error_and_nothing_is_written(tmp_path, extension):
    whole = make_clip(tmp_path / f"whole{extension}", frames=60)
    cut = tmp_path / f"cut{extension}"
    data = whole.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    result = run(cut, "-s", 2, "--method", "bicubic", "--json")
    assert result.exit_code == 1, result.output
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["status"] == "failed" and ("truncated" in record["error"] or "corrupt" in record["error"])
    assert not (tmp_path / f"cut_x2_bicubic{extension}").exists()
    assert run(whole, "-s", 2, "--method", "bicubic", "-q").exit_code == 0  # the whole file is fine


def test_a_clip_in_int8_uses_the_bundled_photo_model_and_its_calibration(tmp_path):
    pytest.importorskip("onnxruntime")
    source = make_clip(tmp_path / "clip.mp4", frames=3, audio=False)
    result = run(source, "-s", 2, "-o", tmp_path / "clip_x2.mp4", "--precision", "int8", "--json")
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert (record["status"], record["frames"], record["model"]) == ("ok", 3, "drcn-lite-photo")
    assert ", int8, " in result.stderr and len(describe(tmp_path / "clip_x2.mp4")["frames"]) == 3
