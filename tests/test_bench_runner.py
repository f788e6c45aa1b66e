"""The evaluation protocol: the paper's bicubic row on Set5/Set14, degradation, the runner, exports, the plot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from testdata import DATA, datasets_root, needs_datasets

from drcn_cli.bench import results
from drcn_cli.bench.datasets import Dataset, DatasetError, find_benchmark, load_image, resolve_dataset
from drcn_cli.bench.protocol import BenchError, degrade, evaluate_images, score_image, super_resolve
from drcn_cli.bench.published import published
from drcn_cli.bench.runner import parse_recursions, run_bench
from drcn_cli.inference.pipeline import open_upscaler, upscale_image
from drcn_cli.model import DRCN, DRCNConfig

DATASETS = datasets_root()  # the benchmark datasets, where the environment has them (tests/testdata.py)
BICUBIC = open_upscaler(method="bicubic", device="cpu", precision="fp32")


def upscaler(model, **settings):
    """``model`` (a DRCN) as the upscaler drcn runs, on the CPU in fp32."""
    return open_upscaler(model, "cpu", "fp32", **settings)


@pytest.fixture(scope="module")
def model() -> DRCN:
    torch.manual_seed(0)
    net = DRCN(DRCNConfig(features=8, recursions=3)).eval()
    with torch.no_grad():
        # At init the recursive conv is the identity (every depth predicts the same) and the residual is large for F=8:
        # perturb the one and shrink the other, so that depths differ and the output stays near the bicubic.
        net.recursive.weight.add_(0.05 * torch.randn_like(net.recursive.weight))
        net.recon2.weight.mul_(0.1)
    return net


def smooth_image(height: int, width: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """A smooth 8-bit test image (C, H, W) in [0, 1] with some texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    planes = [
        128 + 90 * np.sin(xx / (3 + c) + rng.uniform(0, 6)) * np.cos(yy / (4 + c)) + rng.normal(0, 4, (height, width))
        for c in range(channels)
    ]
    return torch.from_numpy(np.clip(np.round(np.stack(planes)), 0, 255) / 255).float()


def write_png(path: Path, image: torch.Tensor) -> Path:
    pixels = (image * 255).round().to(torch.uint8).numpy()
    pixels = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def folder_dataset(root: Path, name: str = "mine", sizes=((40, 36), (33, 45)), benchmark=None) -> Dataset:
    paths = [write_png(root / name / f"img{i}.png", smooth_image(h, w, seed=i)) for i, (h, w) in enumerate(sizes)]
    return Dataset(name, root / name, tuple(paths), "folder", benchmark)


# --------------------------------------------------------------------------------------- the paper's row


@needs_datasets("Set5", "Set14")
def test_bicubic_reproduces_the_papers_row_on_set5_and_set14():
    sets = [resolve_dataset(name, DATASETS, download=False) for name in ("Set5", "Set14")]
    report = run_bench(sets, (2, 3, 4), BICUBIC)
    assert len(report.sets) == 6
    for s in report.sets:
        paper = published("Bicubic", s.dataset, s.scale)
        assert s.paper == paper and s.images == (5 if s.dataset == "Set5" else 14)
        assert abs(s.psnr - paper.psnr) <= 0.02, (s.dataset, s.scale, s.psnr, paper.psnr)
        assert abs(s.ssim - paper.ssim) <= 0.0005, (s.dataset, s.scale, s.ssim, paper.ssim)
        assert (s.psnr, s.ssim) == (s.bicubic_psnr, s.bicubic_ssim)


def test_grey_bridge_is_measured_on_its_grey_values():
    # Set14's bridge is one-channel: measured on its own levels. Through rgb2ycbcr (as RGB with equal channels)
    # its range shrinks to 16..235 and PSNR rises, which is what moves Set14's mean by ~0.09 dB. A 96x96 crop of
    # it (tests/data) rises by 1.3 dB, as the whole image does.
    grey = load_image(DATA / "bridge_crop.png")
    assert grey.shape[0] == 1
    as_grey = evaluate_images([grey], 2)
    as_rgb = evaluate_images([grey.expand(3, -1, -1).contiguous()], 2)
    assert as_rgb.psnr - as_grey.psnr > 0.5


