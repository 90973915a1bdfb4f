"""Training throughput from the real trainer: tokens/s, step time, optimizer share and MFU per optimizer.

Each optimizer trains the preset for ``warmup + steps`` steps through :func:`soapbench.trainer.train`, the code path
of ``scripts/train.py``, composed as ``model=<preset> optimizer=<name>`` with the trainer logging every step, no
evaluation before the first step (the trainer's one evaluation after the last step and everything it logs fall
outside its step clock), no checkpoints, W&B disabled, in a temporary results directory. From the run's
``metrics.jsonl`` the first ``warmup`` step records are dropped (SOAP-like optimizers build their preconditioner on
the first step); the rest, ``steps`` rounded up to whole periods of the optimizer's ``precondition_frequency`` (so
the amortised refresh is in), give

    step time        mean (and median) of ``train/step_seconds`` (synchronised: data, forward, backward, clipping,
                     optimizer, schedule)
    optimizer share  mean ``train/optimizer_seconds`` / mean step time
    tokens/s         Σ tokens / Σ step seconds (tokens = ``train/throughput`` × ``train/step_seconds`` per step)
    MFU              mean ``train/mfu``: the trainer reports it only on a GPU whose peak bf16 FLOP/s
                     :func:`soapbench.timing.device_peak_flops` knows; on CPU it is "n/a"
    peak memory      the largest ``memory/peak_bytes`` (GPU: peak allocated since the last reset of the peak
                     statistics; CPU: the process's peak resident set, which only grows)

The data is the composed config's (shakespeare_char unless overridden): throughput does not depend on token values.
Presets above ``LARGE_MODEL_PARAMS`` run on a GPU only, with bf16 autocast, optional ``torch.compile`` and gradient
accumulation up to ≥ ``min_batch_tokens`` (0.5M by default) tokens per step.
"""

from __future__ import annotations

import math
import statistics
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from soapbench.bench.catalog import CONFIG_DIR, OptimizerSetup, compose
from soapbench.bench.discovery import import_submodules
from soapbench.bench.step_timing import window_length

LARGE_MODEL_PARAMS = 100_000_000
DEFAULT_MIN_BATCH_TOKENS = 524_288  # 0.5M tokens, the SOAP paper's smallest LM batch is 256k; 2M its main one


@dataclass(frozen=True)
class ThroughputOptions:
    steps: int = 5
    warmup: int = 2
    device: str = "cpu"
    batch_size: int | None = None  # sequences per micro-batch; None keeps the preset's
    precision: str | None = None  # None: bf16 for large presets on GPU, else the preset's
    compile: bool = False
    min_batch_tokens: int | None = None  # None: DEFAULT_MIN_BATCH_TOKENS for large presets on GPU, else no change
    overrides: tuple[str, ...] = ()


@dataclass
class ThroughputRow:
    optimizer: str
    window: int = 0
    frequency: int | None = None
    status: str = "not run"
    steps_measured: int = 0
    tokens_per_step: float | None = None
    tokens_per_second: float | None = None
    step_seconds: float | None = None
    step_seconds_median: float | None = None
    optimizer_seconds: float | None = None
    optimizer_share: float | None = None
    mfu: float | None = None
    peak_memory_bytes: int | None = None
    overrides: list[str] = field(default_factory=list)
    error: str | None = None


def run_overrides(
    preset: str,
    optimizer: str,
    preset_cfg: Mapping[str, Any],
    params: int,
    options: ThroughputOptions,
    results_dir: Path,
    window: int,
) -> list[str]:
    """Hydra overrides for one short trainer run of ``warmup + window`` steps (ValueError: large preset on CPU)."""
    total = options.warmup + window
    large = params > LARGE_MODEL_PARAMS
    on_gpu = options.device.startswith("cuda")
    if large and not on_gpu:
        raise ValueError(f"{params / 1e6:.0f}M parameters: throughput on GPU only (--device cuda)")
    overrides = [
        f"model={preset}", f"optimizer={optimizer}", f"device={options.device}",
        f"trainer.max_steps={total}", "trainer.max_epochs=null", "trainer.log_interval=1",
        f"trainer.eval_interval={total}", "trainer.eval_at_start=false", "trainer.eval_batches=1",
        "trainer.final_eval_batches=1", f"trainer.threads={torch.get_num_threads()}",
        f"trainer.checkpoint_interval={total + 1}", "trainer.keep_final_checkpoint=false",
        "logger.wandb.mode=disabled", f"paths.results_dir={results_dir}", "experiment_name=bench",
        f"run_name=bench-{optimizer}",
    ]  # fmt: skip
    batch_size = options.batch_size or int(preset_cfg["trainer"]["batch_size"])
    if options.batch_size:
        overrides.append(f"trainer.batch_size={batch_size}")
    precision = options.precision or ("bf16" if large and on_gpu else None)
    if precision:
        overrides.append(f"trainer.precision={precision}")
    if options.compile:
        overrides.append("trainer.compile=true")
    min_tokens = options.min_batch_tokens
    if min_tokens is None and large and on_gpu:
        min_tokens = DEFAULT_MIN_BATCH_TOKENS
    if min_tokens:
        micro_tokens = batch_size * int(preset_cfg["model"]["seq_len"])
        overrides.append(f"trainer.grad_accum_steps={max(1, math.ceil(min_tokens / micro_tokens))}")
    return [*overrides, *options.overrides]


