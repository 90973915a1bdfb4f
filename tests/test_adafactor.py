"""Adafactor: the SOAP paper's AdafactorW ("adafactor") and torch.optim.Adafactor ("adafactor_torch").

Golden files: ../shared/golden/adafactor_momentum_f64.pt and adafactor_torch_f64.pt (README §4: first-order
methods within 1e-12). The references ran with torch's default dtype float32 and float64 params.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from golden_driver import load_golden, max_abs_diff, run_trajectory
from torch import nn

from soapbench.optimizers.adafactor import Adafactor, TorchAdafactor
from soapbench.optimizers.registry import OptimizerConfigError, build_optimizer, get_spec

FIRST_ORDER_TOLERANCE = 1e-12
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "optimizer"


def _golden_dtypes(golden: dict) -> dict:
    return {"dtype": torch.float64, "default_dtype": getattr(torch, golden["torch_default_dtype"].split(".")[-1])}


def _drive(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[list[torch.Tensor]]) -> None:
    for step_grads in grads:
        for param, grad in zip(params, step_grads):
            param.grad = None if grad is None else grad.to(param.dtype)
        optimizer.step()


def _random_grads(shapes: list[tuple[int, ...]], steps: int, seed: int = 0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(shape, generator=generator, dtype=dtype) for shape in shapes] for _ in range(steps)]


# --------------------------------------------------------------------------------------------- golden files


def test_golden_adafactorw_reference_mode():
    golden = load_golden("adafactor_momentum_f64")
    hyper = golden["hyperparameters"]
    trajectory = run_trajectory(
        lambda params: Adafactor(params, reference_1d_quirk=True, **hyper),
        golden["param_names"],
        **_golden_dtypes(golden),
    )
    diffs = max_abs_diff(trajectory, golden)
    assert max(diffs.values()) <= FIRST_ORDER_TOLERANCE, diffs


def test_golden_adafactorw_fixed_mode_differs_only_on_the_bias():
    golden = load_golden("adafactor_momentum_f64")
    trajectory = run_trajectory(
        lambda params: Adafactor(params, **golden["hyperparameters"]), golden["param_names"], **_golden_dtypes(golden)
    )
    diffs = max_abs_diff(trajectory, golden)
    assert all(diffs[name] <= FIRST_ORDER_TOLERANCE for name in ("w1", "conv", "w2", "sq")), diffs
    # Per-element (fixed) vs scalar (quirk) second moment: a real difference, not rounding.
    assert diffs["b1"] > 1e-3, diffs


def test_golden_torch_adafactor():
    golden = load_golden("adafactor_torch_f64")
    trajectory = run_trajectory(
        lambda params: TorchAdafactor(params, **golden["hyperparameters"]),
        golden["param_names"],
        **_golden_dtypes(golden),
    )
    diffs = max_abs_diff(trajectory, golden)
    assert max(diffs.values()) <= FIRST_ORDER_TOLERANCE, diffs


# --------------------------------------------------------------------------------------------- exact math


def test_fixed_mode_on_a_vector_is_adam():
    lr, betas, eps, weight_decay = 3e-3, (0.9, 0.99), 1e-8, 0.1
    param = nn.Parameter(torch.randn(7, dtype=torch.float64))
    optimizer = Adafactor([param], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    weights, m, v = param.detach().clone(), torch.zeros(7, dtype=torch.float64), torch.zeros(7, dtype=torch.float64)
    for t, (grad,) in enumerate(_random_grads([(7,)], steps=6), start=1):
        param.grad = grad
        optimizer.step()
        # Adam, decoupled weight decay before the update, eps after the bias-corrected sqrt(v).
        weights = weights * (1 - lr * weight_decay)
        m = betas[0] * m + (1 - betas[0]) * grad
        v = betas[1] * v + (1 - betas[1]) * grad**2
        denom = v.sqrt() / (1 - betas[1] ** t) ** 0.5 + eps
        weights = weights - lr / (1 - betas[0] ** t) * m / denom
        torch.testing.assert_close(param.detach(), weights, rtol=1e-14, atol=1e-15)


def test_reference_quirk_gives_a_vector_one_scalar_second_moment():
    param = nn.Parameter(torch.zeros(5, dtype=torch.float64))
    optimizer = Adafactor([param], lr=1e-3, betas=(0.0, 0.0), eps=0.0, weight_decay=0.0, reference_1d_quirk=True)
    grad = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    param.grad = grad
    optimizer.step()
    (second_moment,) = optimizer.state[param]["exp_avg_sq"]
    torch.testing.assert_close(second_moment, torch.full((5,), 11.0, dtype=torch.float64))
    # With betas 0 the step is -lr * g / sqrt(mean(g^2)).
    torch.testing.assert_close(param.detach(), -1e-3 * grad / 11.0**0.5)


@pytest.mark.parametrize("shape", [(6, 4), (3, 2, 4, 5)])
def test_rank1_second_moment_is_the_outer_product_of_marginals_over_the_first_mean(shape):
    lr, beta2, eps = 1e-2, 0.9, 1e-8
    param = nn.Parameter(torch.zeros(shape, dtype=torch.float64))
    optimizer = Adafactor([param], lr=lr, betas=(0.0, beta2), eps=eps, weight_decay=0.0)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    param.grad = grad
    optimizer.step()
    square = grad**2
    marginals = [(1 - beta2) * square.mean(dim=[d for d in range(len(shape)) if d != k]) for k in range(len(shape))]
    second_moment = marginals[0].reshape(-1, *[1] * (len(shape) - 1))
    for k in range(1, len(shape)):
        second_moment = second_moment * marginals[k].reshape(*[1] * k, -1, *[1] * (len(shape) - k - 1))
    second_moment = second_moment / marginals[0].mean() ** (len(shape) - 1)
    expected = -lr * grad / (second_moment.sqrt() / (1 - beta2) ** 0.5 + eps)
    torch.testing.assert_close(param.detach(), expected, rtol=1e-12, atol=1e-15)


def test_neuron_only_replaces_the_last_marginal_by_its_mean():
    param = nn.Parameter(torch.zeros(4, 3, dtype=torch.float64))
    optimizer = Adafactor([param], lr=1.0, betas=(0.0, 0.0), eps=0.0, weight_decay=0.0, neuron_only=True)
    grad = torch.randn(4, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    param.grad = grad
    optimizer.step()
    rows, cols = (grad**2).mean(dim=1), (grad**2).mean(dim=0)
    second_moment = rows[:, None] * cols.mean() / rows.mean()
    torch.testing.assert_close(param.detach(), -grad / second_moment.sqrt())


# --------------------------------------------------------------------------------------------- optimizer contract


def test_bfloat16_params_keep_float32_state_and_track_the_float32_run():
    shapes = [(8, 6), (6,)]
    grads = _random_grads(shapes, steps=5, seed=5, dtype=torch.float32)
    init = [torch.randn(shape, generator=torch.Generator().manual_seed(6)) for shape in shapes]
    low = [nn.Parameter(w.to(torch.bfloat16)) for w in init]
    full = [nn.Parameter(w.to(torch.bfloat16).float()) for w in init]
    low_optimizer, full_optimizer = Adafactor(low, lr=1e-2), Adafactor(full, lr=1e-2)
    _drive(low_optimizer, low, grads)
    _drive(full_optimizer, full, grads)
    state = low_optimizer.state[low[0]]
    assert [v.shape for v in state["exp_avg_sq"]] == [(8,), (6,)], "a factored second moment: rows and columns"
    assert state["exp_avg"].dtype == torch.float32 and all(v.dtype == torch.float32 for v in state["exp_avg_sq"])
    for a, b in zip(low, full):
        assert a.dtype == torch.bfloat16 and torch.isfinite(a).all()
        torch.testing.assert_close(a.float(), b.detach(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize(
    "make_grad",
    [
        lambda: torch.zeros(6, 5),
        lambda: torch.outer(torch.arange(6.0), torch.ones(5)),  # rank 1, one zero row
        lambda: torch.diag(torch.logspace(-12, 12, 5)).repeat(2, 1)[:6],  # 24 decades of scale
    ],
    ids=["zero", "rank1", "ill_conditioned"],
)
def test_degenerate_gradients_stay_finite(make_grad):
    params = [nn.Parameter(torch.ones(6, 5)), nn.Parameter(torch.ones(6, 5, dtype=torch.float64))]
    optimizer = Adafactor(params, lr=1e-2)
    for _ in range(3):
        for param in params:
            param.grad = make_grad().to(param.dtype)
        optimizer.step()
    assert all(torch.isfinite(param).all() for param in params)


@pytest.mark.parametrize("shape", [(8, 8), (3, 40), (4, 3, 5), (3, 2, 3, 3)])
def test_huge_rank1_gradients_in_float32_step_as_in_float64(shape):
    """Rank-1 gradients of scale 1e15: the factored second moment is ~1e30 (fine in float32), but forming it as
    r cᵀ / mean(r) overflowed on the way (a zero step for matrices, NaN for 3-D and conv tensors)."""
    generator = torch.Generator().manual_seed(0)
    grads = []
    for _ in range(3):
        vectors = [torch.randn(size, generator=generator, dtype=torch.float64) for size in shape]
        grad = vectors[0]
        for vector in vectors[1:]:
            grad = torch.tensordot(grad, vector, dims=0)
        grads.append([1e15 * grad])
    init = torch.randn(shape, generator=generator, dtype=torch.float64)
    runs = {}
    for dtype in (torch.float32, torch.float64):
        param = nn.Parameter(init.to(dtype))
        _drive(Adafactor([param], lr=1e-2), [param], grads)
        runs[dtype] = param.detach()
    assert torch.isfinite(runs[torch.float32]).all()
    torch.testing.assert_close(runs[torch.float32].double(), runs[torch.float64], rtol=1e-5, atol=1e-6)


def test_scalar_parameter_is_supported():
    param = nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
    optimizer = Adafactor([param], lr=0.1, betas=(0.0, 0.0), eps=0.0, weight_decay=0.0)
    param.grad = torch.tensor(-4.0, dtype=torch.float64)
    optimizer.step()
    assert param.item() == pytest.approx(1.1)


# --------------------------------------------------------------------------------------------- registry, configs


def test_registered_names_and_validation():
    assert get_spec("adafactor").factory is Adafactor
    assert get_spec("adafactor_torch").factory is TorchAdafactor
    params = [nn.Parameter(torch.ones(2, 2))]
    assert isinstance(build_optimizer("adafactor_torch", params, eps=[None, 1e-3]), torch.optim.Adafactor)
    for bad in (dict(d=0.5), dict(eps=[1e-30]), dict(beta2_decay=0.5), dict(lr=0.0)):
        with pytest.raises(OptimizerConfigError):
            build_optimizer("adafactor_torch", params, **bad)
    with pytest.raises(OptimizerConfigError, match="reference_1d_quirk"):
        build_optimizer("adafactor", params, beta1=0.9)
    with pytest.raises(OptimizerConfigError, match="betas"):
        build_optimizer("adafactor", params, betas=[0.9, 1.0])


@pytest.mark.parametrize("config_name", ["adafactor", "adafactor_torch"])
def test_config_builds_on_a_model(config_name):
    config = yaml.safe_load((CONFIG_DIR / f"{config_name}.yaml").read_text())
    name = config.pop("name")
    assert name == config_name
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = build_optimizer(name, model, **config)
    model(torch.tensor([1, 2, 3])).square().sum().backward()
    optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
