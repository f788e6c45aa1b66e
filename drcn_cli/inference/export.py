"""Export a DRCN to ONNX, with its input/output contract written into the file.

The exported graph is the network alone, the part of `drcn upscale` that needs a framework; the bicubic
upsample and the colour conversion stay with the caller:

    input  ``y_bicubic``  N x 1 x H x W (N, H, W free), float32 (float16 for fp16): the Y channel (BT.601
           YCbCr as MATLAB's rgb2ycbcr, divided by 255, so in [0, 1]; for a grey image the grey level) of the
           low-resolution image upsampled with bicubic to the output size
    output ``y_sr``       N x 1 x H x W, same type: the super-resolved Y. The skip connection is inside the
           graph (the output is the input plus the network's residual). Not clamped: Cb and Cr are those of
           the bicubic upsample, and the RGB converted back is clipped to [0, 1], as drcn does.

The same text is stored in the model's ``metadata_props`` (keys ``drcn.*``, see :func:`onnx_metadata`). Needs
the ``onnx`` and ``onnxscript`` packages (``pip install 'drcn[export]'``), which torch's exporter uses; they
are imported only here.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from ..errors import DrcnError
from ..io.atomic import OutputExistsError, write_atomic
from ..model import DRCN

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "PRECISIONS",
    "ExportError",
    "ExportResult",
    "export_onnx",
    "onnx_metadata",
]

INPUT_NAME = "y_bicubic"
OUTPUT_NAME = "y_sr"
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}
_ONNX_TYPES = {"fp32": "float32", "fp16": "float16"}


class ExportError(DrcnError, RuntimeError):
    """The export could not be done: the exporter packages are missing, or the exporter failed."""


@dataclass(frozen=True)
class ExportResult:
    """What was written: the file, its size in bytes, the recursions and precision exported, the ONNX opset."""

    path: Path
    size: int
    recursions: int
    precision: str
    opset: int
    metadata: dict[str, str]


class _Network(torch.nn.Module):
    """DRCN.forward with the number of recursions fixed, so that the graph has a single input."""

    def __init__(self, model: DRCN, recursions: int) -> None:
        super().__init__()
        self.model = model
        self.recursions = recursions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, recursions=self.recursions)


def onnx_metadata(model: DRCN, recursions: int, precision: str, source: str | None = None) -> dict[str, str]:
    """The ``drcn.*`` entries of the exported model's metadata_props: the contract, the model and the export."""
    config = model.config
    dtype = _ONNX_TYPES[precision]
    meta = {
        "drcn.contract": (
            f"input {INPUT_NAME}: Y of the bicubic upsample in [0, 1], N x 1 x H x W {dtype}; output {OUTPUT_NAME}: "
            "the super-resolved Y, N x 1 x H x W, residual included (input + network), not clamped"
        ),
        "drcn.input": (
            f"{INPUT_NAME}: N x 1 x H x W {dtype}, N, H and W free. The Y channel (BT.601 YCbCr as MATLAB "
            "rgb2ycbcr: Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255 for R, G, B in [0, 1]; for a grey image "
            "the grey level) of the low-resolution image upsampled with bicubic (MATLAB imresize) to the output size"
        ),
        "drcn.output": (
            f"{OUTPUT_NAME}: N x 1 x H x W {dtype}. The super-resolved Y: the input plus the network's residual "
            "(the skip connection is inside the graph). Not clamped: take Cb and Cr from the bicubic upsample, "
            "convert back to RGB, then clip to [0, 1], as drcn does"
        ),
        "drcn.features": str(config.features),
        "drcn.recursions": str(recursions),
        "drcn.recursions_trained": str(config.recursions),
        "drcn.precision": precision,
        # Context each output pixel sees on each side: tiles that overlap by this much stitch without seams.
        "drcn.receptive_radius": str((recursions + 4) * (config.kernel_size // 2)),
        "drcn.version": __version__,
    }
    if source:
        meta["drcn.weights"] = source
    return meta


def _require_exporter() -> None:
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(
            f"ONNX export needs the {' and '.join(missing)} package{'s' if len(missing) > 1 else ''}: "
            "pip install 'drcn[export]'"
        )


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter reports its steps on stdout, through logging and as warnings: a library prints nothing."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _recursions_to_export(model: DRCN, recursions: int | None) -> int:
    """``recursions`` (None: all of them), checked against the model's; ValueError outside 1..D."""
    trained = model.config.recursions
    k = trained if recursions is None else int(recursions)
    if not 1 <= k <= trained:
        raise ValueError(f"recursions must be in 1..{trained} for this model, got {k}")
    return k


def _trace(model: DRCN, recursions: int, dtype: torch.dtype):
    """The ONNX ModelProto of a copy of ``model`` on the CPU in ``dtype``; ExportError when the exporter fails."""
    network = _Network(copy.deepcopy(model).to(device="cpu", dtype=dtype).eval(), recursions)
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    # Batch 2 and H != W, so that no size is taken for a constant of the graph.
    example = torch.rand(2, 1, 32, 40, dtype=dtype)
    batch, height, width = (torch.export.Dim(name) for name in ("batch", "height", "width"))
    try:
        # DRCN.forward takes oneDNN's fused conv+ReLU on the CPU when autograd is off (model.py,
        # _fused_conv_relu_applies requires `not torch.is_grad_enabled()`), an op ONNX does not have. Tracing with
        # autograd on (and outside inference mode) takes the plain conv -> ReLU path, whatever the caller's mode;
        # the parameters need no gradient, so nothing is recorded for a backward pass.
        with torch.inference_mode(False), torch.enable_grad(), _quiet_exporter():
            program = torch.onnx.export(
                network,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={"x": {0: batch, 2: height, 3: width}},
                verbose=False,
            )
        assert program is not None  # None only without dynamo=True
        return program.model_proto
    except Exception as exc:  # the exporter's errors have no common base class
        first = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split()) or type(exc).__name__  # no colours
        raise ExportError(f"the ONNX exporter failed: {first[:500]}") from exc


def _stamp(proto, metadata: dict[str, str]) -> None:
    """Write ``metadata`` into the model's metadata_props, the contract as its doc string, drcn as its producer."""
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = metadata["drcn.contract"]
    proto.producer_name = "drcn"
    proto.producer_version = metadata["drcn.version"]


def export_onnx(
    model: DRCN,
    path: str | os.PathLike,
    *,
    recursions: int | None = None,
    precision: str = "fp32",
    overwrite: bool = False,
    source: str | None = None,
) -> ExportResult:
    """Write ``model`` as an ONNX file at ``path``: dynamic batch, height and width; the first ``recursions``
    (default: all) of its recursions; weights, input and output in ``precision`` (fp32 or fp16).

    ``source`` (e.g. the weights file's name) is recorded in the metadata. The caller's model is not changed.
    The file is written by :func:`drcn_cli.io.atomic.write_atomic`, so ``path`` is either untouched or complete.

    Raises:
        ValueError: recursions outside 1..D, or an unknown precision (before anything is done).
        ExportError: onnx/onnxscript missing, or the exporter failed.
        drcn_cli.io.atomic.OutputExistsError: ``path`` exists and ``overwrite`` is False.
        drcn_cli.io.atomic.NotRegularFileError: a folder, FIFO, device or symbolic link is at ``path`` (left as it is).
        drcn_cli.io.atomic.WriteError: the file could not be written (one-line reason).
    """
    k = _recursions_to_export(model, recursions)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"output {path} exists (use --overwrite)")
    _require_exporter()

    metadata = onnx_metadata(model, k, precision, source)
    opset = 0

    def build(tmp: Path) -> None:  # run after the destination was checked: a FIFO in the way costs no export
        nonlocal opset
        proto = _trace(model, k, PRECISIONS[precision])
        _stamp(proto, metadata)
        opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
        tmp.write_bytes(proto.SerializeToString())

    size = write_atomic(path, build, overwrite=overwrite)
    return ExportResult(path, size, k, precision, opset, metadata)
