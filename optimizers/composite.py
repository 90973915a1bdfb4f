"""Several optimizers over disjoint parameters, presented as one ``torch.optim.Optimizer``.

Muon-style methods train hidden matrices while a companion (AdamW) trains embeddings,
the head and 1-D parameters. The trainer, LR schedulers, gradient scalers and
checkpoints see a single optimizer: ``param_groups`` is the concatenation of the
children's group dicts (the same objects, so a scheduler that sets ``group["lr"]``
drives every child), and ``state_dict`` holds each child's state under its key.
"""

from __future__ import annotations

from collections import ChainMap, OrderedDict
from collections.abc import Callable
from typing import Any

import torch


class _ChildStates(ChainMap):
    """The children's ``state`` dicts as one mapping, each parameter's entry read from the child that owns it.

    ``ChainMap`` looks a key up with ``mapping[key]``, which on the first child's ``defaultdict`` never misses: it
    inserted an empty entry for every other child's parameter and returned it, so a companion's moments read as
    empty (the state-memory count missed them) and the first child's state filled with foreign keys.
    """

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]):
        super().__init__(*(optimizer.state for optimizer in optimizers.values()))
        self._optimizers = list(optimizers.values())

    def __getitem__(self, key: Any) -> Any:
        for mapping in self.maps:
            if key in mapping:
                return mapping[key]
        for optimizer in self._optimizers:  # a parameter with no state yet: its owner creates it, as torch would
            if any(key is param for group in optimizer.param_groups for param in group["params"]):
                return optimizer.state[key]
        raise KeyError(key)


class CompositeOptimizer(torch.optim.Optimizer):
    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]):
        if not optimizers:
            raise ValueError("CompositeOptimizer needs at least one optimizer")
        # Deliberately not calling Optimizer.__init__: the children own the parameters.
        self.optimizers = dict(optimizers)
        self.defaults = {}
        # OrderedDicts as torch keeps them: its hook handles hold weak references to these dicts.
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for optimizer in self.optimizers.values() for group in optimizer.param_groups]

    @property
    def state(self) -> ChainMap:
        return _ChildStates(self.optimizers)

    # torch's step wrapper: global and registered step pre/post hooks run around the children's steps (each child
    # still runs its own hooks).
    @torch.optim.Optimizer.profile_hook_step
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for optimizer in self.optimizers.values():
            optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """Each child's state dict under its key; registered state_dict pre/post hooks run as torch runs them."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        state_dict = {"optimizers": {key: optimizer.state_dict() for key, optimizer in self.optimizers.items()}}
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        self._load_children(state_dict)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _load_children(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict["optimizers"]
        if set(saved) != set(self.optimizers):
            raise ValueError(f"optimizer checkpoint holds {sorted(saved)}, this run has {sorted(self.optimizers)}")
        for key, optimizer in self.optimizers.items():
            optimizer.load_state_dict(saved[key])

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # New groups go to the main (first) optimizer.
        next(iter(self.optimizers.values())).add_param_group(param_group)

    def diagnostics(self) -> dict[str, float]:
        merged: dict[str, float] = {}
        for optimizer in self.optimizers.values():
            report = getattr(optimizer, "diagnostics", None)
            if callable(report):
                for key, value in report().items():
                    merged[key] = merged.get(key, 0) + value
        return merged

    def __repr__(self) -> str:
        inner = ", ".join(f"{key}={type(opt).__name__}" for key, opt in self.optimizers.items())
        return f"CompositeOptimizer({inner})"
