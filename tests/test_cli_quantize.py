"""`drcn quantize` end to end: the root app on real weights and image folders in tmp_path; then what reads its file,
`drcn upscale` and `drcn bench` with --precision int8 (and auto)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import int8_drcn, write_int8_weights, write_training_images
from hubstub import point_client_at
from PIL import Image
from typer.testing import CliRunner

from drcn_cli.cli import app
from drcn_cli.inference import autoprecision, int8
from drcn_cli.inference.int8 import calibration_path, load_calibration, runtime_problem
from drcn_cli.model import DRCNConfig
from drcn_cli.weights.files import save_weights
from drcn_cli.weights.resolve import sha256_file

pytestmark = pytest.mark.skipif(runtime_problem() is not None, reason=f"{runtime_problem()}")

CONFIG = DRCNConfig(features=8, recursions=3)


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    """drcn's cache (speed.json) in tmp_path, and no network (an offline hub client)."""
    monkeypatch.setenv("DRCN_HOME", str(tmp_path / "drcn"))
    point_client_at(monkeypatch, "http://127.0.0.1:9", cache_dir=tmp_path / "hf", offline=True)


@pytest.fixture
def tiny(tmp_path) -> Path:
    """tiny.safetensors, without a calibration."""
    path = tmp_path / "w" / "tiny.safetensors"
    path.parent.mkdir()
    save_weights(int8_drcn(), path)
    return path


@pytest.fixture(scope="module")
def hr(tmp_path_factory) -> Path:
    return write_training_images(tmp_path_factory.mktemp("hr"), count=3, size=48)


def run(*args):
    return CliRunner().invoke(app, [*map(str, args)])


def quantize(*args):
    return run("quantize", *args)


# -- drcn quantize ------------------------------------------------------------------------------------------------


def test_quantize_writes_the_calibration_beside_the_weights(tiny, hr):
    result = quantize("--weights", tiny, "--images", hr)
    assert result.exit_code == 0, result.output
    target = tiny.parent / "tiny.int8.safetensors"
    assert result.stdout == (f"{target}: int8 calibration of tiny.safetensors; largest drop ? dB / ? SSIM "
                             "(not checked or outside the bound --precision auto needs)\n")
    assert result.stderr == f"calibrating tiny.safetensors on 3 images from {hr}\n"
    calibration = load_calibration(target, CONFIG, sha256_file(tiny))
    assert calibration.info == {"images": f"{hr.name}: 3 images, one 96x96 crop each"}
    assert not calibration.within_bound()


def test_quantize_refuses_to_replace_a_calibration_unless_told(tiny, hr):
    assert quantize("--weights", tiny, "--images", hr, "-q").exit_code == 0
    target = calibration_path(tiny)
    before, mtime = target.read_bytes(), target.stat().st_mtime_ns
    again = quantize("--weights", tiny, "--images", hr)
    assert again.exit_code == 1 and again.stdout == ""
    assert again.stderr == f"error: output {target} exists (use --overwrite)\n"
    assert target.read_bytes() == before and target.stat().st_mtime_ns == mtime
    replaced = quantize("--weights", tiny, "--images", hr, "--overwrite", "-q")
    assert replaced.exit_code == 0 and replaced.stderr == "" and len(replaced.stdout.splitlines()) == 1
    assert target.stat().st_mtime_ns != mtime


def test_quantize_writes_where_output_says(tiny, hr, tmp_path):
    target = tmp_path / "elsewhere" / "mine.int8.safetensors"
    result = quantize("--weights", tiny, "--images", hr, "-o", target, "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{target}: ") and not calibration_path(tiny).exists()
    load_calibration(target, CONFIG, sha256_file(tiny))


CELL = re.compile(r"^(\S+) x(\d): fp32 \S+ dB / \S+, int8 \S+ dB / \S+ \(([-+]\d+\.\d+) dB, ([-+]\d+\.\d+)\)$")


def test_check_scores_the_calibration_it_writes_elsewhere(tiny, hr, tmp_path):
    elsewhere = tmp_path / "elsewhere.int8.safetensors"
    result = quantize("--weights", str(tiny), "--images", str(hr), "--check", str(hr), "-o", str(elsewhere))
    assert result.exit_code == 0, result.output
    assert not calibration_path(tiny).exists()  # the check ran from memory: nothing written beside the weights
    info = load_calibration(elsewhere, CONFIG, sha256_file(tiny)).info
    assert {"psnr_drop", "ssim_drop", "checked_on"} <= set(info)


