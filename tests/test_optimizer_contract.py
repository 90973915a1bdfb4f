"""The contract every registered optimizer meets.

First the generic contract (``soapbench.contract``: torch's OptimizerInfo machinery, one test per optimizer and
category, every input of the optimizer's entry, float32 and float64). Then the checks on the optimizer as the
trainer builds it (from its yaml, companions included): state_dict round trip continues bit-identically, bf16
parameters, grad-less parameters, LR scheduler changes, several param groups, ill-conditioned gradients, and a
falling loss in a real short run.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from soapbench.contract import CATEGORIES, registered_info, run_contract
from soapbench.optimizers import available_optimizers, build_optimizer
from soapbench.optimizers.registry import get_spec
from soapbench.results import RunStore
from tests.conftest import CONFIG_DIR, assert_identical, train_in_process

OPTIMIZERS = available_optimizers()


@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_generic_contract(name: str, category: str, one_thread) -> None:
    results = run_contract(registered_info(name), categories=[category])
    failures = [f"{result.name}: {result.reason}" for result in results if result.status == "fail"]
    assert not failures, f"{name} breaks the {category} contract:\n" + "\n".join(failures)
    if all(result.status == "skip" for result in results):
        pytest.skip("; ".join(sorted({result.reason for result in results})))


def _yaml_hparams(name: str) -> tuple[dict, dict]:
    for path in (CONFIG_DIR / "optimizer").glob("*.yaml"):
        config = OmegaConf.to_container(OmegaConf.load(path))
        if config["name"] == name:
            config.pop("name")
            build_args = {k: config.pop(k) for k in ("companion", "main_roles") if config.get(k) is not None}
            config.pop("companion", None)
            config.pop("main_roles", None)
            if "precondition_frequency" in config:
                config["precondition_frequency"] = 2  # exercise refreshes within a few steps
            if "start_preconditioning_step" in config:
                config["start_preconditioning_step"] = 2
            hparams = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
            return hparams, build_args
    raise AssertionError(f"no yaml for optimizer {name}")


class TinyNet(nn.Module):
    """Every parameter role and shape the optimizers must handle."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 8)
        self.conv = nn.Conv2d(2, 3, kernel_size=3, padding=1)
        self.hidden = nn.Linear(8 + 3, 16)
        self.norm = nn.LayerNorm(16)
        self.lm_head = nn.Linear(16, 11, bias=False)

    def forward(self, tokens: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        pooled = self.conv(image).mean(dim=(2, 3))
        x = torch.cat([self.embed(tokens), pooled[:, None, :].expand(-1, tokens.shape[1], -1)], dim=-1)
        return self.lm_head(self.norm(torch.tanh(self.hidden(x))))


def _loss(model: TinyNet, step: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(step)
    tokens = torch.randint(0, 11, (4, 5), generator=generator)
    image = torch.randn(4, 2, 6, 6, generator=generator)
    logits = model(tokens, image.to(model.conv.weight.dtype)).float()
    return nn.functional.cross_entropy(logits.flatten(0, 1), torch.roll(tokens, 1, dims=1).flatten())


def _build(name: str, model: nn.Module):
    hparams, build_args = _yaml_hparams(name)
    return build_optimizer(name, model, **build_args, **hparams)


def _train(model, optimizer, steps, start=0, scheduler=None):
    for step in range(start, start + steps):
        optimizer.zero_grad(set_to_none=True)
        _loss(model, step).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


def _round_trip(optimizer: torch.optim.Optimizer):
    """The optimizer's state_dict as a checkpoint holds it: through torch.save and torch.load."""
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_dict_round_trip_continues_bit_identically(name: str, dtype: torch.dtype) -> None:
    """Saved after 5 steps and reloaded into a fresh optimizer, 6 more steps (refreshes included) give the same
    parameters and the same optimizer state, every tensor's dtype included (bf16 parameters keep their state's
    dtype, which torch's own load_state_dict would cast)."""
    torch.manual_seed(0)
    model = TinyNet().to(dtype)
    optimizer = _build(name, model)
    _train(model, optimizer, 5)
    saved_model = copy.deepcopy(model.state_dict())
    saved_optimizer = _round_trip(optimizer)
    _train(model, optimizer, 6, start=5)

    restored = TinyNet().to(dtype)
    restored.load_state_dict(saved_model)
    restored_optimizer = _build(name, restored)
    restored_optimizer.load_state_dict(saved_optimizer)
    _train(restored, restored_optimizer, 6, start=5)
    for (param_name, a), b in zip(model.named_parameters(), restored.parameters()):
        assert torch.equal(a, b), f"{name}: {param_name} differs after a state_dict round trip"
    assert_identical(restored_optimizer.state_dict(), optimizer.state_dict(), f"{name} state after the round trip")


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_bf16_parameters_train_and_stay_finite(name: str) -> None:
    torch.manual_seed(0)
    model = TinyNet().to(torch.bfloat16)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = _build(name, model)
    _train(model, optimizer, 6)
    assert all(torch.isfinite(p.float()).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), f"{name} did not move bf16 params"


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_parameters_without_gradients_are_skipped(name: str) -> None:
    torch.manual_seed(0)
    model = TinyNet().double()
    unused = nn.Linear(7, 7).double()
    model.add_module("unused", unused)  # registered, never in the graph: its grad stays None
    before = copy.deepcopy(unused.state_dict())
    hidden_before = model.hidden.weight.detach().clone()
    optimizer = _build(name, model)
    _train(model, optimizer, 5)
    for key, value in unused.state_dict().items():
        assert torch.equal(value, before[key]), f"{name} changed a parameter that had no gradient"
    assert all(param not in optimizer.state for param in unused.parameters()), f"{name} kept state for it"
    assert not torch.equal(model.hidden.weight, hidden_before), f"{name} did not move the parameters with gradients"


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_lr_scheduler_changes_take_effect(name: str) -> None:
    torch.manual_seed(0)
    scheduled = TinyNet().double()
    manual = copy.deepcopy(scheduled)
    optimizer, manual_optimizer = _build(name, scheduled), _build(name, manual)
    peak = [group["lr"] for group in optimizer.param_groups]
    # Halve the lr every step, then 0 from step 4: a scheduled run must equal one whose lr is set by hand, bit for
    # bit, and nothing may move once the lr is 0 (weight decay is scaled by the lr too).
    factor = lambda step: 0.5**step if step < 4 else 0.0  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    for step in range(7):
        if step == 5:
            frozen = [p.detach().clone() for p in scheduled.parameters()]
        for group, lr in zip(manual_optimizer.param_groups, peak):
            group["lr"] = lr * factor(step)
        _train(scheduled, optimizer, 1, start=step, scheduler=scheduler)
        _train(manual, manual_optimizer, 1, start=step)
        for a, b in zip(scheduled.parameters(), manual.parameters()):
            assert torch.equal(a, b), f"{name}: scheduled lr differs from the lr set by hand at step {step}"
    for a, b in zip(frozen, scheduled.parameters()):
        assert torch.equal(a, b), f"{name} moved parameters at lr 0"


# Per-group hyperparameters that change each method's own knobs (a drop-in optimizer gets only different lrs).
GROUP_SETTINGS = {
    "adafactor": [
        dict(lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1),
        dict(lr=3e-3, betas=(0.5, 0.99), weight_decay=0.0),
    ],
    "muon": [dict(lr=0.02, momentum=0.95, weight_decay=0.1), dict(lr=0.005, momentum=0.5, nesterov=False)],
    "soap": [dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.0), dict(lr=3e-3, precondition_frequency=3, eps=1e-6)],
    "shampoo": [
        dict(lr=1e-2, inv_root_override=0, weight_decay=0.0),
        dict(lr=3e-3, precondition_frequency=3, momentum=0.5),
    ],
    "soap_muon": [
        dict(lr=1e-2, betas=(0.95, 0.95), projection_type="std", nestrov=True, precondition_frequency=2),
        dict(
            lr=3e-3, betas=(0.9, 0.99), projection_type="full", newton_schulz_steps=3, scale="graft", weight_decay=0.1
        ),
    ],
    "kl_shampoo": [
        dict(lr=1e-2, precondition_frequency=2, weight_decay=0.1),
        dict(
            lr=3e-3,
            precondition_frequency=5,
            shampoo_beta=0.5,
            betas=(0.8, 0.9),
            eps=1e-6,
            max_clamp_value=5,
            cast_dtype="float64",
        ),
    ],
}
GROUP_SETTINGS["kl_soap"] = GROUP_SETTINGS["kl_shampoo"]


GROUP_SHAPES = [(6, 4), (5, 3), (4, 7)]


def _group_problem(name: str) -> tuple[dict, list[dict], list[torch.Tensor], list[list[torch.Tensor]]]:
    """(yaml hparams, per-group settings, initial values, 6 steps of gradients) for one parameter per group."""
    hparams, _ = _yaml_hparams(name)
    lr = hparams.get("lr", 1e-3)
    known = set(get_spec(name).hyperparameter_names())
    settings = [{k: v for k, v in s.items() if k in known} for s in GROUP_SETTINGS.get(name, [])]
    settings = settings or [dict(lr=lr), dict(lr=lr / 3)]
    generator = torch.Generator().manual_seed(0)
    init = [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in GROUP_SHAPES]
    grads = [[torch.randn(shape, generator=generator, dtype=torch.float64) for shape in GROUP_SHAPES] for _ in range(6)]
    return hparams, settings, init, grads


def _drive(optimizer, params, grads, indices) -> None:
    for step_grads in grads:
        for param, index in zip(params, indices):
            param.grad = step_grads[index].clone()
        optimizer.step()


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_several_param_groups_keep_their_own_hyperparameters(name: str) -> None:
    """Groups with different hyperparameters train exactly as separate optimizers would; an lr-0 group stays put."""
    hparams, settings, init, grads = _group_problem(name)
    settings = [*settings, dict(lr=0.0)]
    grouped = [nn.Parameter(value.clone()) for value in init]
    groups = [{"params": [param], **setting} for param, setting in zip(grouped, settings)]
    _drive(build_optimizer(name, groups, **hparams), grouped, grads, range(3))
    for index, setting in enumerate(settings[:2]):  # (the lr-0 group has no optimizer of its own: lr must be > 0)
        alone = nn.Parameter(init[index].clone())
        _drive(build_optimizer(name, [alone], **{**hparams, **setting}), [alone], grads, [index])
        assert torch.equal(alone, grouped[index]), f"{name}: group {index} ({setting}) differs from its own optimizer"
    assert torch.equal(grouped[2], init[2]), f"{name} moved a group with lr 0"
    assert not torch.equal(grouped[0], init[0])


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_groups_with_their_own_settings_survive_a_state_dict_round_trip(name: str) -> None:
    """The method-specific per-group knobs (SOAP-Muon's projection, KL's cast dtype, Shampoo's momentum …) are
    restored with the state: a reloaded optimizer continues bit for bit."""
    hparams, settings, init, grads = _group_problem(name)

    def build(params):
        return build_optimizer(name, [{"params": [p], **s} for p, s in zip(params, settings)], **hparams)

    params = [nn.Parameter(value.clone()) for value in init[:2]]
    optimizer = build(params)
    _drive(optimizer, params, grads[:3], range(2))
    saved_params, saved_optimizer = [p.detach().clone() for p in params], _round_trip(optimizer)
    _drive(optimizer, params, grads[3:], range(2))
    restored = [nn.Parameter(value) for value in saved_params]
    restored_optimizer = build(restored)
    restored_optimizer.load_state_dict(saved_optimizer)
    _drive(restored_optimizer, restored, grads[3:], range(2))
    for a, b in zip(params, restored):
        assert torch.equal(a, b), f"{name}: a parameter differs after a state_dict round trip"
    assert_identical(restored_optimizer.state_dict(), optimizer.state_dict(), f"{name} grouped state")


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_rank_deficient_and_ill_conditioned_gradients_stay_finite(name: str) -> None:
    hparams, _ = _yaml_hparams(name)
    torch.manual_seed(0)
    square = nn.Parameter(torch.randn(8, 8, dtype=torch.float32))
    wide = nn.Parameter(torch.randn(3, 40, dtype=torch.float32))
    optimizer = build_optimizer(name, [square, wide], **hparams)
    for step in range(12):
        scale = [1e-20, 1.0, 1e15, 0.0][step % 4]
        u, v = torch.randn(8, 1), torch.randn(1, 8)
        square.grad = scale * (u @ v)  # rank one, wildly varying scale, sometimes exactly zero
        wide.grad = scale * torch.outer(torch.randn(3), torch.randn(40))
        optimizer.step()
        assert torch.isfinite(square).all() and torch.isfinite(wide).all(), (
            f"{name} produced non-finite values at step {step}"
        )


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_short_training_run_lowers_the_validation_loss(name: str, results_dir) -> None:
    frequency = ["optimizer.precondition_frequency=5"] if "precondition_frequency" in _yaml_hparams(name)[0] else []
    _assert_30_steps_lower_the_validation_loss([f"optimizer={name}", *frequency], results_dir)


def _assert_30_steps_lower_the_validation_loss(overrides: list[str], results_dir) -> None:
    summary = train_in_process(
        [*overrides, "trainer.max_steps=30", "trainer.eval_interval=30", "trainer.checkpoint_interval=30"], results_dir
    )
    assert summary["status"] == "completed"
    records = [r for r in RunStore(summary["run_dir"]).read_metrics() if "val/loss" in r]
    first, last = records[0]["val/loss"], records[-1]["val/loss"]
    assert last < first - 0.05, f"{overrides}: {first} -> {last}"


# torch's own optimizers count steps in tensors; Muon counts none (see the test after the next).
TORCH_COUNTERS, NO_COUNTER = ("adamw", "adafactor_torch", "muon_torch"), ("muon",)


@pytest.mark.parametrize("name", [n for n in OPTIMIZERS if n not in TORCH_COUNTERS + NO_COUNTER])
def test_step_counters_stay_python_ints_when_a_checkpoint_stores_them_as_tensors(name: str) -> None:
    """Our optimizers count steps in Python ints (exact past 2^24); a torch-style checkpoint with tensor steps
    (or float ones) loads back into ints, and the run continues exactly as from an int checkpoint."""
    hparams, _ = _yaml_hparams(name)
    _, _, init, grads = _group_problem(name)
    results = []
    for as_stored in (lambda step: step, lambda step: torch.tensor(float(step)), float):
        params = [nn.Parameter(value.clone()) for value in init]
        optimizer = build_optimizer(name, params, **hparams)
        _drive(optimizer, params, grads[:3], range(3))
        saved = _round_trip(optimizer)
        assert len(saved["state"]) == len(params), (
            f"{name}: state for {len(saved['state'])} of {len(params)} parameters"
        )
        for state in saved["state"].values():
            state["step"] = as_stored(state["step"])
        restored = [nn.Parameter(p.detach().clone()) for p in params]
        restored_optimizer = build_optimizer(name, restored, **hparams)
        restored_optimizer.load_state_dict(saved)
        steps = [restored_optimizer.state[param]["step"] for param in restored]
        assert all(type(step) is int for step in steps), f"{name}: loaded steps {steps}"
        _drive(restored_optimizer, restored, grads[3:], range(3))
        results.append(restored)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b), f"{name}: a tensor/float step continued differently from an int step"


