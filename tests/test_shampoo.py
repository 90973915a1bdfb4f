"""Shampoo (optimizers/shampoo.py): exact equivalences, the exponent knob, grafting, blocking and robustness.

There is no golden file for Shampoo; the checks are the ones Distributed Shampoo's own tests use (grafting-only
Shampoo equals AdamW) plus direct computations of the preconditioned step.
"""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from soapbench.optimizers import build_optimizer
from soapbench.optimizers.shampoo import Shampoo, block_layout, inverse_root_for_order, merge_small_dims
from tests.conftest import CONFIG_DIR
from tests.golden_driver import PARAM_NAMES, run_trajectory

HORIZON = 12


@pytest.fixture(autouse=True)
def single_thread():
    """One BLAS/LAPACK thread: small eigh calls are ~100x slower when OpenMP threads compete for busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _grads(shapes, steps, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(shape, generator=generator, dtype=dtype) for shape in shapes] for _ in range(steps)]


def _init(shapes, dtype=torch.float64, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=dtype) for shape in shapes]


def _run(factory, init, grads):
    params = [torch.nn.Parameter(value.clone()) for value in init]
    optimizer = factory(params)
    for step_grads in grads:
        for param, grad in zip(params, step_grads):
            param.grad = grad.clone()
        optimizer.step()
    return params, optimizer


def test_grafting_only_shampoo_equals_adamw_on_the_golden_problem() -> None:
    """Before start_preconditioning_step only the grafted Adam runs; it shares β1 with Shampoo (as DS does)."""
    adamw = run_trajectory(
        lambda ps: torch.optim.AdamW(ps, lr=3e-3, betas=(0.95, 0.95), eps=1e-8, weight_decay=0.01, foreach=False),
        PARAM_NAMES,
        torch.float64,
    )
    grafting_only = run_trajectory(lambda ps: Shampoo(ps, start_preconditioning_step=1000), PARAM_NAMES, torch.float64)
    for name in PARAM_NAMES:
        torch.testing.assert_close(grafting_only[name], adamw[name], rtol=0, atol=1e-14)


def test_grafting_only_sgd_with_nesterov_momentum_equals_torch_sgd() -> None:
    shapes = [(6, 4), (5,)]
    init, grads = _init(shapes), _grads(shapes, HORIZON)
    ours, _ = _run(
        lambda ps: Shampoo(
            ps,
            lr=0.1,
            betas=(0.0, 0.95),
            momentum=0.9,
            use_nesterov=True,
            weight_decay=0.0,
            grafting_type="sgd",
            start_preconditioning_step=1000,
        ),
        init,
        grads,
    )
    expected, _ = _run(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True), init, grads)
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def _direct_shampoo(init, grads, lr, beta2, epsilon, power):
    """W ← W − η L̂^-p G R̂^-p with L̂ = EMA(GGᵀ)/(1−β2^t) + εI: Shampoo computed directly, every step."""
    weight = init.clone()
    left = torch.zeros(init.shape[0], init.shape[0], dtype=init.dtype)
    right = torch.zeros(init.shape[1], init.shape[1], dtype=init.dtype)

    def power_of(matrix):
        eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
        return eigenvectors @ torch.diag((eigenvalues + epsilon) ** -power) @ eigenvectors.T

    for step, (grad,) in enumerate(grads, start=1):
        left = beta2 * left + (1 - beta2) * grad @ grad.T
        right = beta2 * right + (1 - beta2) * grad.T @ grad
        correction = 1 - beta2**step
        weight = weight - lr * power_of(left / correction) @ grad @ power_of(right / correction)
    return weight


@pytest.mark.parametrize("inv_root_override, power", [(2, 0.5), (0, 0.25), (2.5, 0.4)])
def test_square_matrix_step_equals_the_direct_inverse_root_form(inv_root_override: float, power: float) -> None:
    """inv_root_override=2 is the whitening paper's L^-1/2 G R^-1/2; 0 the classic −1/4; 2.5 the SOAP baseline."""
    shapes = [(7, 7)]
    init, grads = _init(shapes), _grads(shapes, 6)
    ours, _ = _run(
        lambda ps: Shampoo(
            ps,
            lr=0.01,
            betas=(0.0, 0.9),
            epsilon=1e-6,
            weight_decay=0.0,
            precondition_frequency=1,
            start_preconditioning_step=1,
            inv_root_override=inv_root_override,
            grafting_type="none",
            use_merge_dims=False,
        ),
        init,
        grads,
    )
    expected = _direct_shampoo(init[0], grads, lr=0.01, beta2=0.9, epsilon=1e-6, power=power)
    torch.testing.assert_close(ours[0].detach(), expected, rtol=1e-10, atol=1e-12)


