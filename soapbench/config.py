"""Typed, validated views of the composed Hydra config.

Hydra composes ``configs/train.yaml``; :func:`load_run_config` turns the resolved mapping into a
:class:`RunConfig` (the trainer part: :func:`load_trainer_config`), one coercer for every section,
whose ``validate`` methods reject bad values with a message that names the dotted field and what is
allowed. Optimizer, model and data sections stay mappings: their owners (the registries) validate
them against constructor signatures. Run identity is computed from the mapping, not from these views.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

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


@dataclass(frozen=True)
class IntegerIn:
    """``Annotated[int, IntegerIn(...)]``: an exact integer in [low, high). Unlike a plain ``int`` field, no float is
    taken for one: a seed of 3.0 would train seed 3's run under another name and another identity."""

    low: int
    high: int
    # How the range reads in the error (``[0, 2**32)``).
    text: str

    def check(self, value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not self.low <= value < self.high:
            raise ConfigError(f"{path}: expected an integer in {self.text}, got {value!r}")
        return value


def _joined(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _unknown_keys(section: Mapping[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], allowed, n=1)
        hint = f"did you mean {_joined(prefix, close[0])}? " if close else ""
        raise ConfigError(f"{_joined(prefix, unknown[0])}: unknown key; {hint}valid: {', '.join(allowed)}")


def _coerce(cls: type, data: Mapping[str, Any], prefix: str):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys, missing required ones and wrong types by name."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = dataclasses.fields(cls)
    _unknown_keys(data, tuple(f.name for f in fields), prefix)
    for f in fields:
        if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            path = _joined(prefix, f.name)
            raise ConfigError(f"{path}: missing; set {path}=<value>")
    values = {}
    for name, value in data.items():
        values[name] = _coerce_value(hints[name], value, _joined(prefix, name))
    return cls(**values)


def _coerce_value(hint: Any, value: Any, path: str):
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:  # the constraint checks the value as given, in place of the base type's coercion
        _, *constraints = typing.get_args(hint)
        for constraint in constraints:
            value = constraint.check(value, path)
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        first_error = None
        for option in options:
            try:
                return _coerce_value(option, value, path)
            except ConfigError as error:
                first_error = first_error or error
        raise first_error
    if dataclasses.is_dataclass(hint):
        return _coerce(hint, value, path)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return value
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


DEVICE_TYPES = ("auto", "cpu", "cuda", "mps")


@dataclass(kw_only=True)
class PathsConfig:
    """Where things live; none of it is part of a run's identity."""

    # Laid out like shared/data; None: the user cache dir.
    data_root: str | None = None
    results_dir: str
    # Token shards, decoded images; None: the user cache dir.
    cache_dir: str | None = None


@dataclass
class WandbConfig:
    mode: str = "offline"
    project: str | None = "soapbench"
    entity: str | None = None
    # None: the experiment name.
    group: str | None = None
    # Added to the automatic tags (optimizer, model).
    tags: list[str] = field(default_factory=list)

    def validate(self, prefix: str) -> None:
        from soapbench.tracking import WANDB_MODES

        if self.mode not in WANDB_MODES:
            raise ConfigError(f"{prefix}.mode: {self.mode!r} is not one of {', '.join(WANDB_MODES)}")


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)


# Hydra reads experiment_name=2024 as a number; it names a folder all the same, and the summary keeps it as given.
Name = str | int


@dataclass(kw_only=True)
class RunConfig:
    """The top level of ``configs/train.yaml``, in its order (the unknown-key error lists the keys so). A key beyond
    these (``+foo=1``) is refused: ignored, it would look like a setting of the run while changing nothing.

    Run identity, the run directory and ``config.yaml`` are computed from the resolved mapping, never from this
    view, so a run found before this view existed keeps its identity."""

    experiment_name: Name | None = "default"
    seed: Annotated[int, IntegerIn(0, 2**32, "[0, 2**32)")]
    device: str = "auto"
    run_name: Name | None = None
    # Keys whose values go into the run name (a multirun fills in the swept ones).
    sweep_keys: list[str] | None = None
    # auto, never, or a checkpoint (or run directory) to start from.
    resume: str = "auto"
    allow_identity_mismatch: bool = False
    paths: PathsConfig
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    # Validated by their registries against the constructors they configure.
    data: dict[str, Any]
    model: dict[str, Any]
    optimizer: dict[str, Any]

    def validate(self) -> None:
        kind, _, index = self.device.partition(":")
        if kind not in DEVICE_TYPES or (index and (kind != "cuda" or not index.isdigit())):
            raise ConfigError(f"device: {self.device!r} is not a device; use auto, cpu, cuda, cuda:<index> or mps")
        # Both become folders under results/runs/: validated before anything is created.
        experiment_folder(self.experiment_name)
        if self.run_name:
            plain_name("run_name", self.run_name, "soap_lr3e-3")
        self.logger.wandb.validate("logger.wandb")
        self.trainer.validate("trainer")


def load_run_config(cfg: Mapping[str, Any]) -> RunConfig:
    """The typed view of a resolved run config; ConfigError (one line naming the dotted key) if it is bad."""
    config = _coerce(RunConfig, cfg, "")
    config.validate()
    return config
