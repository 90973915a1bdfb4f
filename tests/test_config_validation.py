"""Bad trainer values are rejected with the dotted field name and what is allowed."""

from __future__ import annotations

import pytest

from soapbench.config import config_hash, load_trainer_config
from soapbench.errors import ConfigError


@pytest.mark.parametrize(
    "override,field",
    [
        ({"eval_interval": 0}, "trainer.eval_interval"),
        ({"batch_size": -3}, "trainer.batch_size"),
        ({"precision": "fp8"}, "trainer.precision"),
        ({"schedule": {"name": "triangle"}}, "trainer.schedule.name"),
        ({"schedule": {"min_lr_ratio": 2.0}}, "trainer.schedule.min_lr_ratio"),
        ({"ema": {"decay": 1.5}}, "trainer.ema.decay"),
        ({"max_steps": "many"}, "trainer.max_steps"),
        ({"no_such_key": 1}, "trainer.no_such_key"),
        ({"weight_decay_roles": ["matrix", "bogus"]}, "trainer.weight_decay_roles"),
        ({"divergence_factor": 0.5}, "trainer.divergence_factor"),
    ],
)
def test_bad_trainer_values_name_the_field(override: dict, field: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_trainer_config(override)
    message = str(error.value)
    assert message.startswith(field), message
    assert "\n" not in message


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError, match="valid: .*max_steps"):
        load_trainer_config({"max_stepz": 3})


def test_config_hash_ignores_logging_and_paths_but_not_hyperparameters() -> None:
    base = {"seed": 1, "optimizer": {"name": "adamw", "lr": 1e-3}, "trainer": {"max_steps": 5}, "logger": {"a": 1}, "paths": {"x": 1}}
    same = {**base, "logger": {"a": 2}, "paths": {"x": 2}, "trainer": {"max_steps": 5, "stop_after_steps": 3}}
    other = {**base, "optimizer": {"name": "adamw", "lr": 2e-3}}
    assert config_hash(base) == config_hash(same)
    assert config_hash(base) != config_hash(other)
