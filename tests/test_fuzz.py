"""Fuzzing through the real entry point: truncated and byte-flipped images and weights files.

Every outcome must be a finished output or exactly one `error:` line for that file, with a non-zero exit and
nothing left behind: never a traceback, a hang, or a partial file. The cases come from a seeded generator, so
a failure is reproducible from its name. DRCN_FUZZ_CASES=N (default 12 per file kind) runs more.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from drcn_cli.cli import app
from drcn_cli.model import DRCN, DRCNConfig
from drcn_cli.weights.files import save_weights

CASES = int(os.environ.get("DRCN_FUZZ_CASES", "12"))
DEADLINE_S = 60  # one command over all of a batch's cases; a hang fails the test instead of stalling it
# Small limits: a flipped header byte may claim a huge image; the fuzz is about handling, not about speed.
LIMITS = ["--max-pixels", "0.01", "--max-output-pixels", "0.05"]
runner = CliRunner()


@contextlib.contextmanager
def deadline(seconds: float = DEADLINE_S):
    """TimeoutError in the main thread (where the command runs) if the block takes longer than ``seconds``."""

    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    if not hasattr(signal, "setitimer"):
        yield
        return
    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# The file extension of each kind of input: the animations and a multi-page TIFF are upscaled whole.
EXTENSIONS = {"png16": "png", "agif": "gif", "apng": "png", "awebp": "webp", "tiffpages": "tif"}
# The animations (and pages): Pillow's format, and its save options.
ANIMATIONS = {
    "agif": ("GIF", {"duration": [40, 80, 120], "loop": 0}),
    "apng": ("PNG", {"duration": [40, 80, 120], "loop": 0}),
    "awebp": ("WEBP", {"duration": [40, 80, 120], "loop": 0, "lossless": True}),
    "tiffpages": ("TIFF", {"compression": "tiff_adobe_deflate"}),
}


def _frames(rng: np.random.Generator) -> list[Image.Image]:
    """Three RGBA frames of 12x10, each with a transparent hole in a different place."""
    frames = []
    for index in range(3):
        pixels = rng.integers(0, 256, (10, 12, 4)).astype(np.uint8)
        pixels[:, :, 3] = 255
        pixels[2 + index:5 + index, 3:7, 3] = 0
        frames.append(Image.fromarray(pixels))
    return frames


def _valid(kind: str) -> bytes:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (10, 12, 3)).astype(np.uint8)
    buffer = io.BytesIO()
    if kind in ANIMATIONS:
        frames = _frames(rng)
        fmt, options = ANIMATIONS[kind]
        frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:], **options)
    elif kind == "png16":
        Image.fromarray(rng.integers(0, 65536, (10, 12)).astype(np.uint16)).save(buffer, "PNG")
    elif kind == "gif":
        Image.fromarray(pixels).convert("P").save(buffer, "GIF")
    elif kind == "tiff":
        Image.fromarray(pixels).save(buffer, "TIFF", compression="tiff_adobe_deflate")
    else:
        Image.fromarray(pixels).save(buffer, kind.upper(), **({"quality": 90} if kind == "jpeg" else {}))
    return buffer.getvalue()


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One truncation, or one to four flipped bytes (header-heavy: the first 64 bytes half of the time)."""
    if rng.random() < 0.4:
        cut = rng.randrange(1, len(data))
        return f"cut{cut}", data[:cut]
    out = bytearray(data)
    flips = []
    for _ in range(rng.randint(1, 4)):
        top = min(len(out), 64) if rng.random() < 0.5 else len(out)
        at = rng.randrange(top)
        out[at] ^= rng.randrange(1, 256)
        flips.append(at)
    return "flip" + "-".join(map(str, flips)), bytes(out)


