"""`drcn upscale` against hostile or unlucky conditions: broken pipes, full disks, closed streams, a second
writer, truncated and non-regular inputs, TIFF metadata, absurd tiles. Each ends in a finished output or one
`error:` line with a non-zero exit, and nothing half-written."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from drcn_cli.cli import app
from drcn_cli.io import atomic
from drcn_cli.io import write as io_write

runner = CliRunner()


def rng_pixels(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


def png_bytes(pixels=None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng_pixels((10, 12, 3)) if pixels is None else pixels).save(buffer, "PNG")
    return buffer.getvalue()


def run(*args, **kwargs):
    return runner.invoke(app, ["upscale", *map(str, args)], **kwargs)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def only_error(result) -> str:
    """The one error line of a failed run (exit 1), with no traceback."""
    assert result.exit_code == 1, result.output
    (line,) = error_lines(result.stderr)
    assert "Traceback" not in result.output
    return line


# --------------------------------------------------------------------------------------------- stdout, stdin


def _drcn(*args: str) -> list[str]:
    return [sys.executable, "-c", "from drcn_cli.cli import main; main()", "upscale", *args]


@pytest.mark.skipif(sys.platform == "win32" or not os.path.exists("/dev/full"), reason="POSIX streams")
def test_stdout_and_stdin_failures_are_one_error_line_in_a_real_process(tmp_path):
    source = tmp_path / "in.png"
    source.write_bytes(png_bytes(rng_pixels((120, 160, 3))))  # x4: about 650 kB of PNG, more than a pipe holds
    bicubic = ["-s", "4", "--method", "bicubic"]
    read_end, write_end = os.pipe()
    os.close(read_end)  # a reader that went away before the first byte: every write is EPIPE
    with open(source, "rb") as stdin, open("/dev/full", "wb") as full:
        procs = {
            "full disk": subprocess.Popen(_drcn("-", *bicubic), stdin=stdin, stdout=full, stderr=subprocess.PIPE),
            "broken pipe": subprocess.Popen(_drcn(str(source), "-o", "-", *bicubic), stdout=write_end,
                                            stderr=subprocess.PIPE),
            "closed stdout": subprocess.Popen(["sh", "-c", 'exec "$@" >&-', "sh", *_drcn("-", *bicubic)],
                                              stdin=stdin, stderr=subprocess.PIPE),
            "closed stdin": subprocess.Popen(["sh", "-c", 'exec "$@" <&-', "sh",
                                              *_drcn("-", "-o", str(tmp_path / "out.png"), *bicubic)],
                                             stderr=subprocess.PIPE),
        }
    os.close(write_end)
    expected = {
        "full disk": "error: -: cannot write to stdout: disk full",
        "broken pipe": f"error: {source}: cannot write to stdout",
        "closed stdout": "error: stdout is closed",
        "closed stdin": "error: -: stdin is closed",
    }
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=120)
        text = stderr.decode()
        assert proc.returncode == 1, (name, text)
        (line,) = error_lines(text)
        assert line.startswith(expected[name]), (name, text)
        assert "Traceback" not in text and "Exception ignored" not in text, (name, text)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


def test_a_short_write_to_stdout_is_an_error(monkeypatch):
    class Taking10Bytes(io.BytesIO):
        def write(self, data):
            return super().write(bytes(data[:10]))

    sink = Taking10Bytes()
    monkeypatch.setattr("typer.get_binary_stream", lambda name: sink if name == "stdout" else io.BytesIO(png_bytes()))
    result = run("-", "-s", 2, "--method", "bicubic")
    line = only_error(result)
    assert "cannot write to stdout: only 10 of" in line


# --------------------------------------------------------------------------------------------- two writers


def test_an_output_that_appears_during_the_run_is_not_replaced(tmp_path, monkeypatch):
    source = tmp_path / "in.png"
    source.write_bytes(png_bytes())
    target = tmp_path / "out.png"
    real_fsync = os.fsync

    def other_process_writes_first(fd):  # after the planning's existence check, before the final rename
        if not target.exists():
            target.write_bytes(b"the other process's output")
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", other_process_writes_first)
    result = run(source, "-s", 2, "--method", "bicubic", "-o", target)
    line = only_error(result)
    assert "appeared meanwhile" in line and "--overwrite" in line
    assert target.read_bytes() == b"the other process's output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "out.png"]

    target.unlink()  # the other process writes it again during the next run
    result = run(source, "-s", 2, "--method", "bicubic", "-o", target, "--skip-existing", "--json")
    assert result.exit_code == 0, result.output  # with --skip-existing, as if it had been there at the start
    assert json.loads(result.stdout)["status"] == "skipped" and "skip " in result.stderr
    assert "1 image(s)" in result.stderr  # it was planned as work, not skipped from the start
    assert target.read_bytes() == b"the other process's output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "out.png"]

    result = run(source, "-s", 2, "--method", "bicubic", "-o", target, "--overwrite")
    assert result.exit_code == 0, result.output
    with Image.open(target) as out:
        assert out.size == (24, 20)


_PAUSED_WRITER = """
import os, sys, time
ready, go = sys.argv[1], sys.argv[2]
real_fsync = os.fsync
def fsync_then_wait(fd):  # the temporary file is complete: pause before it gets its final name
    real_fsync(fd)
    open(ready, "w").close()
    while not os.path.exists(go):
        time.sleep(0.02)
