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
from drcn_cli.weights import save_weights

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


def _valid(kind: str) -> bytes:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (10, 12, 3)).astype(np.uint8)
    buffer = io.BytesIO()
    if kind == "png16":
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
        else:
            assert record["status"] == "failed" and record["output"] is None
            assert record["error"] and "\n" not in record["error"]
            assert f"error: {record['input']}: {record['error']}" in errors
    written = {os.path.basename(r["output"]) for r in records.values() if r["status"] == "ok"}
    left = {p.name for p in out.iterdir()} if out.exists() else set()
    assert left == written  # no temporary file, no output for a failed image
    return records


@pytest.mark.parametrize("kind", ["png", "png16", "jpeg", "webp", "tiff", "gif"])
def test_mutated_images_finish_or_fail_in_one_line(tmp_path, kind):
    rng = random.Random(f"drcn-fuzz-{kind}")
    data = _valid(kind)
    inputs = tmp_path / "in"
    inputs.mkdir()
    names = []
    for case in range(CASES):
        label, mutated = mutate(data, rng)
        path = inputs / f"{case:03d}-{label}.{kind.removesuffix('16')}"
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
        options += ["--format", one(["png", "jpeg", "jpg", "webp", "tiff", "tif"], ["bmp", ""])]
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
