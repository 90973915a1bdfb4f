"""Drive an optimizer through the golden problem exactly as ../shared/golden/README.md §2 describes.

Used by the golden tests and by ``check-optimizer``'s parity row. The trajectories live outside the
repository: ``$SOAPBENCH_GOLDEN``, else ``golden/`` beside ``$SOAPBENCH_DATA`` (``../shared/golden``).

Each parameter has its own linear-regression loss; at step t the gradient of parameter W is
``G = (R^T X)/B`` with ``X = Z[t]*c``, ``R = X (W - W*)^T + sigma*(N[t]*r)``, all in the run's dtype.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

import torch

PARAM_NAMES = ("w1", "b1", "conv", "w2", "sq")


def golden_dir() -> Path:
    explicit = os.environ.get("SOAPBENCH_GOLDEN")
    if explicit:
        return Path(explicit)
    data_root = Path(os.environ.get("SOAPBENCH_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    return data_root.parent / "golden"


def load_golden(run: str) -> dict:
    return torch.load(golden_dir() / f"{run}.pt")


def load_problem() -> dict:
    return torch.load(golden_dir() / "problem.pt")


@contextmanager
def single_thread_default_dtype(dtype: torch.dtype):
    threads, default = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(1)
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(default)


def run_trajectory(
    make_optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
    names: Iterable[str],
    dtype: torch.dtype,
    param_shapes: dict[str, tuple[int, ...]] | None = None,
    steps: int | None = None,
    default_dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Return ``{name: [steps+1, *canonical_shape]}`` trajectories.

    ``param_shapes`` overrides the shape a parameter is handed to the optimizer in
    (the KL runs pass conv as (16, 8, 9)); trajectories are stored in the canonical shape.
    """
    problem = load_problem()
    names = list(names)
    param_shapes = param_shapes or {}
    steps = problem["spec"]["T"] if steps is None else steps
    sigma = problem["spec"]["sigma"]
    batch = problem["spec"]["B"]
    with single_thread_default_dtype(default_dtype or dtype):
        params = []
        for name in names:
            entry = problem[name]
            shape = tuple(param_shapes.get(name, entry["shape"]))
            params.append(torch.nn.Parameter(entry["W0"].to(dtype).reshape(shape).clone()))
        optimizer = make_optimizer(params)
        traj = {name: [problem[name]["W0"].to(dtype).reshape(problem[name]["shape"]).clone()] for name in names}
        for t in range(steps):
            for name, param in zip(names, params):
                entry = problem[name]
                m, n = entry["m"], entry["n"]
                X = entry["Z"][t].to(dtype) * entry["c"].to(dtype)
                E = sigma * (entry["N"][t].to(dtype) * entry["r"].to(dtype))
                W = param.detach().reshape(m, n)
                R = X @ (W - entry["Wstar"].to(dtype)).T + E
                param.grad = ((R.T @ X) / batch).reshape(param.shape)
            optimizer.step()
            for name, param in zip(names, params):
                traj[name].append(param.detach().reshape(problem[name]["shape"]).clone())
    return {name: torch.stack(states) for name, states in traj.items()}


def max_abs_diff(ours: dict[str, torch.Tensor], golden: dict) -> dict[str, float]:
    return {
        name: (trajectory.double() - golden["traj"][name].double()).abs().max().item()
        for name, trajectory in ours.items()
    }
