"""Bad config values (the trainer section and the top level) are rejected with the dotted field name and what is
allowed, in one line."""

from __future__ import annotations

import pytest

from soapbench.config import load_run_config, load_trainer_config
from soapbench.errors import ConfigError
from tests.conftest import resolved, run_cli


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


# The top level: (what is changed in a composed config, the one line it must give).
BAD_TOP_LEVEL = [
    ({"seed": "abc"}, "seed: expected an integer in [0, 2**32), got 'abc'"),
    ({"seed": 2**32}, "seed: expected an integer in [0, 2**32), got 4294967296"),
    # Not rounded: seed=3.0 would train seed 3's run under another name and another identity.
    ({"seed": 3.0}, "seed: expected an integer in [0, 2**32), got 3.0"),
    ({"device": "tpu"}, "device: 'tpu' is not a device; use auto, cpu, cuda, cuda:<index> or mps"),
    ({"device": "cpu:1"}, "device: 'cpu:1' is not a device; use auto, cpu, cuda, cuda:<index> or mps"),
    ({"logger": {"wandb": {"mode": "loud"}}}, "logger.wandb.mode: 'loud' is not one of offline, online, disabled"),
    ({"logger": {"wandb": {"tags": "fast"}}}, "logger.wandb.tags: expected a list, got 'fast'"),
    ({"logger": {"wandb": {"projekt": "x"}}}, "logger.wandb.projekt: unknown key; did you mean logger.wandb.project? "
     "valid: mode, project, entity, group, tags"),
    ({"paths": {"results_dir": 3}}, "paths.results_dir: expected a string, got 3"),
    ({"sweep_keys": "optimizer.lr"}, "sweep_keys: expected a list, got 'optimizer.lr'"),
    ({"resume": ["never"]}, "resume: expected a string, got ['never']"),
    ({"allow_identity_mismatch": "yes"}, "allow_identity_mismatch: expected true or false, got 'yes'"),
    ({"optimizer": "soap"}, "optimizer: expected a mapping, got 'soap'"),
    ({"run_name": "../elsewhere"}, "run_name: '../elsewhere' is a path, not a name; use a plain name without '/' or "
     "'..' (e.g. soap_lr3e-3)"),
    ({"trainer": {"max_steps": "many"}}, "trainer.max_steps: expected an integer, got 'many'"),
    ({"foo": 1}, "foo: unknown key; valid: experiment_name, seed, device, run_name, sweep_keys, resume, "
     "allow_identity_mismatch, paths, trainer, logger, data, model, optimizer"),
    ({"sed": 1}, "sed: unknown key; did you mean seed? valid: experiment_name, seed, device, run_name, sweep_keys, "
     "resume, allow_identity_mismatch, paths, trainer, logger, data, model, optimizer"),
]  # fmt: skip


@pytest.fixture(scope="module")
def composed() -> dict:
    return resolved([])


def _with(config: dict, change: dict) -> dict:
    """``config`` with ``change`` merged in one level down (a section's other keys stay)."""
    merged = dict(config)
    for key, value in change.items():
        merged[key] = (
            {**config[key], **value} if isinstance(value, dict) and isinstance(config.get(key), dict) else value
        )
    return merged


@pytest.mark.parametrize("change,line", BAD_TOP_LEVEL, ids=[str(change) for change, _ in BAD_TOP_LEVEL])
def test_bad_top_level_values_give_one_line_naming_the_key(composed: dict, change: dict, line: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_run_config(_with(composed, change))
    assert str(error.value) == line


def test_a_missing_seed_or_results_dir_is_refused_not_defaulted(composed: dict) -> None:
    without_seed = {k: v for k, v in composed.items() if k != "seed"}
    with pytest.raises(ConfigError, match=r"^seed: missing; set seed=<value>$"):
        load_run_config(without_seed)
    with pytest.raises(ConfigError, match=r"^paths.results_dir: missing; set paths.results_dir=<value>$"):
        load_run_config({**composed, "paths": {"data_root": None}})


def test_the_run_config_keeps_every_value_and_leaves_the_mapping_as_it_was() -> None:
    import copy

    from soapbench.config import load_trainer_config

    config = resolved(["seed=7", "device=cpu", "experiment_name=2024", "run_name=mine", "sweep_keys=[optimizer.lr]",
                       "resume=never", "allow_identity_mismatch=true", "paths.results_dir=/tmp/r",
                       "logger.wandb.mode=disabled", "logger.wandb.tags=[a,b]", "logger.wandb.group=g",
                       "trainer.max_steps=1e3"])  # fmt: skip
    before = copy.deepcopy(config)
    run = load_run_config(config)
    assert config == before, "identity, config.yaml and the summary are computed from the mapping: it must not change"
    assert (run.seed, run.device, run.run_name, run.sweep_keys, run.resume) == (
        7,
        "cpu",
        "mine",
        ["optimizer.lr"],
        "never",
    )
    # Hydra reads 2024 as a number; kept as given, so the summary's "experiment" is what the mapping says.
    assert run.experiment_name == 2024 and run.allow_identity_mismatch is True
    assert (run.paths.results_dir, run.paths.data_root, run.paths.cache_dir) == (
        "/tmp/r",
        config["paths"]["data_root"],
        config["paths"]["cache_dir"],
    )
    wandb = run.logger.wandb
    assert (wandb.mode, wandb.project, wandb.entity, wandb.group, wandb.tags) == (
        "disabled",
        "soapbench",
        None,
        "g",
        ["a", "b"],
    )
    assert run.trainer == load_trainer_config(config["trainer"]) and run.trainer.max_steps == 1000
    assert run.optimizer is config["optimizer"] and run.model is config["model"] and run.data is config["data"]


def test_the_drivers_composition_refuses_a_bad_logger_mode_before_anything_starts() -> None:
    from soapbench.composition import compose_run_config

    with pytest.raises(ConfigError) as error:
        compose_run_config(["logger.wandb.mode=loud"])
    assert str(error.value) == "logger.wandb.mode: 'loud' is not one of offline, online, disabled"


def test_train_py_refuses_tags_that_are_not_a_list_in_one_line_and_writes_nothing(results_dir) -> None:
    result = run_cli(["logger.wandb.tags=fast"], results_dir)
    assert result.returncode == 2, result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        "error: logger.wandb.tags: expected a list, got 'fast'"
    ]
    assert not list(results_dir.iterdir())


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