def test_exponent_knob_follows_distributed_shampoo() -> None:
    assert inverse_root_for_order(2, 0) == 4.0 and inverse_root_for_order(1, 0) == 2.0
    assert inverse_root_for_order(2, 2.5) == 2.5 and inverse_root_for_order(1, 2.5) == 2.5
    assert inverse_root_for_order(2, (0, 1, 3)) == 3.0 and inverse_root_for_order(3, (0, 1, 3)) == 6.0
    # exponent_multiplier e scales the exponent −e/r: e = 2 with r = 4 equals r = 2.
    shapes = [(5, 5)]
    init, grads = _init(shapes), _grads(shapes, 4)
    common = dict(
        betas=(0.0, 0.9), weight_decay=0.0, precondition_frequency=1, start_preconditioning_step=1, grafting_type="none"
    )
    a, _ = _run(lambda ps: Shampoo(ps, inv_root_override=4, exponent_multiplier=2.0, **common), init, grads)
    b, _ = _run(lambda ps: Shampoo(ps, inv_root_override=2, **common), init, grads)
    torch.testing.assert_close(a[0], b[0], rtol=1e-12, atol=1e-14)


def test_grafting_gives_each_block_the_adam_step_norm() -> None:
    param = torch.nn.Parameter(torch.randn(6, 10, dtype=torch.float64))
    optimizer = Shampoo(
        [param],
        lr=0.1,
        weight_decay=0.0,
        max_preconditioner_dim=4,
        use_merge_dims=False,
        precondition_frequency=1,
        start_preconditioning_step=1,
    )
    grads = _grads([(6, 10)], 4)
    adam = torch.optim.Adam([torch.nn.Parameter(torch.zeros(6, 10, dtype=torch.float64))], lr=0.1, betas=(0.95, 0.95))
    adam_param = adam.param_groups[0]["params"][0]
    layout = block_layout((6, 10), 4, False)
    assert len(layout.blocks) == 6  # rows split 4+2, columns 4+4+2
    for (grad,) in grads:
        before = param.detach().clone()
        param.grad = grad.clone()
        optimizer.step()
        adam_before = adam_param.detach().clone()
        adam_param.grad = grad.clone()
        adam.step()
        for index in layout.blocks:
            shampoo_norm = (param - before)[index].norm()
            adam_norm = (adam_param - adam_before)[index].norm()
            torch.testing.assert_close(shampoo_norm, adam_norm, rtol=1e-10, atol=0)
    assert [f.shape for f in optimizer.state[param]["factors"][0]] == [(4, 4), (4, 4)]


def test_merge_and_block_layouts() -> None:
    assert merge_small_dims((64, 32), 8192) == (2048,)
    assert merge_small_dims((16, 8, 3, 3), 8192) == (1152,)
    assert merge_small_dims((384, 1536), 8192) == (384, 1536)
    assert merge_small_dims((1, 5, 1, 7), 4) == (5, 7)
    assert merge_small_dims((), 8) == (1,)
    layout = block_layout((20, 7), 8, False)
    assert [layout.block_shape(index) for index in layout.blocks] == [(8, 7), (8, 7), (4, 7)]


def test_merged_vector_and_conv_shapes_train() -> None:
    shapes = [(32,), (4, 3, 3, 3), (16, 8), (), (1, 300, 1)]
    params, optimizer = _run(
        lambda ps: Shampoo(ps, precondition_frequency=2, max_preconditioner_dim=256),
        _init(shapes, torch.float32),
        _grads(shapes, 6, torch.float32),
    )
    assert all(torch.isfinite(p).all() for p in params)
    factor_shapes = [[tuple(f.shape) for f in optimizer.state[p]["factors"][0]] for p in params]
    assert factor_shapes == [[(32, 32)], [(108, 108)], [(128, 128)], [(1, 1)], [(256, 256)]]
    assert len(optimizer.state[params[4]]["factors"]) == 2  # 300 split into blocks of 256 and 44


def test_coupled_weight_decay_enters_the_gradient() -> None:
    """use_decoupled_weight_decay=False: G ← G + λW before everything, so grafting-only equals Adam(weight_decay)."""
    shapes = [(5, 3)]
    init, grads = _init(shapes), _grads(shapes, HORIZON)
    ours, _ = _run(
        lambda ps: Shampoo(
            ps, lr=0.01, weight_decay=0.1, use_decoupled_weight_decay=False, start_preconditioning_step=1000
        ),
        init,
        grads,
    )
    expected, _ = _run(lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.95, 0.95), weight_decay=0.1), init, grads)
    torch.testing.assert_close(ours[0], expected[0], rtol=0, atol=1e-14)


# ---------------------------------------------------------------------------------------------------------------------
# Robustness
# ---------------------------------------------------------------------------------------------------------------------


