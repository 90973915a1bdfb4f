"""Theoretical optimizer-state sizes: what each algorithm stores, counted from parameter shapes and hyperparameters.

Sources: shared ``docs/algorithms.md`` ("State per param" of §1 AdamW, §2 Adafactor, §3 Muon, §4 SOAP, §5 SOAP-Muon,
§6 KL-Shampoo/KL-SOAP, §7 Shampoo) and ``docs/paper_specs.md`` §1 "Space and time" (SOAP paper §7.2–7.3). For one
m×n layer the paper's table counts the stored gradient too (AdamW 3mn, SOAP and Shampoo 2m²+2n²+3mn, one-sided SOAP
2·min²+3mn); optimizer state alone is one mn less, which is what is counted here:

    adamw            2mn                      m, v                                  (amsgrad: + mn)
    adafactor        mn + m + n               m, one marginal per dim (1-D: 2n)     (SOAP paper's AdafactorW)
    adafactor_torch  m + n                    row and column variances (1-D: n)     (no momentum)
    muon, muon_torch mn                       momentum (matrices only; the rest is the companion's)
    soap             2mn + 2(m² + n²)         m, v; factor L_k and basis Q_k per dim ≤ max_precond_dim
                                              (1-D: plain Adam unless precondition_1d; merge_dims merges first)
    shampoo          2mn + 2(m² + n²)         first moment, Adam-grafting v; per block (sides ≤ max_preconditioner_dim
                                              after merging small dims) a factor and its inverse root per dim
    soap_muon        2mn + 2·min(m, n)²       m, v; one-sided factor + basis on the smaller side ("std")
    kl_shampoo       mn + Σ_k (2d_k² + d_k)   m; per dim factor S_k, basis Q_k, eigenvalue vector s_k (every dim:
                                              KL has no max dim); diagonal path for 1-D: m + s
    kl_soap          2mn + Σ_k (2d_k² + d_k)  m, v; the same factors, bases and eigenvalue vectors

Counts are elements. Bytes assume float32 state, which every yaml default keeps for float32 parameters (a state
dtype option such as SOAP's ``state_dtype`` or KL's ``cast_dtype`` changes the byte count, not the element count).
Step counters (Python ints, or 0-d tensors in torch's AdamW/Adafactor) are bookkeeping and not counted. A registered
optimizer without an entry here (a user's drop-in) shows "n/a".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from soapbench.optimizers.shampoo import block_layout
from soapbench.optimizers.soap import merge_dims_shape

Shape = tuple[int, ...]
# (parameter shapes, effective hyperparameters) → elements per state component
StateFormula = Callable[[Sequence[Shape], Mapping[str, Any]], dict[str, int]]

FLOAT32_BYTES = 4


def _add(total: dict[str, int], component: str, elements: int) -> None:
    if elements:
        total[component] = total.get(component, 0) + elements


def adamw_state(shapes: Sequence[Shape], hparams: Mapping[str, Any]) -> dict[str, int]:
    total: dict[str, int] = {}
    for shape in shapes:
        _add(total, "moments", (3 if hparams.get("amsgrad") else 2) * math.prod(shape))
    return total


def adafactor_state(shapes: Sequence[Shape], hparams: Mapping[str, Any]) -> dict[str, int]:
    total: dict[str, int] = {}
    for shape in shapes:
        _add(total, "first_moment", math.prod(shape))
        _add(total, "second_moment_marginals", math.prod(shape) if len(shape) <= 1 else sum(shape))
    return total


def torch_adafactor_state(shapes: Sequence[Shape], hparams: Mapping[str, Any]) -> dict[str, int]:
    total: dict[str, int] = {}
    for shape in shapes:
        numel = math.prod(shape)
        if len(shape) >= 2:  # torch factors the last two dims only; leading dims are a batch
            _add(total, "row_and_col_variance", numel // shape[-1] + numel // shape[-2])
        else:
            _add(total, "variance", numel)
    return total


def momentum_state(shapes: Sequence[Shape], hparams: Mapping[str, Any]) -> dict[str, int]:
    return {"momentum": sum(math.prod(shape) for shape in shapes)}


def soap_state(shapes: Sequence[Shape], hparams: Mapping[str, Any]) -> dict[str, int]:
    max_dim = int(hparams["max_precond_dim"])
    total: dict[str, int] = {}
    for shape in shapes:
        _add(total, "moments", 2 * math.prod(shape))
        if len(shape) == 1:
            sides = list(shape) if hparams["precondition_1d"] else []
        else:
            view = list(shape)
            if hparams["merge_dims"]:
                if hparams.get("data_format") == "channels_last" and len(shape) == 4:
                    view = [shape[0], shape[3], shape[1], shape[2]]  # (N, H, W, C) → (N, C, H, W)
                view = list(merge_dims_shape(view, max_dim))
            sides = view
        squares = sum(side * side for side in sides if side <= max_dim)
        _add(total, "factors", squares)
        _add(total, "bases", squares)
    return total


def shampoo_state(shapes: Sequence[Shape], hparams: Mapping[str, Any]) -> dict[str, int]:
    max_dim = int(hparams["max_preconditioner_dim"])
    total: dict[str, int] = {}
    for shape in shapes:
        numel = math.prod(shape)
        if hparams["betas"][0] != 0.0:
            _add(total, "first_moment", numel)
        if hparams["grafting_type"] in ("adam", "adagrad", "rmsprop"):
            _add(total, "grafting_second_moment", numel)
        if hparams.get("momentum", 0.0) != 0.0:
            _add(total, "momentum", numel)
        # Shampoo's own layout: merged dims cut into blocks of ≤ max_dim, each block a factor and a root per dim.
        layout = block_layout(tuple(shape), max_dim, bool(hparams["use_merge_dims"]))
        squares = sum(side * side for index in layout.blocks for side in layout.block_shape(index))
        _add(total, "factors", squares)
        _add(total, "inverse_roots", squares)
    return total


def soap_muon_state(shapes: Sequence[Shape], hparams: Mapping[str, Any]) -> dict[str, int]:
    projection_type, max_dim = hparams["projection_type"], int(hparams["max_precond_dim"])
    total: dict[str, int] = {}
    for shape in shapes:
        _add(total, "moments", 2 * math.prod(shape))
        if len(shape) < 2:
            continue
        rows, cols = shape[0], math.prod(shape[1:])  # ≥3-D viewed as (out, rest)
        projection = ("left" if rows < cols else "right") if projection_type == "std" else projection_type
        if projection == "full" and max_dim >= 0:
            projection = {
                (False, False): "full", (True, False): "right", (False, True): "left", (True, True): "identity",
            }[(rows > max_dim, cols > max_dim)]  # fmt: skip
        sides = {"identity": [], "left": [rows], "right": [cols], "full": [rows, cols]}[projection]
        squares = sum(side * side for side in sides)
        _add(total, "factors", squares)
        _add(total, "bases", squares)
    return total


def _kl_working_shape(shape: Sequence[int]) -> list[int]:
    # algorithms.md §6: squeezed; ≥4-D viewed as (d1, d2, d3·…·dn); ≤1 dim left → the diagonal path.
    squeezed = [size for size in shape if size != 1]
    if len(squeezed) <= 1:
        return [math.prod(shape)]
    if len(squeezed) > 3:
        return [squeezed[0], squeezed[1], math.prod(squeezed[2:])]
    return squeezed


def _kl_state(shapes: Sequence[Shape], second_moment: bool) -> dict[str, int]:
    total: dict[str, int] = {}
    for shape in shapes:
        numel = math.prod(shape)
        _add(total, "moments", (2 if second_moment else 1) * numel)
        working = _kl_working_shape(shape)
        if len(working) == 1:
            if not second_moment:  # KL-Shampoo's diagonal path keeps s; KL-SOAP's is plain Adam
                _add(total, "eigenvalue_vectors", numel)
            continue
        _add(total, "factors", sum(side * side for side in working))
        _add(total, "bases", sum(side * side for side in working))
        _add(total, "eigenvalue_vectors", sum(working))
    return total


def kl_shampoo_state(shapes: Sequence[Shape], hparams: Mapping[str, Any]) -> dict[str, int]:
    return _kl_state(shapes, second_moment=False)


def kl_soap_state(shapes: Sequence[Shape], hparams: Mapping[str, Any]) -> dict[str, int]:
    return _kl_state(shapes, second_moment=True)


THEORETICAL_STATE: dict[str, StateFormula] = {
    "adamw": adamw_state,
    "adafactor": adafactor_state,
    "adafactor_torch": torch_adafactor_state,
    "muon": momentum_state,
    "muon_torch": momentum_state,
    "soap": soap_state,
    "shampoo": shampoo_state,
    "soap_muon": soap_muon_state,
    "kl_shampoo": kl_shampoo_state,
    "kl_soap": kl_soap_state,
}


def theoretical_elements(name: str, shapes: Sequence[Shape], hparams: Mapping[str, Any]) -> dict[str, int] | None:
    """Elements per state component for registry name ``name``; None if no formula is known (a drop-in)."""
    formula = THEORETICAL_STATE.get(name)
    return None if formula is None else formula([tuple(shape) for shape in shapes], hparams)
