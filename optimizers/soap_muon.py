"""SOAP-Muon (Vyas, Zhao, Morwani, Kwun, Kakade, "Improving SOAP using Iterative Whitening and Muon", 2025).

Reference: nikhilvyas/SOAP_MUON @ 3035e10, soap-muon-nanogpt/soap_muon10.py (``SOAP_Muon10``, the class the
paper's experiments import) and soap_muon10_graft.py (``SOAP_Muon10_Graft``, ``scale="graft"`` here).

Idea: whiten one side with SOAP (Adam in the eigenbasis of GGᵀ or GᵀG, the smaller side for the paper's
``projection_type="std"``), then whiten the other side with Muon's Newton–Schulz, with an elementwise
square-root correction in between. For a matrix parameter W (m×n), gradient G, basis Q (eigenvectors as
columns, descending), rot(X) = Q_Lᵀ X (left), X Q_R (right), Q_Lᵀ X Q_R (full), X (identity), and unrot
its inverse. Per ``step()``:

    first call for W: L ← (1−β_s)·GGᵀ and/or R ← (1−β_s)·GᵀG; Q ← eigh(float32(factor)); no update, t stays 0
    later calls:
      G' = rot(G);  t ← t + 1
      m ← β1 m + (1−β1) G                                (original coordinates)
      v ← β2 v + (1−β2) G'²                              (rotated coordinates)
      α_t = η·sqrt(1−β2^t)/(1−β1^t)                      (η if correct_bias is off)
      N = (rot(m) + (1−β1) G') / (sqrt(v) + ε)           (nestrov and max(m, n) < 10000)
      N = rot(m) / (sqrt(v) + ε)                         (otherwise)
      if max(m, n) < 10000:
          O = NS(N);  O ← sign(O)·sqrt|O|;  O ← O/‖O‖_F
          O ← O·sqrt(min(m, n))·sqrt(max(1, m/n))        (scale="shape", soap_muon10)
          O ← O·‖N‖_F                                    (scale="graft", soap_muon10_graft)
          N ← O
      elif scale == "shape":                             (soap_muon10 only; the graft file has no such branch)
          N ← sign(NS(N))·sqrt|NS(N)| rescaled to ‖·‖_F = sqrt(m·n)
      W ← W − α_t·unrot(N);  W ← W − ηλ·W               (decoupled weight decay after the update)
      L, R ← lerp(·, GGᵀ / GᵀG, 1−β_s)
      if t mod f == 0: refresh each factor (left first): sort Q's columns by diag(QᵀLQ) descending, permute v
          along that dim to match, Q ← QR((QᵀL)ᵀ).Q (= QR(L·Q) for symmetric L), all in float32

NS (param dtype, not bf16): X = N/(‖N‖_F + 1e-7), transposed if m > n; ``newton_schulz_steps`` quintic steps
A = XXᵀ, B = AX, X = aX + bB + (cA)B with (a, b, c) = (3.4445, −4.7750, 2.0315); then 2 cubic steps
X = 1.5X − (0.5·XXᵀ)X. Params with fewer than 2 dims take the identity projection and no NS: plain Adam with the
conventions above (first call skipped, ε = 1e-15 on the raw sqrt(v), bias correction folded into α_t).

Projection per parameter, fixed when its state is created: < 2 dims → identity. "std" → right (factor GᵀG)
if m > n, left (GGᵀ) if m < n, right if square. "full" with m > max_precond_dim → right, n > max_precond_dim
→ left, both → identity (max_precond_dim is consulted only for "full", as in the reference). The 10000 in
"max(m, n) < 10000" is hard-coded in soap_muon10, independent of max_precond_dim.

Keyword names are the reference's, including the misspelled ``nestrov``. It is the only spelling accepted:
``nesterov=...`` is an unknown hyperparameter, so a config written for the reference means the same here.

Deliberate deviations from the reference:
* ≥3-D parameters (conv kernels) are viewed as 2-D (out, rest) for everything: factors, rotation, NS and the
  shape rules (the reference crashes on them; nanogpt_optimizer.py calls exit(0)). Moments keep the param shape.
* Factors and bases are allocated in the param dtype (float32 for bf16/fp16 params), not torch's default
  dtype, so bf16 and float64 params work (the reference crashes unless they match the default dtype). Golden
  runs (float64 params under default float64) are unchanged. bf16/fp16 params keep float32 moments and are
  updated through a float32 copy.
* A failed eigh/QR (error or non-finite) is retried in float64, else the previous basis is kept (identity on
  the first call); counted in ``diagnostics()``. Shared code in :mod:`soapbench.optimizers.linalg`.
* An all-zero direction (e.g. a zero gradient) stays zero instead of becoming NaN in O/‖O‖_F.
* ``scale="graft"``: entries of sqrt(v) below one rounding unit of its largest entry are raised to that level
  before ε is added. Where the rotated gradient is zero up to rounding (a rank-deficient factor's null space), the
  reference divides one rounding error by another plus ε = 1e-15, and the graft norm ‖N‖_F turned that into
  float32 steps of 1e7·lr. Entries above the floor are untouched, so the goldens are bit-identical.
* ``precondition_frequency`` and ``shampoo_beta`` are read from the param group every step (the reference
  copies them into the state once), so changing them mid-run takes effect. ``projection_type`` is fixed
  per parameter when its state is created.
* ``scale`` selects between the two reference files; ``closure`` is supported; no prints.

Per shape (``stack_shapes=True``, the default; ``step()`` is
:class:`soapbench.optimizers.eigenbasis.EigenbasisOptimizer`'s): same-shape matrices of a param group are stepped as
one stack (:mod:`soapbench.optimizers.batching`). Issued once per bucket instead of once per matrix: the projections
into and out of the one-sided (or full) eigenbasis, the moments, the Newton–Schulz iteration (batched products, each
matrix normalised by its own norm), the square-root correction and rescaling, and the factor EMAs. The QR refreshes
(every f steps) run member by member through the per-parameter code and are copied into the stacks; each parameter's
``W ← W − α U − ηλ W`` stays its own (the parameters are separate tensors). On CPU each kernel computes every matrix
of a stack as it computes that matrix alone, so stacked SOAP-Muon equals per-parameter SOAP-Muon
(``tests/test_stacked_steps.py`` at one and two threads); refresh sharing is unchanged (refreshes are per member).

A parameter joins a bucket when it is a 2-D matrix of the compute dtype (bf16 params and conv kernels step alone),
already initialised, with a left, right or full projection; members also share their step count and projection.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

import torch
from torch import Tensor

from soapbench.optimizers.adamw import validate_adam_hyperparameters
from soapbench.optimizers.batching import rebind, stacked_state
from soapbench.optimizers.eigenbasis import EigenbasisOptimizer
from soapbench.optimizers.linalg import LinalgHealth, eigenbasis, estimated_eigenvalues, orthonormalize_qr
from soapbench.optimizers.registry import register_optimizer
from soapbench.optimizers.state import state_dtype_for
from soapbench.optimizers.stepping import group_lr

PROJECTION_TYPES = ("identity", "left", "right", "full", "std")
SCALES = ("shape", "graft")
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
_NS_EPS = 1e-7
# soap_muon10 hard-codes this bound for the Newton–Schulz branch; it is not max_precond_dim.
LARGE_MATRIX_DIM = 10000


def frobenius(matrix: Tensor) -> Tensor:
    """‖X‖_F of a matrix (0-d), or of each matrix of a ``B×m×n`` stack (``B×1×1``, to broadcast)."""
    return matrix.norm() if matrix.dim() <= 2 else torch.linalg.vector_norm(matrix, dim=(-2, -1), keepdim=True)


def zeropower_via_newtonschulz_soap_muon(direction: Tensor, steps: int) -> Tensor:
    """SOAP-Muon's Newton–Schulz in the input's dtype: ``steps`` quintic iterations then 2 cubic ones.

    A ``B×m×n`` stack is orthogonalised matrix by matrix in batched products (each normalised by its own norm).
    """
    a, b, c = NS_COEFFICIENTS
    X = direction.clone()
    X /= frobenius(X) + _NS_EPS
    transposed = direction.size(-2) > direction.size(-1)
    if transposed:
        X = X.mT
    for _ in range(steps):
        A = X @ X.mT
        B = A @ X
        # The reference's `c * A @ B` and `0.5 * (X @ X.T) @ X` group as below; kept for bitwise parity.
        X = a * X + b * B + (c * A) @ B
    for _ in range(2):
        X = 1.5 * X - (0.5 * (X @ X.mT)) @ X
    if transposed:
        X = X.mT
    return X


def _unit_frobenius_(matrix: Tensor) -> Tensor:
    # Clamped so an all-zero direction stays zero (the reference divides 0 by 0); bitwise equal otherwise.
    return matrix.div_(frobenius(matrix).clamp_min(torch.finfo(matrix.dtype).tiny))


def _floor_at_rounding_level_(root: Tensor) -> Tensor:
    """Raise the entries of sqrt(v) below one rounding unit of its largest entry to that level (graft scale only).

    Coordinates of the eigenbasis where the gradient is zero up to rounding (a rank-deficient factor's null space)
    have v at the rounding level, and rot(m) there is a *different* rounding error: their ratio, with the
    reference's ε = 1e-15, is arbitrary (5e6–6e10 seen in float32) and the graft scale ‖N‖_F passes it on as a
    huge step. Entries at or above the floor are untouched bit for bit, so well-posed runs (the float64 goldens
    included) are unchanged.
    """
    largest = root.max() if root.dim() <= 2 else root.amax(dim=(-2, -1), keepdim=True)  # per matrix of a stack
    return root.clamp_min_(torch.finfo(root.dtype).eps * largest)


def _sqrt_corrected_unit(direction: Tensor, steps: int) -> Tensor:
    orthogonalized = zeropower_via_newtonschulz_soap_muon(direction, steps)
    corrected = torch.sqrt(torch.abs(orthogonalized)) * torch.sign(orthogonalized)
    return _unit_frobenius_(corrected)


def resolve_projection(matrix_shape: tuple[int, int] | None, projection_type: str, max_precond_dim: int) -> str:
    """The reference's per-parameter choice of identity/left/right/full (see the module docstring)."""
    if matrix_shape is None:
        return "identity"
    rows, cols = matrix_shape
    if projection_type == "std":
        projection = "left" if rows < cols else "right"
    else:
        projection = projection_type
    if projection == "full" and max_precond_dim >= 0:
        if rows > max_precond_dim:
            projection = "right"
        if cols > max_precond_dim:
            projection = "left"
        if rows > max_precond_dim and cols > max_precond_dim:
            projection = "identity"
    return projection


def project(matrix: Tensor, state: dict[str, Any]) -> Tensor:
    """rot(X) of the module docstring, with the bases in ``state`` (one matrix, or stacks for a stack)."""
    # Product forms as in the reference's project(): Q_Lᵀ X, X Q_R, (Q_Lᵀ X) Q_R.
    projection = state["projection"]
    if projection == "identity":
        return matrix
    if projection == "left":
        return state["basis_left"].mT @ matrix
    if projection == "right":
        return matrix @ state["basis_right"]
    return (state["basis_left"].mT @ matrix) @ state["basis_right"]


def project_back(matrix: Tensor, state: dict[str, Any]) -> Tensor:
    """unrot(X) of the module docstring, the inverse of :func:`project`."""
    projection = state["projection"]
    if projection == "identity":
        return matrix
    if projection == "left":
        return state["basis_left"] @ matrix
    if projection == "right":
        return matrix @ state["basis_right"].mT
    return (state["basis_left"] @ matrix) @ state["basis_right"].mT


def _sorted_power_qr_refresh(factor: Tensor, basis: Tensor, health: LinalgHealth) -> tuple[Tensor, Tensor]:
    """SOAP-Muon's ``get_orthogonal_matrix_QR`` for one factor, in float32; returns (new basis, permutation).

    Same steps as :func:`soapbench.optimizers.linalg.power_qr_refresh` with ``sort=True``, but the power-iteration product
    is formed as the reference writes it, ``(Qᵀ L)ᵀ``, not ``L Q``: equal for symmetric L, yet BLAS rounds the
    two differently for small factors (seen for 8×8), and a float32 QR passes that on to the trajectory.
    On a QR failure the sorted previous basis is kept, which stays consistent with the permuted v.
    """
    factor32 = factor.to(torch.float32)
    basis32 = basis.to(torch.float32)
    permutation = torch.argsort(estimated_eigenvalues(factor32, basis32), descending=True)
    basis32 = basis32[:, permutation]
    power = (basis32.T @ factor32).T
    refreshed = orthonormalize_qr(power, fallback=basis32, health=health)
    return refreshed.to(basis.dtype), permutation


@register_optimizer("soap_muon", main_roles=("matrix",))
class SOAPMuon(EigenbasisOptimizer):
    """SOAP-Muon (``SOAP_Muon10`` / ``SOAP_Muon10_Graft``); see the module docstring for the math.

    Our option: ``stack_shapes`` steps same-shape matrices of a group as one stack (module docstring, "Per shape";
    the same math as stepping them one by one, which False does).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.95, 0.98),
        shampoo_beta: float = -1,
        eps: float = 1e-15,
        weight_decay: float = 0.0,
        correct_bias: bool = True,
        projection_type: str = "full",
        precondition_frequency: int = 10,
        max_precond_dim: int = 10000,
        newton_schulz_steps: int = 5,
        nestrov: bool = False,
        scale: str = "shape",
        stack_shapes: bool = True,
    ) -> None:
        validate_adam_hyperparameters(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        if not shampoo_beta < 1:
            raise ValueError(f"shampoo_beta must be < 1 (a negative value means betas[1]), got {shampoo_beta}")
        if projection_type not in PROJECTION_TYPES:
            raise ValueError(f"projection_type must be one of {PROJECTION_TYPES}, got {projection_type!r}")
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES} (soap_muon10 / soap_muon10_graft), got {scale!r}")
        for name, value, minimum in (
            ("precondition_frequency", precondition_frequency, 1),
            ("newton_schulz_steps", newton_schulz_steps, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        if isinstance(max_precond_dim, bool) or not isinstance(max_precond_dim, int):
            raise ValueError(f"max_precond_dim must be an integer, got {max_precond_dim!r}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            shampoo_beta=shampoo_beta,
            eps=eps,
            weight_decay=weight_decay,
            correct_bias=bool(correct_bias),
            projection_type=projection_type,
            precondition_frequency=precondition_frequency,
            max_precond_dim=max_precond_dim,
            newton_schulz_steps=newton_schulz_steps,
            nestrov=bool(nestrov),
            scale=scale,
            stack_shapes=bool(stack_shapes),
        )
        super().__init__(params, defaults)

    @staticmethod
    def _factor_beta(group: dict[str, Any]) -> float:
        return group["shampoo_beta"] if group["shampoo_beta"] >= 0 else group["betas"][1]

    def _init_state(self, param: Tensor, grad_matrix: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        dtype = state_dtype_for(param.dtype)
        state = self.state[param]
        state["step"] = 0
        state["exp_avg"] = torch.zeros(param.shape, dtype=dtype, device=param.device)
        state["exp_avg_sq"] = torch.zeros(param.shape, dtype=dtype, device=param.device)
        matrix_shape = tuple(grad_matrix.shape) if grad_matrix.ndim == 2 else None
        state["projection"] = resolve_projection(matrix_shape, group["projection_type"], group["max_precond_dim"])
        for side in self._sides(state):
            size = grad_matrix.shape[0] if side == "left" else grad_matrix.shape[1]
            state[f"factor_{side}"] = torch.zeros(size, size, dtype=dtype, device=param.device)
        return state

    @staticmethod
    def _sides(state: dict[str, Any]) -> tuple[str, ...]:
        return {"identity": (), "left": ("left",), "right": ("right",), "full": ("left", "right")}[state["projection"]]

    def _update_factors(self, grad_matrix: Tensor, state: dict[str, Any], beta: float) -> None:
        for side in self._sides(state):
            gram = grad_matrix @ grad_matrix.T if side == "left" else grad_matrix.T @ grad_matrix
            state[f"factor_{side}"].lerp_(gram, 1 - beta)

    def _init_bases(self, param: Tensor, state: dict[str, Any]) -> None:
        for side in self._sides(state):
            factor = state[f"factor_{side}"]
            if not self._computes_refresh(param):
                state[f"basis_{side}"] = torch.empty_like(factor)  # the owner's basis arrives after the step
                continue
            # soap_muon10: float32 eigh with no eye term, whatever the default dtype.
            state[f"basis_{side}"] = eigenbasis(
                factor, precision="float32", eye_shift=None, out_dtype=factor.dtype, health=self.linalg_health
            )

    def _refresh_bases(self, state: dict[str, Any], second_moment: Tensor) -> None:
        for side in self._sides(state):
            basis, permutation = _sorted_power_qr_refresh(
                state[f"factor_{side}"], state[f"basis_{side}"], self.linalg_health
            )
            # Relabel v's rows (left) or columns (right) like Q's columns; v is never rotated.
            axis = 0 if side == "left" else 1
            second_moment.copy_(second_moment.index_select(axis, permutation))
            state[f"basis_{side}"] = basis

    @staticmethod
    def _direction(
        grad_matrix: Tensor,
        grad_projected: Tensor,
        exp_avg: Tensor,
        exp_avg_sq: Tensor,
        state: dict[str, Any],
        group: dict[str, Any],
        step: int,
    ) -> tuple[float, Tensor]:
        """Moments, then (α_t, N or O) of the module docstring; for one matrix or a stack (``state``'s bases)."""
        beta1, beta2 = group["betas"]
        exp_avg.mul_(beta1).add_(grad_matrix, alpha=1.0 - beta1)
        exp_avg_sq.mul_(beta2).add_(grad_projected.square(), alpha=1.0 - beta2)
        rows, cols = grad_matrix.shape[-2:] if grad_matrix.ndim >= 2 else (0, 0)
        is_matrix = grad_matrix.ndim >= 2
        newton_schulz = is_matrix and max(rows, cols) < LARGE_MATRIX_DIM
        root = exp_avg_sq.sqrt()
        if newton_schulz and group["scale"] == "graft":
            _floor_at_rounding_level_(root)
        denom = root.add_(group["eps"])
        exp_avg_projected = project(exp_avg, state)

        step_size = group_lr(group)
        if group["correct_bias"]:
            bias_correction1 = 1.0 - beta1**step
            bias_correction2 = 1.0 - beta2**step
            step_size = step_size * (bias_correction2**0.5) / bias_correction1

        if group["nestrov"] and newton_schulz:
            direction = (exp_avg_projected + (1.0 - beta1) * grad_projected) / denom
        else:
            direction = exp_avg_projected / denom

        if newton_schulz and group["scale"] == "graft":
            adam_norm = frobenius(direction)
            direction = _sqrt_corrected_unit(direction, group["newton_schulz_steps"])
            direction *= adam_norm
        elif newton_schulz:
            direction = _sqrt_corrected_unit(direction, group["newton_schulz_steps"])
            direction *= min(rows, cols) ** 0.5
            direction *= max(1, rows / cols) ** 0.5
        elif is_matrix and group["scale"] == "shape":
            direction = _sqrt_corrected_unit(direction, group["newton_schulz_steps"])
            direction *= (rows * cols) ** 0.5
        return step_size, direction

    def _step_param(self, param: Tensor, group: dict[str, Any]) -> None:
        lr, weight_decay = group_lr(group), group["weight_decay"]
        factor_beta = self._factor_beta(group)
        dtype = state_dtype_for(param.dtype)
        grad = param.grad.to(dtype)
        grad_matrix = grad.reshape(grad.shape[0], -1) if grad.ndim > 2 else grad

        state = self.state[param]
        if not state:
            state = self._init_state(param, grad_matrix, group)
            self._update_factors(grad_matrix, state, factor_beta)
            self._init_bases(param, state)
            self._publish_refresh(param, [(state, f"basis_{side}") for side in self._sides(state)])
            return

        exp_avg = state["exp_avg"].view(grad_matrix.shape)
        exp_avg_sq = state["exp_avg_sq"].view(grad_matrix.shape)
        grad_projected = project(grad_matrix, state)
        state["step"] += 1
        step = state["step"]

        step_size, direction = self._direction(grad_matrix, grad_projected, exp_avg, exp_avg_sq, state, group, step)
        update = project_back(direction, state)
        weights = param if param.dtype == dtype else param.to(dtype)
        weights.add_(update.reshape(param.shape), alpha=-step_size)
        if weight_decay > 0.0:
            weights.add_(weights, alpha=-lr * weight_decay)
        if weights is not param:
            param.copy_(weights)

        self._update_factors(grad_matrix, state, factor_beta)
        if step % group["precondition_frequency"] == 0:
            if self._computes_refresh(param):
                self._refresh_bases(state, exp_avg_sq)
            slots = [(state, f"basis_{side}") for side in self._sides(state)]
            self._publish_refresh(param, [*slots, (state, "exp_avg_sq")])

    # ------------------------------------------------------------------------------------------------------------
    # A bucket of same-shape matrices, as one stack (module docstring, "Per shape")
    # ------------------------------------------------------------------------------------------------------------

    def _bucket_key(self, param: Tensor, group: dict[str, Any]) -> Hashable | None:
        state = self.state.get(param)
        if not state or param.dim() != 2:
            return None
        compute_dtype = state_dtype_for(param.dtype)
        if param.dtype != compute_dtype or param.grad.dtype != compute_dtype or state["projection"] == "identity":
            return None
        return (tuple(param.shape), param.dtype, param.device, state["step"], state["projection"])

    def _step_stack(self, params: list[Tensor], group: dict[str, Any]) -> None:
        """:meth:`_step_param` for a bucket of matrices: direction, update, factors, refresh when due."""
        states = [self.state[param] for param in params]
        sides = self._sides(states[0])
        slots = [("exp_avg",), ("exp_avg_sq",), *((f"factor_{side}",) for side in sides),
                 *((f"basis_{side}",) for side in sides)]  # fmt: skip
        stacked = stacked_state(self, params, slots)
        bases = {
            "projection": states[0]["projection"],
            **{f"basis_{side}": stacked[(f"basis_{side}",)] for side in sides},
        }
        grads = torch.stack([param.grad for param in params])
        grad_projected = project(grads, bases)
        step = states[0]["step"] + 1
        for state in states:
            state["step"] = step
        exp_avg, exp_avg_sq = stacked[("exp_avg",)], stacked[("exp_avg_sq",)]
        step_size, direction = self._direction(grads, grad_projected, exp_avg, exp_avg_sq, bases, group, step)
        update = project_back(direction, bases)
        lr, weight_decay = group_lr(group), group["weight_decay"]
        for param, member in zip(params, update.unbind(0)):
            param.add_(member, alpha=-step_size)
            if weight_decay > 0.0:
                param.add_(param, alpha=-lr * weight_decay)

        factor_beta = self._factor_beta(group)
        for side in sides:
            gram = grads @ grads.mT if side == "left" else grads.mT @ grads
            stacked[(f"factor_{side}",)].lerp_(gram, 1 - factor_beta)
        if step % group["precondition_frequency"] == 0:
            for index, (param, state) in enumerate(zip(params, states)):
                if self._computes_refresh(param):
                    self._refresh_bases(state, state["exp_avg_sq"])
                    for side in sides:
                        rebind(state, (f"basis_{side}",), stacked, index)
                slots_out = [(state, f"basis_{side}") for side in sides]
                self._publish_refresh(param, [*slots_out, (state, "exp_avg_sq")])
