import errno
import io
import json
import os
import signal

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms
from typer.testing import CliRunner

from drcn_cli.cli import _run as run_options
from drcn_cli.cli import app
from drcn_cli.inference import pipeline
from drcn_cli.io import atomic
from drcn_cli.weights import resolve, table

runner = CliRunner()


def rng_pixels(shape, dtype=np.uint8, seed=0):
    top = 65536 if dtype == np.uint16 else 256
    return np.random.default_rng(seed).integers(0, top, shape).astype(dtype)


def save_png(path, pixels=None, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng_pixels((10, 12, 3)) if pixels is None else pixels, mode).save(path)
    return path


def run(*args, **kwargs):
    return runner.invoke(app, ["upscale", *map(str, args)], **kwargs)


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_one_file(tmp_path, weights):
    source = save_png(tmp_path / "in.png")
    result = run(source, "-s", 3, "-o", tmp_path / "out.png", "--weights", weights)
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "out.png") as out:
        assert out.size == (36, 30) and out.mode == "RGB"
    assert "cpu" in result.stderr and "fp32 (CPU has no native bf16)" in result.stderr
    assert "tiny.safetensors" in result.stderr


def test_the_ok_line_says_when_only_the_first_frame_was_upscaled(tmp_path, weights):
    frames = [Image.fromarray(rng_pixels((10, 12, 3), seed=seed)) for seed in (0, 1)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    save_png(tmp_path / "still.png")
    inputs = (tmp_path / "anim.png", tmp_path / "still.png")
    result = run(*inputs, "-s", 2, "-o", tmp_path / "out", "--weights", weights, "--first-frame")
    assert result.exit_code == 0, result.output
    lines = {os.path.basename(line.split()[1]): line for line in result.stderr.splitlines() if line.startswith("ok ")}
    assert lines["anim.png"].endswith("; the first of 2 frames)")
    assert "frames" not in lines["still.png"]
    # a script reading --json under --quiet, where no ok line is printed, is told too
    result = run(*inputs, "-s", 2, "-o", tmp_path / "out", "--weights", weights, "--overwrite", "-q", "--json",
                 "--first-frame")  # fmt: skip
    assert result.exit_code == 0, result.output
    frames = {os.path.basename(r["input"]): (r["frames"], r["frames_in_file"]) for r in json_lines(result.stdout)}
    assert frames == {"anim.png": (1, 2), "still.png": (1, 1)}


def test_device_line_says_bf16_was_chosen_for_a_cpu_with_bf16_units(tmp_path, weights, monkeypatch):
    from drcn_cli.inference import device

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    source = save_png(tmp_path / "in.png")
    result = run(source, "-s", 2, "-o", tmp_path / "out.png", "--weights", weights)
    assert result.exit_code == 0, result.output
    assert "bf16 (CPU has native bf16)" in result.stderr
    forced = run(source, "-s", 2, "-o", tmp_path / "fp32.png", "--weights", weights, "--precision", "fp32")
    assert forced.exit_code == 0 and ", fp32," in forced.stderr, forced.stderr


def test_self_ensemble_is_announced_and_changes_the_output(tmp_path, weights):
    source = save_png(tmp_path / "in.png")
    plain = run(source, "-s", 2, "-o", tmp_path / "plain.png", "--weights", weights)
    ensembled = run(source, "-s", 2, "-o", tmp_path / "x8.png", "--weights", weights, "-x")
    assert plain.exit_code == 0 and ensembled.exit_code == 0, ensembled.output
    assert "self-ensemble x8" in ensembled.stderr and "self-ensemble" not in plain.stderr
    with Image.open(tmp_path / "plain.png") as a, Image.open(tmp_path / "x8.png") as b:
        assert a.size == b.size == (24, 20)
        assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_width_and_bicubic_need_no_weights(tmp_path):
    source = save_png(tmp_path / "in.png")
    result = run(source, "--width", 30, "--method", "bicubic", "-q")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    with Image.open(tmp_path / "in_w30_bicubic.png") as out:
        assert out.size == (30, 25)


def test_recursive_folder_tree_is_mirrored_with_json(tmp_path, weights):
    src = tmp_path / "photos"
    for rel in ("a.png", "trip/b.png", "trip/day2/c.png"):
        save_png(src / rel)
    (src / "trip" / "notes.txt").write_text("not an image")
    out = tmp_path / "big"
    result = run(src, "-r", "-s", 2, "-o", out, "--weights", weights, "--format", "webp", "--json")
    assert result.exit_code == 0, result.output
    assert files_under(out) == ["a.webp", "trip/b.webp", "trip/day2/c.webp"]
    records = json_lines(result.stdout)
    assert len(records) == 3 and {r["status"] for r in records} == {"ok"}
    first = next(r for r in records if r["input"].endswith("a.png"))
    assert first["input_size"] == [12, 10] and first["output_size"] == [24, 20] and first["error"] is None
    assert first["output"] == str(out / "a.webp") and first["seconds"] > 0


def test_stdin_to_stdout(weights):
    buffer = io.BytesIO()
    Image.fromarray(rng_pixels((10, 12, 3))).save(buffer, "PNG")
    result = runner.invoke(app, ["upscale", "-", "-s", "2", "--weights", weights, "--json"], input=buffer.getvalue())
    assert result.exit_code == 0, result.stderr
    with Image.open(io.BytesIO(result.stdout_bytes)) as out:  # stdout holds the PNG and nothing else
        assert out.format == "PNG" and out.size == (24, 20)
    (record,) = json_lines(result.stderr)  # with the image on stdout, JSON goes to stderr
    assert record["input"] == "-" and record["output"] == "-" and record["status"] == "ok"


def test_empty_stdin_is_a_failed_image_not_an_output():
    result = runner.invoke(app, ["upscale", "-", "-s", "2", "--method", "bicubic"], input=b"")
    assert result.exit_code == 1
    assert result.stdout_bytes == b""
    assert "error: -: empty file" in result.stderr


def test_sigterm_is_turned_into_an_interrupt():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with run_options.sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)  # handled in this thread before the next statement
            pytest.fail("SIGTERM did not interrupt")
    assert signal.getsignal(signal.SIGTERM) is before