# ------------------------------------------------------------------------------------------------ protocol


def test_degrade_mod_crops_and_rounds_the_lr():
    hr, lr = degrade(smooth_image(50, 47), 3)
    assert hr.shape == (3, 48, 45) and lr.shape == (3, 16, 15)
    assert torch.allclose(lr * 255, (lr * 255).round(), atol=1e-4)
    flat = torch.full((1, 30, 30), 77 / 255)
    assert torch.allclose(degrade(flat, 4)[1], flat[:, :7, :7])  # bicubic keeps a constant


def test_degrade_refuses_images_too_small_for_ssim_after_the_crop():
    with pytest.raises(BenchError, match="too small for x4"):
        degrade(smooth_image(18, 40), 4)  # 18 < 11 + 2 * 4


def test_score_is_psnr_and_ssim_of_the_8bit_luma_with_scale_border():
    hr = smooth_image(30, 30)
    sr = hr.clone()
    sr[:, 2, 5] = 0.0  # inside the frame cropped at x3, outside the one at x2
    assert score_image(sr, hr, 3).psnr == np.inf
    assert np.isfinite(score_image(sr, hr, 2).psnr)


def test_evaluate_images_is_the_mean_of_per_image_scores(tmp_path):
    images = [smooth_image(40, 40, seed=1), smooth_image(36, 44, channels=1, seed=2)]
    per_image = []
    for image in images:
        hr, lr = degrade(image, 2)
        sr = super_resolve(lr, 2, BICUBIC)
        per_image.append(score_image(sr, hr, 2))
    mean = evaluate_images(images, 2)
    assert mean.psnr == pytest.approx(np.mean([s.psnr for s in per_image]), abs=1e-12)
    assert mean.ssim == pytest.approx(np.mean([s.ssim for s in per_image]), abs=1e-12)
    paths = [write_png(tmp_path / f"{i}.png", im) for i, im in enumerate(images)]
    assert evaluate_images(paths, 2) == mean
    with pytest.raises(BenchError, match="no images"):
        evaluate_images([], 2)


