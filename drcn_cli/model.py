"""The Deeply-Recursive Convolutional Network (Kim, Lee & Lee, CVPR 2016), the paper's advanced model.

    x (N, 1, H, W), the bicubic-upsampled luminance in [0, 1]
    H0  = relu(conv(relu(conv(x))))                 embedding net, 1 -> F -> F
    H_d = relu(W * H_{d-1} + b), d = 1..D           inference net: ONE conv, shared by every recursion
    y_d = x + recon(H_d)                            reconstruction net (conv F->F + relu, conv F->1), shared,
                                                    with the skip connection from the input
    y   = sum_d w_d * y_d                           learned ensemble of the D predictions

The ensemble weights are stored as unconstrained logits and normalised with a softmax, so they are
positive and sum to one whatever the optimiser does; using only the first k recursions renormalises the
softmax over the first k logits. This file imports torch only.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class DRCNConfig:
    """Hyper-parameters: ``features`` filters per conv (F) and ``recursions`` of the inference net (D)."""

    features: int = 256
    recursions: int = 16
    kernel_size: int = 3

    @property
    def receptive_radius(self) -> int:
        """Pixels of context on each side that one output pixel sees: 2 + D + 2 convs of 3x3 -> 20 for D=16."""
        return (self.recursions + 4) * (self.kernel_size // 2)


class DRCN(nn.Module):
    def __init__(self, config: DRCNConfig = DRCNConfig()) -> None:
        super().__init__()
        self.config = config
        f, k = config.features, config.kernel_size
        pad = k // 2
        self.embed1 = nn.Conv2d(1, f, k, padding=pad)
        self.embed2 = nn.Conv2d(f, f, k, padding=pad)
        self.recursive = nn.Conv2d(f, f, k, padding=pad)
        self.recon1 = nn.Conv2d(f, f, k, padding=pad)
        self.recon2 = nn.Conv2d(f, 1, k, padding=pad)
        self.ensemble_logits = nn.Parameter(torch.zeros(config.recursions))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The paper's initialisation: He for the non-recursive convs, identity for the recursive one."""
        for conv in (self.embed1, self.embed2, self.recon1, self.recon2):
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            assert conv.bias is not None  # built with bias=True (the default)
            nn.init.zeros_(conv.bias)
        # Zero except the centre tap of each channel's self-connection: H_d = relu(H_{d-1}) = H_{d-1} at init,
        # so the signal neither explodes nor vanishes through the D recursions.
        w = self.recursive.weight
        w.zero_()
        centre = self.config.kernel_size // 2
        idx = torch.arange(self.config.features)
        w[idx, idx, centre, centre] = 1.0
        assert self.recursive.bias is not None  # built with bias=True (the default)
        nn.init.zeros_(self.recursive.bias)
        self.ensemble_logits.zero_()
        # The output layer starts small, so every y_d starts near the skip connection (the bicubic input).
        self.recon2.weight.mul_(1.0 / math.sqrt(self.config.features))

    def ensemble_weights(self, recursions: int | None = None) -> torch.Tensor:
        """Softmax-normalised weights w_1..w_k of the first k (default D) predictions; they sum to 1."""
        k = self._check_recursions(recursions)
        return torch.softmax(self.ensemble_logits[:k].float(), dim=0)

    def _check_recursions(self, recursions: int | None) -> int:
        k = self.config.recursions if recursions is None else int(recursions)
        if not 1 <= k <= self.config.recursions:
            raise ValueError(f"recursions must be in 1..{self.config.recursions}, got {k}")
        return k

    def _reconstruct(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return x + self.recon2(F.relu(self.recon1(h)))

    def forward_all(self, x: torch.Tensor, recursions: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Training forward. x: (N, 1, H, W). Returns (predictions (k, N, 1, H, W), final (N, 1, H, W))."""
        k = self._check_recursions(recursions)
        h = F.relu(self.embed2(F.relu(self.embed1(x))))
        predictions = []
        for _ in range(k):
            h = F.relu(self.recursive(h))
            predictions.append(self._reconstruct(x, h))
        stacked = torch.stack(predictions)
        w = self.ensemble_weights(k).to(stacked.dtype).view(k, 1, 1, 1, 1)
        return stacked, (w * stacked).sum(dim=0)

    def forward(
        self, x: torch.Tensor, recursions: int | None = None, context: tuple[int, int] = (0, 0)
    ) -> torch.Tensor:
        """Inference. x: (N, 1, H, W) float, the bicubic-upsampled Y in [0, 1]; returns (N, 1, H', W) in x's dtype,
        unclamped.

        ``context`` = (top, bottom): rows of x, above and below, that are there only as context for the rows
        between them (x is a window of a larger image); the result holds the H' = H - top - bottom rows between.
        Each side of x must be the image's edge or hold at least the receptive radius of context, as the tiler
        guarantees. A side with that much context gives up its rows as the layers consume them (a map of k rows
        less is k rows less work; channels_last maps are cut without a copy); a side with less is the image's
        edge and keeps them to the end.

        Each convolution runs in the dtype of its weights (cast them to bf16 for a bf16 inference without
        autocast; embed1 may stay fp32, so the input keeps its precision); the skip connection and the weighted
        sum stay in x's dtype. Since the ensemble weights sum
        to one, sum_d w_d (x + r_d) = x + sum_d w_d r_d: memory holds one residual, not k predictions.
        """
        k = self._check_recursions(recursions)
        w = self.ensemble_weights(k)
        height, (top, bottom) = x.shape[2], context
        if top < 0 or bottom < 0 or top + bottom >= height:
            raise ValueError(f"context rows {context} must be >= 0 and leave some of the {height} rows")
        half = self.config.kernel_size // 2
        rows = _RowCut(height, top, bottom, k + 4, half)
        h = rows.cut(_conv_relu(self.embed1, x.to(self.embed1.weight.dtype)).to(self.embed2.weight.dtype), 0, 1)
        h = rows.cut(_conv_relu(self.embed2, h), 1, 2)
        if _taps_apply(self.recon2, h):
            return rows.cut(x, 0, rows.depth) + self._residuals_by_taps(h, w, rows).to(x.dtype)
        residual = None
        for d in range(k):
            h = rows.cut(_conv_relu(self.recursive, h), 2 + d, 3 + d)
            r = self._reconstruct_residual(h, 3 + d, rows)
            r = w[d].to(x.dtype) * rows.cut(self.recon2(r), rows.depth - 1, rows.depth).to(x.dtype)
            residual = r if residual is None else residual.add_(r)
        assert residual is not None  # k >= 1
        return rows.cut(x, 0, rows.depth) + residual

    def _reconstruct_residual(self, h: torch.Tensor, depth: int, rows: _RowCut) -> torch.Tensor:
        """relu(recon1(H_d)) on the rows recon2 needs, for H_d at ``depth``; recon2 is the caller's."""
        h = rows.cut(h, depth, rows.depth - 2)
        return rows.cut(_conv_relu(self.recon1, h), rows.depth - 2, rows.depth - 1)

    def _residuals_by_taps(self, h: torch.Tensor, w: torch.Tensor, rows: _RowCut) -> torch.Tensor:
        """sum_d w_d recon2(relu(recon1(H_d))) for the embedding h, each H_d computed from the last; (N, 1, H, W).

        recon2 (F -> 1 channel, k x k) is linear and shared, and the w_d sum to one, so the sum is recon2's bias
        plus, for each of its k*k taps (i, j), the map sum_d w_d W_ij . r_d shifted by (i, j). Those k*k maps are
        the channels of ``sums``: a 1x1 conv adds each recursion's share into them in place, and they are shifted
        and added once at the end. Same result as the loop in ``forward`` up to float rounding; faster in fp32 on
        the CPU, where oneDNN's F -> 1 3x3 conv runs at a fraction of its usual rate (docs/speed.md).
        """
        conv = self.recon2
        size = conv.kernel_size[0]
        # (k*k, F, 1, 1): output channel size*i + j holds the weights of tap (i, j)
        taps = conv.weight[0].permute(1, 2, 0).reshape(size * size, -1, 1, 1)
        layout = torch.channels_last if h.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        sums = None
        for d in range(len(w)):
            h = rows.cut(_conv_relu(self.recursive, h), 2 + d, 3 + d)
            r = self._reconstruct_residual(h, 3 + d, rows)
            if sums is None:
                sums = r.new_zeros((r.shape[0], size * size, *r.shape[2:])).contiguous(memory_format=layout)
            torch.ops.mkldnn._convolution_pointwise_.binary(
                sums, r, (taps * w[d]).contiguous(), None, [0, 0], [1, 1], [1, 1], 1, "add", None, None, [None], None,
            )
        assert conv.bias is not None and sums is not None  # built with bias=True; len(w) >= 1
        return rows.cut(shift_and_add_taps(sums, size), rows.depth - 1, rows.depth) + conv.bias.view(1, 1, 1, 1)


@dataclass(frozen=True)
class _RowCut:
    """The rows of a window that each layer's map still needs, for :meth:`DRCN.forward`'s ``context``.

    Depth l counts convs along the longest path (embed1 = 1, the output conv = ``depth``). A conv's output is
    valid for ``half`` fewer rows than its input at a side where the window was cut, and the output rows need
    ``half * (depth - l)`` rows of context from the map at depth l: the rest are cut, a view (the rows of a
    channels_last map are contiguous). A side with less context than the radius is the image's edge: its rows
    are valid at every depth and are kept until the output.
    """

    height: int
    top: int
    bottom: int
    depth: int
    half: int

    @property
    def radius(self) -> int:
        return self.depth * self.half

    def span(self, depth: int) -> tuple[int, int]:
        """The rows [start, end) of the input window that the map at ``depth`` keeps (depth 0: the input)."""
        if depth <= 0:
            return 0, self.height
        if depth >= self.depth:
            return self.top, self.height - self.bottom
        need = self.half * (self.depth - depth)
        start = self.top - need if self.top >= self.radius else 0
        end = self.height - self.bottom + need if self.bottom >= self.radius else self.height
        return start, end

    def cut(self, h: torch.Tensor, computed: int, depth: int) -> torch.Tensor:
        """h holds the rows of the span at depth ``computed``; its rows of the span at ``depth``."""
        (have_start, have_end), (start, end) = self.span(computed), self.span(depth)
        return h[:, :, start - have_start : h.shape[2] - (have_end - end)]


def shift_and_add_taps(taps: torch.Tensor, size: int) -> torch.Tensor:
    """(N, size*size, H, W) -> (N, 1, H, W): out[y, x] = sum over (i, j) of taps[size*i + j, y + i - p, x + j - p],
    p = size // 2, zero outside the map; what a zero-padded size x size conv computes from its taps."""
    pad = size // 2
    n, _, height, width = taps.shape
    padded = F.pad(taps.contiguous(), (pad, pad, pad, pad))
    out = taps.new_zeros((n, 1, height, width))
    for i in range(size):
        for j in range(size):
            out += padded[:, size * i + j : size * i + j + 1, i : i + height, j : j + width]
    return out


def _taps_apply(conv: nn.Conv2d, h: torch.Tensor) -> bool:
    # fp32 only: in bf16 each tap's map would be rounded before the taps are added, a larger error than one
    # rounding of the sum (docs/speed.md), and bf16's own F -> 1 conv is not as slow.
    return (
        _fused_conv_relu_applies(conv, h)
        and h.dtype == torch.float32
        and hasattr(torch.ops.mkldnn, "_convolution_pointwise_")
        and conv.kernel_size[0] == conv.kernel_size[1]
    )


def _fused_conv_relu_applies(conv: nn.Conv2d, h: torch.Tensor) -> bool:
    # oneDNN's fused conv+ReLU: one pass over the output map instead of two. The maps of this network are far
    # larger than the caches, so a separate ReLU is a costly extra pass through memory (docs/speed.md).
    # Inference only (no autograd formula), same dtype as the weights (autocast does not cover it), CPU.
    return (
        h.device.type == "cpu"
        and not torch.is_grad_enabled()
        and h.dtype == conv.weight.dtype
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
        and (h.dtype != torch.bfloat16 or _onednn_runs_bf16())
    )


@functools.cache
def _onednn_runs_bf16() -> bool:
    # oneDNN's bf16 convolution needs AVX512 (BW, VL, DQ) or AVX-NE-CONVERT; without them (an AVX2-only CPU, or
    # ONEDNN_MAX_CPU_ISA=AVX2) the direct op raises, while conv2d falls back to torch's own bf16 kernels.
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


def _conv_relu(conv: nn.Conv2d, h: torch.Tensor) -> torch.Tensor:
    if _fused_conv_relu_applies(conv, h):
        return torch.ops.mkldnn._convolution_pointwise(
            h, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups, "relu", [None], ""
        )
    return F.relu(conv(h))


WIDEN_METHODS = ("split", "signed", "fresh")


@torch.no_grad()
def widen(model: DRCN, features: int, method: str = "split", noise: float = 0.01, new_scale: float = 0.01) -> DRCN:
    """A new DRCN with ``features`` filters that computes what ``model`` computes (a head start for the full model
    from drcn-lite). Raises ValueError if ``features`` is smaller than the model's or ``method`` is unknown.

    ``split`` (Net2WiderNet): new channel ``c`` copies old channel ``c % F`` (its incoming weights and bias), and
    every conv that reads the channels divides an old channel's outgoing weights among its copies, so the sum is
    unchanged. Every channel is alive from the first step. Copies would stay copies under Adam (their gradients
    differ only by a positive factor, which Adam's normalisation removes), so each copy's incoming weights get
    Gaussian noise of ``noise`` times the layer's weight std: the function changes by about that much.
    At a low learning rate that noise was all that told the copies apart (docs/training.md).

    ``signed``: as ``split``, but an old channel's copies share its outgoing weights in parts of both signs that
    still sum to one (of n copies, the first ceil(n/2) take a positive part, the others -1/n each: 0.75, 0.75,
    -0.25, -0.25 for four), so the same function. A copy read with a negative part gets the opposite gradient, so
    Adam moves it the opposite way from the first step instead of waiting for the noise to grow.

    ``fresh``: the old channels keep their weights; each new channel gets fresh incoming weights (as
    :meth:`DRCN.reset_parameters`, scaled by ``new_scale``, the recursive conv's identity unscaled) and zero
    outgoing weights into the old channels and the output: exactly the same function. The new channels then stay
    near zero for a long time (docs/training.md): a saddle where each side's gradient is proportional to the
    other's small weights.
    """
    old = model.config
    if features < old.features:
        raise ValueError(f"cannot widen F={old.features} to fewer filters ({features})")
    if method not in WIDEN_METHODS:
        raise ValueError(f"unknown widening method {method!r}: use one of {', '.join(WIDEN_METHODS)}")
    wide = DRCN(DRCNConfig(features, old.recursions, old.kernel_size))  # fresh: the new channels' incoming weights
    f = old.features
    if method in ("split", "signed"):
        device = model.embed1.weight.device
        channel = torch.arange(features, device=device)
        source = channel % f  # the old channel each channel copies
        copies = torch.bincount(source, minlength=f).to(torch.float32)[source]
        new = channel >= f
        share = 1.0 / copies  # of its old channel's outgoing weights
        if method == "signed":
            up, down = torch.ceil(copies / 2), torch.floor(copies / 2)  # copies with a positive, a negative part
            share = torch.where(channel // f < up, (1 + 2 * down / up) / copies, -share)
        for name in ("embed1", "embed2", "recursive", "recon1", "recon2"):
            small, big = getattr(model, name), getattr(wide, name)
            weight, bias = small.weight, small.bias
            if name != "embed1":  # reads the channels: share each one's outgoing weights among its copies
                weight = weight[:, source] * share.view(1, -1, 1, 1)
            if name != "recon2":  # writes the channels: each copy computes what its old channel did
                weight, bias = weight[source], bias[source]
                weight[new] += noise * weight.std() * torch.randn_like(weight[new])
            big.weight.copy_(weight)
            big.bias.copy_(bias)
    else:
        for name in ("embed1", "embed2", "recursive", "recon1", "recon2"):
            small, big = getattr(model, name), getattr(wide, name)
            rows = min(f, big.out_channels)  # recon2 has one output
            big.weight[:rows, : small.in_channels] = small.weight
            big.weight[:rows, small.in_channels :] = 0.0  # new channels do not reach the old ones
            big.bias[:rows] = small.bias
            if name != "recursive":  # the recursive conv's identity only carries what embed2 gives a new channel
                big.weight[rows:] *= new_scale
    wide.ensemble_logits.copy_(model.ensemble_logits)
    return wide.to(next(model.parameters()).device)


def context_row_cost(config: DRCNConfig, recursions: int | None = None) -> float:
    """What :meth:`DRCN.forward` spends on a window's context rows, against as many core rows, where both sides
    are cut: each conv runs on the rows the output still needs, so the share falls with depth (1/3 for
    F=64, D=16: the recursions run on ever fewer context rows and recon1 on 4)."""
    k = config.recursions if recursions is None else recursions
    half, f, taps = config.kernel_size // 2, config.features, config.kernel_size**2
    core, radius = 1, (k + 4) * half
    rows = _RowCut(core + 2 * radius, radius, radius, k + 4, half)
    # (FLOPs per pixel, depth of the map each conv reads) in forward's order, per forward; the context rows of
    # that read are those of the span _RowCut keeps there
    depth = rows.depth
    convs = [(taps * f, 0), (taps * f * f, 1)] + [(taps * f * f, 2 + d) for d in range(k)]
    convs += [(taps * f * f, depth - 2), (taps * f, depth - 1)] * k
    context = [(flops, rows.span(read)[1] - rows.span(read)[0] - core) for flops, read in convs]
    total = sum(flops for flops, _ in context)
    return sum(flops * extra for flops, extra in context) / (total * 2 * radius)


def conv_flops_per_pixel(config: DRCNConfig, recursions: int | None = None) -> int:
    """Multiply-adds x 2 of every conv, per output pixel, for an inference with k recursions."""
    k = config.recursions if recursions is None else recursions
    f, taps = config.features, config.kernel_size**2
    embed = taps * (1 * f + f * f)
    per_recursion = taps * (f * f + f * f + f * 1)  # recursive conv + the reconstruction net
    return 2 * (embed + k * per_recursion)