def test_skip_existing_resumes_an_interrupted_batch(tmp_path, weights, monkeypatch):
    src = tmp_path / "in"
    for i in range(5):
        save_png(src / f"{i}.png", rng_pixels((10, 12, 3), seed=i))
    out = tmp_path / "out"
    real = pipeline.upscale_tensor
    calls = []

    def interrupted_on_the_fourth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "upscale_tensor", interrupted_on_the_fourth)
    result = run(src, "-s", 2, "-o", out, "--weights", weights, "--io-threads", 1)
    assert result.exit_code == 130
    assert "interrupted" in result.stderr and "--skip-existing" in result.stderr
    done = files_under(out)
    assert done == ["0.png", "1.png", "2.png"]  # complete files only, no temporary leftovers
    for name in done:
        with Image.open(out / name) as image:
            image.load()
            assert image.size == (24, 20)

    monkeypatch.setattr(pipeline, "upscale_tensor", real)
    result = run(src, "-s", 2, "-o", out, "--weights", weights, "--skip-existing", "--json")
    assert result.exit_code == 0, result.output
    statuses = {os.path.basename(r["input"]): r["status"] for r in json_lines(result.stdout)}
    assert statuses == {"0.png": "skipped", "1.png": "skipped", "2.png": "skipped", "3.png": "ok", "4.png": "ok"}
    assert files_under(out) == [f"{i}.png" for i in range(5)]


