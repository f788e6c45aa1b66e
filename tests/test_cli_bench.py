"""`drcn bench` end to end: the root app, real image folders and weights files in tmp_path, a local hub stand-in."""

from __future__ import annotations

import csv
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hubstub import HubStub, point_client_at, skip_retry_sleeps
from PIL import Image
from testdata import datasets_root, needs_datasets
from typer.testing import CliRunner

from drcn_cli.cli import app
from drcn_cli.model import DRCN, DRCNConfig
from drcn_cli.weights import files

DATASETS = datasets_root()  # the benchmark datasets, where the environment has them (tests/testdata.py)


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    """Caches in tmp, no network (an offline hub client), one torch thread, a wide terminal for the table."""
    monkeypatch.setenv("DRCN_HOME", str(tmp_path / "drcn"))
    monkeypatch.setenv("COLUMNS", "200")
    point_client_at(monkeypatch, "http://127.0.0.1:9", cache_dir=tmp_path / "hf", offline=True)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = DRCN(DRCNConfig(features=8, recursions=3))
    with torch.no_grad():
        model.recursive.weight.add_(0.05 * torch.randn_like(model.recursive.weight))
        model.recon2.weight.mul_(0.1)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    files.save_weights(model, path)
    return path


def make_images(folder: Path, sizes=((40, 36), (34, 44)), grey_last=True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        base = 128 + 80 * np.sin(xx / 3.0 + i) * np.cos(yy / 4.0)
        rgb = np.stack([base, base[::-1], base[:, ::-1]], axis=-1) + rng.normal(0, 3, (h, w, 3))
        pixels = np.clip(rgb, 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels[..., 0], "L") if grey_last and i == len(sizes) - 1 else Image.fromarray(pixels)
        image.save(folder / f"im{i}.png")
    (folder / "README.txt").write_text("not an image, ignored")
    return folder


def run(*args: str):
    return CliRunner().invoke(app, ["bench", *map(str, args)])


# ------------------------------------------------------------------------------------------------ success


def test_bicubic_on_a_folder_prints_the_table_and_writes_json_and_csv(tmp_path):
    folder = make_images(tmp_path / "mine")
    result = run("--method", "bicubic", "--dataset", folder, "-s", 2, "-s", 3, "--csv", tmp_path / "r.csv", "-q")
    assert result.exit_code == 0, result.output
    assert "Bicubic (ours)" in result.stdout and "Bicubic (paper)" in result.stdout
    assert "mine" in result.stdout and "x3" in result.stdout
    assert "upscales in" in result.stdout and "images/s" in result.stdout and "Mpx/s" in result.stdout
    as_json = run("--method", "bicubic", "--dataset", folder, "-s", 2, "-s", 3, "--json", "-q")
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)
    assert data["method"] == "bicubic" and data["scales"] == [2, 3]
    assert data["datasets"] == [{"name": "mine", "root": str(folder), "source": "folder"}]
    assert [s["paper"] for s in data["sets"]] == [None, None]
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert len(rows) == 4 and {r["image"] for r in rows} == {"im0", "im1"}
    assert float(rows[0]["psnr"]) == pytest.approx(data["images"][0]["psnr"])


