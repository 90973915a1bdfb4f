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
        ({"threads": 0}, "trainer.threads"),
        ({"threads": "abc"}, "trainer.threads"),
        ({"parallel_jobs": 0}, "trainer.parallel_jobs"),
        ({"final_eval_batches": 0}, "trainer.final_eval_batches"),
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
    same = {**base, "logger": {"a": 2}, "paths": {"x": 2},
            "trainer": {"max_steps": 5, "stop_after_steps": 3, "threads": 2, "parallel_jobs": 4}}  # fmt: skip
    other = {**base, "optimizer": {"name": "adamw", "lr": 2e-3}}
    assert config_hash(base) == config_hash(same)
    assert config_hash(base) != config_hash(other)


def test_thread_settings_do_not_split_a_configuration_in_the_report() -> None:
    from soapbench.report.store import is_ignored

    assert is_ignored("trainer.threads") and is_ignored("trainer.parallel_jobs")
    assert not is_ignored("trainer.final_eval_batches"), "what the final numbers are measured on is part of the run"
