"""Write run directories in the trainer's store format from known curves (a test fixture).

Used by the report's tests (known curves → known steps-to-target, efficiency and fit parameters). The files
are written by the trainer's own code (``soapbench.results.RunStore``, ``soapbench.run_record``):
``config.yaml`` (resolved config), ``metrics.jsonl`` (train and eval records with cumulative step,
train_seconds, tokens, samples) and ``summary.json``; each can be left out or damaged on purpose to
mimic killed, failed and half-written runs. As in the trainer, non-finite floats are written as the
strings "inf"/"nan", the summary's ``final_val_loss`` is the last evaluation whatever the status,
and a colorization eval logs ``val/loss`` = ``val/mse``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from soapbench.checkpoint import RunState
from soapbench.results import RunStore
from soapbench.run_record import metrics_counters, summary_numbers

TOKENS_PER_STEP = 16_384


def _state(step: int, seconds: float) -> RunState:
    return RunState(step=step, train_seconds=seconds, tokens=step * TOKENS_PER_STEP, samples=step * 64)


def base_config(
    experiment: str, optimizer: str, seed: int, lr: float, max_steps: int, **optimizer_extra: Any
) -> dict[str, Any]:
    return {
        "experiment_name": experiment,
        "seed": seed,
        "optimizer": {"name": optimizer, "lr": lr, "betas": [0.9, 0.95], "weight_decay": 0.1, **optimizer_extra},
        "model": {"name": "nanogpt", "arch": {"n_layer": 4, "n_head": 4, "n_embd": 128}},
        "data": {"name": "shakespeare_char", "kind": "lm"},
        "trainer": {
            "max_steps": max_steps,
            "batch_size": 64,
            "grad_accum_steps": 1,
            "eval_interval": max(max_steps // 4, 1),
            "schedule": {"name": "cosine", "warmup_steps": max(max_steps // 10, 1), "min_lr_ratio": 0.1},
        },
        "paths": {"results_dir": "results"},
        "logger": {"wandb": {"project": "soapbench", "mode": "disabled"}},
    }


def write_run(
    root: Path,
    experiment: str,
    name: str,
    config: dict[str, Any],
    evals: Sequence[tuple[int, float, float]] | None,
    status: str | None = "completed",
    metric: str = "val/loss",
    truncate_last_line: bool = False,
    error: str | None = None,
    diverged_step: int | None = None,
    images: dict[int, bytes] | None = None,
    summary_extra: dict[str, Any] | None = None,
) -> Path:
    """One run directory. ``evals`` = [(step, train_seconds, loss)]; status None writes no summary.

    Between evals a train record is written at every eval step's midpoint, so metrics.jsonl interleaves
    both record kinds as the trainer's does.
    """
    run_dir = root / "runs" / experiment / name
    run_dir.mkdir(parents=True, exist_ok=True)
    store = RunStore(run_dir)
    store.write_config(yaml.safe_dump(config, sort_keys=False))
    if evals is None:
        return run_dir
    store.metrics_path.write_text("", encoding="utf-8")  # appended to below; a run with no evals has an empty log
    previous = (0, 0.0)
    for step, seconds, loss in evals:
        mid_step, mid_seconds = (previous[0] + step) // 2, (previous[1] + seconds) / 2
        store.append_metrics(
            {
                **metrics_counters(_state(mid_step, mid_seconds)),
                "event": "train",
                "train/loss": loss + 0.05,
                "train/lr": config["optimizer"]["lr"],
                "train/step_seconds": 0.01,
                "train/optimizer_seconds": 0.002,
                "train/throughput": 1e5,
            }
        )
        record = {**metrics_counters(_state(step, seconds)), "event": "eval", "val/loss": loss}
        if metric == "val/loss":
            record["val/perplexity"] = math.exp(loss) if math.isfinite(loss) and loss < 700 else float("inf")
        else:
            record[metric] = loss
        store.append_metrics(record)
        previous = (step, seconds)
    if truncate_last_line:
        text = store.metrics_path.read_text(encoding="utf-8").rstrip("\n")
        last_line = text.rpartition("\n")[2]
        store.metrics_path.write_text(text[: len(text) - max(len(last_line) // 2, 1)], encoding="utf-8")
    if images:
        (run_dir / "images").mkdir(exist_ok=True)
        for step, data in images.items():
            (run_dir / "images" / f"step_{step:06d}.png").write_bytes(data)
    if status is None:
        return run_dir
    last_step, last_seconds, last_loss = evals[-1] if evals else (0, 0.0, None)
    finite = [loss for _, _, loss in evals if math.isfinite(loss)]
    if status == "diverged" and diverged_step is not None:
        last_step = diverged_step
    state = _state(last_step, last_seconds)
    state.optimizer_seconds = last_seconds * 0.2
    state.final_val_loss, state.best_val_loss = last_loss, min(finite) if finite else None
    state.final_val_metrics = {"val/loss": last_loss, metric: last_loss} if evals else {}
    summary = {
        "status": status,
        **summary_numbers(state, "tokens"),
        "max_steps": config["trainer"]["max_steps"],
        "params": 800_000,
        "device": "cpu",
        "optimizer": config["optimizer"]["name"],
        "model": config["model"]["name"],
        "data": config["data"]["name"],
        "experiment": experiment,
        "seed": config["seed"],
        "config_hash": f"hash-{name}",
        "diverged_step": diverged_step,
        "error": error,
        "git_commit": "0123abc",
        "versions": {"torch": "2.13.0"},
        "started_at": "2025-01-01T00:00:00Z",
        "finished_at": None if status == "running" else "2025-01-01T00:10:00Z",
        **(summary_extra or {}),
    }
    store.write_summary(summary)
    return run_dir


def power_law_schedule_runs(
    root: Path,
    experiment: str,
    optimizer: str,
    loss_at: Callable[[float], float],
    seconds_per_step: float,
    full_steps: int,
    fractions: Sequence[float],
    seeds: Sequence[int] = (0,),
    lr: float = 1e-3,
    evals_per_run: int = 4,
    **optimizer_extra: Any,
) -> list[Path]:
    """Shortened-schedule runs whose final loss is ``loss_at(N)`` at each budget N = fraction × full_steps.

    Inside a run the curve falls linearly from loss_at(N) + 1 to loss_at(N), so only the final value
    (what the efficiency method uses) follows the power law.
    """
    dirs = []
    for fraction in fractions:
        steps = int(round(fraction * full_steps))
        final = loss_at(steps)
        evals = [
            (
                int(round(steps * k / evals_per_run)),
                seconds_per_step * steps * k / evals_per_run,
                final + 1.0 - k / evals_per_run,
            )
            for k in range(1, evals_per_run + 1)
        ]
        for seed in seeds:
            config = base_config(experiment, optimizer, seed, lr, steps, **optimizer_extra)
            dirs.append(write_run(root, experiment, f"{optimizer}_N{steps}_s{seed}", config, evals))
    return dirs