def test_each_bad_input_gets_one_line_and_the_batch_goes_on(tmp_path, weights):
    src = tmp_path / "in"
    good = save_png(src / "good.png")
    png = good.read_bytes()
    (src / "truncated.png").write_bytes(png[: len(png) // 2])
    (src / "text.png").write_text("this is not an image")
    (src / "empty.png").write_bytes(b"")
    save_png(src / "large.png", rng_pixels((40, 40, 3)))
    (tmp_path / "nothing").mkdir()
    out = tmp_path / "out"
    result = run(src, tmp_path / "missing.png", tmp_path / "nothing", "-s", 2, "-o", out, "--weights", weights,
                 "--max-pixels", 0.001)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    expected = {
        "truncated.png": "truncated or corrupt image",
        "text.png": "not an image",
        "empty.png": "empty file",
        "large.png": "40x40 = 0.0016 Mpx is over --max-pixels 0.001 Mpx",
        "missing.png": "no such file or folder",
        "nothing": "folder with no images",
    }
    assert len(errors) == len(expected)
    for name, reason in expected.items():
        assert any(name in line and reason in line for line in errors), (name, errors)
    assert files_under(out) == ["good.png"]


def test_unwritable_output_folder(tmp_path, weights):
    sources = [save_png(tmp_path / "a.png"), save_png(tmp_path / "b.png")]
    if os.geteuid() == 0:
        # chmod 0o500 does not stop root; a regular file standing where the folder should be stops anyone.
        (tmp_path / "blocker").write_text("a file")
        out = tmp_path / "blocker" / "out"
    else:
        out = tmp_path / "locked"
        out.mkdir(mode=0o500)
    result = run(*sources, "-s", 2, "-o", out, "--weights", weights)
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 2
    for source, line in zip(sources, lines, strict=True):
        assert line.startswith(f"error: {source}: cannot")


def test_full_disk_and_a_write_failing_half_way_leave_nothing(tmp_path, weights, monkeypatch):
    src = tmp_path / "in"
    save_png(src / "a.png")
    save_png(src / "b.png")
    out = tmp_path / "out"
    real_write = os.write

    def half_then_no_space(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "write", half_then_no_space)
    result = run(src, "-s", 2, "-o", out, "--weights", weights)
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 2 and all("disk full" in line for line in lines)
    assert files_under(out) == []  # no output and no temporary file


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-s", "0.5"], "outside 1 to 32"),
        (["-s", "1000"], "outside 1 to 32"),
        ([], "give a scale"),
        (["-s", "2", "--width", "30"], "not both"),
        (["-s", "2", "--overwrite", "--skip-existing"], "contradict"),
        (["-s", "2", "--precision", "fp16", "--device", "cpu"], "fp16 is not supported on the CPU"),
        (["-s", "2", "--recursions", "9"], "this model has 3"),
        (["-s", "2", "--method", "bicubic", "--self-ensemble"], "uses no network"),
    ],
)
def test_usage_errors_exit_2(tmp_path, weights, args, message):
    source = save_png(tmp_path / "in.png")
    result = run(source, "--weights", weights, *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert files_under(tmp_path) == ["in.png"]


def test_exif_rotated_jpeg_keeps_its_icc_profile(tmp_path, weights):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 12 wide, 10 high; shown rotated: 10 wide, 12 high
    Image.fromarray(rng_pixels((10, 12, 3))).save(tmp_path / "photo.jpg", exif=exif.tobytes(), icc_profile=icc)
    result = run(tmp_path / "photo.jpg", "-s", 2, "--weights", weights)
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "photo_x2.jpg") as out:
        assert out.size == (20, 24)
        assert out.info["icc_profile"] == icc
        assert out.getexif().get(0x0112) == 1


