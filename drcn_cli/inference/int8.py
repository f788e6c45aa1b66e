"""int8 inference on the CPU: the network as a graph of 8-bit integer convolutions, run by ONNX Runtime.

The scheme (docs/speed.md has the measurements behind each choice):

    embed1, embed2          fp32 convs (1/33 of the work; quantizing them lost the most per FLOP)
    H_0 .. H_D              uint8, zero point 0 (the ReLU is the clamp at 0), one scale per recursion
    recursive, recon1       int8 weights, one scale per output channel, integer accumulation
    relu(recon1(H_d))       uint8, one scale per recursion
    recon2(...)             uint8 with zero point 128 (a signed residual), one scale per recursion
    x + sum_d w_d r_d       fp32

The int8 weights and the activation ranges are computed once (:func:`calibrate`, `drcn quantize`) and stored beside
the weights file in ``NAME.int8.safetensors`` (:func:`calibration_path`), which names the sha256 of the weights it
belongs to. Integer arithmetic is exact and the fp32 layers compute each pixel the same way at any window size, so a
tiled run equals an untiled one. ONNX Runtime is an optional extra (``pip install 'drcn[int8]'``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ..errors import DrcnError
from ..io.atomic import write_atomic
from ..model import DRCN, DRCNConfig
from .device import cpu_info

__all__ = [
    "CALIBRATION_FORMAT",
    "CALIBRATION_SUFFIX",
    "QUALITY_BOUND",
    "Int8Calibration",
    "Int8Error",
    "Int8Network",
    "calibrate",
    "calibration_path",
    "load_calibration",
    "runtime_problem",
    "save_calibration",
    "signed_weights_exact",
]

CALIBRATION_SUFFIX = ".int8.safetensors"
CALIBRATION_FORMAT = "1"
QUANTIZED = ("recursive", "recon1", "recon2")  # the convs that run on integers; embed1 and embed2 stay fp32
# The most an int8 run may lose against fp32, PSNR in dB and SSIM, in any Set5/Set14 cell, for `--precision auto`
# to choose it: a calibration records what it measured (``psnr_drop``, ``ssim_drop``).
QUALITY_BOUND = (0.05, 0.0005)


class Int8Error(DrcnError):
    """int8 cannot run: ONNX Runtime missing, no calibration for these weights, or a calibration that does not fit."""


def runtime_problem() -> str | None:
    """Why int8 inference cannot run in this environment (a missing package, with the install hint), or None."""
    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        return f"int8 needs {' and '.join(missing)}: pip install 'drcn[int8]'"
    return None


def calibration_path(weights: str | os.PathLike) -> Path:
    """Where the calibration of a weights file lives: ``NAME.int8.safetensors`` beside ``NAME.safetensors``."""
    path = Path(weights)
    return path.with_name(path.name.removesuffix(".safetensors") + CALIBRATION_SUFFIX)


@dataclass(frozen=True)
class Int8Calibration:
    """What int8 inference needs beyond the fp32 weights.

    ``weights``: for each of :data:`QUANTIZED`, (int8 tensor of the conv's weight shape, fp32 scale per output
    channel). ``ranges``: the largest activation seen, per map: ``embed2`` (1 value), ``recursive`` and ``recon1``
    (D values, the post-ReLU maxima), ``recon2`` (D values, the largest |residual|). ``info``: free-form facts
    (images used, method, measured quality drop ``psnr_drop``/``ssim_drop`` as decimal strings).
    """

    weights_sha256: str
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]
    ranges: dict[str, list[float]]
    info: dict[str, str]

    def within_bound(self) -> bool:
        """True when the calibration records a measured quality drop within :data:`QUALITY_BOUND`."""
        try:
            psnr, ssim = float(self.info["psnr_drop"]), float(self.info["ssim_drop"])
        except (KeyError, ValueError):
            return False
        return psnr <= QUALITY_BOUND[0] and ssim <= QUALITY_BOUND[1]


# -- calibration -----------------------------------------------------------------------------------------------


# Map ranges at this quantile of the values seen rather than their maximum: a few outliers would otherwise
# coarsen the steps of every value (measured against the maximum and other quantiles in docs/speed.md).
MAP_QUANTILE = 0.99999
_SAMPLES = 1 << 22  # values per map kept for the quantile


def _quantile(values: list[torch.Tensor], q: float) -> float:
    flat = torch.cat([v.flatten() for v in values]).float()
    if flat.numel() > _SAMPLES:
        flat = flat[:: flat.numel() // _SAMPLES + 1]
    return float(torch.quantile(flat, q))


@torch.no_grad()
def _statistics(model: DRCN, inputs: Sequence[torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, list[float]]]:
    """One fp32 forward over the inputs, gathering what calibration needs: for each quantized conv, the sum of
    p p^T over every patch p (C*9 values) it reads, over all its calls; and the range of every map (see
    :class:`Int8Calibration`)."""
    d, k = model.config.recursions, model.config.kernel_size
    hessians: dict[str, torch.Tensor] = {}
    seen: dict[str, list[list[torch.Tensor]]] = {name: [[] for _ in range(d)] for name in QUANTIZED}
    embed2 = 0.0

    def patches_of(name: str, a: torch.Tensor) -> None:
        patches = F.unfold(a, k, padding=k // 2)
        cols = patches.transpose(1, 2).reshape(-1, patches.shape[1])
        hessians[name] = hessians.get(name, 0) + (cols.T @ cols).double()

    for x in inputs:
        h = F.relu(model.embed2(F.relu(model.embed1(x))))
        embed2 = max(embed2, float(h.max()))
        for i in range(d):
            patches_of("recursive", h)
            h = F.relu(model.recursive(h))
            patches_of("recon1", h)
            r = F.relu(model.recon1(h))
            patches_of("recon2", r)
            seen["recursive"][i].append(h[:, :, ::2, ::2])
            seen["recon1"][i].append(r[:, :, ::2, ::2])
            seen["recon2"][i].append(model.recon2(r).abs().amax().view(1))
    ranges = {"embed2": [embed2]}
    for name in ("recursive", "recon1"):
        ranges[name] = [_quantile(values, MAP_QUANTILE) for values in seen[name]]
    ranges["recon2"] = [float(torch.cat(values).max()) for values in seen["recon2"]]
    return hessians, ranges


def _channel_scales(weight: torch.Tensor) -> torch.Tensor:
    return (weight.detach().abs().amax(dim=(1, 2, 3)).clamp_min(1e-12) / 127.0).float()


@torch.no_grad()
def _round_gptq(weight: torch.Tensor, scales: torch.Tensor, hessian: torch.Tensor, damp: float = 0.3) -> torch.Tensor:
    """int8 weights that keep the conv's output on the calibration patches close (GPTQ, Frantar et al. 2023):
    each input column is rounded in turn and its rounding error is spread over the columns not yet rounded,
    weighted by the inverse of the patches' second moment. The scales stay one per output channel. ``damp`` (a share
    of the mean diagonal added to it) is larger than GPTQ's 0.01: the recursive conv's errors compound over the
    recursions, and a damped, more local correction lost less at x4 (docs/speed.md)."""
    w = weight.detach().reshape(weight.shape[0], -1).double().clone()
    h = hessian.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    s = scales.double()
    q = torch.zeros_like(w)
    for i in range(w.shape[1]):
        q[:, i] = torch.clamp(torch.round(w[:, i] / s), -127, 127)
        error = (w[:, i] - q[:, i] * s) / inverse[i, i]
        w[:, i + 1 :] -= error[:, None] * inverse[i, i + 1 :][None, :]
    return q.reshape(weight.shape).to(torch.int8)


@torch.no_grad()
def calibrate(
    model: DRCN, inputs: Sequence[torch.Tensor], weights_sha256: str, info: dict[str, str] | None = None
) -> Int8Calibration:
    """Quantize ``model`` for int8 inference from calibration ``inputs``: network inputs (1, 1, h, w) float32, the
    bicubic-upsampled luminance in [0, 1] (crops of training images at the scales the model serves).

    Activation ranges are the maxima seen; the int8 weights are rounded by :func:`_round_gptq` against the patches
    each conv reads. ``weights_sha256`` ties the result to the weights file.
    """
    if not inputs:
        raise Int8Error("calibration needs at least one image")
    model = model.float().eval()
    hessians, ranges = _statistics(model, inputs)
    weights = {}
    for name in QUANTIZED:
        conv = getattr(model, name)
        scales = _channel_scales(conv.weight)
        weights[name] = (_round_gptq(conv.weight, scales, hessians[name]), scales)
    return Int8Calibration(weights_sha256, weights, ranges, dict(info or {}))


def save_calibration(calibration: Int8Calibration, path: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Write a calibration as safetensors (tensors ``NAME.weight`` int8, ``NAME.scale`` fp32; the rest in metadata)."""
    from safetensors.torch import save

    tensors = {}
    for name, (q, scales) in calibration.weights.items():
        tensors[f"{name}.weight"], tensors[f"{name}.scale"] = q.contiguous(), scales.contiguous()
    metadata = {
        "format": "drcn-int8",
        "version": CALIBRATION_FORMAT,
        "weights_sha256": calibration.weights_sha256,
        "ranges": json.dumps(calibration.ranges),
        "info": json.dumps(calibration.info, sort_keys=True),
    }
    blob = save(tensors, metadata=metadata)
    write_atomic(path, blob, overwrite=overwrite)


