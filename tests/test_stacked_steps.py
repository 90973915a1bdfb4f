"""Per shape: stepping same-shape matrices as one stack computes what stepping them one by one computes.

SOAP, Shampoo, SOAP-Muon, KL-Shampoo and KL-SOAP, compared on every path the stack takes (rotations, moments, fused update, factor EMAs; SOAP's QR
and eigh refreshes with the momentum move, member by member as on CPU and stack-wide as on GPU; Shampoo's inverse
roots and grafting; SOAP-Muon's projections, Newton–Schulz and graft scale; KL's Kronecker scale, whitened Gram products,
eigenvalue EMAs and clamps, QR refreshes and KL-SOAP's momentum move, with narrow and block-symmetric factors; one-sided matrices, float64 factors), at one and two BLAS threads, through a state_dict round trip and a change of which parameters
have gradients (both restack).

A batched GEMM and a loop of single GEMMs are different kernels: on some CPUs (MKL on AMD) they round the last bit
differently, so the two paths are not bit-identical in general. The tests bound the difference instead:

* in float32, at the optimizers' own precision, by the rounding of a step (``ULPS_PER_STEP`` units in the last place
  of the largest entry, per step taken), which fails the moment a difference is amplified over the run;
* in float64 with float64 refreshes, where the claim is about the algebra, by the same rule at float64's epsilon
  (about 1e-13 after 10 steps): any difference in what the two paths compute shows up far above it.

The problem keeps every preconditioned factor full rank by its first refresh: the eigenbasis of a degenerate factor
is arbitrary within the null space, so two kernels need not pick the same one (and KL's per-direction scales are not
invariant to that choice): with such a factor any rounding difference changes the run by O(1e-3), on every path.
"""

from __future__ import annotations

import pytest
import torch

from soapbench.optimizers import KLSOAP, SOAP, KLShampoo, Shampoo, SOAPMuon, kl_math, linalg, soap
from soapbench.optimizers.batching import StackedState
from soapbench.optimizers.linalg import LinalgHealth, orthonormalize_qr

# Rounding of one step, in units of the dtype's epsilon times the largest entry; measured growth is 2-4 per step on
# an AMD EPYC (MKL) in float32 and below 1 in float64. An amplified difference (1e-3 in float32) is 10^4 beyond it.
ULPS_PER_STEP = 32

# Three 24×16 (one bucket), two 16×16, a one-sided pair for SOAP (rows > max_precond_dim; two blocks for
# Shampoo), a lone 8×40 and a vector.
SHAPES = [(24, 16), (16, 16), (24, 16), (16, 16), (24, 16), (60, 8), (60, 8), (8, 40), (16,)]
# KL preconditions both sides of every matrix, so its pair and lone matrix are ones whose factors are full rank by
# the first refresh (a 60×60 factor of 60×8 gradients has a 36-dimensional null space after three steps).
KL_SHAPES = [(24, 16), (16, 16), (24, 16), (16, 16), (24, 16), (12, 8), (12, 8), (8, 12), (16,)]
OPTIONS = {
    "soap qr": (SOAP, dict(precondition_frequency=3, max_precond_dim=48)),
    "soap eigh": (SOAP, dict(precondition_frequency=2, max_precond_dim=48, refresh_method="eigh")),
    "soap float64 linalg": (SOAP, dict(precondition_frequency=3, max_precond_dim=48, linalg_precision="float64")),
    "shampoo": (Shampoo, dict(precondition_frequency=3, max_preconditioner_dim=48)),
    "soap_muon": (SOAPMuon, dict(precondition_frequency=3, projection_type="std", nestrov=True)),
    "soap_muon full graft": (
        SOAPMuon,
        dict(precondition_frequency=2, projection_type="full", max_precond_dim=48, scale="graft"),
    ),
    "shampoo rmsprop beta3": (
        Shampoo,
        dict(precondition_frequency=2, max_preconditioner_dim=48, beta3=0.5, grafting_type="rmsprop", weight_decay=0.0),
    ),
    "kl_shampoo": (KLShampoo, dict(precondition_frequency=3)),
    "kl_soap": (KLSOAP, dict(precondition_frequency=2, betas=(0.9, 0.95))),
    "kl_shampoo symmetric blocks": (KLShampoo, dict(precondition_frequency=3, max_clamp_value=12)),
    "kl_soap symmetric blocks": (KLSOAP, dict(precondition_frequency=3, using_clamping=False)),
}