def summarise_metrics(records: Sequence[Mapping[str, Any]], warmup: int) -> dict[str, Any]:
    """Aggregate the per-step train records after the first ``warmup`` (see the module docstring)."""
    steps = [r for r in records if r.get("event") == "train" and "train/step_seconds" in r][warmup:]
    if not steps:
        return {"steps_measured": 0}
    seconds = [float(r["train/step_seconds"]) for r in steps]
    optimizer = [float(r["train/optimizer_seconds"]) for r in steps]
    tokens = [float(r["train/throughput"]) * float(r["train/step_seconds"]) for r in steps]
    mfu = [float(r["train/mfu"]) for r in steps if "train/mfu" in r]
    memory = [int(r["memory/peak_bytes"]) for r in steps if "memory/peak_bytes" in r]
    step_mean, optimizer_mean = statistics.fmean(seconds), statistics.fmean(optimizer)
    return {
        "steps_measured": len(steps), "tokens_per_step": statistics.fmean(tokens),
        "tokens_per_second": sum(tokens) / sum(seconds), "step_seconds": step_mean,
        "step_seconds_median": statistics.median(seconds), "peak_memory_bytes": max(memory) if memory else None,
        "optimizer_seconds": optimizer_mean, "optimizer_share": optimizer_mean / step_mean if step_mean else None,
        "mfu": statistics.fmean(mfu) if mfu else None,
    }  # fmt: skip


def trainer_throughput(
    preset: str, setup: OptimizerSetup, preset_cfg: Mapping[str, Any], params: int, options: ThroughputOptions
) -> ThroughputRow:
    from soapbench.results import RunStore
    from soapbench.trainer import train

    optimizer = setup.name
    frequency = setup.precondition_frequency
    row = ThroughputRow(optimizer, window=window_length(options.steps, frequency), frequency=frequency)
    if not (CONFIG_DIR / "optimizer" / f"{optimizer}.yaml").exists():
        row.status, row.error = "skipped", "no configs/optimizer yaml: the trainer cannot compose it"
        return row
    with tempfile.TemporaryDirectory(prefix="soapbench-throughput-") as tmp:
        try:
            row.overrides = run_overrides(preset, optimizer, preset_cfg, params, options, Path(tmp), row.window)
        except ValueError as error:
            row.status, row.error = "skipped", str(error)
            return row
        try:
            summary = train(compose(row.overrides))
        except Exception as error:  # a failing run is a row, not a crash
            row.status, row.error = "failed", f"{type(error).__name__}: {error}"
            return row
        row.status = str(summary.get("status"))
        records = RunStore(Path(summary["run_dir"])).read_metrics()
    for key, value in summarise_metrics(records, options.warmup).items():
        setattr(row, key, value)
    if row.steps_measured == 0 and row.error is None:
        row.error = f"no step records after {options.warmup} warmup steps (status {row.status})"
    return row


def throughput_rows(
    preset: str,
    setups: Sequence[OptimizerSetup],
    preset_cfg: Mapping[str, Any],
    params: int,
    options: ThroughputOptions,
) -> list[ThroughputRow]:
    import_submodules("soapbench.optimizers")  # the trainer's build_optimizer must see every registered optimizer
    return [trainer_throughput(preset, setup, preset_cfg, params, options) for setup in setups]


def protocol(options: ThroughputOptions) -> str:
    return (
        f"Real trainer (`soapbench.trainer.train`) per optimizer: {options.warmup} warmup + {options.steps} measured "
        f"steps (rounded up to whole refresh periods) on {options.device}, logging every step, no evaluation or "
        "checkpoint inside the step clock. Step time: mean synchronised step (data, forward, backward, clipping, "
        "optimizer, schedule); optimizer share: mean `optimizer.step()` time over mean step time; tokens/s: tokens over step seconds; MFU from the "
        "trainer's `train/mfu` (GPU with a known bf16 peak only; CPU: n/a). Presets above "
        f"{LARGE_MODEL_PARAMS / 1e6:.0f}M parameters: GPU only, bf16, accumulation to ≥ "
        f"{options.min_batch_tokens or DEFAULT_MIN_BATCH_TOKENS:,} tokens per step."
    )