os.fsync = fsync_then_wait
from drcn_cli.cli import main
main(sys.argv[3:])
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes")
def test_two_processes_writing_one_output_the_second_to_finish_keeps_its_hands_off(tmp_path):
    source = tmp_path / "in.png"
    source.write_bytes(png_bytes())
    target = tmp_path / "out.png"
    ready, go = tmp_path / "ready", tmp_path / "go"
    args = ["upscale", str(source), "-o", str(target), "--method", "bicubic"]
    first = subprocess.Popen([sys.executable, "-c", _PAUSED_WRITER, str(ready), str(go), *args, "-s", "2"],
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        for _ in range(3000):  # up to 60 s for torch to load on a busy machine
            if ready.exists() or first.poll() is not None:
                break
            time.sleep(0.02)
        assert ready.exists(), first.stderr.read() if first.poll() is not None else "never got to its write"
        # The first has checked that out.png did not exist and written its temporary file. A second process
        # (a different scale, so a different image) now writes out.png and finishes.
        second = subprocess.run([sys.executable, "-c", "from drcn_cli.cli import main; main()", *args, "-s", "3"],
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert second.returncode == 0, second.stderr
        written = target.read_bytes()
    finally:
        go.touch()
        _, stderr = first.communicate(timeout=120)
    assert first.returncode == 1, stderr
    (line,) = error_lines(stderr)
    assert "appeared meanwhile" in line and "--overwrite" in line
    assert target.read_bytes() == written  # the second process's image, untouched
    with Image.open(target) as out:
        assert out.size == (36, 30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["go", "in.png", "out.png", "ready"]


# --------------------------------------------------------------------------------------------- inputs


def test_a_png_with_a_truncated_pixel_stream_is_an_error(tmp_path):
    import struct
    import zlib

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", 9000, 9000, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 9001))
    (tmp_path / "liar.png").write_bytes(data + chunk(b"IEND", b""))
    # (--max-output-pixels: should the check ever break, the test fails instead of upscaling 81 Mpx of black)
    result = run(tmp_path / "liar.png", "-s", 2, "--method", "bicubic", "--max-output-pixels", 1)
    line = only_error(result)
    assert "truncated or corrupt image" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["liar.png"]


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_a_device_is_refused_and_the_batch_goes_on(tmp_path):
    source = tmp_path / "in.png"
    source.write_bytes(png_bytes())
    result = run("/dev/zero", source, "-s", 2, "--method", "bicubic", "-o", tmp_path / "out")
    line = only_error(result)
    assert line.startswith("error: /dev/zero: not a regular file")
    assert (tmp_path / "out" / "in.png").exists()


# --------------------------------------------------------------------------------------------- TIFF


def test_tiff_in_tiff_out_as_in_the_readme(tmp_path):
    Image.new("RGB", (48, 40)).save(tmp_path / "a.tif")
    result = run(tmp_path / "a.tif", "-s", 2, "--method", "bicubic")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "a_x2_bicubic.tif") as out:
        assert out.format == "TIFF" and out.size == (96, 80)


def test_jpeg_with_exif_to_tiff_keeps_the_camera_tags(tmp_path):
    exif = Image.Exif()
    exif[271], exif[272] = "Camera", "Model 1"
    exif.get_ifd(0x8769)[0x9003] = "2024:05:06 07:08:09"  # DateTimeOriginal, in the EXIF sub-directory
    Image.fromarray(rng_pixels((10, 12, 3))).save(tmp_path / "photo.jpg", exif=exif.tobytes())
    result = run(tmp_path / "photo.jpg", "-s", 2, "--method", "bicubic", "--format", "tiff")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "photo_x2_bicubic.tif") as out:
        assert out.size == (24, 20)
        assert out.getexif()[271] == "Camera" and out.getexif()[272] == "Model 1"


def test_tiff_to_png_carries_no_tiff_layout_tags(tmp_path):
    Image.fromarray(rng_pixels((40, 48, 3))).save(tmp_path / "scan.tif", tiffinfo={271: "Scanner"})
    result = run(tmp_path / "scan.tif", "-s", 2, "--method", "bicubic", "-o", tmp_path / "scan.png")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "scan.png") as out:
        exif = out.getexif()
        assert exif.get(271) == "Scanner"
        assert not {256, 257, 258, 273, 279} & set(exif), dict(exif)


