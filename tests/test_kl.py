"""KL-Shampoo and KL-SOAP (optimizers/kl.py).

Golden files: ../shared/golden/kl_shampoo_f64.pt and kl_soap_f64.pt (conv fed as (16, 8, 9), default dtype float64).
The float32 products inside the QR refresh round differently on different CPUs (AVX2 and AVX-512 machines), so on
every CPU the well-posed entries (sq, conv) get the golden README's bound for eigh/QR rounded differently,
max(1e-6, 10 × its clean-table value) (measured on an AVX2 AMD EPYC: KL-Shampoo sq 9e-8, conv 4e-8; KL-SOAP sq
1.1e-6, conv 1.1e-7). Before the first refresh no float32 product is involved, so that part of the trajectory must
match to 1e-12 on any CPU. w1 and w2 (rank-deficient first factors) are a 5e-2 smoke test.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from golden_driver import load_golden, max_abs_diff, run_trajectory, single_thread_default_dtype
from omegaconf import OmegaConf
from torch import nn

import soapbench.optimizers.kl  # noqa: F401  (registers kl_shampoo and kl_soap)
import soapbench.optimizers.linalg as linalg
from soapbench.optimizers.adamw import AdamW
from soapbench.optimizers.composite import CompositeOptimizer
from soapbench.optimizers.kl import CLAMP_FLOOR, KLSOAP, KLShampoo, parse_cast_dtype, working_shape
from soapbench.optimizers.linalg import rotate, unrotate
from soapbench.optimizers.registry import build_optimizer, get_spec

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "optimizer"
KL_CLASSES = {"kl_shampoo_f64": KLShampoo, "kl_soap_f64": KLSOAP}
WELL_POSED = ("conv", "sq")
FRAGILE = ("w1", "w2")
WELL_POSED_FLOOR = 1e-6
FRAGILE_TOLERANCE = 5e-2
PRE_REFRESH_TOLERANCE = 1e-12
# Golden README §4, "clean" table: max |diff| of an implementation whose eigh/QR round differently.
CLEAN_TABLE = {"kl_shampoo_f64": {"conv": 3e-8, "sq": 2e-7}, "kl_soap_f64": {"conv": 3e-6, "sq": 5e-5}}


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """These tensors are tiny: extra BLAS threads only add overhead (and CI has two shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def float64_default() -> Iterator[None]:
    """Default dtype float64 (as the goldens), so eigh runs in float64 and bases are orthogonal to 1e-16."""
    with single_thread_default_dtype(torch.float64):
        yield


def _golden_factory(golden: dict, optimizer_class: type, **overrides) -> Callable:
    hyperparameters = {k: v for k, v in golden["hyperparameters"].items() if k != "using_klsoap"}
    hyperparameters["cast_dtype"] = torch.float64  # recorded as the string "torch.float64 (reference default ...)"
    hyperparameters.update(overrides)
    return lambda params: optimizer_class(params, **hyperparameters)


@functools.cache
def _golden_run(run: str) -> tuple[dict, dict[str, torch.Tensor]]:
    golden = load_golden(run)
    trajectory = run_trajectory(
        _golden_factory(golden, KL_CLASSES[run]),
        golden["param_names"],
        torch.float64,
        param_shapes=dict(golden["optimizer_param_shapes"]),
        default_dtype=torch.float64,
    )
    return golden, trajectory


def _gradient(param: torch.Tensor, step: int, scale: float = 1.0) -> torch.Tensor:
    """A deterministic gradient stream that also depends on the current weights."""
    generator = torch.Generator().manual_seed(1000 * step + param.numel())
    noise = torch.randn(param.shape, generator=generator, dtype=torch.float64)
    return (scale * noise + 0.5 * param.detach().double()).to(param.dtype)


def _params(dtype: torch.dtype = torch.float64, seed: int = 0) -> list[nn.Parameter]:
    """A matrix, a conv kernel (4-D, reshaped), a 3-D tensor, a squeezable (1, 7) row, a bias and a scalar."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(6, 5), (4, 3, 2, 2), (3, 4, 5), (1, 7), (5,), ()]
    return [nn.Parameter(torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)) for shape in shapes]


def _run(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], steps: range) -> None:
    for step in steps:
        for param in params:
            param.grad = _gradient(param, step)
        optimizer.step()


def _all_state_tensors(optimizer: torch.optim.Optimizer) -> Iterator[torch.Tensor]:
    def walk(value):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, dict):
            for item in value.values():
                yield from walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                yield from walk(item)

    for state in optimizer.state.values():
        yield from walk(state)


# ----------------------------------------------------------------------------------------------------------------
# Golden trajectories
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("run", list(KL_CLASSES))
def test_golden_trajectory(run: str) -> None:
    golden, trajectory = _golden_run(run)
    assert dict(golden["optimizer_param_shapes"])["conv"] == (16, 8, 9)
    diffs = max_abs_diff(trajectory, golden)
    for name in WELL_POSED:
        tolerance = max(WELL_POSED_FLOOR, 10 * CLEAN_TABLE[run][name])
        assert diffs[name] <= tolerance, f"{run} {name}: max |diff| {diffs[name]:.3g} > {tolerance:.1g}"
    for name in FRAGILE:
        assert diffs[name] <= FRAGILE_TOLERANCE, f"{run} {name}: max |diff| {diffs[name]:.3g}"
    # precondition_frequency 3: the first QR refresh ends call 4, so states 0..4 involve no float32 product.
    for name in WELL_POSED:
        early = (trajectory[name][:5] - golden["traj"][name][:5]).abs().max().item()
        assert early <= PRE_REFRESH_TOLERANCE, f"{run} {name}: {early:.3g} before the first refresh"
    for name in golden["param_names"]:
        assert torch.equal(trajectory[name][1], trajectory[name][0]), "the first step() must not move the weights"


@pytest.mark.parametrize("run", list(KL_CLASSES))
def test_four_dimensional_conv_is_reshaped_like_the_golden_run(run: str) -> None:
    golden, trajectory = _golden_run(run)
    as_conv = run_trajectory(
        _golden_factory(golden, KL_CLASSES[run]), ["conv"], torch.float64, default_dtype=torch.float64
    )
    assert torch.equal(as_conv["conv"], trajectory["conv"])


def test_working_shape() -> None:
    assert working_shape((16, 8, 3, 3)) == (16, 8, 9)
    assert working_shape((64, 1, 7, 7)) == (64, 7, 7)  # squeezed first, as the reference
    assert working_shape((32, 16, 1, 1)) == (32, 16)
    assert working_shape((2, 3, 4, 5, 6)) == (2, 3, 120)
    assert working_shape((1, 7)) == (7,)
    assert working_shape((5,)) == (5,)
    assert working_shape(()) == (1,)


# ----------------------------------------------------------------------------------------------------------------
# Exact properties (algorithms.md §6)
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 5), (4, 3, 2, 2)])
def test_first_klshampoo_update_is_a_scaled_sgd_step(float64_default: None, shape: tuple[int, ...]) -> None:
    lr, weight_decay, eps = 0.1, 0.01, 1e-8
    start = torch.randn(shape)
    param = nn.Parameter(start.clone())
    optimizer = KLShampoo([param], lr=lr, weight_decay=weight_decay, eps=eps)
    param.grad = torch.randn(shape)
    optimizer.step()
    assert torch.equal(param.detach(), start), "the first call only builds the preconditioner"
    grad = torch.randn(shape)
    param.grad = grad
    optimizer.step()
    # m = (1-β1)·G = 0.1·G and every entry of E is init_factor^(-K/2), damped to E/(1 + εE), whatever the basis:
    # for a matrix (K = 2) E = 10 and U = G/(1 + 10ε), an SGD step; a 3-D tensor's first step is sqrt(10) larger.
    # Weight decay then acts on the updated weight.
    order = len(working_shape(shape))
    scale = 0.1 ** (-order / 2)
    expected = (start - lr * 0.1 * grad * scale / (1.0 + scale * eps)) * (1.0 - lr * weight_decay)
    torch.testing.assert_close(param.detach(), expected, rtol=0.0, atol=1e-12)


@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 5), (7,)])
def test_first_klsoap_update_has_magnitude_point_one_over_sqrt_point_zero_two(
    float64_default: None, shape: tuple[int, ...]
) -> None:
    lr = 0.1
    start = torch.randn(shape)
    param = nn.Parameter(start.clone())
    optimizer = KLSOAP([param], lr=lr, weight_decay=0.0, eps=0.0)
    param.grad = torch.randn(shape)
    optimizer.step()
    assert torch.equal(param.detach(), start)
    grad = torch.randn(shape)
    param.grad = grad
    optimizer.step()
    # No bias correction: m = 0.1·G', v = 0.02·G'², so the rotated update is 0.1/sqrt(0.02)·sign(G') ≈ 0.707.
    state = optimizer.state[param]
    update = (start - param.detach()) / lr
    if len(shape) > 1:
        bases = state["bases"]
        update = rotate(update.reshape(working_shape(shape)), bases)
        grad = rotate(grad.reshape(working_shape(shape)), bases)
    torch.testing.assert_close(update, 0.1 / math.sqrt(0.02) * torch.sign(grad), rtol=0.0, atol=1e-12)


@pytest.mark.parametrize("optimizer_class", [KLShampoo, KLSOAP])
@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 5)])
def test_basis_never_changes_when_the_refresh_period_exceeds_the_horizon(
    float64_default: None, optimizer_class: type, shape: tuple[int, ...]
) -> None:
    param = nn.Parameter(torch.randn(shape))
    optimizer = optimizer_class([param], lr=1e-2, precondition_frequency=1000)
    _run(optimizer, [param], range(1))
    state = optimizer.state[param]
    first_bases = [basis.clone() for basis in state["bases"]]
    first_factors = [factor.clone() for factor in state["factors"]]
    _run(optimizer, [param], range(1, 16))
    assert len(first_bases) == len(first_factors) == len(shape), "one basis and one factor per dimension"
    assert all(torch.equal(a, b) for a, b in zip(state["bases"], first_bases))
    assert not any(torch.equal(a, b) for a, b in zip(state["factors"], first_factors)), "factors still accumulate"
    assert torch.isfinite(param).all()


@pytest.mark.parametrize("optimizer_class", [KLShampoo, KLSOAP])
def test_refresh_happens_at_the_end_of_update_t_equal_f(float64_default: None, optimizer_class: type) -> None:
    param = nn.Parameter(torch.randn(6, 5))
    optimizer = optimizer_class([param], lr=1e-2, precondition_frequency=3)
    bases_after_call = []
    for step in range(5):
        _run(optimizer, [param], range(step, step + 1))
        bases_after_call.append([basis.clone() for basis in optimizer.state[param]["bases"]])
    unchanged = [all(torch.equal(a, b) for a, b in zip(bases_after_call[i], bases_after_call[i + 1])) for i in range(4)]
    # Calls 2, 3 are updates t = 1, 2; call 4 is t = 3 = f, which refreshes; call 5 (t = 4) does not.
    assert unchanged == [True, True, False, True]


def test_klsoap_refresh_moves_the_momentum_exactly_and_leaves_v_alone(float64_default: None) -> None:
    beta1, beta2 = 0.9, 0.98
    param = nn.Parameter(torch.randn(6, 5))
    optimizer = KLSOAP([param], lr=1e-2, betas=(beta1, beta2), precondition_frequency=2)
    _run(optimizer, [param], range(2))  # initialisation, then t = 1
    state = optimizer.state[param]
    old_bases = list(state["bases"])
    momentum, second_moment = state["exp_avg"].clone(), state["exp_avg_sq"].clone()
    grad = _gradient(param, 2)
    param.grad = grad
    optimizer.step()  # t = 2: refresh
    assert not all(torch.equal(a, b) for a, b in zip(state["bases"], old_bases))
    grad_rotated = rotate(grad, old_bases)
    assert torch.equal(state["exp_avg_sq"], second_moment.lerp(grad_rotated.square(), 1.0 - beta2))
    momentum_original = unrotate(momentum.lerp(grad_rotated, 1.0 - beta1), old_bases)
    # m ← rot_new(unrot_old(m)); the new basis comes from a float32 QR, so it is orthogonal to ~1e-7 only.
    assert torch.equal(state["exp_avg"], rotate(momentum_original, state["bases"]))


def test_one_dimensional_parameters_take_the_diagonal_path(float64_default: None) -> None:
    beta, lr = 0.98, 0.1
    grads = [torch.randn(7) for _ in range(3)]
    start = torch.randn(7)
    param = nn.Parameter(start.clone())
    optimizer = KLShampoo([param], lr=lr, weight_decay=0.0, eps=0.0)
    for call, grad in enumerate(grads):
        param.grad = grad
        optimizer.step()
        if call == 1:
            # One factor, so E = init_factor^(-1/2) (not init_factor^(-1) as with two): U = 0.1·G·sqrt(10).
            expected = start - lr * 0.1 * grad * (1.0 / math.sqrt(0.1))
            torch.testing.assert_close(param.detach(), expected, rtol=0.0, atol=1e-12)
    # D starts at init_factor and is updated after use with g² of calls 2 and 3 (call 1 only initialises).
    eigenvalues = torch.full((7,), 0.1)
    for grad in grads[1:]:
        eigenvalues = beta * eigenvalues + (1 - beta) * grad**2
    expected = torch.clamp(eigenvalues**-0.5, max=max(CLAMP_FLOOR, 7))
    torch.testing.assert_close(optimizer.state[param]["inv_sqrt_eigenvalues"][0], expected, rtol=1e-14, atol=0.0)
    scalar = nn.Parameter(torch.tensor(0.5))
    optimizer = KLSOAP([scalar], lr=0.1)
    for step in range(3):
        scalar.grad = torch.tensor(float(step + 1))
        optimizer.step()
    assert torch.isfinite(scalar) and scalar.item() != 0.5


# ----------------------------------------------------------------------------------------------------------------
# Plumbing: checkpoints, dtypes, groups, schedulers
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer_class", [KLShampoo, KLSOAP])
def test_bf16_parameters_train_with_float32_state(optimizer_class: type) -> None:
    params = _params(torch.bfloat16)
    reference = _params(torch.float32)
    optimizer = optimizer_class(params, lr=1e-2, precondition_frequency=2)
    reference_optimizer = optimizer_class(reference, lr=1e-2, precondition_frequency=2)
    _run(optimizer, params, range(8))
    _run(reference_optimizer, reference, range(8))
    for param, float_param in zip(params, reference):
        assert param.dtype == torch.bfloat16 and torch.isfinite(param.float()).all()
        # bf16 weights round each update to 8 bits of mantissa; the trajectory stays near the float32 one.
        assert (param.float() - float_param).abs().max() < 0.05 * (1 + float_param.abs().max())
    assert {tensor.dtype for tensor in _all_state_tensors(optimizer)} == {torch.float32}

    bf16_state = optimizer_class(_params(torch.float32), lr=1e-2, cast_dtype="bfloat16")
    _run(bf16_state, bf16_state.param_groups[0]["params"], range(4))
    assert {tensor.dtype for tensor in _all_state_tensors(bf16_state)} == {torch.bfloat16}
    assert all(torch.isfinite(param).all() for param in bf16_state.param_groups[0]["params"])


def test_cast_dtype_accepts_dtypes_and_their_names() -> None:
    assert parse_cast_dtype(None) is None
    assert parse_cast_dtype("null") is None
    assert parse_cast_dtype("bfloat16") is torch.bfloat16
    assert parse_cast_dtype("torch.float64") is torch.float64
    assert parse_cast_dtype(torch.float32) is torch.float32
    with pytest.raises(ValueError, match="cast_dtype"):
        KLSOAP([nn.Parameter(torch.zeros(2, 2))], cast_dtype="int8")


def test_invalid_hyperparameters_name_the_field() -> None:
    param = [nn.Parameter(torch.zeros(2, 2))]
    for bad, field in [
        ({"betas": (1.0, 0.9)}, "betas"),
        ({"precondition_frequency": 0}, "precondition_frequency"),
        ({"init_factor": 0.0}, "init_factor"),
        ({"shampoo_beta": 1.0}, "shampoo_beta"),
        ({"lr": -1.0}, "lr"),
    ]:
        with pytest.raises(ValueError, match=field):
            KLShampoo(param, **bad)


@pytest.mark.parametrize("optimizer_class", [KLShampoo, KLSOAP])
def test_the_first_call_builds_the_preconditioner_and_counts_no_step(optimizer_class: type) -> None:
    used = nn.Parameter(torch.randn(4, 3))
    optimizer = optimizer_class([used], lr=1e-2)
    for step in range(3):
        used.grad = _gradient(used, step)
        optimizer.step()
    assert optimizer.state[used]["step"] == 2


# ----------------------------------------------------------------------------------------------------------------
# Robustness
# ----------------------------------------------------------------------------------------------------------------


def _degenerate_gradient(kind: str, shape: torch.Size, step: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(step)
    if kind == "zero":
        return torch.zeros(shape)
    if kind == "tiny":
        return 1e-30 * torch.randn(shape, generator=generator)
    if kind == "rank_one":
        matrix_shape = (shape[0], math.prod(shape[1:]))
        u = torch.randn(matrix_shape[0], generator=torch.Generator().manual_seed(0))
        v = torch.randn(matrix_shape[1], generator=torch.Generator().manual_seed(1))
        return (torch.randn((), generator=generator) * torch.outer(u, v)).reshape(shape)
    if kind == "ill_conditioned":
        flat = torch.randn(shape, generator=generator).reshape(shape[0], -1)
        if flat.shape[1] == 1:
            flat = flat.T  # a vector: scale its entries instead of its (single) column
        return (flat * torch.logspace(0, -12, flat.shape[1])).reshape(shape)
    raise ValueError(kind)


@pytest.mark.parametrize("optimizer_class", [KLShampoo, KLSOAP])
@pytest.mark.parametrize("kind", ["zero", "tiny", "rank_one", "ill_conditioned"])
def test_degenerate_gradient_streams_stay_finite(optimizer_class: type, kind: str) -> None:
    params = [nn.Parameter(torch.randn(shape)) for shape in [(8, 6), (4, 3, 5), (9,)]]
    optimizer = optimizer_class(params, lr=1e-2, precondition_frequency=2)
    for step in range(25):
        for param in params:
            param.grad = _degenerate_gradient(kind, param.shape, step)
        optimizer.step()
    assert all(torch.isfinite(param).all() for param in params)
    state_tensors = list(_all_state_tensors(optimizer))
    assert state_tensors and all(torch.isfinite(tensor).all() for tensor in state_tensors)
    assert optimizer.diagnostics()["linalg_failures"] == 0


@pytest.mark.parametrize("optimizer_class", [KLShampoo, KLSOAP])
def test_linalg_failures_keep_the_previous_basis(monkeypatch: pytest.MonkeyPatch, optimizer_class: type) -> None:
    params = [nn.Parameter(torch.randn(6, 5)), nn.Parameter(torch.randn(4, 3, 5))]
    optimizer = optimizer_class(params, lr=1e-2, precondition_frequency=2)
    _run(optimizer, params, range(2))
    bases = {id(param): [basis.clone() for basis in optimizer.state[param]["bases"]] for param in params}

    def failing_qr(matrix: torch.Tensor, *args, **kwargs):
        raise torch.linalg.LinAlgError("forced failure")

    monkeypatch.setattr(linalg, "householder_q", failing_qr)
    _run(optimizer, params, range(2, 5))  # refreshes at t = 2 and t = 4, both failing, 5 factors each
    assert [len(bases[id(param)]) for param in params] == [param.dim() for param in params]
    for param in params:
        assert all(torch.equal(a, b) for a, b in zip(optimizer.state[param]["bases"], bases[id(param)]))
        assert torch.isfinite(param).all()
    assert optimizer.diagnostics()["linalg_failures"] == 10

    nan_result = lambda matrix, *args, **kwargs: (torch.full_like(matrix, float("nan")),) * 2  # noqa: E731
    monkeypatch.setattr(linalg, "householder_q", lambda matrix: torch.full_like(matrix, float("nan")))
    monkeypatch.setattr(torch.linalg, "eigh", nan_result)
    fresh = nn.Parameter(torch.randn(5, 4))
    optimizer.add_param_group({"params": [fresh]})
    _run(optimizer, params + [fresh], range(5, 9))
    fresh_bases = optimizer.state[fresh]["bases"]
    assert len(fresh_bases) == fresh.dim() and all(
        torch.equal(basis, torch.eye(basis.shape[0])) for basis in fresh_bases
    )
    assert all(torch.isfinite(param).all() for param in params + [fresh])
    assert optimizer.diagnostics()["linalg_failures"] == 10 + 2 + 10 + 2


# ----------------------------------------------------------------------------------------------------------------
# Registry and configs
# ----------------------------------------------------------------------------------------------------------------


class _TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(torch.nn.functional.gelu(self.norm(self.hidden(inputs))))


@pytest.mark.parametrize("name, optimizer_class", [("kl_soap", KLSOAP), ("kl_shampoo", KLShampoo)])
def test_build_optimizer_sends_vectors_and_the_head_to_adamw(name: str, optimizer_class: type) -> None:
    torch.manual_seed(0)
    model = _TinyNet()
    optimizer = build_optimizer(name, model, lr=3e-3)
    assert isinstance(optimizer, CompositeOptimizer)
    main, companion = optimizer.optimizers[name], optimizer.optimizers["companion_adamw"]
    assert isinstance(main, optimizer_class) and isinstance(companion, torch.optim.AdamW)
    main_params = {id(p) for group in main.param_groups for p in group["params"]}
    companion_params = {id(p) for group in companion.param_groups for p in group["params"]}
    assert main_params == {id(model.hidden.weight)}
    assert companion_params == {id(p) for p in model.parameters() if p.ndim == 1} | {id(model.head.weight)}
    inputs, targets = torch.randn(32, 6), torch.randn(32, 3)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0]
    assert optimizer.diagnostics()["linalg_failures"] == 0


@pytest.mark.parametrize("name", ["kl_shampoo", "kl_soap"])
def test_yaml_config_builds_and_keeps_the_reference_defaults(name: str) -> None:
    config = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / f"{name}.yaml"))
    assert config.pop("name") == name
    companion = config.pop("companion")
    spec = get_spec(name)
    # Every hyperparameter of the math is in the yaml; stack_shapes (bit-identical either way) is left to its
    # default, as for SOAP (+optimizer.stack_shapes=false to override).
    assert set(config) == set(spec.hyperparameter_names()) - {"stack_shapes"}
    signature = inspect.signature(spec.factory).parameters
    # Deliberate: lr is a benchmark value (reference default 1e-4); cast_dtype None instead of bfloat16.
    for key, value in config.items():
        if key != "lr":
            default = signature[key].default
            assert (tuple(value) if isinstance(value, list) else value) == default, key
    optimizer = build_optimizer(name, _TinyNet(), companion=companion, **config)
    assert isinstance(optimizer.optimizers["companion_adamw"], torch.optim.AdamW)
    assert get_spec(companion["name"]).factory is AdamW