def _check_batch(tmp_path, names: list[str], args: list[str]):
    """Run one `drcn upscale` over every mutated file and check each file's outcome."""
    out = tmp_path / "out"
    with deadline():
        result = runner.invoke(app, ["upscale", *names, "-s", "2", "-o", str(out), "--json", "--io-threads", "1",
                                     *LIMITS, *args])  # fmt: skip
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    records = {r["input"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert sorted(records) == sorted(names)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    failed = [r for r in records.values() if r["status"] == "failed"]
    assert len(errors) == len(failed), result.stderr
    assert result.exit_code == (1 if failed else 0), result.output
    for record in records.values():
        if record["status"] == "ok":
            with Image.open(record["output"]) as image:
                image.load()
                assert image.size == tuple(record["output_size"])
                assert getattr(image, "n_frames", 1) == record["frames"]  # an animation's frames, all of them
        else:
            assert record["status"] == "failed" and record["output"] is None
            assert record["error"] and "\n" not in record["error"]
            assert f"error: {record['input']}: {record['error']}" in errors
    written = {os.path.basename(r["output"]) for r in records.values() if r["status"] == "ok"}
    left = {p.name for p in out.iterdir()} if out.exists() else set()
    assert left == written  # no temporary file, no output for a failed image
    return records


@pytest.mark.parametrize("kind", ["png", "png16", "jpeg", "webp", "tiff", "gif", "agif", "apng", "awebp", "tiffpages"])
def test_mutated_images_finish_or_fail_in_one_line(tmp_path, kind):
    rng = random.Random(f"drcn-fuzz-{kind}")
    data = _valid(kind)
    inputs = tmp_path / "in"
    inputs.mkdir()
    names = []
    for case in range(CASES):
        label, mutated = mutate(data, rng)
        path = inputs / f"{case:03d}-{label}.{EXTENSIONS.get(kind, kind)}"
        path.write_bytes(mutated)
        names.append(str(path))
    records = _check_batch(tmp_path, names, ["--method", "bicubic"])
    before = {p.name: p.read_bytes() for p in inputs.iterdir()}
    assert len(before) == CASES and records  # inputs untouched

    # One failing file alone: exit 1, one line.
    failed = [name for name, r in records.items() if r["status"] == "failed"]
    if failed:
        alone = runner.invoke(app, ["upscale", failed[0], "-s", "2", "-o", str(tmp_path / "alone.png"),
                                    "--method", "bicubic", *LIMITS])  # fmt: skip
        assert alone.exit_code == 1
        assert [line for line in alone.stderr.splitlines() if line.startswith("error:")] == [
            f"error: {failed[0]}: {records[failed[0]]['error']}"
        ]
        assert not (tmp_path / "alone.png").exists()


def test_mutated_weights_load_or_fail_in_one_line(tmp_path):
    torch.manual_seed(0)
    good = tmp_path / "good.safetensors"
    save_weights(DRCN(DRCNConfig(features=4, recursions=2)), good)
    data = good.read_bytes()
    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3)).astype(np.uint8)).save(image)
    rng = random.Random("drcn-fuzz-weights")
    for case in range(CASES):
        label, mutated = mutate(data, rng)
        weights = tmp_path / f"{case:03d}-{label}.safetensors"
        weights.write_bytes(mutated)
        out = tmp_path / f"out{case}.png"
        with deadline():
            result = runner.invoke(app, ["upscale", str(image), "-s", "2", "-o", str(out), "--weights",
                                         str(weights), *LIMITS])  # fmt: skip
        assert result.exception is None or isinstance(result.exception, SystemExit), (label, result.exception)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        if result.exit_code == 0:
            assert errors == [] and out.is_file(), (label, result.output)
        else:
            assert result.exit_code == 1 and len(errors) == 1, (label, result.output)
            assert not out.exists()
        assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def _random_options(rng: random.Random) -> list[str]:
    """A random combination of upscale's options, each invalid about one time in ten (output kept small)."""

    def one(good: list, bad: list) -> str:
        return str(rng.choice(bad if rng.random() < 0.1 else good))

    options: list[str] = []
    size = one(["scale"] * 4 + ["width", "height", "both"], ["none", "scale+width"])
    if "scale" in size:
        options += ["-s", one(["2", "1", "3.5", "32", f"{rng.uniform(1, 4):.3f}"], ["0.5", "40", "-2", "nan", "x2"])]
    if size in ("width", "both", "scale+width"):
        options += ["--width", one([9, 10, rng.randint(9, 60)], [-3, 0, 1, 500])]
    if size in ("height", "both"):
        options += ["--height", one([8, 20, rng.randint(8, 60)], [-3, 0, 1, 500])]
    if rng.random() < 0.3:
        options += ["--tile", one([0, 32, rng.randint(32, 100)], [-1, 1, 31])]
    if rng.random() < 0.3:
        options += ["--quality", one([1, 50, 90, 100], [-1, 0, 101])]
    if rng.random() < 0.3:
        options += ["--format", one(["png", "jpeg", "jpg", "webp", "tiff", "tif", "gif"], ["bmp", ""])]
    if rng.random() < 0.2:
        options += ["--recursions", one([1, 2], [-1, 0, 3])]
    if rng.random() < 0.3:
        options += ["--suffix", one(["", "_a", "..", "_x\n2", " "], ["x/y", "../up"])]
    if rng.random() < 0.2:
        options += ["--io-threads", one([1, 2, 3], [-1, 0])]
    if rng.random() < 0.2:
        options += ["--max-pixels", one(["0", "1e9", "100"], ["0.00001", "-1"])]
    if rng.random() < 0.2:
        options += ["--overwrite"] + (["--skip-existing"] if rng.random() < 0.3 else [])
    if rng.random() < 0.2:
        options += ["--precision", one(["auto", "fp32", "bf16"], ["fp16", "fp64"])]
    return options + ["--max-output-pixels", one(["0.05"], ["0.0001", "-1"])]


