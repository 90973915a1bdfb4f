"""SOAP's matmul floor: the dense products its math cannot skip, timed alone on a preset's parameter shapes.

Any faithful SOAP step on a preconditioned m×n matrix with eigenbases Q_L (m×m), Q_R (n×n) must, per step,

    rotate the gradient        G' = Q_Lᵀ G Q_R                 2 GEMMs   (2m²n + 2mn² flops)
    rotate the update back     U = Q_L (m/√v) Q_Rᵀ             2 GEMMs   (2m²n + 2mn²)
    update both factors        L += G Gᵀ,  R += Gᵀ G           symmetric (≥ m²n + mn², syrk's half)

and at every f-th step, per factor, one power-iteration product L·Q and a QR, plus moving m into the new basis
(unrotate with the old bases, rotate with the new: 4 GEMMs). Those products, each timed alone as this module runs
them (same BLAS, threads and dtype as the step benchmark; factors ≥ 768 wide by symmetric blocks like SOAP), give a
floor for the mean step over a window that contains refreshes: ``per_step + per_refresh / f``. A peer whose mean is
below 2× that floor cannot be beaten by 2× by any implementation of the same math on this machine; the report
prints the ratio so a speed goal can be checked against what the hardware allows.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from soapbench.optimizers.linalg import gram_update_, householder_q
from soapbench.optimizers.soap import factor_layout
from soapbench.timing import synchronize


def median_seconds(function, repeats: int, device: torch.device) -> float:
    """Median wall time of ``repeats`` synchronised calls, after one untimed call (kernels, workspaces)."""
    function()
    synchronize(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _matrix_floor(rows: int, cols: int, device: torch.device, repeats: int) -> tuple[float, float]:
    """(per-step seconds, per-refresh seconds) of the products one preconditioned rows×cols matrix needs."""
    generator = torch.Generator(device="cpu").manual_seed(rows * 7919 + cols)

    def random(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device)

    grad, moment = random(rows, cols), random(rows, cols)
    left, right = householder_q(random(rows, rows)), householder_q(random(cols, cols))
    left_factor, right_factor = random(rows, rows), random(cols, cols)

    def rotate(tensor: torch.Tensor) -> torch.Tensor:
        return (tensor.mT @ left).mT @ right

    def unrotate(tensor: torch.Tensor) -> torch.Tensor:
        return (tensor.mT @ left.mT).mT @ right.mT

    def per_step() -> None:
        rotate(grad)
        unrotate(moment)
        gram_update_(left_factor, grad, beta=0.95, alpha=0.05)
        gram_update_(right_factor, grad.mT, beta=0.95, alpha=0.05)

    def per_refresh() -> None:
        householder_q(left_factor @ left)
        householder_q(right_factor @ right)
        rotate(unrotate(moment))

    return median_seconds(per_step, repeats, device), median_seconds(per_refresh, repeats, device)


def main_optimizer_shapes(setup: Any, model_cfg: Mapping[str, Any]) -> list[tuple[int, ...]]:
    """Shapes of the parameters ``setup``'s own optimizer trains on the preset (its companion's left out)."""
    from soapbench.bench.shapes import build_preset_model

    built = setup.build(build_preset_model(model_cfg, "meta"))
    main = next(iter(getattr(built, "optimizers", {"": built}).values()))
    return [tuple(param.shape) for group in main.param_groups for param in group["params"]]


def soap_floor(
    shapes: Sequence[tuple[int, ...]], hparams: Mapping[str, Any], device: torch.device, repeats: int = 3
) -> dict[str, Any]:
    """The floor for SOAP with ``hparams`` (its yaml) over the parameter ``shapes`` SOAP itself trains.

    Only 2-D parameters with both sides preconditioned are counted (the nanoGPT/LM presets have no others that
    matter); anything else is listed under ``skipped`` and makes the floor a slight underestimate.
    """
    per_step = per_refresh = 0.0
    counted, skipped = 0, []
    cache: dict[tuple[int, int], tuple[float, float]] = {}
    for shape in shapes:
        layout = factor_layout(
            tuple(shape), hparams["max_precond_dim"], hparams["merge_dims"], hparams["precondition_1d"],
            hparams["data_format"],
        )  # fmt: skip
        if len(shape) == 1 and not layout.any_preconditioned:
            continue  # plain Adam: elementwise only
        if len(layout.shape) != 2 or not all(layout.preconditioned):
            skipped.append(list(shape))
            continue
        key = (layout.shape[0], layout.shape[1])
        if key not in cache:
            cache[key] = _matrix_floor(*key, device=device, repeats=repeats)
        per_step += cache[key][0]
        per_refresh += cache[key][1]
        counted += 1
    frequency = int(hparams["precondition_frequency"])
    return {
        "matrices": counted, "skipped_shapes": skipped, "frequency": frequency,
        "per_step_seconds": per_step, "per_refresh_seconds": per_refresh,
        "mean_seconds": per_step + per_refresh / frequency,
    }  # fmt: skip
