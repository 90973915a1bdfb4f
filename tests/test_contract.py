"""The contract library (soapbench.contract) itself: a correct optimizer passes every category, and each kind of
breakage is reported as a failure of the category that owns it (so check-optimizer's table can be trusted)."""

from __future__ import annotations

import pytest
import torch

from soapbench.contract import CATEGORIES, Result, info_for, registered_info, run_contract, summarize
from soapbench.contract.torch_testing import ErrorOptimizerInput, OptimizerInput

pytestmark = pytest.mark.usefixtures("one_thread")


class PlainSGD(torch.optim.Optimizer):
    """A small, correct optimizer: SGD with momentum, its own state and torch's tensor-lr rules."""

    def __init__(self, params, lr=0.05, momentum=0.5, weight_decay=0.0):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    def _lr(self, group):
        return float(group["lr"])

    def _update(self, param, group, grad):
        state = self.state[param]
        if not state:
            state["step"] = 0
            state["momentum_buffer"] = torch.zeros_like(param)
        state["step"] += 1
        buffer = state["momentum_buffer"]
        buffer.mul_(group["momentum"]).add_(grad)
        param.mul_(1 - self._lr(group) * group["weight_decay"]).add_(buffer, alpha=-self._lr(group))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group, param.grad)
        return loss


class WritesIntoGrad(PlainSGD):
    def _update(self, param, group, grad):
        super()._update(param, group, grad.mul_(1.0))  # in place, even if value-preserving
        grad.add_(1e-3)


class IgnoresGroupLr(PlainSGD):
    def _lr(self, group):
        return float(self.defaults["lr"])


class ScalarOnlyLr(PlainSGD):
    """Passes the group lr straight to torch ops: a [1]-shaped tensor lr crashes there."""

    def _lr(self, group):
        return group["lr"]


class MovesOnZeroGradients(PlainSGD):
    def _update(self, param, group, grad):
        super()._update(param, group, grad + 1e-4)


class CounterOutsideTheState(PlainSGD):
    """Keeps its step count on the optimizer object, so a reloaded optimizer restarts it."""

    def _update(self, param, group, grad):
        self.steps_taken = getattr(self, "steps_taken", 0) + 1
        super()._update(param, group, grad * (1 + 0.01 * self.steps_taken))


class ReReadsTheLoadedArgument(PlainSGD):
    """The old dtype-keeping reload: state re-read from the argument after torch's load (hooks' work lost)."""

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for index, param in enumerate(params):
            if index in state_dict["state"]:
                self.state[param] = {
                    k: v.clone() if torch.is_tensor(v) else v for k, v in state_dict["state"][index].items()
                }


class Ascends(PlainSGD):
    def _lr(self, group):
        return -float(group["lr"])


def _failed(results: list[Result]) -> dict[str, list[str]]:
    failed: dict[str, list[str]] = {}
    for result in results:
        if result.status == "fail":
            failed.setdefault(result.category, []).append(f"{result.name}: {result.reason}")
    return failed


def test_a_correct_optimizer_passes_every_category() -> None:
    results = run_contract(PlainSGD, {"lr": 0.02})
    assert _failed(results) == {}
    assert set(summarize(results)) == set(CATEGORIES)
    assert all(result.status in ("pass", "skip") and (result.status == "pass" or result.reason) for result in results)


@pytest.mark.parametrize(
    "optimizer, category, message",
    [
        (WritesIntoGrad, "grads_untouched", "modified the gradient"),
        (IgnoresGroupLr, "param_groups", "differs"),
        (ScalarOnlyLr, "tensor_lr", "TypeError"),
        (MovesOnZeroGradients, "zero_grad", "differs"),
        (CounterOutsideTheState, "state_dict", "differs"),
        (ReReadsTheLoadedArgument, "hooks", "pre-hook"),
        (Ascends, "convergence", "did not fall"),
    ],
)
def test_each_breakage_fails_its_category(optimizer, category: str, message: str) -> None:
    failed = _failed(run_contract(optimizer, {"lr": 0.02}, dtypes=[torch.float64], categories=[category]))
    assert category in failed and any(message in line for line in failed[category]), failed


def test_a_crash_is_a_failure_naming_the_exception_and_never_escapes() -> None:
    class CrashesOnStep(PlainSGD):
        def step(self, closure=None):
            raise RuntimeError("boom")

    results = run_contract(CrashesOnStep, {}, dtypes=[torch.float32], categories=["convergence", "deepcopy"])
    assert results and all(r.status == "fail" and "RuntimeError: boom" in r.reason for r in results)


def test_error_inputs_run_one_by_one() -> None:
    info = info_for(PlainSGD, {})
    generic = info.optim_error_inputs_func
    info.optim_error_inputs_func = lambda device, dtype: (
        generic(device, dtype)
        + [
            ErrorOptimizerInput(
                OptimizerInput(params=None, kwargs={"lr": -1.0}, desc="negative lr"),
                error_type=ValueError,
                error_regex="lr must be > 0",
            ),
            ErrorOptimizerInput(
                OptimizerInput(params=None, kwargs={"momentum": -1.0}, desc="negative momentum"),
                error_type=ValueError,
                error_regex="momentum",
            ),
        ]
    )
    results = {r.name: r for r in run_contract(info, categories=["errors"])}
    assert results["negative lr -> ValueError"].status == "pass"
    assert results["negative momentum -> ValueError"].status == "fail"  # PlainSGD does not validate momentum
    assert results["negative momentum -> ValueError"].reason == "no ValueError at construction"
    assert len(results) >= 6 and sum(r.status == "pass" for r in results.values()) == len(results) - 1


def test_matrices_only_is_probed_and_registered_infos_know_it() -> None:
    class MatricesOnly(PlainSGD):
        def __init__(self, params, **kwargs):
            params = list(params)
            if any(p.dim() < 2 for p in params):
                raise ValueError("matrices only")
            super().__init__(params, **kwargs)

    assert info_for(MatricesOnly, {}).matrices_only and not info_for(PlainSGD, {}).matrices_only
    assert registered_info("muon").matrices_only and not registered_info("soap").matrices_only
    assert _failed(run_contract(MatricesOnly, {}, dtypes=[torch.float32], categories=["convergence"])) == {}


def test_bad_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError, match="unknown contract categories"):
        run_contract(PlainSGD, {}, categories=["speed"])
    with pytest.raises(ValueError, match="kwargs go with"):
        run_contract(registered_info("soap"), {"lr": 1.0})


def test_importing_the_contract_leaves_rng_argv_and_backend_flags_alone() -> None:
    import subprocess
    import sys

    script = (
        "import sys, torch; torch.manual_seed(3); expected = torch.rand(3); torch.manual_seed(3);"
        "import soapbench.contract;"
        "assert torch.equal(torch.rand(3), expected), 'RNG reseeded';"
        "assert sys.argv[1:] == ['-h', '--x'], sys.argv;"
        "torch.backends.mkldnn.enabled = True; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", script, "-h", "--x"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