def test_random_options_finish_or_fail_in_one_line(tmp_path, capsys):
    from drcn_cli.cli import main

    torch.manual_seed(0)
    weights = tmp_path / "tiny.safetensors"
    save_weights(DRCN(DRCNConfig(features=4, recursions=2)), weights)
    rng = random.Random("drcn-fuzz-options")
    for case in range(CASES * 2):
        folder = tmp_path / f"case{case:03d}"
        folder.mkdir()
        source = folder / "in.png"
        Image.fromarray(np.random.default_rng(case).integers(0, 256, (8, 9, 3)).astype(np.uint8)).save(source)
        options = _random_options(rng)
        model = ["--weights", str(weights)] if rng.random() < 0.7 else ["--method", "bicubic"]
        with pytest.raises(SystemExit) as exit_info, deadline():
            main(["upscale", str(source), *model, *options])
        captured = capsys.readouterr()
        code = exit_info.value.code
        errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
        made = sorted(p.name for p in folder.iterdir() if p.name != "in.png")
        assert code in (0, 1, 2), (options, code, captured.err)
        assert "Traceback" not in captured.err, options
        if code == 0:
            assert errors == [] and len(made) == 1 and not made[0].startswith("."), (options, captured.err, made)
            with Image.open(folder / made[0]) as out:
                out.load()
        else:
            assert len(errors) == 1, (options, captured.err)
            assert made == [], (options, made)


# -- option values: non-finite and out-of-range numbers, empty names -------------------------------------------------

