"""The Hydra job behind ``scripts/train.py``: resolve, train, and turn errors into one line.

Exit codes: 0 for a completed or diverged run (divergence is a result, so sweeps go on),
2 for bad input (config, hyperparameter, data), 1 for a run that failed while training.
In a multirun, a failing job is recorded (its summary says ``failed``) and the sweep continues.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from data.errors import DataError
from models.registry import ModelConfigError
from optimizers.registry import OptimizerConfigError
from soapbench.errors import SoapbenchError

USER_ERRORS = (SoapbenchError, DataError, OptimizerConfigError, ModelConfigError)


def _is_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def resolve(cfg: DictConfig) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None)
        raise SoapbenchError(f"{key or 'config'}: {str(error).splitlines()[0]}") from error


def format_result(summary: dict[str, Any]) -> str:
    val = summary.get("final_val_loss")
    rows = [
        ("run", summary.get("run_dir")),
        ("status", summary.get("status") + (f" at step {summary['diverged_step']}" if summary.get("diverged_step") else "")),
        ("optimizer / model", f"{summary.get('optimizer')} / {summary.get('model')}"),
        ("steps", summary.get("steps")),
        ("final val loss", f"{val:.4f}" if isinstance(val, float) else val),
        ("best val loss", f"{summary['best_val_loss']:.4f}" if isinstance(summary.get("best_val_loss"), float) else None),
        ("train seconds", f"{summary.get('train_seconds', 0):.1f} (optimizer {summary.get('optimizer_seconds', 0):.1f})"),
        ("device", summary.get("device")),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _swept_keys(hydra_cfg: Any) -> list[str]:
    """What this multirun varies, from the sweep's own record (``multirun.yaml``, which Hydra writes before any job):
    dotted keys for value sweeps, ``group=choice`` (this job's choice) for swept config groups."""
    from pathlib import Path

    from hydra.core.override_parser.overrides_parser import OverridesParser

    record = Path(hydra_cfg.sweep.dir) / "multirun.yaml"
    if not record.is_file():
        return []
    sweep = OmegaConf.load(record).hydra
    arguments = list(sweep.overrides.task) + [f"{k}={v}" for k, v in (sweep.sweeper.get("params") or {}).items()]
    choices = hydra_cfg.runtime.choices
    keys = []
    for override in OverridesParser.create().parse_overrides(arguments):
        if override.is_sweep_override():
            key = override.get_key_element().lstrip("+~")
            keys.append(f"{key}={choices[key]}" if key in choices else key)
    return list(dict.fromkeys(keys))


def _place_sweep_job(config: dict[str, Any]) -> None:
    from soapbench.launch import concurrent_jobs_from_hydra, placement

    hydra_cfg = HydraConfig.get()
    concurrent_jobs = concurrent_jobs_from_hydra(hydra_cfg)
    placed = placement(int(hydra_cfg.job.num), concurrent_jobs, str(config.get("device", "auto")))
    config["device"] = placed["device"]
    # The trainer applies the thread policy; the sweep only fills in what the user left at its default.
    trainer = config.setdefault("trainer", {})
    if placed["threads"] and trainer.get("threads") is None:
        trainer["threads"] = placed["threads"]
    if trainer.get("parallel_jobs", 1) == 1:
        trainer["parallel_jobs"] = concurrent_jobs


def run_job(cfg: DictConfig) -> float | None:
    from soapbench.trainer import train

    multirun = _is_multirun()
    try:
        config = resolve(cfg)
        if multirun:
            _place_sweep_job(config)
            if config.get("sweep_keys") is None:
                config["sweep_keys"] = _swept_keys(HydraConfig.get())
        summary = train(config)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        if multirun:
            return None
        sys.exit(2)
    except Exception as error:  # recorded as "failed" in the run's summary.json by the trainer
        print(f"error: run failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        if multirun:
            return None
        sys.exit(1)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one table for the run
        print(format_result(summary), flush=True)
    val = summary.get("final_val_loss")
    return val if isinstance(val, float) else None
