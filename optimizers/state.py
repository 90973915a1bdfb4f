"""Optimizer state precision, shared by every optimizer in the suite.

State lives in float32 for bf16/fp16 parameters (float64 parameters keep float64 state), so that
low-precision training does not also make the moments, factors and bases low-precision.

``torch.optim.Optimizer.load_state_dict`` casts every floating state tensor to its parameter's
dtype, which would round a bf16 parameter's float32 state to bf16 and break bit-identical resume.
``load_state_dict_keeping_dtypes`` instead gives each loaded state tensor the dtype the optimizer itself
allocates for that parameter: a bf16 parameter's float32 state loads exactly as saved, and a
real dtype change (a float32 checkpoint loaded into float64 parameters, or the reverse) casts the
state as torch would. torch's load_state_dict pre- and post-hooks keep their meaning: the state is
read from what the pre-hooks return, and post-hooks see (and may change) the final state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from itertools import chain
from numbers import Number
from typing import Any

import torch
from torch import Tensor


def state_dtype_for(param_dtype: torch.dtype) -> torch.dtype:
    """float64 parameters keep float64 state; float32, bf16 and fp16 parameters get float32 state."""
    return torch.float64 if param_dtype == torch.float64 else torch.float32


def _cast_copy(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """A deep copy of a state entry on ``device``, floating tensors in ``dtype`` (others keep theirs)."""
    if isinstance(value, Tensor):
        target = dtype if value.is_floating_point() else value.dtype
        return value.detach().to(device=device, dtype=target, copy=True)
    if isinstance(value, Mapping):
        return {key: _cast_copy(item, device, dtype) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cast_copy(item, device, dtype) for item in value)
    return value


def _integer_step(step: Any) -> Any:
    """The step counter as the Python int these optimizers keep (exact past 2^24); torch-style checkpoints and
    older formats store it as a tensor or a float."""
    if isinstance(step, Tensor) and step.numel() == 1:
        step = step.item()
    if isinstance(step, Number) and not isinstance(step, bool) and float(step).is_integer():
        return int(step)
    return step


def load_state_dict_keeping_dtypes(
    optimizer: torch.optim.Optimizer,
    load: Callable[[dict[str, Any]], None],
    state_dict: dict[str, Any],
    state_dtype: Callable[[Tensor, dict[str, Any], str], torch.dtype] | None = None,
) -> None:
    """``load(state_dict)`` (torch's ``Optimizer.load_state_dict``), then each loaded state tensor recast to the dtype
    the optimizer allocates: ``state_dtype(param, group, key)``, by default :func:`state_dtype_for` the param's.

    An optimizer's ``load_state_dict`` calls it with ``super().load_state_dict``.
    """
    state_dtype = state_dtype or _default_state_dtype
    # torch runs the user's pre-hooks, then loads; the state is re-read here from what the pre-hooks returned
    # (captured by a pre-hook that runs last), before any user post-hook runs (restored by one that runs first).
    processed: list[dict[str, Any]] = []
    capture = optimizer.register_load_state_dict_pre_hook(lambda _, loaded: processed.append(loaded))
    restore = optimizer.register_load_state_dict_post_hook(
        lambda _: _restore_state_dtypes(optimizer, processed[-1], state_dtype), prepend=True
    )
    try:
        load(state_dict)
    finally:
        capture.remove()
        restore.remove()


def _default_state_dtype(param: Tensor, group: dict[str, Any], key: str) -> torch.dtype:
    return state_dtype_for(param.dtype)


def _restore_state_dtypes(
    optimizer: torch.optim.Optimizer,
    state_dict: dict[str, Any],
    state_dtype: Callable[[Tensor, dict[str, Any], str], torch.dtype],
) -> None:
    saved_ids = chain.from_iterable(group["params"] for group in state_dict["param_groups"])
    params = ((group, param) for group in optimizer.param_groups for param in group["params"])
    for saved_id, (group, param) in zip(saved_ids, params):
        if saved_id not in state_dict["state"]:
            continue
        state = {
            key: _cast_copy(value, param.device, state_dtype(param, group, key))
            for key, value in state_dict["state"][saved_id].items()
        }
        if "step" in state:
            state["step"] = _integer_step(state["step"])
        optimizer.state[param] = state
