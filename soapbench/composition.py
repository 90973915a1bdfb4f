"""A run's config composed and validated exactly as ``scripts/train.py`` would, without training: the drivers
(``reproduce.py``, ``search.py``, the benchmarks, check-optimizer) and the tests compose with it, and the drivers
check their overrides with it before they start or record anything. The one place ``configs/`` is located.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from soapbench.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def compose_train_config(overrides: Sequence[str]) -> Any:
    """Hydra's composition of ``configs/train.yaml`` with ``overrides``, unresolved (an OmegaConf DictConfig)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def compose_resolved(overrides: Sequence[str]) -> dict[str, Any]:
    """The config of ``train.py <overrides>`` as plain containers, interpolations resolved, not yet validated."""
    from soapbench.cli import resolve

    return resolve(compose_train_config(overrides))


def compose_run_config(overrides: list[str]) -> dict:
    """The resolved config of ``train.py <overrides>``; ConfigError (one line naming the field) if train.py would refuse it."""
    from soapbench.cli import USER_ERRORS, hydra_error_line
    from soapbench.config import load_run_config

    try:
        config = compose_resolved(overrides)
        load_run_config(config)
    except USER_ERRORS as error:
        raise ConfigError(str(error)) from error
    except Exception as error:
        line = hydra_error_line(error)
        if line is None:
            raise
        raise ConfigError(line) from error
    return config


def locate_planned_run(overrides: list[str]):
    """Where the run of ``train.py <overrides>`` lives (its identity's directory), composed and validated as
    train.py would, without training it: the one definition of "the same run" for every driver."""
    from soapbench.data.errors import DataError
    from soapbench.optimizers.imported import with_label
    from soapbench.rundir import locate_run

    config = compose_run_config(overrides)
    try:
        return locate_run({**config, "optimizer": with_label(config["optimizer"])})
    except DataError as error:
        raise ConfigError(str(error)) from error