def test_evaluate_images_with_a_model_runs_the_network(model):
    images = [smooth_image(40, 40, seed=3)]
    hr, lr = degrade(images[0], 2)
    lr_pixels = (lr * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()

    def upscaled_score(recursions: int) -> float:
        """The score of what `drcn upscale` (the public upscale_image) makes of the LR, against the HR."""
        sr = upscale_image(lr_pixels, 2, weights=model, device="cpu", precision="fp32", recursions=recursions)
        return score_image(torch.from_numpy(sr).permute(2, 0, 1).float() / 255, hr, 2).psnr

    drcn = evaluate_images(images, 2, upscaler(model))
    bicubic = evaluate_images(images, 2)
    assert drcn.psnr == pytest.approx(upscaled_score(3), abs=1e-9)
    assert abs(drcn.psnr - bicubic.psnr) > 0.01 and drcn.psnr > 20  # a small change, not a wreck
    fewer = evaluate_images(images, 2, upscaler(model, recursions=1))
    assert fewer.psnr == pytest.approx(upscaled_score(1), abs=1e-9)
    assert abs(fewer.psnr - drcn.psnr) > 0.01


# ----------------------------------------------------------------------------------------------- the runner


def test_run_bench_sweep_saves_what_upscale_produces(tmp_path, model):
    ds = folder_dataset(tmp_path)
    events = []
    report = run_bench([ds], (2, 3), upscaler(model), (1, 3), tmp_path / "out", events.append)
    assert report.method == "drcn"
    assert [(s.scale, s.recursions) for s in report.sets] == [(2, 1), (2, 3), (3, 1), (3, 3)]
    assert all(s.paper is None and s.psnr_delta is None and s.images == 2 for s in report.sets)
    assert len(report.images) == 2 * 2 * 2
    assert [(e.index, e.count, e.done, e.total) for e in events] == [(1, 2, 1, 2), (2, 2, 2, 2)]
    assert report.timing.images == 8 and report.timing.seconds > 0 and report.timing.device == "cpu"
    assert report.timing.peak_memory_kind in ("process RSS", "n/a")

    # The saved x2 image at depth 3 is what `drcn upscale` makes from the same LR, and scores as reported.
    image = load_image(ds.images[0])
    hr, lr = degrade(image, 2)
    lr_pixels = (lr * 255).round().to(torch.uint8).numpy().transpose(1, 2, 0)
    expected = upscale_image(lr_pixels, 2, weights=model, device="cpu", recursions=3)
    saved = np.asarray(Image.open(tmp_path / "out" / "mine" / "x2" / "img0_r3.png"))
    assert np.array_equal(saved, expected)
    row = next(r for r in report.images if (r.image, r.scale, r.recursions) == ("img0", 2, 3))
    assert (row.width, row.height) == (hr.shape[2], hr.shape[1])
    assert row.psnr == score_image(torch.from_numpy(saved.copy()).permute(2, 0, 1) / 255, hr, 2).psnr


def test_run_bench_puts_the_papers_numbers_beside_a_known_dataset(tmp_path, model):
    ds = folder_dataset(tmp_path, "Set5", benchmark=find_benchmark("Set5"))
    report = run_bench([ds], (4,), upscaler(model))
    (s,) = report.sets
    assert s.recursions is None
    assert s.paper == published("DRCN", "Set5", 4) and s.paper_bicubic == published("Bicubic", "Set5", 4)
    assert s.psnr_delta == pytest.approx(s.psnr - 31.53)


def test_run_bench_bicubic_is_its_own_baseline(tmp_path):
    report = run_bench([folder_dataset(tmp_path)], (2,), BICUBIC, (1, 2))
    assert report.method == "bicubic" and [s.recursions for s in report.sets] == [None]
    assert all(r.psnr == r.bicubic_psnr for r in report.images)


def test_run_bench_bad_input(tmp_path, model):
    ds = folder_dataset(tmp_path)
    with pytest.raises(BenchError, match="out of range"):
        run_bench([ds], (2,), upscaler(model), (4,))
    with pytest.raises(BenchError, match="integers >= 2"):
        run_bench([ds], (1,), BICUBIC)
    small = folder_dataset(tmp_path, "small", sizes=((40, 40), (12, 40)))
    with pytest.raises(BenchError, match=r"img1\.png: .*too small for x2"):
        run_bench([small], (2,), BICUBIC)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"text, not a PNG")
    broken = Dataset("broken", tmp_path / "broken", (tmp_path / "broken" / "x.png",), "folder")
    events = []
    with pytest.raises(DatasetError, match="not a readable image"):
        run_bench([ds, broken], (2,), BICUBIC, on_progress=events.append)
    assert events == []  # checked before any work


def test_parse_recursions():
    assert parse_recursions("3", 16) == (3,)
    assert parse_recursions("1..4, 8,16", 16) == (1, 2, 3, 4, 8, 16)
    assert parse_recursions("all", 3) == (1, 2, 3)
    for bad, message in (("0", "out of range"), ("17", "out of range"), ("4..2", "empty"), ("x", "use K")):
        with pytest.raises(BenchError, match=message):
            parse_recursions(bad, 16)


# ----------------------------------------------------------------------------------------- exports and plot


