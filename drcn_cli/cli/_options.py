"""Option types shared by the commands, so each option reads and behaves the same everywhere."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

MODEL_PANEL = "Model and device"


class Method(str, Enum):
    drcn = "drcn"
    bicubic = "bicubic"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


ModelName = Annotated[
    str | None,
    typer.Option("-m", "-n", "--model", help="Model name (bundled or downloadable; see drcn download-weights); -n as "
                 "in Real-ESRGAN's tools.",
                 rich_help_panel=MODEL_PANEL),
]
WeightsPath = Annotated[
    Path | None,
    typer.Option("--weights", dir_okay=False, help="A .safetensors weights file (instead of --model).",
                 rich_help_panel=MODEL_PANEL),
]
Device = Annotated[
    str,
    typer.Option("--device", help="auto (CUDA, MPS, else CPU), cpu, cuda, cuda:N, mps.", rich_help_panel=MODEL_PANEL),
]
PrecisionChoice = Annotated[
    Precision,
    typer.Option(
        "--precision",
        help="auto = bf16 on a CPU with bf16 units (AMX, AVX512-BF16) and on CUDA (else fp16), fp32 on other CPUs.",
        rich_help_panel=MODEL_PANEL,
    ),
]
Threads = Annotated[
    int | None,
    typer.Option("--threads", min=0, help="CPU threads for torch (default: torch's choice).",
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
    from ..tiling import check_tile

    if (problem := check_tile(tile)) is not None:
        return problem
    if model is not None and weights is not None:
        return "give either --model or --weights, not both"
    if method is Method.bicubic and (
        model is not None or weights is not None or recursions is not None or self_ensemble
    ):
        return "--method bicubic uses no network: drop --model / --weights / --recursions / --self-ensemble"
    if model is not None:
        from ..registry import KNOWN_WEIGHTS

        if model not in KNOWN_WEIGHTS:
            return f"unknown model {model!r}; known models: {', '.join(sorted(KNOWN_WEIGHTS))}"
    return None
