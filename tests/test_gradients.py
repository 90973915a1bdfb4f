"""Gradient handling between backward and step: the SOAP card's clipnorm (per tensor), global_clipnorm and
clipvalue, and its static loss_scale_factor beside fp16's dynamic scaler (soapbench/gradients.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from soapbench.config import TrainerConfig, load_trainer_config
from soapbench.errors import ConfigError
from soapbench.gradients import build_grad_scaler, clip_grad_norm_per_tensor_, prepare_gradients, scale_loss
from tests.conftest import train_in_process


def _params_with_grads(*grads: torch.Tensor) -> list[nn.Parameter]:
    params = [nn.Parameter(torch.zeros_like(grad)) for grad in grads]
    for param, grad in zip(params, grads):
        param.grad = grad.clone()
    return params


def test_per_tensor_clipping_rescales_only_the_gradients_above_the_norm() -> None:
    small = torch.full((4,), 0.25, dtype=torch.float64)  # norm 0.5
    large = torch.arange(1.0, 7.0, dtype=torch.float64).reshape(2, 3)  # norm ~9.5
    params = _params_with_grads(small, large)
    clip_grad_norm_per_tensor_(params, 1.0)
    assert torch.equal(params[0].grad, small)
    assert torch.linalg.vector_norm(params[1].grad).item() == pytest.approx(1.0, rel=1e-12)
    torch.testing.assert_close(params[1].grad, large / torch.linalg.vector_norm(large), rtol=1e-12, atol=0)


def test_a_static_loss_scale_is_undone_before_per_tensor_clipping() -> None:
    trainer = TrainerConfig(loss_scale_factor=1024.0, grad_clip_norm_per_tensor=1.0)
    scaler = build_grad_scaler(trainer, torch.device("cpu"))
    assert not scaler.is_enabled()
    model = nn.Linear(3, 2).double()
    inputs = torch.randn(5, 3, dtype=torch.float64)
    reference = nn.Linear(3, 2).double()
    reference.load_state_dict(model.state_dict())
    scale_loss(model(inputs).square().sum(), trainer, scaler).backward()
    reference(inputs).square().sum().backward()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    prepare_gradients(list(model.parameters()), optimizer, scaler, trainer)
    clip_grad_norm_per_tensor_(list(reference.parameters()), 1.0)
    for ours, expected in zip(model.parameters(), reference.parameters()):
        assert torch.equal(ours.grad, expected.grad)  # power-of-two scaling is exact


def test_fp16_keeps_the_dynamic_scaler_unless_a_static_scale_is_given() -> None:
    cpu = torch.device("cpu")
    assert build_grad_scaler(TrainerConfig(precision="fp16"), cpu).is_enabled()
    assert not build_grad_scaler(TrainerConfig(precision="fp16", loss_scale_factor=128.0), cpu).is_enabled()
    assert not build_grad_scaler(TrainerConfig(precision="fp32"), cpu).is_enabled()


@pytest.mark.parametrize(
    "override, field",
    [
        ({"grad_clip_norm_per_tensor": 0}, "trainer.grad_clip_norm_per_tensor"),
        ({"loss_scale_factor": -2.0}, "trainer.loss_scale_factor"),
        ({"grad_clip_norm_per_tensor": 1.0, "grad_clip_norm": 1.0}, "trainer.grad_clip_norm_per_tensor"),
    ],
)
def test_bad_values_name_the_field(override: dict, field: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_trainer_config(override)
    assert str(error.value).startswith(field) and "\n" not in str(error.value)


def test_the_new_options_left_off_keep_existing_run_identities() -> None:
    base = {"seed": 1, "optimizer": {"name": "adamw"}, "trainer": {"max_steps": 5}}
    off = {**base, "trainer": {"max_steps": 5, "loss_scale_factor": None, "grad_clip_norm_per_tensor": None}}
    on = {**base, "trainer": {"max_steps": 5, "loss_scale_factor": 8.0}}
    from soapbench.identity import run_identity

    def identity(cfg: dict) -> str:
        return run_identity(cfg, {"train_sha256": "same data"}).hash

    assert identity(base) == identity(off) != identity(on)


def test_a_power_of_two_static_loss_scale_trains_bit_identically(results_dir) -> None:
    common = ["optimizer=soap", "optimizer.precondition_frequency=2", "trainer.grad_clip_norm=null"]
    plain = train_in_process(common, results_dir / "plain")
    scaled = train_in_process(
        [*common, "trainer.loss_scale_factor=1024", "trainer.grad_clip_norm_per_tensor=1000"], results_dir / "scaled"
    )
    assert plain["status"] == scaled["status"] == "completed"
    assert scaled["final_val_loss"] == plain["final_val_loss"]