# Values that no float option takes, in the spellings Python's float() reads.
NON_FINITE = ["nan", "-nan", "NaN", "inf", "-inf", "+inf", "Infinity", "-INFINITY", "1e999", "-1e999"]
# Per option of `drcn upscale`: values that cannot work.
UPSCALE_BAD = {
    "-s": [*NON_FINITE, "0.5", "0", "-2", "33", "1e300", ""],
    "--max-pixels": [*NON_FINITE, "-1", "1e-7", "5e-7", "1e-300", ""],
    "--max-output-pixels": [*NON_FINITE, "-0.5", "1e-9", ""],
    "--width": ["0", "-3", "", "nan", "1.5", "1e3"],  # (one over 32x the input fails for that image: exit 1)
    "--height": ["0", "-1", "", "inf"],
    "--tile": ["-1", "1", "31", "", "nan"],
    "--quality": ["0", "101", "-1", "", "inf"],
    "--threads": ["-1", "100000", "9223372036854775808", "", "nan"],
    "--io-threads": ["0", "-1", "65", "100000", ""],
    "--recursions": ["0", "-1", ""],
    "-o": [""],
    "-i": [""],
    "--weights": [""],
    "--suffix": ["x/y", "../up"],
    "--device": ["", "gpu", "cuda:x"],
    "--format": ["", "bmp"],
    "--precision": ["", "fp64"],
    "--model": ["", "no-such-model"],
}
# Per option of `drcn train`: values that cannot work (every float option gets the non-finite ones too).
TRAIN_BAD = {
    "--lr": ["0", "-1e-3"], "--lr-min": ["-1"], "--scale": ["1", "0.5", "33", "-2"], "--downscale": ["0", "1.5", "-1"],
    "--warmup": ["-0.1", "1.5"], "--alpha-decay": ["2"], "--ema": ["1", "-1", "1.5"], "--time-limit": ["0", "-1"],
    "--jpeg-clean": ["-0.1", "1.1"], "--weight-decay": ["-1"], "--grad-clip": ["-1"],
    "--features": ["0", "1025", "-8"], "--recursions": ["0", "65"], "--batch-size": ["0", "65537"],
    "--steps": ["0", "-1"], "--seed": ["-1", "18446744073709551616"], "--threads": ["-1", "100000"],
    "--patch-size": ["2", "0"], "--stride": ["0"], "--log-every": ["0"], "--val-jpeg": ["0", "101"],
    "--jpeg-copies": ["0"], "--stop-at": ["0"], "--val-every": ["-1"], "--checkpoint-every": ["-1"],
    "--jpeg-quality": ["0..50", "x", "95..30"], "--optimizer": ["lbfgs"], "--schedule": ["step"],
    **{option: [""] for option in ("--data", "--out", "--val", "--pack", "--init", "--checkpoint-dir", "--resume",
                                   "--device", "--optimizer", "--widen", "--config")},
}  # fmt: skip
for _option in ("--lr", "--lr-min", "--scale", "--downscale", "--warmup", "--alpha-decay", "--ema", "--time-limit",
                "--jpeg-clean", "--weight-decay", "--grad-clip"):
    TRAIN_BAD[_option] = [*TRAIN_BAD[_option], *NON_FINITE, ""]


def _one_bad_option(table: dict[str, list[str]], rng: random.Random) -> tuple[str, str]:
    option = rng.choice(sorted(table))
    return option, rng.choice(table[option])


def _assert_refused(code, err: str, label) -> None:
    """Exit 2 and exactly one line on stderr, `error: ...`, no traceback."""
    assert code == 2, (" ".join(map(repr, label)), code, err)
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, (label, err)