def test_report_to_dict_is_json(tmp_path, model):
    report = run_bench([folder_dataset(tmp_path)], (2,), upscaler(model), (1, 2))
    data = json.loads(json.dumps(results.report_to_dict(report)))
    assert data["method"] == "drcn" and len(data["sets"]) == 2 and len(data["images"]) == 4
    assert set(data["images"][0]) == {
        "dataset", "image", "scale", "jpeg", "recursions", "width", "height",
        "psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "seconds",
    }  # fmt: skip
    assert data["timing"]["images_per_second"] > 0


def test_plot_needs_a_sweep_and_matplotlib(tmp_path, model, monkeypatch):
    report = run_bench([folder_dataset(tmp_path)], (2, 3), upscaler(model), (1, 2, 3))
    single = run_bench([folder_dataset(tmp_path / "b")], (2,), upscaler(model))
    with pytest.raises(BenchError, match="two or more recursion depths"):
        results.plot_recursion_sweep(single, tmp_path / "p.png")
    pytest.importorskip("matplotlib")
    results.plot_recursion_sweep(report, tmp_path / "plots" / "sweep.png")
    with Image.open(tmp_path / "plots" / "sweep.png") as image:
        assert image.format == "PNG" and image.width > 200
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the extra were not installed
    with pytest.raises(results.MissingExtraError, match=r"pip install 'drcn\[plot\]'"):
        results.plot_recursion_sweep(report, tmp_path / "again.png")


def test_run_bench_with_jpeg_inputs_says_the_quality_and_leaves_clean_as_it_was(tmp_path, model):
    ds = folder_dataset(tmp_path, "Set5", benchmark=find_benchmark("Set5"))
    clean = run_bench([ds], (2,), upscaler(model))
    both = run_bench([ds], (2,), upscaler(model), jpeg=(None, 75, 40), save_dir=tmp_path / "sr")
    assert [(s.scale, s.jpeg) for s in both.sets] == [(2, None), (2, 75), (2, 40)]
    assert both.sets[0] == clean.sets[0]  # the clean cell is the paper's protocol, unchanged
    assert [s.paper is not None for s in both.sets] == [True, False, False]  # the paper is for clean LR only
    assert both.sets[1].psnr != clean.sets[0].psnr and both.sets[2].psnr < both.sets[1].psnr
    assert both.sets[1].bicubic_psnr < clean.sets[0].bicubic_psnr
    assert {r.jpeg for r in both.images} == {None, 75, 40}
    assert all(r["jpeg"] in (None, 75, 40) for r in results.per_image_rows(both))
    assert sorted(p.parent.name for p in (tmp_path / "sr" / "Set5").rglob("img0.png")) == [
        "x2", "x2_jpeg40", "x2_jpeg75"
    ]
    # A JPEG cell scores what the protocol makes of an LR image read back from a JPEG file.
    hr, lr = degrade(load_image(ds.images[0]), 2, 75)
    row = next(r for r in both.images if (r.image, r.jpeg) == ("img0", 75))
    assert row.psnr == score_image(super_resolve(lr, 2, upscaler(model)), hr, 2).psnr
    with pytest.raises(BenchError, match="JPEG"):
        run_bench([ds], (2,), upscaler(model), jpeg=(0,))


def test_the_plot_is_drawn_in_memory_and_written_by_the_one_writer(tmp_path, model):
    pytest.importorskip("matplotlib")
    import os

    from drcn_cli.io.atomic import NotRegularFileError

    report = run_bench([folder_dataset(tmp_path, sizes=((30, 30),))], (2,), upscaler(model), (1, 2))
    (tmp_path / "p.png").symlink_to("/dev/null")
    with pytest.raises(NotRegularFileError, match=r"is a symbolic link \(to /dev/null\)"):
        results.plot_recursion_sweep(report, tmp_path / "p.png")
    assert os.readlink(tmp_path / "p.png") == "/dev/null"
    results.plot_recursion_sweep(report, tmp_path / "sweep.svg")  # the extension still chooses the format
    assert (tmp_path / "sweep.svg").read_text().lstrip().startswith("<?xml")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