def test_rgba_png_keeps_alpha(tmp_path, weights):
    pixels = rng_pixels((10, 12, 4))
    pixels[..., 3] = 255
    pixels[:5, :, 3] = 0
    save_png(tmp_path / "logo.png", pixels)
    result = run(tmp_path / "logo.png", "-s", 2, "--weights", weights)
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "logo_x2.png") as out:
        alpha = np.asarray(out)[..., 3]
        assert out.mode == "RGBA" and alpha[0, 0] == 0 and alpha[-1, -1] == 255
    result = run(tmp_path / "logo.png", "-s", 2, "--weights", weights, "-o", tmp_path / "logo.jpg")
    assert result.exit_code == 1 and "JPEG cannot store transparency" in result.stderr
    assert not (tmp_path / "logo.jpg").exists()


def test_16bit_png_stays_16bit(tmp_path, weights):
    pixels = rng_pixels((10, 12, 3), np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), pixels[:, :, ::-1])
    result = run(tmp_path / "deep.png", "-s", 2, "--weights", weights)
    assert result.exit_code == 0, result.output
    out = cv2.imread(str(tmp_path / "deep_x2.png"), cv2.IMREAD_UNCHANGED)
    assert out.dtype == np.uint16 and out.shape == (20, 24, 3)
    assert np.any(out % 257 != 0)  # values between the 8-bit levels: not an 8-bit image widened


def test_grey_16bit_and_palette_inputs(tmp_path, weights):
    Image.fromarray(rng_pixels((10, 12), np.uint16)).save(tmp_path / "grey16.png")
    Image.fromarray(rng_pixels((10, 12, 3))).convert("P").save(tmp_path / "palette.png")
    result = run(tmp_path / "grey16.png", tmp_path / "palette.png", "-s", 2, "--weights", weights)
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "grey16_x2.png") as grey, Image.open(tmp_path / "palette_x2.png") as palette:
        assert grey.mode.startswith("I;16") and grey.size == (24, 20)
        assert palette.mode == "RGB" and palette.size == (24, 20)


def test_overwrite_rules(tmp_path, weights):
    source = save_png(tmp_path / "in.png")
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    result = run(source, "-s", 2, "-o", target, "--weights", weights)
    assert result.exit_code == 1 and "exists (use --overwrite or --skip-existing)" in result.stderr
    assert target.read_bytes() == b"old"
    result = run(source, "-s", 2, "-o", target, "--weights", weights, "--overwrite")
    assert result.exit_code == 0 and target.read_bytes() != b"old"
    before = source.read_bytes()
    result = run(source, "-s", 2, "-o", source, "--weights", weights, "--overwrite")
    assert result.exit_code == 1 and "is an input file" in result.stderr
    assert source.read_bytes() == before


def test_missing_weights_say_what_to_do(tmp_path, monkeypatch):
    source = save_png(tmp_path / "in.png")

    def not_installed(*args, **kwargs):
        raise resolve.WeightsNotFoundError("drcn: not bundled and not in the cache; run `drcn download-weights drcn`")

    monkeypatch.setattr(resolve, "resolve_weights", not_installed)
    result = run(source, "-s", 2)
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: drcn: not bundled") and "drcn download-weights drcn" in line
    assert "--method bicubic" in line
    monkeypatch.undo()
    result = run(source, "-s", 2, "--weights", tmp_path / "nope.safetensors")
    assert result.exit_code == 1 and "no such weights file" in result.stderr


def test_torchrun_ranks_share_a_folder(tmp_path, weights, monkeypatch):
    src = tmp_path / "in"
    for i in range(5):
        save_png(src / f"{i}.png")
    out = tmp_path / "out"
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        result = run(src, "-s", 2, "-o", out, "--weights", weights, "--json")
        assert result.exit_code == 0, result.output
        records = json_lines(result.stdout)
        assert {r["rank"] for r in records} == {int(rank)}
        assert len(records) == (2 if rank == "1" else 3)
    assert files_under(out) == [f"{i}.png" for i in range(5)]


# ------------------------------------------------------------------------------ first-run rough edges


