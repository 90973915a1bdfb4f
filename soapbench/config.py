"""Typed, validated views of the composed Hydra config.

Hydra composes ``configs/train.yaml``; :func:`load_run_config` turns the trainer part into
dataclasses whose ``__post_init__`` rejects bad values with a message that names the
dotted field and what is allowed. Optimizer, model and data sections stay mappings:
their owners (the registries) validate them against constructor signatures.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from soapbench.errors import ConfigError
from soapbench.naming import experiment_folder, plain_name

PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("cosine", "linear", "wsd", "constant")
RESUME_MODES = ("auto", "never")


def _positive(prefix: str, name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or not value > 0:
        raise ConfigError(f"{prefix}.{name}: must be > 0, got {value}")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, applied as a multiplier of each param group's initial lr."""

    name: str = "cosine"
    warmup_steps: int = 0
    # Final lr as a fraction of the peak (cosine, linear and the decay phase of wsd).
    min_lr_ratio: float = 0.1
    # wsd only: length of the final decay phase; the rest after warmup is stable.
    decay_steps: int | None = None
    # wsd only: shape of the decay phase.
    decay_type: str = "linear"

    def validate(self, prefix: str) -> None:
        if self.name not in SCHEDULES:
            raise ConfigError(f"{prefix}.name: unknown schedule {self.name!r}; valid: {', '.join(SCHEDULES)}")
        if self.warmup_steps < 0:
            raise ConfigError(f"{prefix}.warmup_steps: must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"{prefix}.min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if self.name == "wsd":
            _positive(prefix, "decay_steps", self.decay_steps)
        if self.decay_type not in ("linear", "cosine", "1-sqrt"):
            raise ConfigError(f"{prefix}.decay_type: must be linear, cosine or 1-sqrt, got {self.decay_type!r}")


@dataclass
class EMAConfig:
    """Exponential moving average of the weights (evaluated beside the raw model when enabled)."""

    enabled: bool = False
    decay: float = 0.999
    # Copy the EMA weights into the model every N steps (None: never).
    overwrite_interval: int | None = None

    def validate(self, prefix: str) -> None:
        if not 0.0 < self.decay < 1.0:
            raise ConfigError(f"{prefix}.decay: must be in (0, 1), got {self.decay}")
        _positive(prefix, "overwrite_interval", self.overwrite_interval, allow_none=True)


@dataclass
class TrainerConfig:
    # Budget: optimizer steps; for vision max_epochs may set it instead (steps = epochs × steps_per_epoch).
    max_steps: int | None = 1000
    max_epochs: float | None = None
    batch_size: int = 32
    grad_accum_steps: int = 1
    precision: str = "fp32"
    grad_clip_norm: float | None = None
    grad_clip_norm_per_tensor: float | None = None
    grad_clip_value: float | None = None
    # Static loss scale (any precision; with fp16 it replaces the dynamic GradScaler). See soapbench/gradients.py.
    loss_scale_factor: float | None = None
    weight_decay_roles: list[str] = field(default_factory=lambda: ["matrix", "head", "input"])
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    eval_interval: int = 250
    # Intermediate evaluations use a fixed set of eval_batches batches (a cheap curve); the final one after
    # the last step uses final_eval_batches batches of the whole validation split (None: all of it).
    eval_batches: int = 20
    final_eval_batches: int | None = None
    eval_at_start: bool = True
    log_interval: int = 10
    checkpoint_interval: int = 500
    # false: no checkpoint at the last step, and a completed run removes its periodic ones (tuning runs' default)
    keep_final_checkpoint: bool = True
    # A train loss above divergence_factor × the first step's loss (or non-finite) ends the run as diverged.
    divergence_factor: float = 10.0
    compile: bool = False
    # Under torchrun: each rank computes the eigenbasis/root refreshes of the parameters it owns and broadcasts
    # them (Shampoo and the SOAP family). Bit-identical to every rank refreshing everything; only faster.
    share_refreshes: bool = True
    # Stop cleanly after this many steps in this process (tests and time-sliced clusters); None: run to the end.
    stop_after_steps: int | None = None
    # Torch intra-op threads (None: the available cores // the jobs sharing the machine) and how many runs
    # the user runs side by side on this machine. Neither changes the result, so both stay out of the run's identity.
    threads: int | None = None
    parallel_jobs: int = 1

    def validate(self, prefix: str = "trainer") -> None:
        if self.max_steps is None and self.max_epochs is None:
            raise ConfigError(f"{prefix}.max_steps: set max_steps or max_epochs")
        _positive(prefix, "max_steps", self.max_steps, allow_none=True)
        _positive(prefix, "max_epochs", self.max_epochs, allow_none=True)
        for name in (
            "batch_size",
            "grad_accum_steps",
            "eval_interval",
            "eval_batches",
            "log_interval",
            "checkpoint_interval",
        ):
            _positive(prefix, name, getattr(self, name))
        for name in ("grad_clip_norm", "grad_clip_norm_per_tensor", "grad_clip_value", "loss_scale_factor"):
            _positive(prefix, name, getattr(self, name), allow_none=True)
        if self.grad_clip_norm is not None and self.grad_clip_norm_per_tensor is not None:
            raise ConfigError(
                f"{prefix}.grad_clip_norm_per_tensor: set it or {prefix}.grad_clip_norm (global), not both"
            )
        for name in ("stop_after_steps", "final_eval_batches", "threads"):
            _positive(prefix, name, getattr(self, name), allow_none=True)
        _positive(prefix, "parallel_jobs", self.parallel_jobs)
        if not self.divergence_factor > 1.0:
            raise ConfigError(f"{prefix}.divergence_factor: must be > 1, got {self.divergence_factor}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"{prefix}.precision: unknown {self.precision!r}; valid: {', '.join(PRECISIONS)}")
        from soapbench.optimizers.param_groups import ALL_ROLES

        unknown = sorted(set(self.weight_decay_roles) - set(ALL_ROLES))
        if unknown:
            raise ConfigError(f"{prefix}.weight_decay_roles: unknown roles {unknown}; valid: {', '.join(ALL_ROLES)}")
        self.schedule.validate(f"{prefix}.schedule")
        self.ema.validate(f"{prefix}.ema")


def _coerce(cls: type, data: Mapping[str, Any], prefix: str):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types by field name."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}: unknown key; valid: {', '.join(names)}")
    values = {}
    for name, value in data.items():
        values[name] = _coerce_value(hints[name], value, f"{prefix}.{name}")
    return cls(**values)


def _coerce_value(hint: Any, value: Any, path: str):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if value is None:
            return None
        return _coerce_value(options[0], value, path)
    if dataclasses.is_dataclass(hint):
        return _coerce(hint, value, path)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [_coerce_value(typing.get_args(hint)[0], item, path) for item in value]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def load_trainer_config(data: Mapping[str, Any]) -> TrainerConfig:
    config = _coerce(TrainerConfig, data, "trainer")
    config.validate()
    return config


# The top level of configs/train.yaml; a key beyond these (``+foo=1``) would be silently ignored.
TOP_LEVEL_KEYS = (
    "experiment_name", "seed", "device", "run_name", "sweep_keys", "resume", "allow_identity_mismatch",
    "paths", "trainer", "logger", "data", "model", "optimizer",
)  # fmt: skip
PATHS_KEYS = ("data_root", "results_dir", "cache_dir")
LOGGER_WANDB_KEYS = ("mode", "project", "entity", "group", "tags")
DEVICE_TYPES = ("auto", "cpu", "cuda", "mps")


def _unknown_keys(section: Mapping[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], allowed, n=1)
        hint = f"did you mean {prefix}{close[0]}? " if close else ""
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key; {hint}valid: {', '.join(allowed)}")


def validate_run_config(cfg: Mapping[str, Any]) -> None:
    """The keys around the trainer section: unknown keys, the seed, the device, paths, logger."""
    _unknown_keys(cfg, TOP_LEVEL_KEYS, "")
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed: expected an integer in [0, 2**32), got {seed!r}")
    device = str(cfg.get("device", "auto"))
    kind, _, index = device.partition(":")
    if kind not in DEVICE_TYPES or (index and (kind not in ("cuda",) or not index.isdigit())):
        raise ConfigError(f"device: {device!r} is not a device; use auto, cpu, cuda, cuda:<index> or mps")
    # Both become folders under results/runs/: validated before anything is created.
    experiment_folder(cfg.get("experiment_name"))
    if cfg.get("run_name"):
        plain_name("run_name", cfg["run_name"], "soap_lr3e-3")
    if not isinstance(cfg.get("allow_identity_mismatch", False), bool):
        raise ConfigError(
            f"allow_identity_mismatch: expected true or false, got {cfg.get('allow_identity_mismatch')!r}"
        )
    paths = cfg.get("paths") or {}
    if not isinstance(paths, Mapping):
        raise ConfigError(f"paths: expected a mapping, got {paths!r}")
    _unknown_keys(paths, PATHS_KEYS, "paths.")
    logger = cfg.get("logger") or {}
    _unknown_keys(logger, ("wandb",), "logger.")
    _unknown_keys(logger.get("wandb") or {}, LOGGER_WANDB_KEYS, "logger.wandb.")