def test_bad_option_values_of_upscale_are_one_usage_line_and_write_nothing(tmp_path, capsys, monkeypatch):
    from drcn_cli.cli import main

    torch.manual_seed(0)
    weights = tmp_path / "tiny.safetensors"
    save_weights(DRCN(DRCNConfig(features=4, recursions=2)), weights)
    threads = torch.get_num_threads()
    rng = random.Random("drcn-fuzz-option-values-upscale")
    for case in range(CASES * 3):
        folder = tmp_path / f"case{case:03d}"
        folder.mkdir()
        monkeypatch.chdir(folder)  # where an empty name (Path("")) would point
        Image.fromarray(np.random.default_rng(case).integers(0, 256, (8, 9, 3)).astype(np.uint8)).save("in.png")
        option, value = _one_bad_option(UPSCALE_BAD, rng)
        inputs = [] if option == "-i" else ["in.png"]
        size = [] if option in ("-s", "--width", "--height") else ["-s", rng.choice(["2", "1.5", "3"])]
        network = option in ("--weights", "--recursions", "--model") or rng.random() < 0.5
        model = [] if option in ("--weights", "--model") else ["--weights", str(weights)] if network else [
            "--method", "bicubic"]  # fmt: skip
        limits = [] if option in LIMITS else LIMITS[2:]  # the small output limit, unless it is the option tried
        args = ["upscale", *inputs, *size, *model, *limits, option, value]
        if rng.random() < 0.3:
            args = ["upscale", "", *args[1:]] if option != "-i" else args  # an empty input as well
        with pytest.raises(SystemExit) as exit_info, deadline():
            main(args)
        _assert_refused(exit_info.value.code, capsys.readouterr().err, args)
        assert sorted(p.name for p in folder.iterdir()) == ["in.png"], args
        assert torch.get_num_threads() == threads


def test_bad_option_values_of_train_are_one_usage_line_and_train_nothing(tmp_path, capsys, monkeypatch):
    from conftest import write_training_images

    from drcn_cli.cli import main

    data = write_training_images(tmp_path / "data", count=2, size=24)
    threads = torch.get_num_threads()
    rng = random.Random("drcn-fuzz-option-values-train")
    valid = [["--steps", "1"], ["-F", "4"], ["-D", "2"], ["--threads", "1"], ["--quiet"], ["--lr", "1e-3"],
             ["--scale", "2"], ["--patch-size", "9"]]  # fmt: skip
    for case in range(CASES * 3):
        folder = tmp_path / f"case{case:03d}"
        folder.mkdir()
        monkeypatch.chdir(folder)
        option, value = _one_bad_option(TRAIN_BAD, rng)
        extra = [arg for pair in rng.sample(valid, rng.randint(0, 3)) if pair[0] != option for arg in pair]
        args = ["train", "--data", str(data), "-o", "w.safetensors", *extra, option, value]
        with pytest.raises(SystemExit) as exit_info, deadline():
            main(args)
        _assert_refused(exit_info.value.code, capsys.readouterr().err, args)
        assert list(folder.iterdir()) == [], args  # no weights, no .checkpoints, no pack
        assert torch.get_num_threads() == threads


# ------------------------------------------------------------------------------------------------ names

# Pieces of file names: plain, control characters (a newline, an escape sequence, a carriage return, Unicode's
# line separators), spaces, multi-byte characters (so that characters and bytes differ), dots.
NAME_PIECES = ["a", "Zz", "photo", " ", "  ", ".", "-", "_x2", "\n", "\t", "\r", "\x1b[31m", "\x07", "\x7f",
               "\u2028", "\x85", "é", "漢字", "🙂", "ß"]  # fmt: skip
NAME_MAX = 255


def _byte_len(text: str) -> int:
    return len(os.fsencode(text))


def _hostile_stem(rng: random.Random) -> str:
    """A stem of a random byte length: short, around the 255-byte limit (with .png and a suffix), or beyond it."""
    target = rng.choice([rng.randint(1, 30), rng.randint(235, 256), rng.randint(256, 320)])
    stem = ""
    while _byte_len(stem) < target:
        stem += rng.choice(NAME_PIECES)
    return stem


def _shown(text: str) -> str:
    from drcn_cli.cli._report import shown

    return shown(text) or ""


