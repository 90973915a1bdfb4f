"""Muon: Keller Jordan's reference ("muon") and torch.optim.Muon ("muon_torch").

Golden files: ../shared/golden/muon_keller_f64.pt and muon_torch_f64.pt. Both references run Newton–Schulz in
bfloat16, so the trajectories depend on how the CPU rounds bf16 matmuls: torch's own Muon reproduces
muon_torch_f64 bitwise on the golden machine, drifts by 9e-11 on an AVX-512 AMD EPYC and by 6e-5 on an AVX2 one.
So no golden check assumes a CPU. Near-bitwise equality is checked against the reference re-run here, on this
machine: "muon_torch" against torch.optim.Muon itself, "muon" against a transcription of Keller's
``muon_update`` / ``SingleDeviceMuon.step`` (KellerJordan/Muon @ 857d1ad), both bit for bit. Against the goldens
the bound is the golden README's for bf16 Newton–Schulz rounded differently (a different bf16 grouping moves the
trajectory by ~5e-4): 1e-3.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import yaml
from golden_driver import load_golden, max_abs_diff, run_trajectory
from torch import nn

from soapbench.optimizers.composite import CompositeOptimizer
from soapbench.optimizers.muon import Muon, TorchMuon, keller_aspect_scale, zeropower_via_newtonschulz5_keller
from soapbench.optimizers.registry import OptimizerConfigError, build_optimizer, get_spec

ROUNDED_DIFFERENTLY_TOLERANCE = 1e-3
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "optimizer"


def _golden_dtypes(golden: dict) -> dict:
    return {"dtype": torch.float64, "default_dtype": getattr(torch, golden["torch_default_dtype"].split(".")[-1])}


def _run_golden(run: str, factory) -> tuple[dict, dict]:
    golden = load_golden(run)
    trajectory = run_trajectory(
        lambda params: factory(params, **golden["hyperparameters"]), golden["param_names"], **_golden_dtypes(golden)
    )
    return golden, trajectory


def _assert_identical_trajectories(ours: dict, reference: dict) -> None:
    for name in reference:
        assert torch.equal(ours[name], reference[name]), (name, (ours[name] - reference[name]).abs().max().item())


def _assert_within_rounding_of_golden(trajectory: dict, golden: dict) -> None:
    diffs = max_abs_diff(trajectory, golden)
    assert max(diffs.values()) <= ROUNDED_DIFFERENTLY_TOLERANCE, diffs


def _keller_newtonschulz5(G, steps):
    # KellerJordan/Muon @ 857d1ad, muon.py: zeropower_via_newtonschulz5, as written there.
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.bfloat16()
    if G.size(-2) > G.size(-1):
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    if G.size(-2) > G.size(-1):
        X = X.mT
    return X


def _keller_muon_update(grad, momentum, beta=0.95, ns_steps=5, nesterov=True):
    # KellerJordan/Muon @ 857d1ad, muon.py: muon_update, as written there (it overwrites grad).
    momentum.lerp_(grad, 1 - beta)
    update = grad.lerp_(momentum, beta) if nesterov else momentum
    if update.ndim == 4:
        update = update.view(len(update), -1)
    update = _keller_newtonschulz5(update, steps=ns_steps)
    update *= max(1, grad.size(-2) / grad.size(-1)) ** 0.5
    return update


class KellerSingleDeviceMuon(torch.optim.Optimizer):
    """KellerJordan/Muon @ 857d1ad, ``SingleDeviceMuon``, transcribed: the reference re-run on this machine."""

    def __init__(self, params, lr=0.02, weight_decay=0, momentum=0.95, **_):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                state = self.state[p]
                if len(state) == 0:
                    state["momentum_buffer"] = torch.zeros_like(p)
                update = _keller_muon_update(p.grad, state["momentum_buffer"], beta=group["momentum"])
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update.reshape(p.shape), alpha=-group["lr"])


def _drive(optimizer, params, grads) -> None:
    for step_grads in grads:
        for param, grad in zip(params, step_grads):
            param.grad = None if grad is None else grad.to(param.dtype)
        optimizer.step()


def _random_grads(shapes, steps: int, seed: int = 0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(shape, generator=generator, dtype=dtype) for shape in shapes] for _ in range(steps)]


# --------------------------------------------------------------------------------------------- golden files


def test_golden_keller_muon():
    # The record lists nesterov=True and ns_steps=5, which the reference class fixes and ours exposes.
    golden, trajectory = _run_golden("muon_keller_f64", functools.partial(Muon, ns_matmul="bf16"))
    _, reference = _run_golden("muon_keller_f64", KellerSingleDeviceMuon)
    _assert_identical_trajectories(trajectory, reference)
    _assert_within_rounding_of_golden(trajectory, golden)


def test_golden_keller_muon_with_its_products_in_float32_is_the_reference_up_to_summation_order():
    """The CPU default: the same bf16 operands and rounding points, float32 GEMMs (module docstring, ns_matmul)."""
    golden, trajectory = _run_golden("muon_keller_f64", Muon)
    _, reference = _run_golden("muon_keller_f64", KellerSingleDeviceMuon)
    assert max(max_abs_diff(trajectory, {"traj": reference}).values()) <= ROUNDED_DIFFERENTLY_TOLERANCE
    _assert_within_rounding_of_golden(trajectory, golden)


def _matmul_operand_dtypes(run) -> list[torch.dtype]:
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: list[torch.dtype] = []

    class RecordMatmuls(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.bmm, torch.ops.aten.matmul):
                seen.append(args[0].dtype)
            return func(*args, **(kwargs or {}))

    with RecordMatmuls():
        run()
    return seen


def test_on_cpu_newton_schulz_runs_no_bf16_gemm_unless_asked():
    """A CPU without native bf16 runs a bf16 GEMM 8-24x slower than float32: on an AMD EPYC (AVX2) Muon with 10 NS
    steps took 1.6 s a step on nanogpt_char_cpu, timing the emulation instead of the algorithm."""
    matrix = torch.randn(24, 40, generator=torch.Generator().manual_seed(5))
    default = _matmul_operand_dtypes(lambda: zeropower_via_newtonschulz5_keller(matrix, steps=3))
    assert default and set(default) == {torch.float32}
    exact = _matmul_operand_dtypes(lambda: zeropower_via_newtonschulz5_keller(matrix, steps=3, ns_matmul="bf16"))
    assert exact and set(exact) == {torch.bfloat16}
    param = nn.Parameter(torch.randn(24, 40))
    param.grad = matrix
    assert set(_matmul_operand_dtypes(Muon([param]).step)) == {torch.float32}


def test_float32_products_round_to_the_bf16_gemm_result_up_to_one_ulp():
    """Per product the two paths differ only in the order of float32 sums (which kernels pick differs by CPU
    vendor): at most one bf16 ulp of the result plus float32 rounding of the sum, in few entries."""
    from soapbench.optimizers.muon import _bf16_product_via_float32

    generator = torch.Generator().manual_seed(6)
    for rows, inner, cols in [(20, 8, 20), (64, 128, 64), (96, 96, 96)]:
        left = torch.randn(rows, inner, generator=generator).bfloat16()
        right = torch.randn(inner, cols, generator=generator).bfloat16()
        exact, fast = (left @ right).float(), _bf16_product_via_float32(left, right).float()
        one_ulp = 2.0 ** (torch.floor(torch.log2(exact.abs().clamp_min(1e-30))) - 7)
        sum_rounding = 2.0**-20 * (left.float().abs() @ right.float().abs())
        assert ((fast - exact).abs() <= one_ulp + sum_rounding).all(), (rows, inner)
        assert ((fast - exact).abs() > 0).float().mean() < 0.05, (rows, inner)
    # and through five Newton-Schulz steps, where such differences can propagate: still at bf16 resolution
    for shape in [(20, 8), (64, 128), (96, 96)]:
        matrix = torch.randn(shape, generator=generator)
        exact = zeropower_via_newtonschulz5_keller(matrix, steps=5, ns_matmul="bf16").float()
        fast = zeropower_via_newtonschulz5_keller(matrix, steps=5, ns_matmul="float32").float()
        assert (fast - exact).abs().max() <= 0.02, shape  # NS entries are O(0.1-1)


def test_golden_torch_muon():
    golden, trajectory = _run_golden("muon_torch_f64", TorchMuon)
    _, reference = _run_golden("muon_torch_f64", torch.optim.Muon)
    _assert_identical_trajectories(trajectory, reference)
    _assert_within_rounding_of_golden(trajectory, golden)


# --------------------------------------------------------------------------------------------- exact math


def test_step_is_weight_decay_then_scaled_newton_schulz_of_the_nesterov_mix():
    lr, weight_decay, momentum = 0.02, 0.1, 0.9
    param = nn.Parameter(torch.randn(12, 5, dtype=torch.float64))
    optimizer = Muon([param], lr=lr, weight_decay=weight_decay, momentum=momentum)
    weights, buffer = param.detach().clone(), torch.zeros(12, 5, dtype=torch.float64)
    for (grad,) in _random_grads([(12, 5)], steps=3, seed=1):
        param.grad = grad.clone()
        optimizer.step()
        assert torch.equal(param.grad, grad), "the reference's in-place write into p.grad is not copied"
        buffer.lerp_(grad, 1 - momentum)
        mixed = grad.lerp(buffer, momentum)
        update = zeropower_via_newtonschulz5_keller(mixed, steps=5) * (12 / 5) ** 0.5
        weights = weights * (1 - lr * weight_decay) - lr * update.double()
        torch.testing.assert_close(param.detach(), weights, rtol=0, atol=1e-9)


def test_newton_schulz_orthogonalizes_in_bfloat16():
    matrix = torch.randn(20, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    result = zeropower_via_newtonschulz5_keller(matrix, steps=5)
    assert result.dtype == torch.bfloat16 and result.shape == (20, 8)
    singular_values = torch.linalg.svdvals(result.double())
    # Keller's coefficients give singular values in roughly (0.5, 1.5), not exactly 1.
    assert singular_values.min() > 0.5 and singular_values.max() < 1.5


def test_without_nesterov_the_buffer_is_orthogonalized():
    param = nn.Parameter(torch.zeros(6, 6, dtype=torch.float64))
    optimizer = Muon([param], lr=1.0, momentum=0.5, nesterov=False)
    grad = torch.randn(6, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    param.grad = grad
    optimizer.step()
    expected = -zeropower_via_newtonschulz5_keller(0.5 * grad, steps=5).double()
    assert torch.equal(param.detach(), expected)


def test_conv_kernels_are_flattened_with_kellers_kernel_aspect_factor():
    grads = _random_grads([(16, 8, 3, 3)], steps=3, seed=4)
    conv = nn.Parameter(torch.randn(16, 8, 3, 3, dtype=torch.float64))
    flat = nn.Parameter(conv.detach().reshape(16, 72).clone())
    conv_optimizer, flat_optimizer = Muon([conv], lr=0.02), Muon([flat], lr=0.02)
    _drive(conv_optimizer, [conv], grads)
    _drive(flat_optimizer, [flat], [[g.reshape(16, 72)] for (g,) in grads])
    assert torch.equal(conv.detach().reshape(16, 72), flat.detach())
    # The reference's quirk: the aspect factor of a 4-D tensor uses its kernel dims (kh/kw), not (out, rest).
    assert keller_aspect_scale(torch.Size([16, 8, 5, 3])) == pytest.approx((5 / 3) ** 0.5)
    assert keller_aspect_scale(torch.Size([16, 72])) == 1.0


def test_three_dimensional_params_are_flattened_too():
    # Last two dims (3, 4) give an aspect factor of 1, as does the flattened (6, 12), so the runs agree bitwise.
    grads = _random_grads([(6, 3, 4)], steps=2, seed=5)
    cube = nn.Parameter(torch.randn(6, 3, 4, dtype=torch.float64))
    flat = nn.Parameter(cube.detach().reshape(6, 12).clone())
    _drive(Muon([cube], lr=0.02), [cube], grads)
    _drive(Muon([flat], lr=0.02), [flat], [[g.reshape(6, 12)] for (g,) in grads])
    assert torch.equal(cube.detach().reshape(6, 12), flat.detach())
    assert keller_aspect_scale(torch.Size([6, 4, 3])) == pytest.approx((4 / 3) ** 0.5)


# --------------------------------------------------------------------------------------------- optimizer contract


def test_vectors_are_rejected_with_a_pointer_to_the_companion():
    with pytest.raises(ValueError, match="companion|AdamW"):
        Muon([nn.Parameter(torch.ones(3, 3)), nn.Parameter(torch.ones(3))])


def test_bfloat16_params_keep_a_float32_buffer():
    param = nn.Parameter(torch.randn(8, 4).to(torch.bfloat16))
    optimizer = Muon([param], lr=0.02)
    _drive(optimizer, [param], _random_grads([(8, 4)], steps=3, seed=8, dtype=torch.float32))
    assert optimizer.state[param]["momentum_buffer"].dtype == torch.float32
    assert param.dtype == torch.bfloat16 and torch.isfinite(param).all()


@pytest.mark.parametrize(
    "make_grad",
    [
        lambda: torch.zeros(6, 5),
        lambda: torch.outer(torch.arange(6.0), torch.ones(5)),
        lambda: torch.diag(torch.logspace(-12, 12, 5)).repeat(2, 1)[:6],
    ],
    ids=["zero", "rank1", "ill_conditioned"],
)
def test_degenerate_gradients_stay_finite(make_grad):
    params = [nn.Parameter(torch.ones(6, 5)), nn.Parameter(torch.ones(6, 5, dtype=torch.float64))]
    optimizer = Muon(params, lr=0.02)
    for _ in range(3):
        for param in params:
            param.grad = make_grad().to(param.dtype)
        optimizer.step()
    assert all(torch.isfinite(param).all() for param in params)


# --------------------------------------------------------------------------------------------- registry, models


class TinyLanguageModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(11, 8)
        self.hidden = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.norm = nn.LayerNorm(8)
        self.lm_head = nn.Linear(8, 11, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(self.hidden(self.embedding(tokens))))


@pytest.mark.parametrize("name", ["muon", "muon_torch"])
def test_build_from_a_model_gives_muon_only_the_hidden_matrices(name):
    model = TinyLanguageModel()
    optimizer = build_optimizer(name, model, lr=0.02, companion={"name": "adamw", "lr": 1e-3})
    assert isinstance(optimizer, CompositeOptimizer)
    main, companion = optimizer.optimizers[name], optimizer.optimizers["companion_adamw"]
    hidden = {id(model.hidden[0].weight), id(model.hidden[2].weight)}
    assert {id(p) for group in main.param_groups for p in group["params"]} == hidden
    companion_ids = {id(p) for group in companion.param_groups for p in group["params"]}
    assert companion_ids == {id(p) for p in model.parameters()} - hidden
    logits = model(torch.tensor([[1, 2, 3]]))
    nn.functional.cross_entropy(logits.flatten(0, 1), torch.tensor([2, 3, 4])).backward()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_composite_state_reads_each_parameter_from_its_owner_and_counts_the_companion():
    """The composite's state once read a companion parameter through the first child's defaultdict: an empty
    entry was inserted there and returned, so the trainer's state-memory count left out the companion's moments."""
    from soapbench.trainer import _state_bytes

    model = TinyLanguageModel()
    optimizer = build_optimizer("muon", model, lr=0.02, companion={"name": "adamw", "lr": 1e-3})
    main, companion = optimizer.optimizers["muon"], optimizer.optimizers["companion_adamw"]
    logits = model(torch.tensor([[1, 2, 3]]))
    nn.functional.cross_entropy(logits.flatten(0, 1), torch.tensor([2, 3, 4])).backward()
    optimizer.step()
    main_keys = set(map(id, main.state))
    assert optimizer.state[model.lm_head.weight] is companion.state[model.lm_head.weight]
    assert set(map(id, main.state)) == main_keys  # reading did not insert anything into Muon's state
    assert _state_bytes(optimizer) == _state_bytes(main) + _state_bytes(companion) > _state_bytes(main)
    with pytest.raises(KeyError):
        optimizer.state[torch.nn.Parameter(torch.zeros(1))]  # not a parameter of either child


def test_composite_runs_step_state_dict_and_load_hooks_as_torch_does():
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    model = TinyLanguageModel()
    optimizer = build_optimizer("muon", model, lr=0.02, companion={"name": "adamw", "lr": 1e-3})
    calls = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: calls.append(("step pre", opt is optimizer)))
    optimizer.register_step_post_hook(lambda opt, args, kwargs: calls.append(("step post", opt is optimizer)))
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: (
            calls.append(("global pre", opt is optimizer)) if isinstance(opt, CompositeOptimizer) else None
        )
    )
    optimizer.register_state_dict_pre_hook(lambda opt: calls.append(("state_dict pre", opt is optimizer)))
    optimizer.register_state_dict_post_hook(lambda opt, sd: {**sd, "tag": "post"})
    optimizer.register_load_state_dict_pre_hook(lambda opt, sd: {k: v for k, v in sd.items() if k != "tag"})
    optimizer.register_load_state_dict_post_hook(lambda opt: calls.append(("load post", opt is optimizer)))
    try:
        logits = model(torch.tensor([[1, 2, 3]]))
        nn.functional.cross_entropy(logits.flatten(0, 1), torch.tensor([2, 3, 4])).backward()
        optimizer.step()
    finally:
        handle.remove()
    saved = optimizer.state_dict()
    assert saved["tag"] == "post"
    optimizer.load_state_dict(saved)  # the pre hook drops the tag the post hook added
    assert calls == [
        ("global pre", True),
        ("step pre", True),
        ("step post", True),
        ("state_dict pre", True),
        ("load post", True),
    ]


def test_torch_muon_is_torch_for_matrices_and_flattens_conv_kernels():
    assert get_spec("muon_torch").main_roles == ("matrix",) and get_spec("muon").main_roles == ("matrix",)
    shapes = [(9, 4), (4, 3, 3, 3)]
    grads = _random_grads(shapes, steps=4, seed=11)
    init = [torch.randn(shape, generator=torch.Generator().manual_seed(12), dtype=torch.float64) for shape in shapes]
    ours = [nn.Parameter(w.clone()) for w in init]
    _drive(TorchMuon(ours, lr=0.02), ours, grads)
    # torch.optim.Muon itself on the (out, rest) matrix of each parameter.
    matrices = [nn.Parameter(w.reshape(w.shape[0], -1).clone()) for w in init]
    _drive(torch.optim.Muon(matrices, lr=0.02), matrices, [[g.reshape(g.shape[0], -1) for g in step] for step in grads])
    for param, matrix in zip(ours, matrices):
        assert torch.equal(param.detach().reshape(matrix.shape), matrix.detach())


def test_torch_muon_rejects_vectors_and_non_contiguous_kernels():
    with pytest.raises(OptimizerConfigError, match=r"matrices only.*\(3,\)"):
        build_optimizer("muon_torch", [nn.Parameter(torch.ones(3, 3)), nn.Parameter(torch.ones(3))])
    channels_last = nn.Parameter(torch.ones(4, 3, 3, 3).to(memory_format=torch.channels_last))
    with pytest.raises(OptimizerConfigError, match="contiguous"):
        build_optimizer("muon_torch", [channels_last])
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    for name in ("muon", "muon_torch"):
        assert isinstance(build_optimizer(name, cnn), CompositeOptimizer)


def test_validation_errors_name_the_field():
    params = [nn.Parameter(torch.ones(2, 2))]
    for bad, field in (
        (dict(momentum=1.0), "momentum"),
        (dict(ns_steps=0), "ns_steps"),
        (dict(lr=-1.0), "lr"),
        (dict(ns_matmul="fp16"), "ns_matmul"),
    ):
        with pytest.raises(OptimizerConfigError, match=field):
            build_optimizer("muon", params, **bad)
    for bad, field in (
        (dict(adjust_lr_fn="bogus"), "adjust_lr_fn"),
        (dict(ns_coefficients=[1.0, 2.0]), "ns_coefficients"),
    ):
        with pytest.raises(OptimizerConfigError, match=field):
            build_optimizer("muon_torch", params, **bad)


@pytest.mark.parametrize("config_name", ["muon", "muon_torch"])
def test_config_builds_on_a_model(config_name):
    config = yaml.safe_load((CONFIG_DIR / f"{config_name}.yaml").read_text())
    assert config.pop("name") == config_name
    model = TinyLanguageModel()
    optimizer = build_optimizer(config_name, model, **config)
    companion = optimizer.optimizers["companion_adamw"]
    assert companion.param_groups[0]["betas"] == (0.9, 0.95) and companion.param_groups[0]["lr"] == 3e-4
    model(torch.tensor([[1, 2]])).sum().backward()
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