def test_drcn_sweep_with_weights_saves_images_and_plots(tmp_path, weights_file):
    pytest.importorskip("matplotlib")
    folder = make_images(tmp_path / "mine")
    result = run("--dataset", folder, "--weights", weights_file, "-s", 2, "--recursions", "1..3",
                 "--save-images", tmp_path / "sr", "--plot", tmp_path / "sweep.png", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "DRCN (ours)" in out and "DRCN (paper)" in out and "Recursions" in out and "tiny.safetensors" in out
    saved = sorted(p.relative_to(tmp_path / "sr").as_posix() for p in (tmp_path / "sr").rglob("*.png"))
    assert saved == [f"mine/x2/im{i}_r{k}.png" for i in (0, 1) for k in (1, 2, 3)]
    assert Image.open(tmp_path / "sr" / "mine" / "x2" / "im1_r3.png").mode == "L"  # grey stays grey
    assert Image.open(tmp_path / "sweep.png").format == "PNG"


def test_plot_alone_sweeps_every_depth(tmp_path, weights_file):
    pytest.importorskip("matplotlib")
    folder = make_images(tmp_path / "mine", sizes=((30, 30),))
    result = run("-d", folder, "--weights", weights_file, "-s", 2, "--plot", tmp_path / "p.png", "--json", "-q")
    assert result.exit_code == 0, result.output
    assert [s["recursions"] for s in json.loads(result.stdout)["sets"]] == [1, 2, 3]


def test_jpeg_inputs_are_named_in_the_title_the_table_and_every_record(tmp_path, weights_file):
    folder = make_images(tmp_path / "mine", sizes=((40, 36),), grey_last=False)
    result = run("-d", folder, "--weights", weights_file, "-s", 2, "--jpeg", 75, "--jpeg", 50, "-q",
                 "--json", "--csv", tmp_path / "r.csv")  # fmt: skip
    assert result.exit_code == 0, result.output
    title = " ".join(result.stderr.split())  # stdout holds the JSON
    assert "LR saved as JPEG at quality 75, 50" in title
    assert "q75" in result.stderr and "q50" in result.stderr
    assert "(paper)" not in result.stderr and "Difference" not in result.stderr  # the paper is for clean LR only
    data = json.loads(result.stdout)
    assert data["jpeg"] == [50, 75] and [s["jpeg"] for s in data["sets"]] == [75, 50]
    assert all(s["paper"] is None for s in data["sets"])
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [r["jpeg"] for r in rows] == ["75", "50"]
    clean = run("-d", folder, "--weights", weights_file, "-s", 2, "-q", "--json")
    assert clean.exit_code == 0, clean.output
    clean_data = json.loads(clean.stdout)
    assert clean_data["jpeg"] is None and clean_data["sets"][0]["jpeg"] is None
    assert clean_data["sets"][0]["psnr"] != data["sets"][0]["psnr"]
    assert "LR saved as JPEG" not in " ".join(clean.stderr.split())
    bad = run("-d", folder, "--weights", weights_file, "--jpeg", 0)
    assert bad.exit_code == 2


def test_self_ensemble_is_named_in_the_title_and_the_json(tmp_path, weights_file):
    folder = make_images(tmp_path / "mine", sizes=((30, 30),))
    reports = {}
    for name, extra in (("plain", []), ("x8", ["-x"])):
        result = run("-d", folder, "--weights", weights_file, "-s", 2, "--json", "-q", *extra)
        assert result.exit_code == 0, result.output
        assert ("self-ensemble x8" in result.stderr) == (name == "x8")  # the table, beside the JSON on stdout
        reports[name] = json.loads(result.stdout)
    assert reports["x8"]["self_ensemble"] is True and reports["plain"]["self_ensemble"] is False
    assert reports["x8"]["sets"][0]["psnr"] != reports["plain"]["sets"][0]["psnr"]


@needs_datasets("Set5")
def test_set5_by_name_from_the_data_dir_beside_the_paper():
    result = run("--method", "bicubic", "-d", "set5", "--data-dir", DATASETS, "-s", 4, "-q")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if "Set5" in line)
    assert "28.419 / 0.8102" in line and "28.42 / 0.8104" in line and "-0.001 / -0.0002" in line


