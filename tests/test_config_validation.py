"""Bad trainer values are rejected with the dotted field name and what is allowed."""

from __future__ import annotations

import pytest

from soapbench.config import load_trainer_config
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


def test_identity_ignores_logging_paths_and_execution_knobs_but_not_hyperparameters_or_data() -> None:
    from soapbench.identity import run_identity

    base = {"seed": 1, "optimizer": {"name": "adamw", "lr": 1e-3}, "trainer": {"max_steps": 5}, "logger": {"a": 1},
            "paths": {"data_root": "/here"}, "model": {}, "data": {"name": "d"}}  # fmt: skip
    data = {"train_sha256": "aa", "val_sha256": "bb"}
    same = {**base, "logger": {"a": 2}, "paths": {"data_root": "/there"}, "device": "cpu",
            "trainer": {"max_steps": 5, "stop_after_steps": 3, "checkpoint_interval": 7, "threads": 2, "parallel_jobs": 4}}  # fmt: skip
    other = {**base, "optimizer": {"name": "adamw", "lr": 2e-3}}
    assert run_identity(base, data).hash == run_identity(same, data).hash
    assert run_identity(base, data).hash != run_identity(other, data).hash
    assert run_identity(base, data).hash != run_identity(base, {**data, "train_sha256": "cc"}).hash
    stored = run_identity(base, data).as_record()
    assert run_identity(other, data).differing_keys(stored) == ["optimizer.lr"]


def test_thread_settings_do_not_split_a_configuration_in_the_report() -> None:
    from soapbench.report.store import is_ignored

    assert is_ignored("trainer.threads") and is_ignored("trainer.parallel_jobs")
    assert not is_ignored("trainer.final_eval_batches"), "what the final numbers are measured on is part of the run"