def load_calibration(path: str | os.PathLike, config: DRCNConfig, weights_sha256: str) -> Int8Calibration:
    """Read and check a calibration: it must be for the weights with ``weights_sha256`` and fit ``config``.
    Raises Int8Error naming what does not fit."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118  # safe_open has no iteration
    except (OSError, SafetensorError) as exc:
        raise Int8Error(f"{path}: not an int8 calibration ({exc})") from None
    if metadata.get("format") != "drcn-int8" or metadata.get("version") != CALIBRATION_FORMAT:
        raise Int8Error(f"{path}: not an int8 calibration of format {CALIBRATION_FORMAT}")
    if metadata.get("weights_sha256") != weights_sha256:
        raise Int8Error(f"{path}: made for other weights (sha256 {metadata.get('weights_sha256', '?')[:12]}...); "
                        "run `drcn quantize` again")
    try:
        ranges = {k: [float(v) for v in vs] for k, vs in json.loads(metadata["ranges"]).items()}
        info = {str(k): str(v) for k, v in json.loads(metadata.get("info", "{}")).items()}
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise Int8Error(f"{path}: damaged calibration metadata ({exc})") from None
    f_, d, k = config.features, config.recursions, config.kernel_size
    shapes = {"recursive": (f_, f_, k, k), "recon1": (f_, f_, k, k), "recon2": (1, f_, k, k)}
    weights = {}
    for name, shape in shapes.items():
        q, scales = tensors.get(f"{name}.weight"), tensors.get(f"{name}.scale")
        fits = q is not None and scales is not None and tuple(q.shape) == shape and q.dtype == torch.int8
        if not fits or q is None or scales is None or tuple(scales.shape) != (shape[0],):
            raise Int8Error(f"{path}: {name} does not fit a network of F={f_}")
        if not torch.isfinite(scales).all() or (scales <= 0).any():
            raise Int8Error(f"{path}: {name}.scale holds values that are not positive and finite")
        weights[name] = (q, scales.float())
    counts = {"embed2": 1, "recursive": d, "recon1": d, "recon2": d}
    for name, count in counts.items():
        values = ranges.get(name, [])
        if len(values) != count or not all(math.isfinite(v) and v >= 0 for v in values):
            raise Int8Error(f"{path}: the ranges of {name} do not fit a network of D={d}")
    return Int8Calibration(weights_sha256, weights, ranges, info)


# -- the graph -------------------------------------------------------------------------------------------------


def signed_weights_exact() -> bool:
    """True where ONNX Runtime's uint8 x int8 products are exact: CPUs with VNNI (AVX512-VNNI, AVX-VNNI, AMX) and
    non-x86 CPUs. x86 CPUs without VNNI add pairs of those products in 16 bits (VPMADDUBSW), which saturates for
    large activations and weights; there the weights are given as uint8 with zero point 128 (the same values),
    which ONNX Runtime multiplies in 16 bits without that loss."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    _name, flags = cpu_info()
    if flags is None:
        return False  # unknown (not Linux), so the safe form
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def _graph(model: DRCN, calibration: Int8Calibration, recursions: int, signed_weights: bool = True) -> bytes:
    """The ONNX model (serialized) of ``model`` with its first ``recursions`` recursions, on int8 weights:
    input ``x`` (N, 1, H, W) float32, output ``y`` of the same shape (DRCN.forward's, unclamped). Without
    ``signed_weights`` the weights are stored as uint8 with zero point 128: the same values, another kernel (see
    :func:`signed_weights_exact`)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    initializers: list = []
    nodes: list = []
    pads = [model.config.kernel_size // 2] * 4

    def const(name: str, value) -> str:
        initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def fp32_conv(conv, source: str, out: str) -> None:
        const(out + ".w", conv.weight.detach().float().numpy())
        const(out + ".b", conv.bias.detach().float().numpy())
        nodes.append(helper.make_node("Conv", [source, out + ".w", out + ".b"], [out + ".c"], pads=pads))
        nodes.append(helper.make_node("Relu", [out + ".c"], [out]))

    ranges = calibration.ranges
    # uint8 scales of the post-ReLU maps (zero point 0) and of the signed residuals (zero point 128)
    scale = {"embed2": ranges["embed2"][0] / 255.0}
    for d in range(recursions):
        scale[f"h{d}"] = ranges["recursive"][d] / 255.0
        scale[f"r{d}"] = ranges["recon1"][d] / 255.0
        scale[f"o{d}"] = ranges["recon2"][d] / 127.0
    scale = {k: max(v, 1e-12) for k, v in scale.items()}
    for key, value in scale.items():
        const("s." + key, np.float32(value))
    const("z0", np.uint8(0))
    const("z128", np.uint8(128))
    for name in QUANTIZED:
        q, scales = calibration.weights[name]
        const(name + ".s", scales.numpy().astype(np.float32))
        if signed_weights:
            const(name + ".q", q.numpy())
            const(name + ".z", np.zeros(q.shape[0], np.int8))
        else:
            const(name + ".q", (q.numpy().astype(np.int16) + 128).astype(np.uint8))
            const(name + ".z", np.full(q.shape[0], 128, np.uint8))

    def int8_conv(name: str, source: str, source_scale: str, out: str, out_scale: str, zero: str) -> None:
        conv, (_q, scales) = getattr(model, name), calibration.weights[name]
        bias = np.round(conv.bias.detach().double().numpy() / (scale[source_scale] * scales.double().numpy()))
        const(out + ".b", np.clip(bias, -(2**31), 2**31 - 1).astype(np.int32))
        inputs = [source, "s." + source_scale, "z0", name + ".q", name + ".s", name + ".z", "s." + out_scale, zero,
                  out + ".b"]
        nodes.append(helper.make_node("QLinearConv", inputs, [out], pads=pads))

    fp32_conv(model.embed1, "x", "e1")
    fp32_conv(model.embed2, "e1", "e2")
    nodes.append(helper.make_node("QuantizeLinear", ["e2", "s.embed2", "z0"], ["h"]))
    ensemble = model.ensemble_weights(recursions).detach().float().numpy()
    previous, previous_scale, total = "h", "embed2", "x"
    for d in range(recursions):
        int8_conv("recursive", previous, previous_scale, f"h{d}", f"h{d}", "z0")
        int8_conv("recon1", f"h{d}", f"h{d}", f"r{d}", f"r{d}", "z0")
        int8_conv("recon2", f"r{d}", f"r{d}", f"o{d}", f"o{d}", "z128")
        nodes.append(helper.make_node("DequantizeLinear", [f"o{d}", f"s.o{d}", "z128"], [f"y{d}"]))
        const(f"w{d}", np.float32(ensemble[d]))
        nodes.append(helper.make_node("Mul", [f"y{d}", f"w{d}"], [f"wy{d}"]))
        nodes.append(helper.make_node("Add", [total, f"wy{d}"], [f"sum{d}"]))
        previous, previous_scale, total = f"h{d}", f"h{d}", f"sum{d}"
    nodes.append(helper.make_node("Identity", [total], ["y"]))
    shape: list[str | int | None] = ["N", 1, "H", "W"]
    graph = helper.make_graph(
        nodes, "drcn_int8", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], initializers,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    proto.ir_version = 9
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


class Int8Network:
    """The int8 network, called as :meth:`DRCN.forward` is: ``(x, recursions, context) -> y``; x (N, 1, H, W)
    float32 on the CPU, y float32 (N, 1, H - top - bottom, W), unclamped. One ONNX Runtime session per recursion
    depth, made on first use; ``threads`` (0: torch's current count) is the session's intra-op thread count."""

    def __init__(
        self, model: DRCN, calibration: Int8Calibration, threads: int = 0, signed_weights: bool | None = None
    ) -> None:
        if (problem := runtime_problem()) is not None:
            raise Int8Error(problem)
        self.model = model.float().eval()
        self.config = model.config
        self.calibration = calibration
        self.threads = threads
        self.signed_weights = signed_weights_exact() if signed_weights is None else signed_weights
        self._sessions: dict[int, object] = {}

    def _session(self, recursions: int):
        if recursions not in self._sessions:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads or torch.get_num_threads()
            options.inter_op_num_threads = 1
            options.log_severity_level = 3  # errors only: ORT's notes about unused initializers are not the user's
            self._sessions[recursions] = ort.InferenceSession(
                _graph(self.model, self.calibration, recursions, self.signed_weights), options,
                providers=["CPUExecutionProvider"],
            )
        return self._sessions[recursions]

    def __call__(
        self, x: torch.Tensor, recursions: int | None = None, context: tuple[int, int] = (0, 0)
    ) -> torch.Tensor:
        k = self.model._check_recursions(recursions)  # the float network's own check and message
        top, bottom = context
        height = x.shape[2]
        if top < 0 or bottom < 0 or top + bottom >= height:
            raise ValueError(f"context rows {context} must be >= 0 and leave some of the {height} rows")
        source = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        (y,) = self._session(k).run(["y"], {"x": source})  # type: ignore[attr-defined]
        return torch.from_numpy(y[:, :, top : height - bottom])
