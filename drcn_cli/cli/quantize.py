"""`drcn quantize`: an int8 calibration for a model, made once from HR images and checked against fp32.

Thin: resolve the weights, make the calibration (drcn_cli.bench.quantize), write it beside the weights (or -o),
score fp32 against int8 on the --check sets and record the largest drop, which `--precision auto` reads.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from ._errors import fail, usage
from ._options import ModelName, WeightsPath, model_problem, path_type


def quantize(
    images: Annotated[
        Path,
        typer.Option("--images", metavar="DIR", click_type=path_type(file_okay=False),
                     help="A folder of HR training images (e.g. T91): one 96x96 crop of each, at x2, x3, x4 in turn."),
    ],
    model: ModelName = None,
    weights: WeightsPath = None,
    check: Annotated[
        list[str] | None,
        typer.Option("--check", metavar="DATASET", help="Score fp32 against int8 on this set (a name or folder; "
                     "repeatable) at x2, x3, x4, and record the largest drop: --precision auto chooses int8 only "
                     "when it is within 0.05 dB and 0.0005 SSIM.", show_default=False),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", metavar="DIR", click_type=path_type(file_okay=False),
                     help="A folder holding <Name>/ folders of HR images, for --check."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", metavar="PATH", help="Where to write it. Default: NAME.int8.safetensors "
                     "beside the weights, where int8 runs look for it.", show_default=False),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing calibration.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress messages on stderr.")] = False,
) -> None:
    """Make the int8 calibration of a model (int8 weights and activation ranges) for --precision int8.

    Needs onnx and onnxruntime: pip install 'drcn\\[int8]'.
    """
    if (problem := model_problem(model, weights)) is not None:
        raise usage(problem, "quantize")
    if not images.is_dir():
        raise usage(f"--images {images}: no such folder", "quantize")

    from ..bench.datasets import list_images, resolve_dataset
    from ..bench.quantize import check_calibration, make_calibration
    from ..inference.int8 import Int8Error, calibration_path, runtime_problem, save_calibration
    from ..inference.loader import load_model

    def info(message: str) -> None:
        if not quiet:
            typer.echo(message, err=True)

    if (problem := runtime_problem()) is not None:
        raise fail(problem)
    _network, _metadata, path = load_model(weights or model, on_download=info)
    target = output.expanduser() if output is not None else calibration_path(path)
    if target.exists() and not overwrite:  # before the work, not after it
        raise fail(f"output {target} exists (use --overwrite)")
    sets = [resolve_dataset(spec, data_dir, on_download=info) for spec in check or []]
    hr = list_images(images)
    info(f"calibrating {path.name} on {len(hr)} images from {images}")
    calibration = make_calibration(path, hr, {"images": f"{images.name}: {len(hr)} images, one 96x96 crop each"})
    if sets:

        def cell(name: str, scale: int, c: tuple[float, float, float, float]) -> None:
            info(f"{name} x{scale}: fp32 {c[0]:.2f} dB / {c[1]:.4f}, int8 {c[2]:.2f} dB / {c[3]:.4f} "
                 f"({c[2] - c[0]:+.3f} dB, {c[3] - c[1]:+.5f})")

        try:
            result = check_calibration(path, calibration, [(s.name, s.images) for s in sets], on_cell=cell)
        except Int8Error as exc:
            raise fail(exc) from None
        info_ = dict(calibration.info, psnr_drop=f"{max(result.psnr_drop, 0.0):.4f}",
                     ssim_drop=f"{max(result.ssim_drop, 0.0):.5f}", checked_on=", ".join(s.name for s in sets))
        calibration = dataclasses.replace(calibration, info=info_)
    save_calibration(calibration, target, overwrite=overwrite)  # once, with what the check measured
    bound = "within" if calibration.within_bound() else "not checked or outside"
    typer.echo(f"{target}: int8 calibration of {path.name}; largest drop "
               f"{calibration.info.get('psnr_drop', '?')} dB / {calibration.info.get('ssim_drop', '?')} SSIM "
               f"({bound} the bound --precision auto needs)")
