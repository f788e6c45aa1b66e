"""Training DRCN: ``TrainConfig`` -> ``train(cfg, reporter)`` -> ``TrainResult``.

``train`` reads top to bottom: setup (processes, device, seeds) -> data -> model -> optimizer -> resume
-> loop (schedule, batch, loss, step) -> validation -> export of the best weights -> checkpoint.

The objective and the schedules are in :mod:`drcn_cli.training.objective`, the start of a run (checks, data,
model, optimizer, resume) in :mod:`drcn_cli.training.setup`, what it reports in :mod:`drcn_cli.training.report`,
checkpoints (folder layout, atomic writes, resume checks) in :mod:`drcn_cli.training.checkpoint`, the options in
:mod:`drcn_cli.training.config`, the process group in :mod:`drcn_cli.processes`. The loop is a few top-level
functions over one ``_Run``: ``_start`` -> ``_loop`` (``_step``, ``_log_window``, ``_validate``, ``_export``,
``_save_checkpoint``) -> ``_result``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from ..bench.protocol import Score, evaluate
from ..errors import DrcnError
from ..inference.device import autocast_dtype, resolve_device, reuse_freed_memory, set_threads
from ..inference.device import memory_format as preferred_memory_format
from ..inference.pipeline import open_upscaler
from ..model import DRCN
from ..processes import all_mean, any_process, barrier, join, leave, processes
from ..weights.files import save_weights
from .checkpoint import write_checkpoint
from .config import TrainConfig, check_config
from .data import random_batch, sample_batch
from .objective import _zero_tiny_, alpha_at, batch_seed, ema_decay, lr_at, recursive_loss, update_ema
from .report import StepStats, TrainReporter, TrainResult, ValidationStats, _append_log, _export_metadata
from .setup import _Run, _start

__all__ = ["TrainingError", "train"]


class TrainingError(DrcnError, RuntimeError):
    """Training cannot go on (the loss diverged, a process group failed ...)."""


def train(
    cfg: TrainConfig, reporter: TrainReporter | None = None, should_stop: Callable[[], bool] | None = None
) -> TrainResult:
    """Train (or continue training) a DRCN as ``cfg`` says. Raises DataError, CheckpointError, WeightsError
    or ConfigError for bad input before anything is written; TrainingError if the loss diverges.

    ``should_stop`` is asked after every step (under DDP at every log step, all processes together); when it
    answers True the run stops there as at ``stop_at``: a checkpoint is written and the result is unfinished.
    """
    reporter = reporter or TrainReporter()
    wall_start = time.perf_counter()
    check_config(cfg)
    set_threads(cfg.threads)
    procs = processes()
    device = join(procs, resolve_device(cfg.device))
    if device.type == "cpu":
        # With the huge pages `drcn` asks torch for, each fresh block costs 2 MiB page faults: kept for reuse they
        # cost nothing, without reuse they slow a bf16 step markedly (docs/training.md).
        reuse_freed_memory()
    try:
        run = _start(cfg, reporter if procs.main else TrainReporter(), procs, device)
        _loop(run, wall_start, should_stop)
        return _result(run, wall_start)
    finally:
        leave(procs)


def _loop(run: _Run, wall_start: float, should_stop: Callable[[], bool] | None) -> None:
    """Step until ``run.stop``: log every ``log_every`` steps, validate, export and checkpoint on schedule."""
    cfg = run.cfg
    run.loop_start = run.window_start = time.perf_counter()
    run.sums = torch.zeros(4, device=run.device)
    params = list(run.model.parameters())
    while run.step < run.stop:
        lr, alpha = _step(run, params)
        stop_asked = should_stop is not None and should_stop()
        if stop_asked and not run.procs.distributed:
            run.stop = run.step
        logging = run.step % cfg.log_every == 0 or run.step == run.stop
        checkpointing = bool(cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0)
        validating = bool(run.data.val_samples and cfg.val_every and run.step % cfg.val_every == 0)
        if logging or checkpointing or validating:  # before anything is logged, scored or written
            _check_finite(run)
        if logging:
            _log_window(run, lr, alpha, wall_start, stop_asked)
        finishing = run.step == run.stop  # the last step, or a stop (time limit, --stop-at, Ctrl-C) before it
        if run.data.val_samples and ((cfg.val_every and run.step % cfg.val_every == 0) or finishing):
            _validate(run)
        if (cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0) or finishing:
            if not run.data.val_samples:
                _export(run, None)
            _save_checkpoint(run)


def _check_finite(run: _Run) -> None:
    """TrainingError when a weight of the model (or of its moving average), this log window's loss, or the
    network's output on a small probe is NaN or infinite: the run stops before such weights are validated,
    exported or checkpointed, so no file holds them (the probe catches weights that are still finite but so large
    that the next step's output overflows). One device sync; called at the steps that log, validate or write."""
    networks = [("the weights", run.model), *([("the averaged weights", run.ema)] if run.ema is not None else [])]
    probe = torch.full((1, 1, 8, 8), 0.5, device=run.device)
    with torch.no_grad():
        outputs = [network(probe) for _, network in networks]
    tensors = [*(p for _, network in networks for p in network.parameters()), *outputs]
    if run.sums is not None:
        tensors.append(run.sums)
    if bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
        return
    what = "the loss (or the gradient norm)"
    for (label, network), output in zip(reversed(networks), reversed(outputs), strict=True):
        if not bool(torch.isfinite(output).all()):
            what = f"the network's output ({label} are finite, but too large)"
        broken = next((name for name, p in network.named_parameters() if not bool(torch.isfinite(p).all())), None)
        if broken is not None:
            what = f"{label} ({broken} first)"
    raise TrainingError(
        f"training diverged: {what} became NaN or infinite by step {run.step}; nothing of it was written. "
        f"Lower the learning rate (lr {run.cfg.lr:g}) or keep --grad-clip on"
    )


def _step(run: _Run, params: Sequence[torch.Tensor]) -> tuple[float, float]:
    """One optimisation step on this process's share of the step's batch; returns (lr, alpha) it used."""
    cfg, procs, device = run.cfg, run.procs, run.device
    lr, alpha = lr_at(run.step, cfg), alpha_at(run.step, cfg)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    generator = torch.Generator().manual_seed(batch_seed(cfg.seed, run.step))
    index, transform = random_batch(run.data.bank, cfg.batch_size, generator, cfg.augment)
    local_batch = cfg.batch_size // procs.world
    share = slice(procs.rank * local_batch, (procs.rank + 1) * local_batch)
    net_input, target = sample_batch(run.data.bank, index[share], transform[share])
    net_input = net_input.contiguous(memory_format=preferred_memory_format(device))
    amp_dtype = autocast_dtype(run.precision)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        predictions, final = run.trainer(net_input)
    loss, intermediate, last = recursive_loss(predictions, final, target, alpha, cfg.loss)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    run.optimizer.step()
    _zero_tiny_(params)
    if run.ema is not None:
        update_ema(run.ema, run.model, ema_decay(cfg.ema, run.step))
        _zero_tiny_(list(run.ema.parameters()))
    run.step += 1
    run.window_steps += 1
    assert run.sums is not None  # set by _loop before the first step
    run.sums += torch.stack([loss.detach(), intermediate.detach(), last.detach(), grad_norm.detach().float()])
    return lr, alpha


def _log_window(run: _Run, lr: float, alpha: float, wall_start: float, stop_asked: bool) -> None:
    """Report the means of the steps since the last report; stop every process when one is out of time or asked
    to stop. Raises TrainingError when the loss is no longer finite."""
    cfg = run.cfg
    assert run.sums is not None  # set by _loop before the first step
    means = (all_mean(run.sums, run.procs) / run.window_steps).tolist()
    run.sums.zero_()
    run.last_loss = means[0]
    if not math.isfinite(run.last_loss):
        raise TrainingError(f"the loss became {run.last_loss} by step {run.step}; lower the learning rate")
    now = time.perf_counter()
    stats = StepStats(
        run.step, cfg.steps, means[0], means[1], means[2], means[3], lr, alpha,
        run.window_steps / max(now - run.window_start, 1e-9), run.elapsed_before + now - run.loop_start,
    )  # fmt: skip
    run.window_start, run.window_steps = now, 0
    run.reporter.step(stats)
    if run.procs.main and run.log_path is not None:
        _append_log(run.log_path, cfg.scales, dataclasses.asdict(stats) | {"kind": "train"})
    out_of_time = cfg.time_limit is not None and now - wall_start > cfg.time_limit
    if any_process(out_of_time or stop_asked, run.procs, run.device):
        run.stop = run.step


def _validate(run: _Run) -> None:
    """Score the model on the validation images (main process); a new best is exported."""
    if run.procs.main:
        t = time.perf_counter()
        upscaler = open_upscaler(_scored(run), run.device, run.precision)  # a copy, as `drcn upscale` runs it
        scores = evaluate(run.data.val_samples, upscaler)
        jpeg_scores = evaluate(run.data.val_jpeg_samples, upscaler) if run.data.val_jpeg_samples else {}
        by_psnr = {scale: score.psnr for scale, score in scores.items()}
        by_ssim = {scale: score.ssim for scale, score in scores.items()}
        cells = [*by_psnr.values(), *(score.psnr for score in jpeg_scores.values())]
        mean = sum(cells) / len(cells)  # a photo model is chosen on clean and JPEG inputs alike
        if run.best_psnr is None or mean > run.best_psnr:
            run.best_psnr, run.best_step = mean, run.step
            _export(run, scores, jpeg_scores)
        seconds = time.perf_counter() - t
        run.reporter.validated(
            ValidationStats(
                run.step, by_psnr, by_ssim, mean, run.best_psnr, run.best_step, seconds,  # type: ignore[arg-type]  # a resumed checkpoint may hold best_psnr with a null best_step
                run.cfg.val_jpeg if jpeg_scores else None,
                {scale: score.psnr for scale, score in jpeg_scores.items()},
                {scale: score.ssim for scale, score in jpeg_scores.items()},
            )
        )  # fmt: skip
        if run.log_path is not None:
            row = {"kind": "val", "step": run.step, "val_psnr": mean, "val_ssim": sum(by_ssim.values()) / len(by_ssim)}
            row.update({f"val_psnr_x{s:g}": v for s, v in by_psnr.items()})
            row.update({f"val_ssim_x{s:g}": v for s, v in by_ssim.items()})
            row.update({f"val_jpeg_psnr_x{s:g}": v.psnr for s, v in jpeg_scores.items()})
            row.update({f"val_jpeg_ssim_x{s:g}": v.ssim for s, v in jpeg_scores.items()})
            _append_log(run.log_path, run.cfg.scales, row)
    barrier(run.procs)


def _scored(run: _Run) -> DRCN:
    """The weights validation scores and the export writes: the moving average where the run keeps one."""
    return run.ema if run.ema is not None else run.model


def _export(
    run: _Run, scores: Mapping[float, Score] | None, jpeg_scores: Mapping[float, Score] | None = None
) -> None:
    """Write the weights to ``out`` (main process), with the run's description in their metadata."""
    if run.procs.main and run.out_path is not None:
        metadata = _export_metadata(run.cfg, run.data.images, run.step, scores, run.data.init_steps, jpeg_scores)
        save_weights(_scored(run), run.out_path, metadata)
        mean = sum(score.psnr for score in scores.values()) / len(scores) if scores else None
        run.reporter.exported(run.out_path, run.step, mean)


def _save_checkpoint(run: _Run) -> None:
    """Write the checkpoint folder (main process): weights, optimizer, random state, log and state.json."""
    if run.procs.main and run.checkpoint_dir is not None:
        cfg, step = run.cfg, run.step
        state = {
            "step": step,
            "best_psnr": run.best_psnr,
            "best_step": run.best_step,
            "elapsed_s": run.elapsed_before + (time.perf_counter() - run.loop_start),
            "lr": lr_at(max(step - 1, 0), cfg),
            "alpha": alpha_at(max(step - 1, 0), cfg),
            "data_fingerprint": run.data.fingerprint,
            "init_steps": run.data.init_steps,
            "world_size": run.procs.world,
            "torch_version": torch.__version__,
            "config": dataclasses.asdict(cfg),
        }
        write_checkpoint(run.checkpoint_dir, run.model, run.optimizer, state, run.log_path, ema=run.ema)
        run.reporter.checkpointed(run.checkpoint_dir, step)
    barrier(run.procs)


def _result(run: _Run, wall_start: float) -> TrainResult:
    out, folder = run.out_path, run.checkpoint_dir
    return TrainResult(
        step=run.step,
        finished=run.step >= run.cfg.steps,
        last_loss=run.last_loss,
        best_psnr=run.best_psnr,
        best_step=run.best_step,
        out=out if out is not None and out.exists() else None,
        checkpoint=folder if folder is not None and (folder / "state.json").is_file() else None,
        seconds=time.perf_counter() - wall_start,
    )
