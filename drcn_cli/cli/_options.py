"""Option types shared by the commands, so each option reads and behaves the same everywhere."""

from __future__ import annotations

import functools
import math
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

MODEL_PANEL = "Model and device"

EMPTY_NAME = "must not be empty (an unset shell variable?)"


# -- value checks shared by the commands' options: each raises typer.BadParameter, which Click reports as one line
# naming the option ("error: Invalid value for '--max-pixels': nan is not a finite number").


def finite(ctx: Any, param: Any, value: Any) -> Any:
    """Option callback: refuse NaN and infinities (Click's float ranges let them through), for a float or a list."""
    for item in value if isinstance(value, (list, tuple)) else (value,):
        if isinstance(item, float) and not math.isfinite(item):
            raise typer.BadParameter(f"{item} is not a finite number")
    return value


def megapixels(ctx: Any, param: Any, value: Any) -> Any:
    """Option callback of a pixel limit in megapixels: finite, and 0 (no limit) or at least one pixel (a smaller
    positive value would round to 0, which means no limit)."""
    finite(ctx, param, value)
    if value is not None and 0 < value < 1e-6:
        raise typer.BadParameter(f"{value:g} Mpx is less than one pixel: give 0 (no limit) or at least 1e-6")
    return value


def not_empty(ctx: Any, param: Any, value: Any) -> Any:
    """Option callback: refuse an empty string (or one in a list), which would silently mean the current folder
    or nothing at all."""
    for item in value if isinstance(value, (list, tuple)) else (value,):
        if isinstance(item, str) and not item:
            raise typer.BadParameter(EMPTY_NAME)
    return value


def threads_in_range(ctx: Any, param: Any, value: Any) -> Any:
    """Option callback of --threads: drcn_cli.inference.device's one bound (at most 4 per CPU)."""
    if value is not None:
        from ..inference.device import threads_problem

        if (problem := threads_problem(value)) is not None:
            raise typer.BadParameter(problem)
    return value


@functools.cache
def path_type(file_okay: bool = True, dir_okay: bool = True) -> Any:
    """The click type of a path option, as Typer builds it (file and folder checks, shell completion), that also
    refuses an empty name: Typer would turn '' into Path('.'), the current folder, before any callback sees it."""
    from typer.main import get_click_type
    from typer.models import ParameterInfo

    base = type(get_click_type(annotation=Path, parameter_info=ParameterInfo()))

    class NonEmptyPath(base):  # type: ignore[valid-type, misc]  # a class known at run time only
        def convert(self, value: Any, param: Any, ctx: Any) -> Any:
            if isinstance(value, str) and not value:
                self.fail(EMPTY_NAME, param, ctx)
            return super().convert(value, param, ctx)

    return NonEmptyPath(file_okay=file_okay, dir_okay=dir_okay)


class Method(str, Enum):
    drcn = "drcn"
    bicubic = "bicubic"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"
    int8 = "int8"


ModelName = Annotated[
    str | None,
    typer.Option("-m", "-n", "--model", metavar="NAME", help="Model name (bundled or downloadable; see drcn "
                 "download-weights); -n as in Real-ESRGAN's tools.",
                 rich_help_panel=MODEL_PANEL),
]
WeightsPath = Annotated[
    Path | None,
    typer.Option("--weights", metavar="FILE", click_type=path_type(dir_okay=False),
                 help="A .safetensors weights file (instead of --model).", rich_help_panel=MODEL_PANEL),
]
Device = Annotated[
    str,
    typer.Option("--device", metavar="DEVICE", help="auto (CUDA, MPS, else CPU), cpu, cuda, cuda:N, mps.",
                 rich_help_panel=MODEL_PANEL),
]
PrecisionChoice = Annotated[
    Precision,
    typer.Option(
        "--precision",
        help="auto = bf16 on CUDA (else fp16); on the CPU bf16 where it has bf16 units (AMX, AVX512-BF16), else "
        "fp32, or int8 where the model has an int8 calibration and int8 measured faster on this CPU. int8: CPU "
        "only, needs drcn\\[int8].",
        rich_help_panel=MODEL_PANEL,
    ),
]
Threads = Annotated[
    int | None,
    typer.Option("--threads", min=0, metavar="N", callback=threads_in_range,
                 help="CPU threads for torch, at most 4 per CPU (default: torch's choice).",
                 rich_help_panel=MODEL_PANEL),
]
SelfEnsemble = Annotated[
    bool,
    typer.Option("-x", "--self-ensemble", help="Average the network over the 8 flips and rotations of the input: "
                 "8x slower, a little sharper (EDSR's self-ensemble).", rich_help_panel=MODEL_PANEL),
]

def model_problem(
    model: str | None,
    weights: Path | None,
    *,
    method: Method = Method.drcn,
    recursions: object = None,
    self_ensemble: bool = False,
    tile: int = 0,
) -> str | None:
    """The one check of the model options every command shares (--model, --weights, --method, --recursions,
    --self-ensemble, --tile): what cannot work, as a usage error's message, else None."""
    from ..inference.tiling import check_tile

    if (problem := check_tile(tile)) is not None:
        return problem
    if model is not None and weights is not None:
        return "give either --model or --weights, not both"
    if method is Method.bicubic and (
        model is not None or weights is not None or recursions is not None or self_ensemble
    ):
        return "--method bicubic uses no network: drop --model / --weights / --recursions / --self-ensemble"
    if model is not None:
        from ..weights.table import KNOWN_WEIGHTS

        if model not in KNOWN_WEIGHTS:
            return f"unknown model {model!r}; known models: {', '.join(sorted(KNOWN_WEIGHTS))}"
    return None
