"""Which optimizer trained each parameter, recorded in ``summary.json`` and checked when the run starts.

A comparison of Muon with AdamW says nothing if Muon's matrices silently went to the AdamW companion (a 2026 audit
withdrew published Muon numbers for exactly that). So every run records, per parameter — name, shape, role — the
optimizer (the main one, or ``companion_<name>`` inside a composite) and the hyperparameters of the group that
trains it, as they stood when the optimizer was built (before a schedule scales the lr). The report's confound
check reads this map; here, a parameter whose role is one the main optimizer trains but that another optimizer
holds, or a trainable parameter that no optimizer holds, is named in one warning line.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from soapbench.optimizers.composite import CompositeOptimizer
from soapbench.optimizers.param_groups import parameter_roles


def _plain(value: Any) -> Any:
    """A group value as JSON can hold it: numbers (a tensor lr as its float), strings, booleans, lists."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)


def parameter_map(model: nn.Module, optimizer: torch.optim.Optimizer, main_name: str) -> list[dict[str, Any]]:
    """One record per named parameter: name, shape, role, trainable, optimizer, class, hyperparameters."""
    children = optimizer.optimizers if isinstance(optimizer, CompositeOptimizer) else {main_name: optimizer}
    holder: dict[int, tuple[str, str, dict[str, Any]]] = {}
    for child_name, child in children.items():
        for group in child.param_groups:
            hyperparameters = {key: _plain(value) for key, value in group.items() if key != "params"}
            for param in group["params"]:
                holder[id(param)] = (child_name, type(child).__name__, hyperparameters)
    roles = parameter_roles(model)
    records = []
    for name, param in model.named_parameters():
        child_name, class_name, hyperparameters = holder.get(id(param), (None, None, {}))
        records.append(
            {
                "name": name,
                "shape": list(param.shape),
                "role": roles[name],
                "trainable": param.requires_grad,
                "optimizer": child_name,
                "class": class_name,
                "hyperparameters": hyperparameters,
            }
        )
    return records


def misplaced(records: Iterable[dict[str, Any]], main_name: str, main_roles: Iterable[str]) -> str | None:
    """One warning line naming the parameters the main optimizer should train but does not, or None."""
    wanted = set(main_roles)
    elsewhere = [
        r for r in records if r["trainable"] and r["role"] in wanted and r["optimizer"] not in (main_name, None)
    ]
    orphans = [r for r in records if r["trainable"] and r["optimizer"] is None]
    parts = []
    if elsewhere:
        names = ", ".join(f"{r['name']} ({r['role']}, to {r['optimizer']})" for r in elsewhere[:5])
        more = f" and {len(elsewhere) - 5} more" if len(elsewhere) > 5 else ""
        parts.append(
            f"{len(elsewhere)} parameter(s) with a role {main_name} trains went to another optimizer: {names}{more}"
        )
    if orphans:
        names = ", ".join(r["name"] for r in orphans[:5])
        parts.append(f"{len(orphans)} trainable parameter(s) are held by no optimizer: {names}")
    if not parts:
        return None
    return "warning: " + "; ".join(parts) + " (summary.json 'parameters' lists who trains each one)"


def counts_by_optimizer(records: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Trained parameter count per optimizer (the main one and its companion), for the report's confound table."""
    counts: dict[str, int] = {}
    for record in records:
        if record["trainable"] and record["optimizer"] is not None:
            counts[record["optimizer"]] = counts.get(record["optimizer"], 0) + math.prod(record["shape"])
    return counts