@pytest.mark.parametrize("name", NO_COUNTER)
def test_an_optimizer_without_a_step_counter_keeps_none(name: str, one_thread) -> None:
    """Muon's update depends on no step count, so its state is the momentum buffer alone and the int-step test has
    nothing to check for it; an optimizer that starts counting belongs in that test instead."""
    hparams, _ = _yaml_hparams(name)
    _, _, init, grads = _group_problem(name)
    params = [nn.Parameter(value.clone()) for value in init]
    optimizer = build_optimizer(name, params, **hparams)
    _drive(optimizer, params, grads[:3], range(3))
    assert [set(optimizer.state[param]) for param in params] == [{"momentum_buffer"}] * len(params)


def test_the_soap_cards_usage_trains(results_dir, monkeypatch) -> None:
    """The SOAP card's example, SOAP(lr=3e-3, weight_decay=1e-2, precondition_frequency=20, merge_dims=True),
    through the trainer: every matrix of a 16-wide GPT merges into one axis (the embedding into 1040), the basis is
    refreshed once, and the validation loss falls."""
    from soapbench.optimizers.soap import SOAP

    refreshes, optimizers = {}, []
    original = SOAP._refresh_bases

    def counted(self, state, *args, **kwargs):
        optimizers.append(self)
        refreshes[id(state)] = refreshes.get(id(state), 0) + 1
        return original(self, state, *args, **kwargs)

    monkeypatch.setattr(SOAP, "_refresh_bases", counted)
    _assert_30_steps_lower_the_validation_loss(
        [
            "optimizer=soap",
            "optimizer.merge_dims=true",
            "optimizer.precondition_frequency=20",
            "optimizer.lr=3e-3",
            "optimizer.weight_decay=1e-2",
            "model.n_embd=16",
        ],
        results_dir,
    )
    (optimizer,) = set(optimizers)
    matrices = [p for group in optimizer.param_groups for p in group["params"] if p.dim() >= 2]
    factor_shapes = [[tuple(f.shape) for f in optimizer.state[p]["GG"]] for p in matrices]
    assert factor_shapes == [[(p.numel(), p.numel())] for p in matrices], "one factor over the merged axis"
    assert (1040, 1040) in [shapes[0] for shapes in factor_shapes], "the 65 x 16 embedding merged into 1040"
    assert refreshes == {id(optimizer.state[p]): 1 for p in matrices}, "30 steps at f = 20: one refresh each"