# --------------------------------------------------------------------------------------------- tiles


def test_a_tile_below_the_floor_is_a_usage_error(tmp_path):
    source = tmp_path / "in.png"
    source.write_bytes(png_bytes())
    result = run(source, "-s", 2, "-o", tmp_path / "out.png", "--method", "bicubic", "--tile", 1)
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result.stderr)
    assert "--tile 1 is too small: give 0 (auto) or at least 32" in line
    assert not (tmp_path / "out.png").exists()


def test_a_tile_at_the_floor_works(tmp_path, monkeypatch):
    # Through a network (bicubic never tiles): 32-pixel tiles split the 80x88 output into several windows, and
    # the stitched result is the untiled one, pixel for pixel.
    from conftest import random_drcn

    from drcn_cli.inference import tiling
    from drcn_cli.weights.files import save_weights

    weights = tmp_path / "net.safetensors"
    save_weights(random_drcn(), weights)
    source = tmp_path / "in.png"
    Image.fromarray(rng_pixels((40, 44, 3), seed=3)).save(source)
    windows: list[int] = []
    plan = tiling.plan_tiles

    def counted(*args, **kwargs):
        tiles = plan(*args, **kwargs)
        windows.append(len(tiles))
        return tiles

    monkeypatch.setattr(tiling, "plan_tiles", counted)
    result = run(source, "-s", 2, "--weights", weights, "--tile", 32, "-o", tmp_path / "tiled.png", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert windows and max(windows) >= 4
    windows.clear()
    whole = run(source, "-s", 2, "--weights", weights, "--tile", 0, "-o", tmp_path / "whole.png", "--device", "cpu")
    assert whole.exit_code == 0, whole.output
    assert windows and max(windows) == 1
    with Image.open(tmp_path / "tiled.png") as tiled, Image.open(tmp_path / "whole.png") as untiled:
        assert tiled.size == (88, 80)
        assert np.array_equal(np.asarray(tiled), np.asarray(untiled))


# --------------------------------------------------------------------------------------------- interruption


def test_sigterm_while_starting_up_is_an_interrupt_with_exit_130(tmp_path, monkeypatch, capsys):
    import signal

    from drcn_cli.cli import main
    from drcn_cli.weights import resolve

    source = tmp_path / "in.png"
    source.write_bytes(png_bytes())

    def killed_while_loading(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # delivered here, before the next statement
        pytest.fail("SIGTERM did not interrupt")

    monkeypatch.setattr(resolve, "resolve_weights", killed_while_loading)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_info:
        main(["upscale", str(source), "-s", "2", "-o", str(tmp_path / "out.png")])
    assert exit_info.value.code == 130
    assert capsys.readouterr().err.strip() == "interrupted"
    assert signal.getsignal(signal.SIGTERM) is before  # restored
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


def test_an_image_written_during_an_interrupt_is_counted_and_reported(tmp_path, monkeypatch):
    from drcn_cli.inference import pipeline

    sources = [tmp_path / "in" / f"{i}.png" for i in range(3)]
    sources[0].parent.mkdir()
    for path in sources:
        path.write_bytes(png_bytes())
    real_upscale, real_write = pipeline.upscale_tensor, io_write.write_image
    calls = []

    def interrupted_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as SIGTERM would, while the first image is still being written
        time.sleep(0.2)
        return real_upscale(*args, **kwargs)

    def slow_write(*args, **kwargs):
        time.sleep(0.5)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(pipeline, "upscale_tensor", interrupted_on_the_second)
    monkeypatch.setattr(io_write, "write_image", slow_write)
    result = run(*sources, "-s", 2, "--method", "bicubic", "-o", tmp_path / "out", "--json", "--io-threads", 1)

    assert result.exit_code == 130, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.png"]
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["status"] == "ok" and record["input"].endswith("0.png")
    assert record["seconds"] >= 0.7  # its real time (upscale 0.2 s + write 0.5 s), not 0
    (ok,) = [line for line in result.stderr.splitlines() if line.startswith("ok ")]
    assert "0.00 s" not in ok and f"{record['seconds']:.2f} s" in ok
    assert "interrupted after 1 of 3 image(s)" in result.stderr


# --------------------------------------------------------------------------------------------- unclear cases


def test_unknown_model_is_a_usage_error(tmp_path):
    source = tmp_path / "in.png"
    source.write_bytes(png_bytes())
    result = run(source, "-s", 2, "--model", "nonexistent", "-o", tmp_path / "out.png")
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result.stderr)
    assert "unknown model 'nonexistent'" in line and "drcn-lite" in line


@pytest.mark.parametrize("suffix", ["/../../escaped", "_x2/sub"])
def test_a_suffix_with_a_path_separator_is_refused(tmp_path, suffix):
    source = tmp_path / "in" / "a.png"
    source.parent.mkdir()
    source.write_bytes(png_bytes())
    result = run(source, "-s", 2, "--method", "bicubic", "--suffix", suffix)
    assert result.exit_code == 2, result.output
    assert "path separator" in result.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.png", "in"]


@pytest.mark.skipif(sys.platform == "win32", reason="newlines in file names")
def test_a_newline_in_a_file_name_does_not_split_the_log_line(tmp_path):
    good = tmp_path / "two\nlines.png"
    good.write_bytes(png_bytes())
    bad = tmp_path / "bad\nname.png"
    bad.write_bytes(b"not an image")
    result = run(good, bad, "-s", 2, "--method", "bicubic", "-o", tmp_path / "out", "--json")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert any(line.startswith("ok ") and "two\\nlines.png" in line for line in lines), lines
    assert any(line.startswith("error: ") and "bad\\nname.png: not an image" in line for line in lines), lines
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert {r["input"] for r in records} == {str(good), str(bad)}  # JSON keeps the real names


def test_tiny_pixel_limits_are_shown_with_their_digits(tmp_path):
    source = tmp_path / "in.png"
    source.write_bytes(png_bytes(rng_pixels((40, 48, 3))))
    result = run(source, "-s", 2, "--method", "bicubic", "-o", tmp_path / "out.png", "--max-output-pixels", "0.001")
    line = only_error(result)
    assert "output 96x80 = 0.00768 Mpx is over --max-output-pixels 0.001 Mpx" in line
    result = run(source, "-s", 2, "--method", "bicubic", "-o", tmp_path / "out.png", "--max-pixels", "0.001")
    assert "48x40 = 0.00192 Mpx is over --max-pixels 0.001 Mpx" in only_error(result)


def test_a_recursive_glob_keeps_same_named_files_of_different_folders_apart(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / "shots" / sub).mkdir(parents=True)
        (tmp_path / "shots" / sub / "x.png").write_bytes(png_bytes())
    out = tmp_path / "out"
    result = run(f"{tmp_path}/shots/**/*.png", "-r", "-s", 2, "--method", "bicubic", "-o", out)
    assert result.exit_code == 0, result.output
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == ["a/x.png", "b/x.png"]


def test_an_endless_stdin_is_read_only_as_far_as_the_pixel_limit_allows(tmp_path):
    # --max-pixels 0.001 (1,000 pixels) bounds what any image file can take to 64 MiB and a little: /dev/zero
    # behind stdin is read that far, then refused in one line, instead of growing until the kernel kills it.
    with open("/dev/zero", "rb") as zeros:
        done = subprocess.run(_drcn("-", "-s", "2", "--method", "bicubic", "--max-pixels", "0.001", "-o",
                                    str(tmp_path / "out.png")), stdin=zeros, capture_output=True, timeout=60)
    lines = done.stderr.decode().strip().splitlines()
    assert done.returncode == 1
    assert any("more than an image within the pixel limit" in line for line in lines), lines
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_weights_with_nan_or_inf_are_refused_by_upscale_and_bench(tmp_path, bad):
    from safetensors.torch import save_file

    from drcn_cli.model import DRCN, DRCNConfig

    state = {k: v.clone() for k, v in DRCN(DRCNConfig(features=8, recursions=3)).state_dict().items()}
    state["recon2.bias"][0] = bad
    weights = tmp_path / "broken.safetensors"
    save_file(state, str(weights))
    source = tmp_path / "in.png"
    source.write_bytes(png_bytes())
    line = only_error(run(source, "-s", "2", "-o", tmp_path / "out.png", "--weights", weights))
    assert "NaN or infinite" in line and not (tmp_path / "out.png").exists()
    hr = tmp_path / "hr"
    hr.mkdir()
    Image.fromarray(rng_pixels((48, 48, 3))).save(hr / "a.png")
    bench = runner.invoke(app, ["bench", "-d", str(hr), "-s", "2", "--weights", str(weights), "-q"])
    assert bench.exit_code == 1 and "nan" not in bench.stdout.lower(), bench.output
    (bench_line,) = error_lines(bench.stderr)
    assert "NaN or infinite" in bench_line


# --------------------------------------------------------------------------------------------- names, marks, leftovers


def test_names_too_long_for_the_file_system_are_one_line_each_and_the_batch_goes_on(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(png_bytes())
    long_input = tmp_path / ("a" * 251 + ".png")  # 255 bytes: its output, + _x2_bicubic, would be 266
    long_input.write_bytes(png_bytes())
    missing = tmp_path / ("m" * 296 + ".png")  # 300 bytes: no such file can exist
    result = run(good, long_input, missing, "-s", 2, "--method", "bicubic", "--json")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "Errno" not in result.output
    errors = error_lines(result.stderr)
    assert len(errors) == 2
    assert errors[0].startswith(f"error: {missing}: no such file or folder (name too long for the file system: ")
    assert errors[1].startswith(f"error: {long_input}: cannot write the output: name too long for the file system")
    assert "(266 bytes), where the most is 255 bytes" in errors[1]
    assert (tmp_path / "good_x2_bicubic.png").is_file()  # the good one is done
    records = {r["input"]: r["status"] for r in map(json.loads, result.stdout.splitlines())}
    assert records == {str(good): "ok", str(long_input): "failed", str(missing): "failed"}

    too_long_output = tmp_path / ("o" * 252 + ".png")  # -o of 256 bytes
    line = only_error(run(good, "-s", 2, "--method", "bicubic", "-o", too_long_output))
    assert line.startswith(f"error: {good}: cannot write the output: name too long") and "(256 bytes)" in line
    batch = run(good, missing, "-s", 2, "--method", "bicubic", "-o", tmp_path / ("f" * 256))  # as a folder
    assert batch.exit_code == 1 and len(error_lines(batch.stderr)) == 2 and "Traceback" not in batch.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([good.name, long_input.name, "good_x2_bicubic.png"])


def test_a_255_byte_output_name_in_an_output_folder_works(tmp_path):
    source = tmp_path / ("b" * 251 + ".png")
    source.write_bytes(png_bytes())
    out = tmp_path / "out"
    result = run(source, "-s", 2, "--method", "bicubic", "-o", f"{out}/")
    assert result.exit_code == 0, result.output
    assert [p.name for p in out.iterdir()] == [source.name]  # 255 bytes; the temporary (short) is gone
    assert len(source.name.encode()) == 255


def test_a_folder_written_into_itself_does_not_grow(tmp_path):
    folder = tmp_path / "same"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes(png_bytes())
    first = run(folder, "-o", folder, "-s", 2, "--method", "bicubic")
    assert first.exit_code == 0, first.output
    made = sorted(p.name for p in folder.iterdir())
    assert made == ["a.png", "a_x2_bicubic.png", "b.png", "b_x2_bicubic.png"]
    again = run(folder, "-o", folder, "-s", 2, "--method", "bicubic", "--skip-existing", "--json")
    assert again.exit_code == 0, again.output
    assert error_lines(again.stderr) == [] and sorted(p.name for p in folder.iterdir()) == made
    assert {json.loads(r)["status"] for r in again.stdout.splitlines()} == {"skipped"}
    assert len(again.stdout.splitlines()) == 2  # the two originals; the outputs are not inputs
    other = run(f"{folder}/*.png", "-s", 3, "--method", "bicubic")  # a glob, beside, other options
    assert other.exit_code == 0, other.output
    assert sorted(p.name for p in folder.iterdir()) == sorted([*made, "a_x3_bicubic.png", "b_x3_bicubic.png"])
    assert not any("_x2_bicubic_x" in p.name for p in folder.iterdir())


def test_a_32_bit_tiff_keeps_its_range_or_is_refused_in_one_line(tmp_path):
    values = np.linspace(0, 126000, 10 * 12).reshape(10, 12).astype(np.int32)
    source = tmp_path / "deep.tif"
    Image.fromarray(values).save(source)
    result = run(source, "-s", 2, "--method", "bicubic", "-o", tmp_path / "big.tif")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "big.tif") as out:
        assert out.mode == "I" and np.asarray(out).max() == 126000 and out.size == (24, 20)
    line = only_error(run(source, "-s", 2, "--method", "bicubic", "-o", tmp_path / "big.png"))
    assert line.startswith(f"error: {source}: the image's samples go from 0 to 126000, outside what PNG holds")
    assert "would clip them" in line and "--format tiff" in line
    assert not (tmp_path / "big.png").exists()


def test_a_link_that_leads_nowhere_as_the_output_says_what_it_is(tmp_path):
    source = tmp_path / "in.png"
    source.write_bytes(png_bytes())
    link = tmp_path / "out.png"
    link.symlink_to(tmp_path / "gone" / "x.png")
    for extra in ([], ["--overwrite"], ["--skip-existing"]):
        line = only_error(run(source, "-s", 2, "--method", "bicubic", "-o", link, *extra))
        assert line == (f"error: {source}: {link} is a symbolic link (to {tmp_path / 'gone' / 'x.png'}, which does not "
                        "exist): drcn replaces only regular files")  # fmt: skip
    assert link.is_symlink() and not (tmp_path / "gone").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_a_later_run_removes_a_killed_runs_temporaries_and_nothing_else(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".drcn-0badf00d.tmp"  # what a SIGKILLed run leaves: hidden, named by the writer, an hour old
    stale.write_bytes(b"\x89PNG half an image")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    live = out / ".drcn-0123abcd.tmp"  # another run, alive, writing (holding its lock)
    live.write_bytes(b"\x89PNG being written")
    os.utime(live, (time.time() - 3600, time.time() - 3600))
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'rb'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(600)",
                               str(live)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    others = {"photo.png": png_bytes(), ".drcn-notmine.tmp": b"x", ".drcn-0123abcd.tmp.bak": b"x"}
    for name, data in others.items():
        (out / name).write_bytes(data)
    source = tmp_path / "in.png"
    source.write_bytes(png_bytes())
    try:
        assert holder.stdout.readline().strip() == "locked"
        done = subprocess.run(_drcn(str(source), "-s", "2", "--method", "bicubic", "-o", str(out / "in.png")),
                              capture_output=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()
        left = sorted(p.name for p in out.iterdir())
        assert left == sorted([*others, live.name, "in.png"])  # the stale one only is gone
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_a_png_with_a_20_mb_comment_gives_only_drcn_s_own_lines(tmp_path, capfd):
    import zlib

    import cv2

    payload = b"tEXt" + b"Comment\x00" + b"x" * 20_000_000
    comment = (len(payload) - 4).to_bytes(4, "big") + payload + zlib.crc32(payload).to_bytes(4, "big")
    deep = cv2.imencode(".png", np.random.default_rng(0).integers(0, 65536, (10, 12, 3)).astype(np.uint16))[1]
    for name, data in (("deep.png", deep.tobytes()), ("plain.png", png_bytes())):
        (tmp_path / name).write_bytes(data[:33] + comment + data[33:])
    result = run(tmp_path / "deep.png", tmp_path / "plain.png", "-s", 2, "--method", "bicubic", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["deep.png", "plain.png"]
    assert capfd.readouterr().err == ""  # libpng (which writes to the process's stderr itself) said nothing


def test_the_output_limit_is_checked_from_the_header_before_anything_is_decoded(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 30, 200)).save(buffer, "JPEG", quality=50)
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")  # baseline frame header: length (2), precision (1), height (2), width (2)
    data[sof + 5 : sof + 9] = (65000).to_bytes(2, "big") * 2  # claims 65000 x 65000, in well under a kilobyte
    (tmp_path / "bomb.jpg").write_bytes(bytes(data))
    start = time.perf_counter()
    result = run(tmp_path / "bomb.jpg", "-s", 2, "--method", "bicubic", "--max-pixels", 0, "-o", tmp_path / "o.png")
    assert time.perf_counter() - start < 20  # decoding it would take minutes and tens of GB
    assert result.exit_code == 1 and "is over --max-output-pixels 1000 Mpx" in result.stderr
    assert not (tmp_path / "o.png").exists()


def test_a_memory_error_while_decoding_is_one_line_that_says_so(tmp_path, monkeypatch):
    from drcn_cli.io import images

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "b.png")

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(images, "_decode", no_memory)
    result = run(tmp_path / "a.png", tmp_path / "b.png", "-s", 2, "--method", "bicubic", "-o", tmp_path / "out")
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and all("not enough memory to hold this image's pixels" in line for line in errors)


def _large_grey_png(path, side: int) -> None:
    """A side x side grey PNG of a few hundred KB that takes seconds to decode (written row by row, zlib level 1)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(1)
    row = b"\x00" + bytes(range(256)) * (side // 256) + bytes(side % 256)
    body = b"".join(packer.compress(row * 64) for _ in range(side // 64)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_while_a_large_image_is_decoded_stops_within_seconds(tmp_path):
    source, out = tmp_path / "large.png", tmp_path / "out"
    _large_grey_png(source, 12800)  # 164 Mpx: decoding alone takes about a second or more
    process = subprocess.Popen(
        _drcn(str(source), "-o", str(out) + "/", "-s", "1.01", "--method", "bicubic", "--max-pixels", "0",
              "--max-output-pixels", "0"),
        stderr=subprocess.PIPE, text=True,
    )
    assert process.stderr is not None
    first = process.stderr.readline()  # the start line: the read (in a background thread) starts now
    assert "image(s) on cpu" in first, first
    time.sleep(0.3)
    sent = time.monotonic()
    process.send_signal(15)
    process.wait(timeout=30)
    stopped = time.monotonic() - sent
    rest = process.stderr.read()
    assert process.returncode == 130, rest
    assert stopped < 3.0, f"took {stopped:.1f} s to stop"
    assert "interrupted" in rest and "Traceback" not in rest
    assert not out.exists() or not list(out.iterdir())
