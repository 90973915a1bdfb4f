"""Any optimizer by import path: optimizer=custom optimizer.target=pkg.module.Class, validated like ours."""

from __future__ import annotations

import json
import os
import textwrap
from importlib import metadata

import pytest
import torch

from soapbench.optimizers import build_optimizer
from soapbench.optimizers.composite import CompositeOptimizer
from soapbench.optimizers.registry import OptimizerConfigError
from soapbench.results import RunStore
from tests.conftest import REPO, run_cli, train_in_process

# A user's optimizer in their own module, outside this repository: sign descent with a decoupled decay.
USER_MODULE = textwrap.dedent(
    """
    import torch

    class SignDescent(torch.optim.Optimizer):
        def __init__(self, params, lr=1e-3, weight_decay=0.0):
            super().__init__(params, dict(lr=lr, weight_decay=weight_decay))

        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.mul_(1 - group["lr"] * group["weight_decay"]).add_(p.grad.sign(), alpha=-group["lr"])
    """
)


def _eval_losses(summary: dict) -> list[float]:
    return [
        r["val/loss"] for r in RunStore(summary["run_dir"]).read_metrics() if r["event"] == "eval" and "val/loss" in r
    ]


def test_torch_sgd_by_import_path_trains_nanogpt_char(results_dir) -> None:
    summary = train_in_process(
        ["optimizer=custom", "optimizer.target=torch.optim.SGD", "+optimizer.lr=0.5", "+optimizer.momentum=0.9"],
        results_dir,
    )
    assert summary["status"] == "completed"
    assert summary["optimizer"] == "sgd", "an imported optimizer without a name is labelled by its class"
    assert summary["run_name"].startswith("sgd-")
    assert summary["optimizer_source"]["target"] == "torch.optim.SGD"
    assert summary["optimizer_source"]["installed_version"] == metadata.version("torch"), "the run records the version"
    losses = _eval_losses(summary)
    assert losses[-1] < losses[0] - 0.05, losses


def test_a_users_module_on_pythonpath_trains_its_matrices_beside_a_companion(results_dir, tmp_path) -> None:
    user_dir = tmp_path / "user_code"
    user_dir.mkdir()
    (user_dir / "my_optimizers.py").write_text(USER_MODULE)
    result = run_cli(
        ["optimizer=custom", "optimizer.target=my_optimizers.SignDescent", "optimizer.name=signdescent",
         "+optimizer.lr=3e-3", "optimizer.main_roles=[matrix]", "optimizer.companion={name: adamw, lr: 1e-3}"],
        results_dir,
        env={"PYTHONPATH": os.pathsep.join([str(user_dir), str(REPO), os.environ.get("PYTHONPATH", "")])},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (summary_path,) = (results_dir / "runs").glob("*/signdescent-*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "completed" and summary["optimizer"] == "signdescent"
    losses = _eval_losses(summary)
    assert losses[-1] < losses[0] - 0.05, losses


def test_main_roles_and_companion_split_the_model_as_for_built_in_optimizers() -> None:
    model = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer = build_optimizer(
        None, model, source={"target": "torch.optim.SGD"}, main_roles=["matrix"], companion={"name": "adamw"}, lr=0.1
    )
    assert isinstance(optimizer, CompositeOptimizer)
    sgd, companion = optimizer.optimizers.values()
    assert isinstance(sgd, torch.optim.SGD) and [p.shape for g in sgd.param_groups for p in g["params"]] == [(4, 4)]
    assert sum(len(g["params"]) for g in companion.param_groups) == 4  # embedding, bias, norm weight and bias
    assert all(g["lr"] == 0.1 for g in companion.param_groups), "the companion takes the main lr when not given"


class KeywordsAndKwargs(torch.optim.SGD):
    """Like pytorch-optimizer's and heavyball's classes: named keywords and a **kwargs sink."""

    def __init__(self, params, lr=0.1, momentum=0.0, **kwargs):
        super().__init__(params, lr=lr, momentum=momentum)


def test_a_typo_is_not_swallowed_by_kwargs_unless_asked() -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    source = {"target": f"{__name__}.KeywordsAndKwargs"}
    with pytest.raises(OptimizerConfigError, match=r"optimizer.momentun: .*valid: lr, momentum .*strict_kwargs=false"):
        build_optimizer(None, params, source=source, momentun=0.9)
    built = build_optimizer(None, params, source={**source, "strict_kwargs": False}, momentun=0.9)
    assert isinstance(built, KeywordsAndKwargs)


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["optimizer.target=torch.optim.SGD", "+optimizer.lr=0.1", "+optimizer.momentun=0.9"],
         "optimizer.momentun: not a hyperparameter of torch.optim.SGD; valid: lr, momentum, dampening"),
        (["optimizer.target=no_such_package.sub.Opt", "optimizer.package=no-such-package"],
         "optimizer.target: cannot import module 'no_such_package.sub' (No module named 'no_such_package'); "
         "pip install 'no-such-package'"),
        (["optimizer.target=no_such_package.Opt", "optimizer.extra=peers"], 'install the \'peers\' extra: pip install -e ".[peers]"'),
        (["optimizer.target=torch.optim.NoSuchOptimizer"], "module 'torch.optim' has no 'NoSuchOptimizer'; its optimizers: "),
        (["optimizer.target=torch.nn.Linear"], "optimizer.target: torch.nn.Linear is a class but not a torch.optim.Optimizer"),
        # the README's command without Hydra's '+': the line gives the exact override to type instead
        (["optimizer.target=torch.optim.SGD", "optimizer.lr=0.1"],
         "optimizer.lr: not a key of the optimizer's yaml; use +optimizer.lr=0.1 to pass a keyword the yaml does not list"),
    ],
)  # fmt: skip
def test_bad_custom_optimizer_is_one_line_exit_2_and_no_run_dir(results_dir, overrides, expected) -> None:
    result = run_cli(["optimizer=custom", *overrides], results_dir)
    assert result.returncode == 2, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert expected in line, line
    assert not (results_dir / "runs").exists(), "nothing is written for a rejected optimizer"