def test_check_records_the_largest_drop_over_the_sets_and_scales(tiny, hr, tmp_path):
    check = write_training_images(tmp_path / "mine", count=2, size=48, seed=5)
    result = quantize("--weights", tiny, "--images", hr, "--check", check)
    assert result.exit_code == 0, result.output
    cells = [CELL.match(line) for line in result.stderr.splitlines()[1:]]
    assert all(cells) and [(c[1], c[2]) for c in cells] == [("mine", "2"), ("mine", "3"), ("mine", "4")]
    calibration = load_calibration(calibration_path(tiny), CONFIG, sha256_file(tiny))
    info = calibration.info
    assert info["checked_on"] == "mine" and info["images"] == f"{hr.name}: 3 images, one 96x96 crop each"
    # the largest drop of the cells printed (a gain counts as no drop), as the file records and the line says
    assert float(info["psnr_drop"]) == pytest.approx(max(0.0, *(-float(c[3]) for c in cells)), abs=1e-3)
    assert float(info["ssim_drop"]) == pytest.approx(max(0.0, *(-float(c[4]) for c in cells)), abs=1e-5)
    bound = "within" if calibration.within_bound() else "not checked or outside"
    assert result.stdout == (f"{calibration_path(tiny)}: int8 calibration of tiny.safetensors; largest drop "
                             f"{info['psnr_drop']} dB / {info['ssim_drop']} SSIM ({bound} the bound --precision "
                             "auto needs)\n")


@pytest.mark.parametrize(
    "args,code,message",
    [(["--weights", "{tiny}"], 2, "Missing option '--images'"),
     (["--weights", "{tiny}", "-m", "drcn-lite", "--images", "{hr}"], 2, "give either --model or --weights"),
     (["--weights", "{tiny}", "--images", "{missing}"], 2, "missing: no such folder"),
     (["--weights", "{missing}", "--images", "{hr}"], 1, "no such weights file")],
)
def test_usage_and_missing_files(tiny, hr, tmp_path, args, code, message):
    names = {"tiny": tiny, "hr": hr, "missing": tmp_path / "missing"}
    result = quantize(*[a.format(**names) for a in args])
    assert result.exit_code == code and message in result.stderr, result.output
    assert not calibration_path(tiny).exists()


def test_a_folder_without_images_fails_in_one_line_and_writes_nothing(tiny, tmp_path):
    (tmp_path / "empty").mkdir()
    result = quantize("--weights", tiny, "--images", tmp_path / "empty")
    assert result.exit_code == 1 and result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    assert "no images" in result.stderr and not calibration_path(tiny).exists()


def test_without_the_runtime_it_says_what_to_install(tiny, hr, monkeypatch):
    monkeypatch.setattr(int8, "runtime_problem", lambda: "int8 needs onnxruntime: pip install 'drcn[int8]'")
    result = quantize("--weights", tiny, "--images", hr)
    assert result.exit_code == 1 and result.stderr == "error: int8 needs onnxruntime: pip install 'drcn[int8]'\n"
    assert not calibration_path(tiny).exists()


# -- what reads it: drcn upscale and drcn bench --------------------------------------------------------------------


def save_png(path: Path, size=(12, 10)) -> Path:
    pixels = np.random.default_rng(0).integers(0, 256, (size[1] // 3, size[0] // 3, 3)).astype(np.uint8)
    Image.fromarray(pixels).resize(size, Image.BICUBIC).save(path)
    return path


def device_line(stderr: str) -> str:
    (line,) = [line for line in stderr.splitlines() if " on cpu " in line]
    return line


def test_upscale_in_int8_with_the_calibration(tmp_path):
    weights = write_int8_weights(tmp_path / "w")
    source = save_png(tmp_path / "in.png")
    result = run("upscale", source, "-o", tmp_path / "out.png", "-s", 2, "--weights", weights, "--precision", "int8")
    assert result.exit_code == 0, result.output
    assert ", int8, tiny.safetensors (F=8, D=3)" in device_line(result.stderr)
    with Image.open(tmp_path / "out.png") as out:
        assert out.size == (24, 20) and out.mode == "RGB"


def test_upscale_in_int8_without_a_calibration_fails_in_one_line_and_writes_nothing(tiny, tmp_path):
    source = save_png(tmp_path / "in.png")
    result = run("upscale", source, "-o", tmp_path / "out.png", "-s", 2, "--weights", tiny, "--precision", "int8")
    assert result.exit_code == 1, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and "tiny.int8.safetensors" in line and "drcn quantize" in line
    assert not (tmp_path / "out.png").exists()


def test_upscale_auto_says_why_it_chose_int8(tmp_path, monkeypatch):
    weights = write_int8_weights(tmp_path / "w", info={"psnr_drop": "0.0100", "ssim_drop": "0.00010"})
    monkeypatch.setattr(autoprecision, "measure", lambda *args: (2.0, 1.0))
    source = save_png(tmp_path / "in.png")
    result = run("upscale", source, "-o", tmp_path / "out.png", "-s", 2, "--weights", weights)
    assert result.exit_code == 0, result.output
    assert ", int8 (measured 2.0x faster than fp32 on this CPU), tiny.safetensors" in device_line(result.stderr)
    assert (tmp_path / "out.png").is_file()


def test_bench_in_int8(tmp_path):
    weights = write_int8_weights(tmp_path / "w")
    folder = write_training_images(tmp_path / "mine", count=2, size=40)
    scores = {}
    for precision in ("int8", "fp32"):
        result = run("bench", "--weights", weights, "--precision", precision, "-d", folder, "-s", 2, "--json", "-q")
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["timing"]["precision"] == precision
        assert [(s["dataset"], s["scale"], s["images"]) for s in data["sets"]] == [("mine", 2, 2)]
        scores[precision] = data["sets"][0]["psnr"]
    assert abs(scores["int8"] - scores["fp32"]) < 0.5
