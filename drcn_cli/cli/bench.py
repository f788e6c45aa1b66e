"""`drcn bench`: the paper's evaluation protocol on Set5, Set14, B100, Urban100 (or any folder of HR images),
with a table of our numbers beside the published ones.

Thin: check the options, resolve datasets (drcn_cli.bench.datasets) and weights (drcn_cli.weights.resolve), run
drcn_cli.bench.runner.run_bench with a progress bar on stderr, print the table on stdout (on stderr when stdout
takes --json or --csv -), then the --json document, the --csv and --plot files.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from ._errors import fail, usage
from ._options import MODEL_PANEL as _MODEL
from ._options import (
    Device,
    Method,
    ModelName,
    Precision,
    PrecisionChoice,
    SelfEnsemble,
    Threads,
    WeightsPath,
    model_problem,
    not_empty,
    path_type,
)

_DATA = "Data"

_OUTPUT = "Output"


def _usage(message: str) -> typer.Exit:
    return usage(message, "bench")


def _pair(psnr: float, ssim: float, digits: int = 3) -> str:
    return f"{psnr:.{digits}f} / {ssim:.4f}"


def _delta(psnr: float | None, ssim: float | None) -> str:
    if psnr is None or ssim is None:
        return "-"
    return f"{psnr:+.3f} / {ssim:+.4f}"


def _results_table(report: Any, model_label: str):
    """One row per dataset, scale (and depth of a sweep): ours beside the published numbers, PSNR / SSIM."""
    from rich.table import Table

    sweep = len({s.recursions for s in report.sets}) > 1
    qualities = list(dict.fromkeys(s.jpeg for s in report.sets))
    clean = None in qualities  # the paper's numbers are for clean LR images only
    drcn = report.method == "drcn"
    name = "DRCN" if drcn else "Bicubic"
    title = f"PSNR (dB) / SSIM on Y, {model_label}"
    if not clean:
        title += f", LR saved as JPEG at quality {', '.join(str(q) for q in qualities)}"
    table = Table(title=title, title_justify="left")
    table.add_column("Dataset")
    table.add_column("Scale", justify="right")
    if len(qualities) > 1:
        table.add_column("JPEG", justify="right")
    if sweep:
        table.add_column("Recursions", justify="right")
    if drcn:
        table.add_column("Bicubic", justify="right")
    table.add_column(f"{name} (ours)", justify="right")
    if clean:
        table.add_column(f"{name} (paper)", justify="right")
        table.add_column("Difference", justify="right")
    for s in report.sets:
        row = [s.dataset, f"x{s.scale}"]
        if len(qualities) > 1:
            row.append("-" if s.jpeg is None else f"q{s.jpeg}")
        if sweep:
            row.append(str(s.recursions))
        if drcn:
            row.append(_pair(s.bicubic_psnr, s.bicubic_ssim))
        row.append(_pair(s.psnr, s.ssim))
        if clean:
            row.append(_pair(s.paper.psnr, s.paper.ssim, 2) if s.paper is not None else "-")
            row.append(_delta(s.psnr_delta, s.ssim_delta))
        table.add_row(*row)
    return table


def _timing_line(timing: Any) -> str:
    if timing.peak_memory_bytes is None:
        memory = "peak memory n/a"
    else:
        memory = f"peak memory {timing.peak_memory_bytes / 2**20:.0f} MiB ({timing.peak_memory_kind})"
    return (
        f"{timing.images} upscales in {timing.seconds:.2f} s: {timing.images_per_second:.2f} images/s, "
        f"{timing.megapixels_per_second:.2f} output Mpx/s on {timing.device} ({timing.precision}); {memory}"
    )


def _to_stdout(path: Path | None) -> bool:
    """Whether a report goes to stdout (--json; --csv -), and so the table to stderr."""
    return path is not None and str(path) == "-"


def _write_text(path: Path, text: str) -> None:
    """``text`` to stdout for ``-``, else to the file ``path``, replaced atomically if it is a regular file (a FIFO,
    device, folder or symbolic link there is refused: drcn_cli.io.atomic)."""
    if _to_stdout(path):
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    from ..io.atomic import write_atomic

    write_atomic(path, text.encode(), overwrite=True)


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def bench(
    dataset: Annotated[
        list[str] | None,
        typer.Option(
            "-d", "--dataset", metavar="DATASET",
            help="Set5, Set14, B100 (BSD100) or Urban100, or a folder of HR images; repeat for several. "
            "A named set is taken from --data-dir, else the cache, else downloaded once: data/<Name>_HR.tar.gz "
            "from the hub datasets eugenesiow/Set5, eugenesiow/Set14, eugenesiow/BSD100, eugenesiow/Urban100. "
            "Default: Set5.",
            rich_help_panel=_DATA, show_default=False, callback=not_empty,
        ),
    ] = None,
    scale: Annotated[
        list[int] | None,
        typer.Option("-s", "--scale", min=2, metavar="SCALE", help="Integer scale; repeat for several. Default: 2, 3 "
                     "and 4.", rich_help_panel=_DATA, show_default=False),
    ] = None,
    jpeg: Annotated[
        list[int] | None,
        typer.Option("--jpeg", min=1, max=100, metavar="Q",
                     help="Save each LR image as JPEG at quality Q and read it back before upscaling, as a photo "
                     "from the web is (not the paper's protocol, so no paper column); repeat for several.",
                     rich_help_panel=_DATA, show_default=False),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", metavar="DIR", help="A folder holding <Name>/ folders of HR images "
                     "(DIR/Urban100/*.png), tried before the cache ($DRCN_HOME/datasets) and a download from the hub: "
                     "the way to place a set yourself, offline.",
                     rich_help_panel=_DATA, click_type=path_type(file_okay=False)),
    ] = None,
    download: Annotated[
        bool,
        typer.Option("--download/--no-download", help="Download a named dataset that is neither in --data-dir "
                     "nor cached.", rich_help_panel=_DATA),
    ] = True,
    method: Annotated[
        Method,
        typer.Option("--method", help="drcn, or bicubic (the baseline; needs no weights).", rich_help_panel=_MODEL),
    ] = Method.drcn,
    model: ModelName = None,
    weights: WeightsPath = None,
    recursions: Annotated[
        str | None,
        typer.Option("-k", "--recursions", metavar="K", help="Recursion depth K, or a sweep: A..B, a list (1,4,16) "
                     "or all. Default: all of the model's.", rich_help_panel=_MODEL, show_default=False),
    ] = None,
    self_ensemble: SelfEnsemble = False,
    device: Device = "auto",
    precision: PrecisionChoice = Precision.auto,
    tile: Annotated[
        int, typer.Option("-t", "--tile", min=0, metavar="N", help="Tile side in pixels: 0 = from the free memory, "
                          "else at least 32.", rich_help_panel=_MODEL),
    ] = 0,
    threads: Threads = None,
    save_images: Annotated[
        Path | None,
        typer.Option("--save-images", metavar="DIR", help="Write the SR images to DIR/<dataset>/x<scale>/.",
                     rich_help_panel=_OUTPUT, click_type=path_type(file_okay=False)),
    ] = None,
    json_stdout: Annotated[
        bool,
        typer.Option("--json", help="Print means, timing and per-image results as one JSON document on stdout, "
                     "which then holds it alone (the table goes to stderr; --json > FILE keeps it).",
                     rich_help_panel=_OUTPUT),
    ] = False,
    csv_file: Annotated[
        Path | None,
        typer.Option("--csv", metavar="FILE", help="Write per-image results as CSV; - for stdout, which then "
                     "holds the CSV alone (the table goes to stderr).", rich_help_panel=_OUTPUT,
                     click_type=path_type(dir_okay=False)),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", metavar="FILE", help="Draw PSNR against recursion depth (PNG; needs "
                     "pip install 'drcn\\[plot]'). Without --recursions it sweeps all depths.",
                     rich_help_panel=_OUTPUT, click_type=path_type(dir_okay=False)),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("-q", "--quiet", help="No progress on stderr; errors are still printed.",
                           rich_help_panel=_OUTPUT),
    ] = False,
) -> None:
    """Benchmark DRCN (or bicubic) by the paper's protocol and print the results beside the paper's Table 1.

    LR = MATLAB bicubic downscale of the HR mod-cropped to the scale, rounded to 8 bits (with --jpeg, then saved as
    JPEG at that quality and read back).

    PSNR and SSIM on the 8-bit Y channel, `scale` border pixels cropped, averaged over each set.

    Exit code: 0 done, 1 a dataset, image or weights problem, 2 usage error, 130 interrupted.
    """
    _check_options(method, model, weights, recursions, self_ensemble, plot, tile)
    json_file = Path("-") if json_stdout else None  # --json is JSON on stdout, as in every command
    if _to_stdout(json_file) and _to_stdout(csv_file):
        raise _usage("--json and --csv - would both go to stdout: send the CSV to a file")
    datasets_spec = list(dataset or ["Set5"])
    scales = list(dict.fromkeys(scale or [2, 3, 4]))
    qualities: list[int | None] = list(dict.fromkeys(jpeg)) if jpeg else [None]

    from rich.console import Console

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    info = _printer(err, quiet)

    from ..inference.device import resolve_device, resolve_precision, set_threads
    from ..inference.pipeline import open_upscaler

    # Errors of drcn's own (a device that is not there: usage; a dataset, the weights: failure) are reported
    # by the command's wrapper (cli._errors.reported); only the OS's own are turned into a line here.
    set_threads(threads)
    dev = resolve_device(device)
    resolve_precision(precision.value, dev)  # refused before any dataset or weights are looked for
    sets = _resolve_datasets(datasets_spec, data_dir, download, info)

    upscaler = open_upscaler(weights or model, dev, precision.value, method=method.value, tile=tile,
                             self_ensemble=self_ensemble, on_download=info)  # fmt: skip
    depths: tuple[int | None, ...] = (None,)
    label = "MATLAB bicubic"
    if upscaler.network is not None:
        label, depths = _network_label(upscaler.network, self_ensemble), _depths(upscaler.network, recursions, plot)
    report = _measure(err, quiet, sets, scales, qualities, upscaler, depths, save_images)
    _print_results(report, label, to_stderr=_to_stdout(json_file) or _to_stdout(csv_file))

    model_text = label if upscaler.network is not None else None
    try:
        _write_reports(report, sets, scales, model_text, self_ensemble, json_file, csv_file, plot, info)
    except OSError as exc:
        raise fail(exc) from None


def _printer(console: Any, quiet: bool) -> Callable[[str], None]:
    """A function that prints one message on ``console`` (stderr), or nothing with --quiet."""

    def info(message: str) -> None:
        if not quiet:
            console.print(message, markup=False)

    return info


def _resolve_datasets(specs: list[str], data_dir: Path | None, download: bool,
                      info: Callable[[str], None]) -> list[Any]:
    """Each --dataset as a folder of HR images (found, cached or downloaded); an OS error fails (exit 1)."""
    from ..bench.datasets import resolve_dataset

    sets = []
    for spec in specs:
        try:
            sets.append(resolve_dataset(spec, data_dir, download=download, on_download=info))
        except OSError as exc:
            raise fail(exc) from None
    return sets


def _measure(err: Any, quiet: bool, sets: list[Any], scales: list[int], qualities: list[int | None], upscaler: Any,
             depths: tuple[int | None, ...], save_images: Path | None) -> Any:
    """run_bench with a progress bar on ``err``; out of memory fails (exit 1)."""
    import torch

    from ..bench.runner import run_bench

    try:
        with _progress(err, quiet, sum(len(s.images) for s in sets)) as advance:
            return run_bench(sets, scales, upscaler, depths, save_images, advance, qualities)
    except torch.OutOfMemoryError:
        raise fail("out of memory even with the smallest tile: try --device cpu or a smaller --tile") from None


def _print_results(report: Any, label: str, to_stderr: bool = False) -> None:
    """The table and the timing line on stdout, or on stderr when stdout takes --json - or --csv - (120 columns
    when it is not a terminal)."""
    from rich.console import Console

    stream = sys.stderr if to_stderr else sys.stdout
    out = Console(file=stream, width=None if stream.isatty() else 120, highlight=False)
    out.print(_results_table(report, label))
    out.print(_timing_line(report.timing), markup=False)


def _write_reports(report: Any, sets: list[Any], scales: list[int], model: str | None, self_ensemble: bool,
                   json_file: Path | None, csv_file: Path | None, plot: Path | None,
                   info: Callable[[str], None]) -> None:
    """The --json, --csv and --plot files asked for."""
    from ..bench import results

    if json_file is not None:
        data = {
            "datasets": [{"name": s.name, "root": str(s.root), "source": s.source} for s in sets],
            "scales": scales,
            "jpeg": sorted({s.jpeg for s in report.sets if s.jpeg is not None}) or None,
            "model": model,
            "self_ensemble": self_ensemble,
            **results.report_to_dict(report),
        }
        _write_text(json_file, json.dumps(data, indent=2) + "\n")
    if csv_file is not None:
        _write_text(csv_file, _csv_text(results.per_image_rows(report)))
    if plot is not None:
        results.plot_recursion_sweep(report, plot)
        info(f"plot written to {plot}")


def _check_options(method: Method, model: str | None, weights: Path | None, recursions: str | None,
                   self_ensemble: bool, plot: Path | None, tile: int) -> None:
    """Usage errors (exit 2) of option combinations, before any work."""
    problem = model_problem(model, weights, method=method, recursions=recursions, self_ensemble=self_ensemble,
                            tile=tile)  # fmt: skip
    if problem is not None:
        raise _usage(problem)
    if method is Method.bicubic and plot is not None:
        raise _usage("--plot draws PSNR against recursion depth, which needs --method drcn")
    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise fail("--plot needs matplotlib: pip install 'drcn[plot]'") from None


def _network_label(network: Any, self_ensemble: bool) -> str:
    cfg = network.config
    label = f"DRCN {network.source.name} (F={cfg.features}, D={cfg.recursions})"
    return label + (" with self-ensemble x8 (the paper's numbers have none)" if self_ensemble else "")


def _depths(network: Any, recursions: str | None, plot: Path | None) -> tuple[int | None, ...]:
    """The recursion depths to measure: --recursions, all of them for a --plot, else the model's own."""
    from ..bench.protocol import BenchError
    from ..bench.runner import parse_recursions

    spec = recursions if recursions is not None else ("all" if plot is not None else None)
    depths: tuple[int | None, ...] = (None,)
    if spec is not None:
        try:
            depths = parse_recursions(spec, network.config.recursions)
        except BenchError as exc:
            raise _usage(str(exc)) from None
    if plot is not None and len(depths) < 2:
        raise _usage("--plot needs two or more recursion depths (e.g. --recursions 1..16)")
    return depths


@contextmanager
def _progress(console: Any, quiet: bool, total: int) -> Iterator[Callable[[Any], None]]:
    """A rich progress bar on stderr (dataset, image N/M, elapsed, ETA); yields the run_bench callback."""
    from ._progress import progress_bar

    progress = progress_bar(console, elapsed=True, disable=quiet or not console.is_terminal, transient=True)
    with progress:
        task = progress.add_task("starting", total=total)

        def advance(event: Any) -> None:
            description = f"{event.dataset} image {event.index}/{event.count} ({event.image})"
            progress.update(task, completed=event.done, description=description)

        yield advance
