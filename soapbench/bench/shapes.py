"""A model preset's parameters for the benchmarks: on the meta device, materialised, and fed fixed gradients.

* ``build_preset_model(model_cfg, "meta")`` has the preset's exact parameter shapes, dtypes and roles and costs no
  memory (lm_360m: 368M parameters). Optimizers that allocate their state from shapes alone can step on it, which
  is how :mod:`soapbench.bench.memory` measures large presets.
* ``build_preset_model(model_cfg, "cpu" | "cuda")`` materialises it with the model's own seeded initialisation,
  for what is actually timed (on CPU, nanogpt_char: 10.7M parameters).
* :class:`GradientBank` holds a few sets of fixed N(0, scale²) gradients, one tensor per parameter. Before every
  ``step()`` the timing loop copies set ``k mod sets`` into ``param.grad``, outside the timed interval, so every
  optimizer sees the same gradient sequence and only the step itself is timed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from soapbench.bench.discovery import import_submodules

# Model-config keys that give a preset's depth, per architecture (gpt: n_layer; olmo: n_layers).
DEPTH_KEYS = ("n_layer", "n_layers", "num_layers", "depth")


@dataclass(frozen=True)
class ParamInfo:
    name: str
    shape: tuple[int, ...]
    role: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def build_preset_model(model_cfg: Mapping[str, Any], device: str | torch.device, seed: int = 0) -> nn.Module:
    """The preset's model on ``device`` ("meta": shapes only); real devices get the seeded initialisation."""
    failures = import_submodules(
        "soapbench.models"
    )  # architectures not yet imported by models/__init__.py register here
    from soapbench.models import build_model

    device = torch.device(device)
    try:
        if device.type != "meta":
            torch.manual_seed(seed)
        with torch.device(device):
            return build_model(dict(model_cfg))
    except ValueError as error:
        if failures:
            raise ValueError(f"{error} (models modules that failed to import: {failures})") from error
        raise


def param_infos(model: nn.Module) -> list[ParamInfo]:
    from soapbench.optimizers.param_groups import parameter_roles

    roles = parameter_roles(model)
    return [ParamInfo(name, tuple(p.shape), roles[name]) for name, p in model.named_parameters() if p.requires_grad]


def split_by_roles(infos: Sequence[ParamInfo], main_roles: Sequence[str]) -> tuple[list[ParamInfo], list[ParamInfo]]:
    """(main, companion) as ``build_optimizer`` splits a model: roles in ``main_roles`` go to the main optimizer."""
    main = [info for info in infos if info.role in main_roles]
    rest = [info for info in infos if info.role not in main_roles]
    return main, rest


def depth_key(model_cfg: Mapping[str, Any]) -> str | None:
    return next((key for key in DEPTH_KEYS if key in model_cfg), None)


def trainable_params(model: nn.Module) -> list[Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


class GradientBank:
    """Fixed random gradients for a list of parameter shapes; ``assign`` copies one set into ``param.grad``.

    The scale keeps the optimizers in a healthy numerical regime over a few dozen steps (no eigensolver
    failures, no NaNs whose fallbacks would change what is timed); timing does not depend on the values.
    """

    def __init__(
        self,
        shapes: Sequence[Sequence[int]],
        *,
        sets: int = 2,
        scale: float = 1e-2,
        seed: int = 0,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        if sets < 1:
            raise ValueError(f"sets must be >= 1, got {sets}")
        generator = torch.Generator(device=torch.device(device)).manual_seed(seed)
        self.shapes = [tuple(shape) for shape in shapes]
        self.sets = [
            [scale * torch.randn(shape, generator=generator, device=device, dtype=dtype) for shape in self.shapes]
            for _ in range(sets)
        ]

    def assign(self, params: Sequence[Tensor], index: int) -> None:
        """``param.grad ← set[index mod sets]`` (copied, so an optimizer that edits its grad in place changes nothing)."""
        gradients = self.sets[index % len(self.sets)]
        if len(params) != len(gradients):
            raise ValueError(f"{len(params)} parameters but the bank holds {len(gradients)} gradients")
        for param, gradient in zip(params, gradients):
            if param.grad is None or param.grad.shape != gradient.shape or param.grad.dtype != param.dtype:
                param.grad = gradient.to(param.dtype).clone()
            else:
                param.grad.copy_(gradient)

    @classmethod
    def for_model(cls, model: nn.Module, **kwargs: Any) -> GradientBank:
        return cls([p.shape for p in trainable_params(model)], **kwargs)