def test_bicubic_default_name_differs_from_the_network_s(tmp_path, weights):
    source = save_png(tmp_path / "small.png")
    network = run(source, "-s", 2, "--weights", weights, "-q")
    bicubic = run(source, "-s", 2, "--method", "bicubic", "-q")
    assert network.exit_code == 0 and bicubic.exit_code == 0, bicubic.output
    assert files_under(tmp_path) == ["small.png", "small_x2.png", "small_x2_bicubic.png"]
    # Into another folder the names stay the same, as for the network.
    into = run(source, "-s", 2, "--method", "bicubic", "-o", tmp_path / "out", "-q")
    assert into.exit_code == 0 and files_under(tmp_path / "out") == ["small.png"]


def test_o_without_extension_is_a_folder_to_create_for_one_input(tmp_path, weights):
    source = save_png(tmp_path / "small.png")
    result = run(source, "-s", 2, "--weights", weights, "-o", tmp_path / "outdir")
    assert result.exit_code == 0, result.output
    assert files_under(tmp_path / "outdir") == ["small.png"]
    with Image.open(tmp_path / "outdir" / "small.png") as out:
        assert out.size == (24, 20)


def test_i_and_n_are_aliases_for_the_input_and_the_model(tmp_path, weights):
    first, second = save_png(tmp_path / "a.png"), save_png(tmp_path / "b.png")
    result = run("-i", first, second, "-s", 2, "--weights", weights, "-o", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    assert files_under(tmp_path / "out") == ["a.png", "b.png"]
    both = run(first, "-s", 2, "-n", "drcn-lite", "--weights", weights)
    assert both.exit_code == 2 and "give either --model or --weights" in both.stderr
    nothing = run("-s", 2, "--weights", weights)
    assert nothing.exit_code == 2 and nothing.stderr.startswith("error: no input:")


def test_a_value_after_a_flag_is_explained(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_png(tmp_path / "small.png")
    result = run("small.png", "-s", 2, "-r", "true", "--method", "bicubic")
    assert result.exit_code == 1 and (tmp_path / "small_x2_bicubic.png").is_file()
    assert "error: true: no such file or folder (flags such as -r take no value: drop it)" in result.stderr


def test_on_a_terminal_each_output_is_named(tmp_path, weights):
    sources = [save_png(tmp_path / f"{name}.png") for name in ("a", "b")]
    out = tmp_path / "out"
    result = run(*sources, "-s", 2, "--weights", weights, "-o", out, env={"TTY_COMPATIBLE": "1", "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "\x1b[" in result.stderr  # the live bar ran (terminal mode)
    for name in ("a", "b"):
        assert f"ok {tmp_path / name}.png -> {out / name}.png (12x10 -> 24x20" in result.stderr
    assert "done: 2 upscaled" in result.stderr


# -- which model: the photo model for JPEG inputs when no model is named ---------------------------------------


def test_jpeg_inputs_get_the_photo_model_and_every_record_names_its_model(tmp_path, bundled_pair):
    pixels = rng_pixels((16, 20, 3), seed=3)
    save_png(tmp_path / "in" / "card.png", pixels)
    Image.fromarray(pixels).save(tmp_path / "in" / "photo.jpg", quality=80)
    result = run(tmp_path / "in", "-s", 2, "-o", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    records = {os.path.basename(r["input"]): r for r in json_lines(result.stdout)}
    assert records["photo.jpg"]["model"] == "drcn-lite-photo" and records["card.png"]["model"] == "drcn-lite"
    assert "drcn-lite-photo.safetensors (F=8, D=3) for JPEG inputs and video" in result.stderr
    assert any(line.startswith("ok ") and "photo.jpg" in line and "drcn-lite-photo" in line
               for line in result.stderr.splitlines())  # fmt: skip
    # Each output is what that model makes, and --model overrides the choice for every input.
    for name, model in (("photo.jpg", "drcn-lite-photo"), ("card.png", "drcn-lite")):
        named = run(tmp_path / "in" / name, "-s", 2, "-o", tmp_path / model / name, "--model", model)
        assert named.exit_code == 0, named.output
        assert np.array_equal(np.asarray(Image.open(tmp_path / model / name)),
                              np.asarray(Image.open(tmp_path / "out" / name)))  # fmt: skip
    forced = run(tmp_path / "in", "-s", 2, "-o", tmp_path / "forced", "--json", "--model", "drcn-lite")
    assert {r["model"] for r in json_lines(forced.stdout)} == {"drcn-lite"}
    assert "for JPEG inputs" not in forced.stderr
    bicubic = run(tmp_path / "in" / "card.png", "-s", 2, "-o", tmp_path / "b.png", "--method", "bicubic", "--json")
    assert json_lines(bicubic.stdout)[0]["model"] == "bicubic"


def test_a_jpeg_stream_on_stdin_gets_the_photo_model(tmp_path, bundled_pair):
    buffer = io.BytesIO()
    Image.fromarray(rng_pixels((16, 20, 3), seed=4)).save(buffer, "JPEG", quality=70)
    result = run("-", "-s", 2, "-o", tmp_path / "out.png", "--json", input=buffer.getvalue())
    assert result.exit_code == 0, result.output
    assert json_lines(result.stdout)[0]["model"] == "drcn-lite-photo"


def test_upscale_image_picks_the_photo_model_for_a_pil_jpeg_only(tmp_path, bundled_pair):
    Image.fromarray(rng_pixels((16, 20, 3), seed=5)).save(tmp_path / "a.jpg", quality=75)
    photo = Image.open(tmp_path / "a.jpg")
    assert photo.format == "JPEG"
    chosen = np.asarray(pipeline.upscale_image(photo, 2, device="cpu", precision="fp32"))
    with_photo = np.asarray(pipeline.upscale_image(photo, 2, weights="drcn-lite-photo", device="cpu", precision="fp32"))
    with_lite = np.asarray(pipeline.upscale_image(photo, 2, weights="drcn-lite", device="cpu", precision="fp32"))
    assert np.array_equal(chosen, with_photo) and not np.array_equal(chosen, with_lite)
    array = np.asarray(photo.convert("RGB"))  # an array's history is unknown: the default model
    assert np.array_equal(pipeline.upscale_image(array, 2, device="cpu", precision="fp32"), with_lite)
    assert table.model_for_input("PNG") == "drcn-lite" and table.model_for_input("video") == "drcn-lite-photo"


@pytest.mark.parametrize("kind", ["fifo", "character device"])
def test_an_output_that_is_no_regular_file_is_refused_even_with_overwrite(tmp_path, kind):
    import stat

    source = save_png(tmp_path / "in.png")
    target = tmp_path / "out.png"
    if kind == "fifo":
        os.mkfifo(target)
    elif os.geteuid() != 0:
        pytest.skip("creating a device node needs root")
    else:
        os.mknod(target, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    before = os.lstat(target)
    result = run(source, "-s", 2, "--method", "bicubic", "-o", target, "--overwrite")
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    what = "a FIFO" if kind == "fifo" else "a character device"
    assert len(errors) == 1 and f"{target} is {what}: drcn replaces only regular files" in errors[0]
    after = os.lstat(target)
    assert (after.st_mode, after.st_rdev, after.st_ino) == (before.st_mode, before.st_rdev, before.st_ino)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "out.png"]  # no temporary left


# -- option values that cannot work: one line naming the option, exit 2, nothing read or written --------------------


def _main(args, capsys):
    from drcn_cli.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    return exit_info.value.code, capsys.readouterr().err


def _one_usage_line(code, err, *needles):
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert all(needle in err for needle in needles), (needles, err)


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("--max-pixels", "nan", "nan is not a finite number"), ("--max-pixels", "inf", "inf is not a finite number"),
    ("--max-output-pixels", "inf", "'--max-output-pixels': inf is not"), ("--max-output-pixels", "-inf", "range"),
    ("--max-pixels", "1e-9", "less than one pixel: give 0 (no limit) or at least 1e-6"),
    ("--max-output-pixels", "9.9e-7", "less than one pixel"), ("--max-pixels", "-1", "'--max-pixels'"),
    ("-s", "nan", "nan is not a finite number"), ("-s", "-inf", "'-s' / '--scale'"), ("-s", "33", "outside 1 to 32"),
    ("--threads", "100000", "'--threads': must be at most"), ("--threads", "-1", "'--threads'"),
    ("--io-threads", "65", "'--io-threads'"), ("--io-threads", "0", "'--io-threads'"),
    ("--width", "0", "'--width'"), ("--quality", "101", "'--quality'"), ("--tile", "-1", "'--tile'"),
])  # fmt: skip
def test_bad_option_values_are_one_line_and_nothing_is_done(tmp_path, capsys, option, value, expected):
    import torch

    source = save_png(tmp_path / "in.png")
    threads = torch.get_num_threads()
    size = [] if option in ("-s", "--width") else ["-s", 2]
    code, err = _main(["upscale", source, *size, option, value, "--method", "bicubic"], capsys)
    _one_usage_line(code, err, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"] and torch.get_num_threads() == threads


def test_pixel_limits_of_one_pixel_and_zero_still_work(tmp_path, capsys):
    source = save_png(tmp_path / "in.png")
    for limits in (["--max-pixels", "1e-6", "--max-output-pixels", "0"], ["--max-pixels", "0"]):
        code, err = _main(["upscale", source, "-s", 2, "--method", "bicubic", "-o", tmp_path / "o.png", "--overwrite",
                           *limits], capsys)  # fmt: skip
        if limits[1] == "1e-6":  # one pixel: the 10x12 image is over it, refused as that image's failure
            assert code == 1 and "is over --max-pixels" in err, err
        else:
            assert code == 0, err


@pytest.mark.parametrize("args", [
    ["", "-s", 2], ["-i", "", "-s", 2], ["IN", "", "-s", 2, "-o", "OUT"], ["IN", "-s", 2, "-o", ""],
    ["IN", "-s", 2, "--weights", ""], ["IN", "-s", 2, "-i", "", "-o", "OUT"],
])  # fmt: skip
def test_an_empty_name_is_refused_not_taken_for_the_current_folder(tmp_path, monkeypatch, capsys, args):
    monkeypatch.chdir(tmp_path)  # Path("") is this folder: its image must not be upscaled, nor anything written
    save_png(tmp_path / "in.png")
    args = [{"IN": "in.png", "OUT": "out"}.get(a, a) if isinstance(a, str) else a for a in args]
    method = [] if "--weights" in args else ["--method", "bicubic"]  # bicubic with --weights is another error
    code, err = _main(["upscale", *args, *method], capsys)
    _one_usage_line(code, err, "must not be empty (an unset shell variable?)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


@pytest.mark.parametrize("args", [
    ["-d", ""], ["--save-images", ""], ["--csv", ""], ["--plot", ""], ["--data-dir", ""],  # --json takes no value
    ["--weights", ""], ["--threads", "100000"],
])  # fmt: skip
def test_bench_refuses_empty_names_and_too_many_threads_before_any_work(tmp_path, monkeypatch, capsys, args):
    monkeypatch.chdir(tmp_path)
    save_png(tmp_path / "hr" / "a.png")
    code, err = _main(["bench", "-d", "hr", "--no-download", *args], capsys)
    _one_usage_line(code, err, f"'{args[0]}'")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["hr", "hr/a.png"]


def test_rerunning_a_finished_folder_is_one_line_and_loads_no_model(tmp_path, weights):
    for i in range(3):
        save_png(tmp_path / "in" / f"p{i}.png", rng_pixels((10, 12, 3), seed=i))
    first = run(tmp_path / "in", "-s", 2, "-o", tmp_path / "out", "--weights", weights)
    assert first.exit_code == 0, first.output

    again = run(tmp_path / "in", "-s", 2, "-o", tmp_path / "out", "--weights", weights, "--json")
    assert again.exit_code == 1
    lines = again.stderr.splitlines()
    assert [line for line in lines if line.startswith("error:")] == [
        f"error: 3 outputs exist already ({tmp_path / 'out' / 'p0.png'} and 2 more): --skip-existing keeps them and "
        "counts them as done, --overwrite replaces them"
    ]
    assert not any("image(s) on" in line for line in lines)  # no model was loaded: nothing to do
    records = json_lines(again.stdout)
    assert [r["status"] for r in records] == ["failed"] * 3 and all("exists" in r["error"] for r in records)

    kept = run(tmp_path / "in", "-s", 2, "-o", tmp_path / "out", "--weights", weights, "--skip-existing", "--json")
    assert kept.exit_code == 0
    assert [line for line in kept.stderr.splitlines() if line.startswith("skip")] == [
        f"skip 3 images whose outputs exist ({tmp_path / 'out' / 'p0.png'} and 2 more)"
    ]
    assert not any("image(s) on" in line for line in kept.stderr.splitlines())
    assert [r["status"] for r in json_lines(kept.stdout)] == ["skipped"] * 3

    # The README's nightly script's branches: 0 when all done or kept, 1 when outputs are refused.
    (tmp_path / "in" / "p3.png").write_bytes((tmp_path / "in" / "p0.png").read_bytes())
    mixed = run(tmp_path / "in", "-s", 2, "-o", tmp_path / "out", "--weights", weights, "--skip-existing", "-q")
    assert mixed.exit_code == 0 and (tmp_path / "out" / "p3.png").is_file()


@pytest.mark.parametrize("target", ["out.jpg", "out.jpeg"])
def test_a_transparent_image_to_jpeg_is_refused_before_the_network_runs(tmp_path, weights, monkeypatch, target):
    rgba = rng_pixels((10, 12, 4), seed=7)
    rgba[..., 3] = 128
    save_png(tmp_path / "a.png", rgba, "RGBA")
    ran = []
    real = pipeline.Upscaler.upscale_array
    monkeypatch.setattr(pipeline.Upscaler, "upscale_array", lambda self, *a, **k: ran.append(1) or real(self, *a, **k))
    result = run(tmp_path / "a.png", "-s", 2, "-o", tmp_path / target, "--weights", weights)
    assert result.exit_code == 1 and "JPEG cannot store transparency" in result.stderr
    assert ran == [] and not (tmp_path / target).exists()
    opaque = rng_pixels((10, 12, 4), seed=8)
    opaque[..., 3] = 255  # an opaque alpha is dropped, as before
    save_png(tmp_path / "b.png", opaque, "RGBA")
    assert run(tmp_path / "b.png", "-s", 2, "-o", tmp_path / "b.jpg", "--weights", weights).exit_code == 0


def test_the_files_bar_moves_with_the_tiles_so_the_estimate_starts_at_the_first_tile():
    from types import SimpleNamespace

    from rich.console import Console

    from drcn_cli.cli._report import Reporter

    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    report = Reporter(console, quiet=False, json_lines=False, json_to_stderr=False, world=1, rank=0)
    job = SimpleNamespace(input_label="big.png", output_label="big_x2.png")
    loaded = SimpleNamespace(width=512, height=512)
    with report.progress(2):
        files = report._progress.tasks[0]
        report.start(job, loaded, (1024, 1024))
        report.tile(1, 4)
        assert files.completed == 0.25  # a share of the first image: the bar (and its ETA) moves before it ends
        report.tile(3, 4)
        assert files.completed == 0.75
        report.failed(SimpleNamespace(job=job, loaded=loaded, timings={}), "a reason")
        assert files.completed == 1
        report.start(job, loaded, (1024, 1024))
        report.tile(2, 4)
        assert files.completed == 1.5