def test_rank_deficient_zero_and_ill_conditioned_gradients_stay_finite() -> None:
    square = torch.nn.Parameter(torch.randn(8, 8))
    wide = torch.nn.Parameter(torch.randn(3, 40))
    optimizer = Shampoo([square, wide], precondition_frequency=2, use_merge_dims=False)
    generator = torch.Generator().manual_seed(0)
    for step in range(16):
        scale = [1e-20, 1.0, 1e15, 0.0][step % 4]
        square.grad = scale * torch.outer(torch.randn(8, generator=generator), torch.randn(8, generator=generator))
        wide.grad = (
            scale
            * torch.outer(torch.randn(3, generator=generator), torch.randn(40, generator=generator))
            * torch.logspace(-12, 12, 40)
        )
        optimizer.step()
        assert torch.isfinite(square).all() and torch.isfinite(wide).all(), f"non-finite at step {step}"


def test_forced_eigh_failure_keeps_the_previous_root_and_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    param = torch.nn.Parameter(torch.randn(5, 4, dtype=torch.float64))
    optimizer = Shampoo([param], precondition_frequency=2, use_merge_dims=False)
    for _ in range(2):
        param.grad = torch.randn(5, 4, dtype=torch.float64)
        optimizer.step()
    previous = [root.clone() for root in optimizer.state[param]["inverse_roots"][0]]

    def failing_eigh(*args, **kwargs):
        raise torch.linalg.LinAlgError("forced failure")

    monkeypatch.setattr(torch.linalg, "eigh", failing_eigh)
    for _ in range(2):
        param.grad = torch.randn(5, 4, dtype=torch.float64)
        optimizer.step()  # step 4 recomputes the roots: both fail
    assert optimizer.diagnostics()["linalg_failures"] == 2
    for root, old in zip(optimizer.state[param]["inverse_roots"][0], previous):
        assert torch.equal(root, old)
    assert torch.isfinite(param).all()


# ---------------------------------------------------------------------------------------------------------------------
# Optimizer contract
# ---------------------------------------------------------------------------------------------------------------------


def test_bf16_parameters_keep_float32_state() -> None:
    param = torch.nn.Parameter(torch.randn(6, 4).to(torch.bfloat16))
    optimizer = Shampoo([param], precondition_frequency=2, use_merge_dims=False)
    before = param.detach().clone()
    for _ in range(5):
        param.grad = torch.randn(6, 4).to(torch.bfloat16)
        optimizer.step()
    state = optimizer.state[param]
    assert param.dtype == torch.bfloat16 and torch.isfinite(param.float()).all() and not torch.equal(param, before)
    assert state["exp_avg"].dtype == torch.float32 and state["factors"][0][0].dtype == torch.float32
    reloaded = Shampoo([param], precondition_frequency=2, use_merge_dims=False)
    reloaded.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    assert reloaded.state[param]["inverse_roots"][0][1].dtype == torch.float32


def test_yaml_builds_through_the_registry_with_the_recipe_defaults() -> None:
    config = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "optimizer" / "shampoo.yaml"))
    assert config.pop("name") == "shampoo"
    optimizer = build_optimizer("shampoo", [torch.nn.Parameter(torch.randn(3, 3))], **config)
    defaults = optimizer.defaults
    assert isinstance(optimizer, Shampoo)
    assert defaults["epsilon"] == 1e-12 and defaults["inv_root_override"] == 2.5
    assert defaults["grafting_type"] == "adam" and defaults["grafting_beta2"] == 0.95
    assert defaults["start_preconditioning_step"] == -1 and defaults["precondition_frequency"] == 10
    # The yaml turns merging off on purpose (a 64x128 matrix would become one 8192-long axis); the rest is the recipe.
    assert constructor_default_merge_dims() and defaults["use_merge_dims"] is False
    constructor = Shampoo([torch.nn.Parameter(torch.zeros(2))]).defaults
    same = [key for key in config if key != "use_merge_dims"]
    assert {key: constructor[key] for key in same} == {key: defaults[key] for key in same}


def constructor_default_merge_dims() -> bool:
    return Shampoo([torch.nn.Parameter(torch.zeros(2))]).defaults["use_merge_dims"]


def test_bad_hyperparameters_name_the_field() -> None:
    with pytest.raises(ValueError, match="grafting_type"):
        Shampoo([torch.nn.Parameter(torch.zeros(2))], grafting_type="adamw")
    with pytest.raises(ValueError, match="inv_root_override"):
        Shampoo([torch.nn.Parameter(torch.zeros(2))], inv_root_override=-1)
    with pytest.raises(ValueError, match="start_preconditioning_step"):
        Shampoo([torch.nn.Parameter(torch.zeros(2))], start_preconditioning_step=0)
