"""Every yaml under configs/ composes and resolves, so a broken config never ships."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from tests.conftest import CONFIG_DIR, compose, resolved

GROUPS = ("optimizer", "model", "data", "trainer", "logger", "variant")


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


# Image data and the image model only make sense together.
_PARTNERS = {("data", "colorization"): "model=colorization", ("data", "colorization_cpu"): "model=colorization",
             ("model", "colorization"): "data=colorization_cpu",
             ("optimizer", "custom"): "optimizer.target=torch.optim.SGD"}  # fmt: skip


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes_and_resolves(group: str, option: str) -> None:
    partner = _PARTNERS.get((group, option))
    config = resolved([f"{group}={option}", *([partner] if partner else [])])
    if group == "variant":  # a comparison arm picks an optimizer and its distinguishing settings
        assert option.startswith(config["optimizer"]["name"])
        return
    assert config[group] is not None
    if group == "optimizer":
        assert config["optimizer"]["name"] or config["optimizer"]["target"], "a registered optimizer or an import path"
    if group == "model":
        assert config["model"]["arch"], "every model yaml names its architecture"


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_composes_and_resolves(experiment: str) -> None:
    config = resolved([f"experiment={experiment}"])
    assert config["experiment_name"] != "default", "an experiment preset names its results folder"


def test_every_registered_optimizer_has_a_yaml_and_every_yaml_a_registered_optimizer() -> None:
    from optimizers import available_optimizers

    configs = [OmegaConf.load(p) for p in (CONFIG_DIR / "optimizer").glob("*.yaml")]
    names = {config["name"] for config in configs if "target" not in config.keys()}  # the others name a class by import path
    assert names == set(available_optimizers())


def test_optimizer_yaml_keys_are_constructor_keywords() -> None:
    from optimizers.imported import import_target
    from optimizers.registry import OptimizerConfigError, resolve_spec, split_optimizer_config

    for path in (CONFIG_DIR / "optimizer").glob("*.yaml"):
        if path.stem == "custom":
            continue  # no target until the user names one
        config = OmegaConf.to_container(OmegaConf.load(path))
        if config.get("target"):
            assert path.stem == config["name"], f"{path.name}: an imported optimizer's label is its yaml's name"
            try:
                import_target(config["target"])
            except OptimizerConfigError:
                continue  # its extra is not installed here (tests/test_peers.py skips too)
        name, hparams, build_args = split_optimizer_config(config)
        spec = resolve_spec(name, build_args.get("source"))
        unknown = set(hparams) - set(spec.hyperparameter_names())
        assert not unknown, f"{path.name}: {unknown} are not keywords of {spec.target or spec.name}"


def test_cli_style_overrides_reach_the_config() -> None:
    config = resolved(["optimizer.lr=0.005", "trainer.max_steps=7", "seed=3"])
    assert config["optimizer"]["lr"] == 0.005
    assert config["trainer"]["max_steps"] == 7
    assert config["seed"] == 3


def test_unknown_option_lists_the_valid_ones() -> None:
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException) as error:
        compose(["optimizer=not_an_optimizer"])
    assert "adamw" in str(error.value)