def test_download_through_the_hub_stand_in(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    make_images(tmp_path / "src" / "Set5_HR", grey_last=False)
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(tmp_path / "src" / "Set5_HR", arcname="Set5_HR")
    with HubStub() as stub:
        stub.add_file("eugenesiow/Set5", "data/Set5_HR.tar.gz", buffer.getvalue(), repo_type="dataset")
        point_client_at(monkeypatch, stub.endpoint, cache_dir=tmp_path / "hf")
        skip_retry_sleeps(monkeypatch)
        result = run("--method", "bicubic", "-d", "Set5", "-s", 2)
    assert result.exit_code == 0, result.output
    assert "downloading eugenesiow/Set5/data/Set5_HR.tar.gz" in " ".join(result.stderr.split())
    assert "33.66 / 0.9299" in result.stdout  # a known name: the paper's numbers are beside ours
    assert sorted(p.name for p in (tmp_path / "drcn" / "datasets" / "Set5").glob("*.png")) == ["im0.png", "im1.png"]


# ------------------------------------------------------------------------------------------------ bad input


def test_unknown_dataset_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("--method", "bicubic", "-d", "Set15")
    assert result.exit_code == 2
    assert "error: unknown dataset 'Set15'" in result.stderr


@pytest.mark.parametrize("case", ["empty", "not-images", "corrupt-png", "too-small", "missing"])
def test_bad_folders_fail_with_one_line(tmp_path, case):
    folder = tmp_path / "d"
    folder.mkdir()
    if case == "not-images":
        (folder / "notes.txt").write_text("x")
    elif case == "corrupt-png":
        make_images(folder)
        (folder / "zz.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    elif case == "too-small":
        make_images(folder, sizes=((40, 40), (1, 1)), grey_last=False)
    elif case == "missing":
        folder = tmp_path / "nothing" / "here"
    result = run("--method", "bicubic", "-d", folder, "-s", 2)
    expected = {
        "empty": "no images",
        "not-images": "no images",
        "corrupt-png": "zz.png: not a readable image",
        "too-small": "im1.png: image of 1x1 pixels is too small for x2",
        "missing": "no such folder",
    }[case]
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ") and expected in result.stderr
    assert "Traceback" not in result.output


def test_corrupt_download_fails_and_leaves_no_dataset(tmp_path, monkeypatch):
    with HubStub() as stub:
        stub.add_file("eugenesiow/Set14", "data/Set14_HR.tar.gz", b"\x1f\x8b not really gzip", repo_type="dataset")
        point_client_at(monkeypatch, stub.endpoint, cache_dir=tmp_path / "hf")
        skip_retry_sleeps(monkeypatch)
        result = run("--method", "bicubic", "-d", "Set14", "-q")
    assert result.exit_code == 1
    assert "corrupt or truncated archive" in result.stderr
    cache = tmp_path / "drcn" / "datasets"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_offline_without_the_dataset_fails_at_once_naming_what_to_run(tmp_path):
    result = run("--method", "bicubic", "-d", "Urban100")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: Urban100: not found")
    assert "HF_HUB_OFFLINE=1" in result.stderr and "run `drcn bench -d Urban100` once with network" in result.stderr
    assert "downloading" not in result.stderr and ".partial" not in result.stderr
    assert not (tmp_path / "drcn" / "datasets").exists()  # not even a temporary folder was made


def test_no_weights(tmp_path, monkeypatch):
    folder = make_images(tmp_path / "mine")
    empty = tmp_path / "no-bundled"
    empty.mkdir()
    monkeypatch.setattr(files, "BUNDLED_DIR", empty)
    result = run("-d", folder, "-s", 2)  # the default model: not bundled, not cached, offline
    assert result.exit_code == 1 and result.stderr.startswith("error: drcn")
    result = run("-d", folder, "--weights", tmp_path / "missing.safetensors")
    assert result.exit_code == 1 and "no such weights file" in result.stderr
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    result = run("-d", folder, "--weights", tmp_path / "junk.safetensors")
    assert result.exit_code == 1 and "junk.safetensors" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "drcn", "--weights", "w.safetensors"], "either --model or --weights"),
        (["--method", "bicubic", "--recursions", "2"], "uses no network"),
        (["--method", "bicubic", "--self-ensemble"], "uses no network"),
        (["--method", "bicubic", "--plot", "p.png"], "needs --method drcn"),
        (["--recursions", "9"], "out of range: this model has 1..3"),
        (["--recursions", "2", "--plot", "p.png"], "two or more recursion depths"),
        (["--device", "tpu"], "unknown device"),
    ],
)
def test_usage_errors(tmp_path, weights_file, args, message):
    if "--plot" in args and "bicubic" not in args:
        pytest.importorskip("matplotlib")  # without it, --plot fails first (exit 1, tested below)
    folder = make_images(tmp_path / "mine", sizes=((30, 30),))
    if "--weights" not in args and "--method" not in args:
        args = [*args, "--weights", weights_file]
    result = run("-d", folder, *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_plot_without_matplotlib_names_the_extra(tmp_path, weights_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    folder = make_images(tmp_path / "mine", sizes=((30, 30),))
    result = run("-d", folder, "--weights", weights_file, "--plot", tmp_path / "p.png")
    assert result.exit_code == 1
    assert "pip install 'drcn[plot]'" in result.stderr
    assert not (tmp_path / "p.png").exists()


def test_unknown_model_and_tiny_tile_are_usage_errors(tmp_path):
    unknown = run("-d", str(tmp_path), "--model", "nonexistent")
    assert unknown.exit_code == 2, unknown.output
    assert "unknown model 'nonexistent'" in unknown.stderr
    tiny = run("-d", str(tmp_path), "--method", "bicubic", "--tile", "8")
    assert tiny.exit_code == 2, tiny.output
    assert "--tile 8 is too small" in tiny.stderr and "at least 32" in tiny.stderr


def test_bench_and_upscale_run_the_same_prepared_model(tmp_path, weights_file, monkeypatch):
    """Both commands get their network from loader.open_model, and the pipeline runs that ReadyModel as it came
    (channels_last on the CPU), so bench times what upscale runs."""
    from drcn_cli.inference import loader, pipeline

    opened, ran = [], []
    real_open, real_run = loader.open_model, pipeline.super_resolve_y

    def spy_open(*args, **kwargs):
        opened.append(real_open(*args, **kwargs))
        return opened[-1]

    def spy_run(model, *args, **kwargs):
        ran.append(model)
        return real_run(model, *args, **kwargs)

    monkeypatch.setattr(loader, "open_model", spy_open)
    monkeypatch.setattr(pipeline, "open_model", spy_open)  # the upscaler opens its network by this name
    monkeypatch.setattr(pipeline, "super_resolve_y", spy_run)
    folder = make_images(tmp_path / "mine", sizes=((40, 36),))
    assert run("--weights", weights_file, "--dataset", folder, "-s", 2, "-q", "--device", "cpu").exit_code == 0
    upscaled = CliRunner().invoke(app, ["upscale", str(folder / "im0.png"), "-s", "2", "-o", str(tmp_path / "o.png"),
                                        "--weights", str(weights_file), "-q", "--device", "cpu"])
    assert upscaled.exit_code == 0, upscaled.output

    assert len(opened) == 2 and opened[0].network is opened[1].network  # one cached, prepared copy
    assert all(isinstance(model, loader.ReadyModel) for model in ran)  # warm-up, bench and upscale
    assert {id(model.network) for model in ran} == {id(opened[0].network)}
    assert opened[0].network.embed2.weight.is_contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------------- reports: through the one file writer


def test_a_csv_report_into_a_fifo_is_one_error_and_the_fifo_stays(tmp_path):
    import os
    import stat

    folder = make_images(tmp_path / "mine", sizes=((30, 30),))
    fifo = tmp_path / "r.csv"
    os.mkfifo(fifo)
    before = os.lstat(fifo)
    result = run("--method", "bicubic", "-d", folder, "-s", 2, "--csv", fifo)  # would block if it were opened
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {fifo} is a FIFO: drcn replaces only regular files (use - for a stream)"]
    after = os.lstat(fifo)
    assert stat.S_ISFIFO(after.st_mode) and after.st_ino == before.st_ino
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_a_report_over_a_symbolic_link_is_refused_and_a_regular_file_replaced(tmp_path):
    folder = make_images(tmp_path / "mine", sizes=((30, 30),))
    (tmp_path / "link.csv").symlink_to("/dev/null")
    result = run("--method", "bicubic", "-d", folder, "-s", 2, "--csv", tmp_path / "link.csv", "-q")
    assert result.exit_code == 1 and "is a symbolic link (to /dev/null)" in result.stderr
    assert (tmp_path / "link.csv").is_symlink()
    (tmp_path / "r.csv").write_text("old")
    again = run("--method", "bicubic", "-d", folder, "-s", 2, "--csv", tmp_path / "r.csv", "-q")
    assert again.exit_code == 0, again.output
    assert len(list(csv.DictReader((tmp_path / "r.csv").open()))) == 1


def test_json_or_csv_to_stdout_leaves_stdout_to_them_and_the_table_goes_to_stderr(tmp_path):
    folder = make_images(tmp_path / "mine")
    result = run("--method", "bicubic", "-d", folder, "-s", 2, "--json", "--csv", tmp_path / "r.csv")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # the JSON alone
    assert data["method"] == "bicubic" and data["scales"] == [2] and len(data["images"]) == 2
    assert "Bicubic (ours)" in result.stderr and "upscales in" in result.stderr
    assert len(list(csv.DictReader((tmp_path / "r.csv").open()))) == 2
    assert not (tmp_path / "-").exists()
    as_csv = run("--method", "bicubic", "-d", folder, "-s", 2, "--csv", "-", "-q")
    assert as_csv.exit_code == 0, as_csv.output
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["image"] for r in rows] == ["im0", "im1"] and "Bicubic (ours)" in as_csv.stderr
    both = run("--method", "bicubic", "-d", folder, "-s", 2, "--csv", "-", "--json")
    assert both.exit_code == 2 and "would both go to stdout" in both.stderr


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "connection-refused"])
def test_a_named_set_without_a_hub_fails_in_seconds_with_one_line_saying_where_it_comes_from(
    tmp_path, monkeypatch, offline
):
    import socket
    import time

    with socket.socket() as sock:  # a port nothing listens on once closed: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    point_client_at(monkeypatch, f"http://127.0.0.1:{port}", cache_dir=tmp_path / "hf", offline=offline)

    start = time.perf_counter()
    result = run("--method", "bicubic", "-d", "Urban100", "--data-dir", tmp_path)
    elapsed = time.perf_counter() - start

    assert result.exit_code == 1, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: Urban100: not found in "), result.stderr
    why = "offline mode is on (HF_HUB_OFFLINE=1)" if offline else f"127.0.0.1:{port}: connection refused"
    assert why in result.stderr
    assert "data/Urban100_HR.tar.gz from the hub dataset eugenesiow/Urban100" in result.stderr
    assert "--data-dir DIR with the HR images in DIR/Urban100/" in result.stderr
    assert elapsed < 10, elapsed  # the hub client alone would retry for ~25 s (measured here: well under 1 s)


def test_help_names_where_the_named_sets_come_from():
    from drcn_cli.bench.datasets import BENCHMARKS

    result = run("--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.replace("│", " ").split())
    assert all(bench.repo_id in text for bench in BENCHMARKS.values())
    assert "data/<Name>_HR.tar.gz" in text and "DIR/Urban100/*.png" in text


def test_json_alone_prints_the_json_on_stdout_as_in_every_command(tmp_path):
    folder = make_images(tmp_path / "mine")
    for args in (["--json", "-q"], ["-q", "--json"]):  # followed by an option, or last: no value taken
        result = run("--method", "bicubic", "-d", folder, "-s", 2, *args)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["method"] == "bicubic"  # the JSON alone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no file written
    old = run("--method", "bicubic", "-d", folder, "-s", 2, "--json", tmp_path / "r.json")  # 0.1's --json FILE
    assert old.exit_code == 2 and "r.json" in old.stderr and not (tmp_path / "r.json").exists()
