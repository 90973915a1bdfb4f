"""Optimizer-state memory (issue 3 item 8): measured bytes next to the theoretical count and AdamW's.

Measured: every tensor reachable from ``optimizer.state`` (through dicts, lists and tuples) after ``steps`` calls of
``step()`` with fixed random gradients (two by default: SOAP-like optimizers only build their preconditioner on the
first call), each storage counted once (views and shared tensors deduplicated by storage), the parameters' and
gradients' own storages excluded. 0-d tensors (torch AdamW's step counters) are reported apart as bookkeeping. For
a ``CompositeOptimizer`` the main optimizer and its companion (AdamW for embeddings, head, 1-D) are measured apart.

How the preset is measured (the "method" of each row):

* ``real``: materialised on the device with its own initialisation, when it has ≤ ``materialize_limit`` parameters.
* ``meta``: built and stepped on the meta device, so every state tensor has its true shape and dtype and nothing is
  allocated (lm_360m in seconds). Works for optimizers whose step never reads a value back.
* ``depth-extrapolated``: where the meta step fails (torch's Adafactor calls ``.item()``), real copies with 1 and 2
  blocks; bytes(L) = b₁ + (L−1)(b₂ − b₁). Exact: every block has the same parameters and the state is per
  parameter.

Theoretical: :mod:`soapbench.bench.theory` on the full preset's shapes, main and companion parameters apart.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from soapbench.bench.catalog import OptimizerSetup
from soapbench.bench.shapes import (
    GradientBank,
    build_preset_model,
    depth_key,
    param_infos,
    split_by_roles,
    trainable_params,
)
from soapbench.bench.theory import FLOAT32_BYTES, theoretical_elements


@dataclass
class StateBytes:
    arrays: int = 0
    bookkeeping: int = 0
    tensors: int = 0

    def __add__(self, other: StateBytes) -> StateBytes:
        return StateBytes(
            self.arrays + other.arrays, self.bookkeeping + other.bookkeeping, self.tensors + other.tensors
        )


def iter_state_tensors(value: Any) -> Iterator[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from iter_state_tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from iter_state_tensors(item)


def storage_key(tensor: Tensor) -> int:
    # The StorageImpl's address: the same for every view of one storage, on real devices and on meta alike.
    return tensor.untyped_storage()._cdata


def measure_state(optimizer: torch.optim.Optimizer, exclude: set[int] | None = None) -> StateBytes:
    """Bytes of every distinct storage in ``optimizer.state`` (not in ``exclude``); 0-d tensors as bookkeeping."""
    seen = set(exclude or ())
    result = StateBytes()
    for tensor in iter_state_tensors(list(optimizer.state.values())):
        key = storage_key(tensor)
        if key in seen:
            continue
        seen.add(key)
        nbytes = tensor.untyped_storage().nbytes()
        result.tensors += 1
        if tensor.dim() == 0:
            result.bookkeeping += nbytes
        else:
            result.arrays += nbytes
    return result


def measure_parts(optimizer: torch.optim.Optimizer, params: Sequence[Tensor]) -> dict[str, StateBytes]:
    """``{"main": …, "companion": …}``; the companion part is empty for a single optimizer."""
    from soapbench.optimizers.composite import CompositeOptimizer

    exclude = {storage_key(p) for p in params} | {storage_key(p.grad) for p in params if p.grad is not None}
    if not isinstance(optimizer, CompositeOptimizer):
        return {"main": measure_state(optimizer, exclude), "companion": StateBytes()}
    children = list(optimizer.optimizers.values())
    companion = StateBytes()
    for child in children[1:]:
        companion = companion + measure_state(child, exclude)
    return {"main": measure_state(children[0], exclude), "companion": companion}


def measure_on(
    setup: OptimizerSetup, model_cfg: Mapping[str, Any], device: str, steps: int, seed: int
) -> dict[str, StateBytes]:
    """Build the preset on ``device`` (meta included), step the optimizer ``steps`` times, measure its state."""
    model = build_preset_model(model_cfg, device, seed)
    params = trainable_params(model)
    optimizer = setup.build(model)
    if device == "meta":
        for param in params:
            param.grad = torch.empty_like(param)
        for _ in range(steps):
            optimizer.step()
    else:
        bank = GradientBank.for_model(model, sets=1, seed=seed, device=device)
        for index in range(steps):
            bank.assign(params, index)
            optimizer.step()
    return measure_parts(optimizer, params)


@dataclass
class MemoryRow:
    optimizer: str
    method: str
    params_main: int
    params_companion: int
    companion: str | None
    measured_main: int | None = None
    measured_companion: int | None = None
    bookkeeping: int | None = None
    theoretical_main: int | None = None
    theoretical_companion: int | None = None
    theory_components: dict[str, int] = field(default_factory=dict)
    adamw_bytes: int = 0
    error: str | None = None

    @property
    def measured_total(self) -> int | None:
        if self.measured_main is None:
            return None
        return self.measured_main + (self.measured_companion or 0)

    @property
    def theoretical_total(self) -> int | None:
        if self.theoretical_main is None or (self.params_companion and self.theoretical_companion is None):
            return None
        return self.theoretical_main + (self.theoretical_companion or 0)

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "measured_total": self.measured_total, "theoretical_total": self.theoretical_total}


def _theory(row: MemoryRow, setup: OptimizerSetup, main: list, rest: list) -> None:
    main_counts = theoretical_elements(setup.name, [info.shape for info in main], setup.effective_hparams())
    if main_counts is not None:
        row.theoretical_main = FLOAT32_BYTES * sum(main_counts.values())
        row.theory_components = dict(main_counts)
    if rest:
        rest_counts = theoretical_elements(
            setup.companion_name, [info.shape for info in rest], setup.effective_companion_hparams()
        )
        if rest_counts is not None:
            row.theoretical_companion = FLOAT32_BYTES * sum(rest_counts.values())
            for key, value in rest_counts.items():
                row.theory_components[f"companion_{key}"] = value


def _extrapolate(one: dict[str, StateBytes], two: dict[str, StateBytes], depth: int) -> dict[str, StateBytes]:
    def line(a: int, b: int) -> int:
        return a + (depth - 1) * (b - a)

    return {
        part: StateBytes(
            line(one[part].arrays, two[part].arrays),
            line(one[part].bookkeeping, two[part].bookkeeping),
            line(one[part].tensors, two[part].tensors),
        )
        for part in one
    }


def memory_row(
    setup: OptimizerSetup,
    model_cfg: Mapping[str, Any],
    *,
    device: str = "cpu",
    steps: int = 2,
    materialize_limit: int = 50_000_000,
    seed: int = 0,
) -> MemoryRow:
    infos = param_infos(build_preset_model(model_cfg, "meta"))
    main, rest = split_by_roles(infos, setup.main_roles)
    total_params = sum(info.numel for info in infos)
    row = MemoryRow(
        optimizer=setup.name, method="", companion=setup.companion_name if rest else None,
        params_main=sum(info.numel for info in main), params_companion=sum(info.numel for info in rest),
        adamw_bytes=2 * FLOAT32_BYTES * total_params,
    )  # fmt: skip
    _theory(row, setup, main, rest)
    parts: dict[str, StateBytes] | None = None
    try:
        if total_params <= materialize_limit:
            row.method = f"real ({device}), full model, after {steps} steps"
            parts = measure_on(setup, model_cfg, device, steps, seed)
        else:
            row.method = f"meta device, full model, after {steps} steps"
            parts = measure_on(setup, model_cfg, "meta", steps, seed)
    except Exception as error:
        key = depth_key(model_cfg)
        if row.method.startswith("real") or key is None:
            row.error = f"{type(error).__name__}: {error}"
        else:
            depth = int(model_cfg[key])
            row.method = (
                f"depth-extrapolated: real ({device}) at {key}=1 and 2, to {key}={depth} (meta step failed: "
                f"{type(error).__name__}), after {steps} steps"
            )
            try:
                one = measure_on(setup, {**model_cfg, key: 1}, device, steps, seed)
                two = measure_on(setup, {**model_cfg, key: 2}, device, steps, seed)
                parts = _extrapolate(one, two, depth)
            except Exception as inner:
                row.error = f"{type(inner).__name__}: {inner}"
    if parts is not None:
        row.measured_main = parts["main"].arrays
        row.measured_companion = parts["companion"].arrays
        row.bookkeeping = parts["main"].bookkeeping + parts["companion"].bookkeeping
    return row


def memory_rows(setups: Sequence[OptimizerSetup], model_cfg: Mapping[str, Any], **kwargs: Any) -> list[MemoryRow]:
    return [memory_row(setup, model_cfg, **kwargs) for setup in setups]


def protocol(*, steps: int, materialize_limit: int) -> str:
    return (
        "Measured: bytes of every distinct storage reachable from `optimizer.state` after "
        f"{steps} `step()` calls with fixed random gradients, parameters and gradients excluded, 0-d step "
        "counters left out (bookkeeping, in the JSON); main optimizer and companion apart. Method per row: "
        f"`real` (presets ≤ {materialize_limit:,} parameters, materialised), `meta` (built and stepped on the "
        "meta device: true shapes and dtypes, nothing allocated), or depth-extrapolated from real 1- and 2-block "
        "copies where a meta step fails. Theoretical: the algorithm's state layout counted from the full preset's "
        "shapes (soapbench/bench/theory.py; docs/algorithms.md, docs/paper_specs.md §1 'Space and time'), "
        "float32 = 4 B per element; 'n/a' for an optimizer without a formula. ÷ AdamW: measured total over "
        "AdamW's 2 × parameters × 4 B."
    )
