"""`drcn export`: a model to ONNX (dynamic batch, height and width), its input/output contract in the metadata.

Thin: resolve the weights (drcn_cli.weights.resolve), load them (drcn_cli.weights.files), call
drcn_cli.inference.export.export_onnx, and say on stdout what was written.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ._errors import fail, usage
from ._options import MODEL_PANEL as _MODEL
from ._options import ModelName, WeightsPath, model_problem


class ExportPrecision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"


def _usage(message: str) -> typer.Exit:
    return usage(message, "export")


def default_output(weights_path: Path, recursions: int | None, precision: str) -> Path:
    """``<weights name>.onnx`` in the current folder, with ``_k8`` / ``_fp16`` when those were asked for."""
    name = weights_path.stem
    if recursions is not None:
        name += f"_k{recursions}"
    if precision != "fp32":
        name += f"_{precision}"
    return Path(f"{name}.onnx")


def export(
    output: Annotated[
        str | None,
        typer.Option("-o", "--output", metavar="PATH", help="The .onnx file to write; a folder (existing, or "
                     "ending in /): the default name inside it. Default: <model>.onnx here, with _k<K> and _fp16 when "
                     "asked for.",
                     show_default=False),
    ] = None,
    model: ModelName = None,
    weights: WeightsPath = None,
    recursions: Annotated[
        int | None,
        typer.Option("-k", "--recursions", min=1, metavar="K", help="Export only the first K recursions: faster, "
                     "a little softer. Default: all.", rich_help_panel=_MODEL),
    ] = None,
    precision: Annotated[
        ExportPrecision,
        typer.Option("--precision", help="fp32, or fp16 (weights, input and output in float16).",
                     rich_help_panel=_MODEL),
    ] = ExportPrecision.fp32,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress message on stderr.")] = False,
) -> None:
    """Export a model to ONNX, for ONNX Runtime, TensorRT, ncnn or OpenVINO: height, width and batch are free.

    The graph is the network alone. Input y_bicubic: N x 1 x H x W, the Y channel (MATLAB rgb2ycbcr, in [0, 1]) of
    the bicubic upsample to the output size. Output y_sr: the super-resolved Y, residual included, not clamped.
    The contract is also in the model's metadata (drcn.*). Needs onnx and onnxscript: pip install 'drcn\\[export]'.
    """
    if (problem := model_problem(model, weights)) is not None:
        raise _usage(problem)
    if output is not None and not output.strip():
        raise _usage("-o/--output is empty: give a file or folder name (or leave it out for the default name)")

    from ..inference.export import export_onnx
    from ..inference.loader import load_model

    def info(message: str) -> None:
        if not quiet:
            typer.echo(message, err=True)

    # The exporter wants the plain fp32 module, not one prepared to run here (drcn_cli.inference.loader); drcn's own
    # errors (weights not found, not DRCN weights, the exporter failing) are reported by the command's wrapper.
    network, _metadata, path = load_model(weights or model, on_download=info)
    trained = network.config.recursions
    if recursions is not None and recursions > trained:
        raise _usage(f"--recursions {recursions}: this model has {trained}")

    name = default_output(path, recursions, precision.value)
    if output is None:
        target = name
    elif output.endswith(("/", os.sep)) or Path(output).expanduser().is_dir():
        target = Path(output).expanduser() / name  # write_atomic creates a missing folder
    else:
        target = Path(output).expanduser()
    if target.exists() and not overwrite:  # before the work, not after it
        raise fail(f"output {target} exists (use --overwrite)")
    info(f"exporting {path.name} (F={network.config.features}, {recursions or trained} of {trained} recursions, "
         f"{precision.value}) to {target}")
    result = export_onnx(network, target, recursions=recursions, precision=precision.value,
                         overwrite=overwrite, source=path.name)
    typer.echo(f"{result.path}: {result.size / 1e6:.2f} MB, opset {result.opset}, input y_bicubic "
               f"(N x 1 x H x W {'float16' if result.precision == 'fp16' else 'float32'}), output y_sr")
