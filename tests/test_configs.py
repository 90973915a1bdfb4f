"""Every yaml under configs/ composes, resolves and loads into the typed run config, so a broken config never ships."""

from __future__ import annotations

import importlib.util
import inspect
import json

import pytest
from omegaconf import OmegaConf

from soapbench.config import load_run_config
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
    load_run_config(config)
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
    run = load_run_config(config)
    assert (run.experiment_name, run.seed) == (config["experiment_name"], config["seed"])


def test_every_registered_optimizer_has_a_yaml_and_every_yaml_a_registered_optimizer() -> None:
    from soapbench.optimizers import available_optimizers

    configs = [OmegaConf.load(p) for p in (CONFIG_DIR / "optimizer").glob("*.yaml")]
    names = {
        config["name"] for config in configs if "target" not in config.keys()
    }  # the others name a class by import path
    assert names == set(available_optimizers())


# Peer yamls (``target:`` another package's class) are checked against the constructor keywords recorded here from
# the pinned package, so CI checks them without the peers extra; where a peer is installed, the record is checked
# against it.
PEER_SIGNATURES = CONFIG_DIR / "optimizer" / "peer_signatures.json"
_OPTIMIZER_YAMLS = sorted(
    p.stem for p in (CONFIG_DIR / "optimizer").glob("*.yaml") if p.stem != "custom"
)  # custom names no target


def _optimizer_yaml(stem: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "optimizer" / f"{stem}.yaml"))


def _recorded_signatures() -> dict[str, dict]:
    return json.loads(PEER_SIGNATURES.read_text())["signatures"]


def _peer_installed(target: str) -> bool:
    return importlib.util.find_spec(target.split(".")[0]) is not None


def _recorded_spec(config: dict):
    """The spec of a peer yaml's class as its recorded signature describes it, for a machine without the package."""
    from soapbench.optimizers.param_groups import ALL_ROLES
    from soapbench.optimizers.registry import OptimizerSpec

    recorded = _recorded_signatures()[config["target"]]

    def factory(params, **kwargs):
        raise AssertionError("a recorded signature builds nothing")

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    parameters = [inspect.Parameter(name, kind) for name in ["params", *recorded["keywords"]]]
    if recorded["var_keyword"]:
        parameters.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD))
    factory.__signature__ = inspect.Signature(parameters)
    return OptimizerSpec(config["name"], factory, ALL_ROLES, target=config["target"],
                         strict_kwargs=bool(config.get("strict_kwargs", True)))  # fmt: skip


@pytest.mark.parametrize("stem", _OPTIMIZER_YAMLS)
def test_optimizer_yaml_keys_are_constructor_keywords(stem: str) -> None:
    from soapbench.optimizers.registry import resolve_spec, split_optimizer_config

    config = _optimizer_yaml(stem)
    name, hparams, build_args = split_optimizer_config(config)
    if config.get("target"):
        assert stem == config["name"], f"{stem}.yaml: an imported optimizer's label is its yaml's name"
    if config.get("target") and not _peer_installed(config["target"]):
        spec = _recorded_spec(config)
    else:
        spec = resolve_spec(name, build_args.get("source"))
    unknown = set(hparams) - set(spec.hyperparameter_names())
    assert not unknown, f"{stem}.yaml: {unknown} are not keywords of {spec.target or spec.name}"


def test_every_peer_yaml_has_a_signature_recorded_for_its_pinned_package() -> None:
    peers = {
        config["target"]: config["package"] for config in map(_optimizer_yaml, _OPTIMIZER_YAMLS) if config.get("target")
    }
    assert peers, "the peer yamls are found"
    recorded = {target: entry["package"] for target, entry in _recorded_signatures().items()}
    assert recorded == peers, f"{PEER_SIGNATURES.name} and the peer yamls name the same classes and pinned packages"


@pytest.mark.parametrize("target", sorted(_recorded_signatures()))
def test_a_recorded_peer_signature_is_the_installed_packages(target: str) -> None:
    from soapbench.optimizers.imported import import_target, installed_version
    from soapbench.optimizers.registry import OptimizerSpec

    if not _peer_installed(target):
        pytest.skip(f"{target.split('.')[0]} is not installed; its yamls are checked against the recorded signature")
    recorded = _recorded_signatures()[target]
    found = installed_version(recorded["package"], target)
    assert found == recorded["package"].split("==")[1], (
        f"{target}: {found} is installed; the record is for {recorded['package']}"
    )
    keywords, var_keyword = OptimizerSpec(target, import_target(target), ())._keywords()
    assert {"keywords": keywords, "var_keyword": var_keyword} == {
        k: recorded[k] for k in ("keywords", "var_keyword")
    }, f"{target}: re-record it in {PEER_SIGNATURES.name}: " + json.dumps(
        {"keywords": keywords, "var_keyword": var_keyword}
    )


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
