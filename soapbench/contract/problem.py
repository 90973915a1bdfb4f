"""The contract's test problem: a few small parameters of every shape an optimizer meets, a separable
least-squares loss on them, and the helpers the checks use to train, snapshot and compare.

Each parameter W (viewed as an m×n matrix; a vector as m×1) has its own loss ``½·mean_b ‖X_b (W − W*)ᵀ‖²`` with
a fixed full-column-rank X, so the problem is a well-conditioned convex quadratic: any working optimizer lowers
it within a few steps at its default learning rate, and every parameter's trajectory depends only on its own
state (which is what makes "a param group equals a separate optimizer" a fair check).
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

MATRIX_SHAPES = {"matrix": (5, 4), "wide": (3, 7), "conv": (3, 2, 3, 3)}
VECTOR_SHAPES = {"bias": (5,)}


@dataclass
class Problem:
    """Named parameters and the fixed data of their losses."""

    names: list[str]
    params: list[nn.Parameter]
    inputs: list[Tensor]
    targets: list[Tensor]

    def loss(self) -> Tensor:
        total = 0.0
        for param, inputs, target in zip(self.params, self.inputs, self.targets):
            residual = inputs @ (param.reshape(target.shape) - target).T
            total = total + 0.5 * residual.square().sum(dim=1).mean()
        return total

    def backward(self) -> Tensor:
        """Set every parameter's ``.grad`` to the loss gradient (fresh tensors); returns the loss."""
        for param in self.params:
            param.grad = None
        with torch.enable_grad():
            loss = self.loss()
            loss.backward()
        return loss.detach()

    def snapshot(self) -> list[Tensor]:
        return [param.detach().clone() for param in self.params]

    def clone(self) -> Problem:
        """The same data, with parameters copied from the current values (same dtype and memory format)."""
        params = [nn.Parameter(param.detach().clone()) for param in self.params]
        return Problem(list(self.names), params, self.inputs, self.targets)


def make_problem(
    dtype: torch.dtype = torch.float32,
    *,
    matrices_only: bool = False,
    channels_last: bool = False,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> Problem:
    """The problem's parameters: two matrices and a conv kernel, plus a vector unless ``matrices_only``;
    ``channels_last`` stores the conv kernel in channels-last memory format (as a channels_last model does)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = dict(MATRIX_SHAPES) if matrices_only else {**MATRIX_SHAPES, **VECTOR_SHAPES}
    names, params, inputs, targets = [], [], [], []
    for name, shape in shapes.items():
        rows = shape[0]
        cols = int(torch.Size(shape[1:]).numel()) if len(shape) > 1 else 1
        value = torch.randn(shape, generator=generator, dtype=torch.float64)
        target = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
        data = torch.randn(cols + 3, cols, generator=generator, dtype=torch.float64)
        value = value.to(device=device, dtype=dtype)
        if channels_last and value.dim() == 4:
            value = value.contiguous(memory_format=torch.channels_last)
        names.append(name)
        params.append(nn.Parameter(value))
        inputs.append(data.to(device=device, dtype=dtype))
        targets.append(target.to(device=device, dtype=dtype))
    return Problem(names, params, inputs, targets)


def train(problem: Problem, optimizer: torch.optim.Optimizer, steps: int, scheduler: Any = None) -> None:
    """``steps`` optimizer steps on the problem (gradients set before each step; the scheduler after it)."""
    for _ in range(steps):
        loss = problem.backward()
        optimizer.step()
        step_scheduler(scheduler, loss)


def step_scheduler(scheduler: Any, loss: Tensor) -> None:
    if scheduler is None:
        return
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(loss.item())
    else:
        scheduler.step()


def round_trip(state_dict: dict[str, Any], *, weights_only: bool = True) -> dict[str, Any]:
    """``state_dict`` as a checkpoint holds it: through ``torch.save`` and ``torch.load``."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=weights_only)


def assert_same_params(actual: list[Tensor], expected: list[Tensor], names: list[str], where: str) -> None:
    for name, a, e in zip(names, actual, expected):
        if not torch.equal(a.detach(), e.detach()):
            difference = (a.detach().double() - e.detach().double()).abs().max().item()
            raise AssertionError(f"{where}: parameter {name!r} differs (max |diff| {difference:.3g})")


def assert_identical(actual: Any, expected: Any, where: str) -> None:
    """Nested state equal bit for bit: tensors (dtype and values), containers, numbers (their types too)."""
    if isinstance(expected, Tensor):
        if not isinstance(actual, Tensor):
            raise AssertionError(f"{where}: expected a tensor, got {type(actual).__name__}")
        if actual.dtype != expected.dtype or actual.shape != expected.shape:
            raise AssertionError(
                f"{where}: {actual.dtype}{tuple(actual.shape)} != {expected.dtype}{tuple(expected.shape)}"
            )
        if not torch.equal(actual.cpu(), expected.cpu()):
            raise AssertionError(f"{where}: tensor values differ")
    elif isinstance(expected, dict):
        if set(actual) != set(expected):
            raise AssertionError(f"{where}: keys {sorted(map(str, actual))} != {sorted(map(str, expected))}")
        for key in expected:
            assert_identical(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        if len(actual) != len(expected):
            raise AssertionError(f"{where}: length {len(actual)} != {len(expected)}")
        for index, (a, e) in enumerate(zip(actual, expected)):
            assert_identical(a, e, f"{where}[{index}]")
    else:
        if type(actual) is not type(expected) or actual != expected:
            raise AssertionError(f"{where}: {actual!r} != {expected!r}")


def dtype_structure(value: Any) -> Any:
    """The state with every tensor replaced by its dtype (for "the state has the dtypes a fresh run has")."""
    if isinstance(value, Tensor):
        return value.dtype
    if isinstance(value, dict):
        return {key: dtype_structure(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [dtype_structure(item) for item in value]
    return type(value).__name__


def floating_tensor_path(state: dict[str, Any]) -> tuple | None:
    """A path (keys and list indices) to some floating tensor in one parameter's state, or None."""

    def search(value: Any, path: tuple) -> tuple | None:
        if isinstance(value, Tensor):
            return path if value.is_floating_point() and value.numel() > 0 else None
        items = (
            value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
        )
        for key, item in items:
            if key == "step":
                continue
            found = search(item, (*path, key))
            if found is not None:
                return found
        return None

    return search(state, ())


def get_path(value: Any, path: tuple) -> Any:
    for key in path:
        value = value[key]
    return value


def set_path(value: Any, path: tuple, new: Any) -> None:
    get_path(value, path[:-1])[path[-1]] = new


def copy_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(state_dict)


Factory = Callable[..., torch.optim.Optimizer]