def _run_names(args: list[str]):
    with deadline():
        result = runner.invoke(app, ["upscale", *args, "-s", "2", "--method", "bicubic", "--json", "--io-threads", "1",
                                     *LIMITS])  # fmt: skip
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    failed = [r for r in records if r["status"] == "failed"]
    assert len(errors) == len(failed), result.stderr  # one line per bad input, no more
    for record in failed:
        assert record["error"] and "\n" not in record["error"] and record["error"].isprintable()
        assert f"error: {_shown(record['input'])}: {record['error']}" in errors
    for line in result.stderr.splitlines():  # every line is drcn's: no control character reaches the terminal
        assert line.isprintable(), repr(line)
    assert result.exit_code == (1 if failed else 0), result.output
    for record in records:
        if record["status"] == "ok":
            with Image.open(record["output"]) as image:
                image.load()
                assert image.size == tuple(record["output_size"])
    return {r["input"]: r for r in records}, result


def test_hostile_names_fail_alone_in_one_line_and_the_good_ones_are_done(tmp_path):
    rng = random.Random("drcn-fuzz-names")
    pixels = np.random.default_rng(3).integers(0, 256, (6, 7, 3)).astype(np.uint8)
    for case in range(max(1, CASES // 4)):
        folder = tmp_path / f"case{case}" / "in"
        folder.mkdir(parents=True)
        suffix = rng.choice(["_x2", "", "_" + "s" * rng.randint(1, 12), " é"])
        expected: dict[str, str] = {}
        named: list[str] = []
        for _ in range(CASES):
            stem = _hostile_stem(rng)
            path = folder / f"{stem}.png"
            if str(path) in expected:
                continue
            fits = _byte_len(path.name) <= NAME_MAX
            if fits and rng.random() < 0.8:
                Image.fromarray(pixels).save(path)
                expected[str(path)] = "ok" if _byte_len(f"{stem}{suffix}.png") <= NAME_MAX else "failed"
            else:
                expected[str(path)] = "failed"  # missing, or a name no file can have
            named.append(str(path))
        out = tmp_path / f"case{case}" / "out"
        records, result = _run_names([*named, "-o", str(out), "--suffix", suffix])
        assert {name: r["status"] for name, r in records.items()} == expected, (suffix, result.stderr)
        for name, record in records.items():
            if record["status"] == "failed" and os.path.exists(name):
                assert "name too long for the file system" in record["error"]
            elif record["status"] == "failed" and _byte_len(os.path.basename(name)) > NAME_MAX:
                assert record["error"].startswith("no such file or folder (name too long for the file system")
        made = sorted(p.name for p in out.iterdir()) if out.exists() else []
        assert made == sorted(os.path.basename(r["output"]) for r in records.values() if r["status"] == "ok")


@pytest.mark.parametrize("where", ["itself", "inside"])
def test_a_folder_of_hostile_names_written_into_itself_or_inside_does_not_grow(tmp_path, where):
    rng = random.Random(f"drcn-fuzz-into-{where}")
    folder = tmp_path / "in"
    folder.mkdir()
    pixels = np.random.default_rng(4).integers(0, 256, (5, 6, 3)).astype(np.uint8)
    created = []
    while len(created) < CASES:
        stem = _hostile_stem(rng)
        name = f"{stem}.png"
        if _byte_len(name) <= NAME_MAX and not name.startswith(".") and not (folder / name).exists():
            Image.fromarray(pixels).save(folder / name)
            created.append(folder / name)
    out = folder if where == "itself" else folder / "sub"
    suffix = "_x2" if where == "itself" else ""
    first, _ = _run_names([str(folder), "-o", str(out), "--suffix", suffix])
    assert sorted(first) == sorted(map(str, created))  # the images, nothing else
    for path in created:
        fits = _byte_len(f"{path.stem}{suffix}.png") <= NAME_MAX
        assert first[str(path)]["status"] == ("ok" if fits else "failed"), first[str(path)]
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    for _ in range(2):  # reruns: the outputs are never inputs, nothing grows
        again, result = _run_names([str(folder), "-o", str(out), "--suffix", suffix, "--skip-existing"])
        assert sorted(again) == sorted(first)
        assert {name: r["status"] for name, r in again.items()} == {
            name: "skipped" if r["status"] == "ok" else "failed" for name, r in first.items()
        }, result.stderr
        assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
