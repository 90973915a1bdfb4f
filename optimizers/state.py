"""Optimizer state precision, shared by every optimizer in the suite.

State lives in float32 for bf16/fp16 parameters (float64 parameters keep float64 state), so that
low-precision training does not also make the moments, factors and bases low-precision.

``torch.optim.Optimizer.load_state_dict`` casts every floating state tensor to its parameter's
dtype, which would round a bf16 parameter's float32 state to bf16 and break bit-identical resume.
``KeepsStateDtypes`` reloads each parameter's state exactly as it was saved.
"""

from __future__ import annotations

from itertools import chain
from typing import Any, Mapping

import torch


def state_dtype_for(param_dtype: torch.dtype) -> torch.dtype:
    """float64 parameters keep float64 state; float32, bf16 and fp16 parameters get float32 state."""
    return torch.float64 if param_dtype == torch.float64 else torch.float32


def _clone_to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to(device=device, copy=True)
    if isinstance(value, Mapping):
        return {key: _clone_to_device(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clone_to_device(item, device) for item in value)
    return value


class KeepsStateDtypes:
    """Mixin for ``torch.optim.Optimizer`` subclasses: ``load_state_dict`` keeps the saved state dtypes."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # param groups, hyperparameters and hooks as torch does them
        saved_ids = chain.from_iterable(group["params"] for group in state_dict["param_groups"])
        params = chain.from_iterable(group["params"] for group in self.param_groups)
        for saved_id, param in zip(saved_ids, params):
            if saved_id in state_dict["state"]:
                self.state[param] = _clone_to_device(state_dict["state"][saved_id], param.device)
