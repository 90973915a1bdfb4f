"""A non-capturable tensor lr is read as the Python float it holds, as torch.optim reads it, on every optimizer.

PyTorch's own ``test_tensor_lr`` compares ``lr=1e-3`` with ``lr=torch.tensor(1e-3)``. A float32 tensor does not hold
1e-3 but 0.0010000000474974513, so those two runs differ by that value, not by the path: on the test's rank-deficient
problem (a rank-1 gradient) the eigenbasis optimizers amplify a 5e-8 relative change in lr to ~1e-3 in the weights
within a dozen steps, on every CPU. What torch guarantees, and what is checked here, is that the tensor path runs the
same ops as the float path with the float the tensor holds: bit-identical, on any CPU (same ops, same order).
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import Parameter

from soapbench.contract.registered import INPUTS
from soapbench.optimizers import get_spec

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 12


def _torch_problem_trajectory(optimizer_class, lr, kwargs):
    """torch's test_tensor_lr problem: a 10×5 weight and a bias, loss (w·x + b)²."""
    torch.manual_seed(0)
    weight, bias = Parameter(torch.randn(10, 5)), Parameter(torch.randn(10))
    inputs = torch.randn(5)
    optimizer = optimizer_class([weight, bias], lr=lr, **kwargs)
    trajectory = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        (weight.mv(inputs) + bias).pow(2).sum().backward()
        optimizer.step()
        trajectory.append((weight.detach().clone(), bias.detach().clone()))
    return trajectory


def _cases():
    for name in ("soap", "shampoo", "soap_muon", "kl_soap", "kl_shampoo", "adafactor"):  # muon takes matrices only
        for optim_input in INPUTS[name]():
            if getattr(optim_input, "channels_last", False) or "lr" in optim_input.kwargs:
                continue
            yield pytest.param(name, optim_input.kwargs, id=f"{name}: {optim_input.desc}")


@pytest.mark.filterwarnings("ignore:SOAP merge_dims")
@pytest.mark.parametrize("name, kwargs", list(_cases()))
def test_a_float32_tensor_lr_steps_as_the_float_it_holds(name: str, kwargs: dict) -> None:
    optimizer_class = get_spec(name).factory
    tensor_lr = torch.tensor(1e-3)  # float32, as in torch's test
    with_tensor = _torch_problem_trajectory(optimizer_class, tensor_lr, kwargs)
    with_float = _torch_problem_trajectory(optimizer_class, tensor_lr.item(), kwargs)
    for step, ((weight_t, bias_t), (weight_f, bias_f)) in enumerate(zip(with_tensor, with_float), start=1):
        assert torch.equal(weight_t, weight_f) and torch.equal(bias_t, bias_f), f"step {step}"


def test_the_held_float_is_not_the_literal() -> None:
    """Why the test above compares with ``tensor.item()`` and not with 1e-3: the values differ."""
    assert torch.tensor(1e-3).item() != 1e-3
