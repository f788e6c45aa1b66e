"""What `drcn upscale`'s image and video runs share: the checked options, the upscalers opened once and announced
in one line, the one-line reason for a failed input, and the process settings a run holds (SIGTERM as Ctrl-C,
Pillow's global pixel limit lifted for --max-pixels)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DrcnError
from ._errors import fail, one_line, usage
from ._options import Method


@dataclass(frozen=True)
class RunOptions:
    """The options that the per-image (or per-video) work needs, once checked."""

    scale: float | None
    width: int | None
    height: int | None
    model_name: str | None
    weights: Path | None
    method: Method
    recursions: int | None
    self_ensemble: bool
    tile: int
    device: str
    precision: str
    threads: int | None
    io_threads: int
    max_pixels: int | None  # pixels, None = no limit
    max_output_pixels: int | None
    quality: int | None
    overwrite: bool
    rank: int
    world: int
    skip_existing: bool = False
    first_frame: bool = False  # --first-frame: of an animation or a multi-page TIFF, the first frame alone


def reason(exc: BaseException) -> str:
    """The one-line reason for a failed input: drcn's own errors as they are, an OS error by its text, anything
    else with its type."""
    from ..inference.tiling import is_out_of_memory

    if isinstance(exc, MemoryError):
        return "not enough memory to hold this image's pixels (lower --max-pixels, or free memory)"
    if is_out_of_memory(exc):
        return "out of memory even with the smallest tile: try --device cpu, or free memory on the device"
    if isinstance(exc, DrcnError):
        return one_line(str(exc))
    if isinstance(exc, OSError):
        return one_line(exc.strerror or str(exc))
    return one_line(f"{type(exc).__name__}: {exc}")


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM (kill) into KeyboardInterrupt, so a killed run cleans up as Ctrl-C does."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def no_pillow_pixel_limit() -> Iterator[None]:
    """--max-pixels is checked from each file's header in read_image; Pillow's own fixed limit would only
    get in the way of a user who raised ours."""
    from PIL import Image

    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _device_for_rank(device: str, world: int) -> str:
    """Under torchrun with several ranks, 'auto' means this rank's own GPU (LOCAL_RANK)."""
    import torch

    if device == "auto" and world > 1 and torch.cuda.is_available():
        from ..processes import processes

        return f"cuda:{processes().local_rank % torch.cuda.device_count()}"
    return device


def _describe_device(dev: Any) -> str:
    import torch

    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    if dev.type == "cpu":
        threads = torch.get_num_threads()
        return f"cpu ({threads} thread{'s' if threads > 1 else ''})"
    return str(dev)


def _model_text(upscaler: Any) -> str:
    network = upscaler.network
    assert network is not None and network.source is not None  # opened from a file or a name
    return f"{network.source.name} (F={network.config.features}, D={network.config.recursions})"


def prepare(opts: RunOptions, info: Any, count: str) -> Any:
    """The run's upscalers (pipeline.UpscalerChoice: each model loaded once), announced through ``info`` in one
    line with ``count`` ("3 image(s)"). Exits 1 when no weights can be had, 2 on a bad device or depth."""
    from ..inference.device import precision_reason, resolve_device, resolve_precision, set_threads
    from ..inference.pipeline import open_upscalers
    from ..weights.hub import HubError
    from ..weights.resolve import ChecksumError, WeightsNotFoundError

    set_threads(opts.threads)  # a device or precision that cannot work is a ConfigError: exit 2, reported above
    dev = resolve_device(_device_for_rank(opts.device, opts.world))
    resolve_precision(opts.precision, dev)  # refused before any weights are looked for
    try:
        choice = open_upscalers(
            opts.weights or opts.model_name, dev, opts.precision, method=opts.method.value, tile=opts.tile,
            recursions=opts.recursions, self_ensemble=opts.self_ensemble, on_download=info,
        )  # fmt: skip
    except (WeightsNotFoundError, ChecksumError, HubError) as exc:  # no file to load: say there is a way out
        raise fail(f"{exc}{'' if opts.weights else ' (--method bicubic needs no weights)'}") from None
    if choice.default.network is None:
        model_text = "bicubic (no network)"
    else:
        depth = min(u.network.config.recursions for u in choice.all() if u.network is not None)
        if opts.recursions is not None and opts.recursions > depth:
            raise usage(f"--recursions {opts.recursions}: this model has {depth}", "upscale")
        model_text = _model_text(choice.default)
        if choice.photo is not None:
            model_text += f", {_model_text(choice.photo)} for JPEG inputs and video"
            if choice.photo.settings.precision != choice.default.settings.precision:
                model_text += f" in {choice.photo.settings.precision}"
        if opts.self_ensemble:
            model_text += " with self-ensemble x8"
    tile_text = f"tile {opts.tile}" if opts.tile else "tile auto"
    rank_text = f"rank {opts.rank}/{opts.world}: " if opts.world > 1 else ""
    precision = choice.default.settings.precision  # auto may have chosen int8 by measurement (loader)
    network = choice.default.network
    why = network.reason if network is not None and network.reason else precision_reason(opts.precision, precision, dev)
    precision_text = f"{precision} ({why})" if why else precision
    info(f"{rank_text}{count} on {_describe_device(dev)}, {precision_text}, {model_text}, {tile_text}")
    return choice