def _narrow_symmetric_blocks(monkeypatch) -> None:
    """Factors from 16 wide take the block-symmetric update (linalg.gram_update_) that 768-wide ones take."""
    for module in (linalg, kl_math):
        monkeypatch.setattr(module, "SYMMETRIC_BLOCK", 8)


def _shapes(optimizer_class: type) -> list[tuple[int, ...]]:
    return KL_SHAPES if optimizer_class in (KLShampoo, KLSOAP) else SHAPES


def _run(
    stack_shapes: bool,
    option: str,
    steps: int = 10,
    skip_at: int | None = None,
    reload_at: int | None = None,
    dtype: torch.dtype = torch.float32,
):
    optimizer_class, options = OPTIONS[option]
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape, dtype=dtype)) for shape in _shapes(optimizer_class)]
    options = {"lr": 1e-2, "weight_decay": 0.1, **options}
    optimizer = optimizer_class(params, stack_shapes=stack_shapes, **options)
    generator = torch.Generator().manual_seed(1)
    for step in range(steps):
        for index, param in enumerate(params):
            param.grad = torch.randn(param.shape, generator=generator, dtype=dtype)
            if step == skip_at and index == 2:
                param.grad = None  # one member of the 24×16 bucket sits this step out
        optimizer.step()
        if step == reload_at:
            saved = optimizer.state_dict()
            optimizer = optimizer_class(params, stack_shapes=stack_shapes, **options)
            optimizer.load_state_dict(saved)
    return [param.detach().clone() for param in params], optimizer


def assert_within_rounding(actual, expected, where: str, steps: int) -> None:
    """Nested state equal in structure, dtypes and non-tensor values; tensors within ``steps`` steps' rounding.

    The bound for a tensor is ``ULPS_PER_STEP · steps · eps(dtype) · max(1, max|expected|)``.
    """
    if isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, where
        if not expected.is_floating_point():
            assert torch.equal(actual, expected), where
            return
        scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
        bound = ULPS_PER_STEP * steps * torch.finfo(expected.dtype).eps * scale
        difference = (actual - expected).abs().max().item() if expected.numel() else 0.0
        assert difference <= bound, (
            f"{where}: differs by {difference:.3g}, beyond {steps} steps' rounding ({bound:.3g})"
        )
    elif isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for key in expected:
            assert_within_rounding(actual[key], expected[key], f"{where}.{key}", steps)
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for index, (a, e) in enumerate(zip(actual, expected)):
            assert_within_rounding(a, e, f"{where}[{index}]", steps)
    else:
        assert actual == expected, where


@pytest.fixture
def float64_refreshes(monkeypatch):
    """Refreshes (QR, eigh) in float64 and float64 defaults, for the algebra check: the references' float32 QR would
    otherwise round a float64 run's factors to float32 at every refresh."""
    monkeypatch.setattr(linalg, "linalg_dtype", lambda precision: torch.float64)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


# Only SOAP refreshes a whole stack at once (on a GPU); the others are checked with the CPU refresh alone.
_REFRESH_MODES = [
    pytest.param(option, batched, id=f"{option}-{'gpu-style batched refresh' if batched else 'cpu refresh'}")
    for option in sorted(OPTIONS)
    for batched in ([False, True] if OPTIONS[option][0] is SOAP else [False])
]


STEPS = 10


