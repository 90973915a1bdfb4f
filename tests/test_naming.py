"""Run names that say what a sweep varies."""

from __future__ import annotations

from soapbench.naming import format_value, run_name

CONFIG = {"optimizer": {"name": "soap", "lr": 0.003, "betas": [0.9, 0.95]}, "model": {"name": "nanogpt_char_cpu"},
          "trainer": {"schedule": {"name": "wsd"}}, "data": {"name": "x"}, "seed": 0}  # fmt: skip


def test_values_are_short_and_file_name_safe() -> None:
    assert [format_value(v) for v in (3e-3, 1e-4, 0.95, 10, 2.5e4, True, [0.9, 0.95], "a/b c")] == [
        "3e-3", "1e-4", "0.95", "10", "2.5e4", "true", "0.9_0.95", "a_b_c"]  # fmt: skip


def test_run_name_carries_the_swept_values_and_group_choices() -> None:
    sweep = ["optimizer.lr", "optimizer.betas", "variant=soap_f10", "optimizer=soap", "seed"]
    name = run_name({**CONFIG, "sweep_keys": sweep}, "abc")
    assert name == "soap-nanogpt_char_cpu-soap_f10-lr3e-3-betas0.9_0.95-s0-abc"
    assert run_name(CONFIG, "abc") == "soap-nanogpt_char_cpu-s0-abc", "a single run: no swept values"


def test_keys_sharing_a_last_segment_are_spelled_out() -> None:
    name = run_name({**CONFIG, "sweep_keys": ["optimizer.name", "trainer.schedule.name", "data.name"]}, "h")
    assert name == "soap-nanogpt_char_cpu-trainer_schedule_namewsd-data_namex-s0-h"


def test_machine_paths_never_enter_a_run_name() -> None:
    from soapbench.naming import swept_values

    config = {"paths": {"data_root": "/work/shared/data"}, "optimizer": {"lr": 3e-3}}
    assert swept_values(config, ["paths.data_root", "optimizer.lr"]) == ["lr3e-3"]