@pytest.mark.parametrize("precision", ["float32", "float64 algebra"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("option, batched_refresh", _REFRESH_MODES)
def test_stacked_steps_equal_per_parameter_steps_to_rounding(
    option: str, batched_refresh: bool, threads: int, precision: str, request, monkeypatch
) -> None:
    optimizer_class = OPTIONS[option][0]
    dtype = torch.float32
    if precision == "float64 algebra":
        request.getfixturevalue("float64_refreshes")
        dtype = torch.float64
    if batched_refresh:  # the stack-wide QR refresh a GPU runs, here on CPU
        monkeypatch.setattr(soap, "BATCHED_REFRESH_DEVICES", ("cuda", "cpu"))
    if "symmetric blocks" in option:
        _narrow_symmetric_blocks(monkeypatch)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        stacked_params, stacked = _run(True, option, STEPS, skip_at=4, reload_at=6, dtype=dtype)
        single_params, single = _run(False, option, STEPS, skip_at=4, reload_at=6, dtype=dtype)
    finally:
        torch.set_num_threads(previous)
    assert_within_rounding(stacked_params, single_params, "params", STEPS)
    assert_within_rounding(stacked.state_dict()["state"], single.state_dict()["state"], "state", STEPS)
    assert stacked.diagnostics() == single.diagnostics()
    # The stacks were in use to the end; the 24×16 member that sat a step out has its own step count (its bias
    # correction differs), so it steps alone beside a bucket of the other two. Shampoo cuts the 60×8 pair into
    # blocks, which it steps one parameter at a time; SOAP, SOAP-Muon and KL stack it too.
    live = stacked.__dict__["_stacked_states"]
    expected = [2, 2] if optimizer_class is Shampoo else [2, 2, 2]
    assert sorted(len(bucket.params) for bucket in live.values()) == expected


def test_the_rounding_bound_catches_a_difference_in_the_algebra(float64_refreshes, monkeypatch) -> None:
    """The float64 bound is tight enough to see a one-ulp-of-float32 change in one member's step (the size of a
    float32 rounding slipped into a float64 path), which a float32-sized tolerance would pass."""
    stacked_params, _ = _run(True, "soap qr", STEPS, dtype=torch.float64)
    single_params, _ = _run(False, "soap qr", STEPS, dtype=torch.float64)
    single_params[0] = single_params[0] * (1 + torch.finfo(torch.float32).eps)
    with pytest.raises(AssertionError, match="beyond 10 steps' rounding"):
        assert_within_rounding(stacked_params, single_params, "params", STEPS)


def test_stack_members_hold_views_and_a_replaced_tensor_forces_a_restack() -> None:
    _, optimizer = _run(True, "soap qr", steps=3)
    [bucket] = [b for b in optimizer.__dict__["_stacked_states"].values() if len(b.params) == 3]
    states = [optimizer.state[param] for param in bucket.params]
    stack = bucket[("exp_avg",)]
    assert all(state["exp_avg"].data_ptr() == stack[i].data_ptr() for i, state in enumerate(states))
    states[1]["Q"][0] = states[1]["Q"][0].clone()  # what a refresh broadcast from another rank does
    assert not bucket.intact(states)
    restacked = StackedState(bucket.params, states, [("Q", 0)])
    assert torch.equal(restacked[("Q", 0)][1], states[1]["Q"][0]) and restacked.intact(states)


def test_a_failed_qr_in_a_stack_falls_back_for_that_matrix_only(monkeypatch) -> None:
    matrices = torch.randn(3, 6, 6)
    fallback = torch.eye(6).expand(3, 6, 6).clone()
    expected = [orthonormalize_qr(matrix) for matrix in matrices]
    matrices[1, 2, 3] = float("nan")
    health = LinalgHealth()
    result = orthonormalize_qr(matrices, fallback=fallback, health=health)
    assert torch.equal(result[0], expected[0]) and torch.equal(result[2], expected[2])
    assert torch.equal(result[1], fallback[1])  # NaN in float64 too: the previous basis is kept
    assert (health.failures, health.float64_retries) == (1, 0)


@pytest.mark.parametrize(
    "option, batched_refresh",
    [("soap qr", False), ("soap qr", True), ("kl_shampoo", False), ("kl_soap", False)],
    ids=["soap cpu refresh", "soap gpu-style batched refresh", "kl_shampoo", "kl_soap"],
)
def test_a_rank_refreshes_only_the_members_it_owns(option: str, batched_refresh: bool, monkeypatch) -> None:
    """Under refresh sharing a rank refreshes part of a stack; the rest arrives by broadcast (not simulated here)."""
    optimizer_class, options = OPTIONS[option]
    if batched_refresh:
        monkeypatch.setattr(soap, "BATCHED_REFRESH_DEVICES", ("cuda", "cpu"))
    owned_shapes = {0, 4}  # two of the three 24×16 members, one of the two 16×16
    results = []
    for stack_shapes in (True, False):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(shape)) for shape in _shapes(optimizer_class)]
        optimizer = optimizer_class(params, lr=1e-2, stack_shapes=stack_shapes, **options)
        owned = {id(param) for param in params}  # the first bases: every member computes its own (no broadcast here)
        monkeypatch.setattr(optimizer, "_computes_refresh", lambda param: id(param) in owned)
        generator = torch.Generator().manual_seed(1)
        for _ in range(7):
            for param in params:
                param.grad = torch.randn(param.shape, generator=generator)
            optimizer.step()
            owned = {id(param) for index, param in enumerate(params) if index in owned_shapes | {1, 5, 7, 8}}
        results.append(([param.detach().clone() for param in params], optimizer.state_dict()["state"]))
    assert_within_rounding(results[0], results[1], "stacked vs per-parameter with partial ownership", steps=7)
