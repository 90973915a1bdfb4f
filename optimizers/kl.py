"""KL-Shampoo and KL-SOAP (Lin et al., 2025, "Understanding and Improving Shampoo and SOAP via Kullback–Leibler
Minimization", arXiv 2509.03378): Kronecker factors estimated by minimising KL(E[g gᵀ] ‖ S_1 ⊗ … ⊗ S_K).

Reference: yorkerlin/KL-Methods @ a02e622, ``optim/kl_opt.py``, class ``KLOpt`` (``using_klsoap=False`` is
KL-Shampoo, ``True`` is KL-SOAP); step order and precision as in shared ``docs/algorithms.md`` §6, operation by
operation, so on one machine it rounds exactly as the reference does. The golden trajectories ``kl_shampoo_f64.pt``
and ``kl_soap_f64.pt`` are checked in tests/test_kl.py (their tolerances depend on the CPU; see there).

Notation. A parameter's gradient is viewed as a 2-D or 3-D tensor G with dims d_1 … d_K (the *working shape*,
see the deviations), N = numel(G), c_k = N/d_k. Per dim k: the factor S_k (d_k×d_k), its basis Q_k (eigenvectors
as columns) and eigenvalue estimates D_k, stored as s_k = D_k^{-1/2}. ``rot(X)`` multiplies mode k of X by Q_kᵀ,
``unrot(X)`` by Q_k. β = ``shampoo_beta`` (β2 when negative); it drives both the factor and the eigenvalue EMAs.

First ``step()`` for a parameter (no update, no weight decay, t stays 0):

    S_k = (1−β)/c_k · G_(k) G_(k)ᵀ
    Q_k = eigenvectors(float32(S_k) + 1e-30·I), descending      (I in torch's default dtype; eigenvalues discarded)
    D_k = init_factor, i.e. s_k = init_factor^{-1/2} ≈ 3.16

Every later ``step()``, t ← t + 1, with the OLD Q and s:

    KL-Shampoo:  m ← β1 m + (1−β1) G                             (original coordinates, no bias correction)
                 E = s_1 ⊗ … ⊗ s_K;   E ← E/(1 + ε E)            (= 1/(sqrt(D_1 ⋯ D_K) + ε))
                 U = unrot(rot(m) ⊙ E)      (t=1: E ≡ init_factor^(-K/2), so a matrix's U = G: an SGD step)
    KL-SOAP:     G' = rot(G);  m ← β1 m + (1−β1) G';  v ← β2 v + (1−β2) G'²
                 U = unrot(m/(sqrt(v) + ε))                       (no bias correction: t=1 gives 0.1/sqrt(0.02))

    curvature, with Ŝ_j^{-1} = Q_j diag(s_j²) Q_jᵀ:
      S_k ← β S_k + (1−β)/c_k · G_(k) (⊗_{j≠k} Ŝ_j^{-1}) G_(k)ᵀ
      D_k ← β D_k + (1−β) · mean_{j≠k}( rot(G)² ⊙ Π_{j≠k} s_j² )      (= diag(Q_kᵀ [above] Q_k)/c_k)
      s_k = min(D_k^{-1/2}, max(10, min(d_k, max_clamp_value))),  NaN/±inf → 0
      K = 2 uses the old s everywhere. K = 3 follows the reference's order, which mixes old and new s:
        S_3 (old s_1, s_2);  S_2 (old s_1, s_3);  D_3 (old s_1, s_2) → s_3;  D_2 (old s_1, new s_3) → s_2;
        S_1 (old s_3, new s_2);  D_1 (old s_3, new s_2) → s_1
      using_damping: each D_k's new term gets + ε·Π_j mean(s_j²)/mean(s_k²) (traces from the old s).
    refresh when t mod f = 0:  Q_k ← QR(float32(S_k)·float32(Q_k)).Q, cast back; no sorting, so s_k keeps
      its column index. KL-SOAP moves m out of and back into the basis around the refresh only (unrot with the
      old Q, rot with the new); v is neither permuted nor rotated.
    apply:  (normalize_grads: U ← U/(1e-30 + RMS(U)));   W ← W − η U;   W ← W − η λ W   (decay on the updated W)

Deliberate deviations from the reference (none changes a golden trajectory):

* ``cast_dtype=None`` (default) keeps the gradient and all state in the parameter's dtype, float32 for bf16/fp16
  parameters; the reference defaults to bfloat16 state, which is still available as ``cast_dtype=torch.bfloat16``
  (or the string "bfloat16"; "float32"/"float64" too, for Hydra). eigh and QR run in float32 (or float64 under
  default dtype float64, as the reference) whatever the state dtype.
* Working shape: the gradient is squeezed as in the reference (size-1 dims vanish). The reference stops at 3-D;
  here 4-D and larger tensors are viewed as (d_1, d_2, d_3·…·d_n), i.e. a conv (O, I, kh, kw) as (O, I, kh·kw),
  which is how the golden runs feed their conv.
* Parameters that are 0-D or 1-D after the squeeze crash the reference. Here they take a *diagonal* path: their
  single dim keeps the identity basis and no factor. That is the KL-optimal diagonal covariance,
  diag(E[g gᵀ]), tracked with the same EMA and clamp:
      KL-Shampoo:  m ← β1 m + (1−β1) g;   U = m ⊙ s/(1 + ε s);   D ← β D + (1−β) g²;   s = clamp(D^{-1/2})
      KL-SOAP:     Adam without bias correction, U = m/(sqrt(v) + ε)
  with the same skipped first call (KL-Shampoo's first update is then 0.1·sqrt(10)·g, the K = 1 case).
  ``build_optimizer`` still routes 1-D parameters to the AdamW companion (algorithms.md §8); the diagonal path is
  what a directly constructed optimizer does with biases, gains and (1, n) rows.
* Built from a model, KL trains the hidden matrices (and a CNN's input layer); embeddings and the head go to
  the AdamW companion too, because the reference's uncapped factors do not fit for real vocabularies.
* A failed eigh or QR (an error or non-finite output) is retried in float64 and otherwise keeps the previous
  basis (the identity on the first call); both are counted in ``diagnostics()``. The reference retries eigh on
  errors only and lets a QR failure raise.
* Every hyperparameter is a param-group entry read at every step; the reference keeps ``init_factor``,
  clamping, damping and ``cast_dtype`` optimizer-wide and freezes ``shampoo_beta`` and
  ``precondition_frequency`` into the state at the first call.
* The bases are always cast to the state dtype (the reference leaves them in the eigh dtype when the state is
  float32, which then mixes dtypes under default float64), and ``load_state_dict`` casts the state to the dtype
  KL allocates (``cast_dtype``, else the parameter's; torch would turn a bf16 parameter's float32 state into bf16).
* No ``torch.compile`` (the goldens were made in eager mode) and no prints.
* Same-shape matrices of a param group are stepped as one stack ("Per shape" below), the same math as the
  per-parameter step; ``stack_shapes=False`` turns it off.
* Speed, without changing the math:
  * KL-SOAP on matrices computes ``Q_Lᵀ G`` and ``Q_Lᵀ G Q_R`` once, for both the direction and the curvature
    update; the reference computes them twice.
  * Factors at least 768 wide are updated by symmetric blocks (``linalg.gram_update_``, about 5/8 of the
    product's flops). Only their last bits can differ, and the golden runs' factors are narrower, so the golden
    runs are unaffected.

Per shape (``stack_shapes=True``, the default; ``step()`` is
:class:`soapbench.optimizers.eigenbasis.EigenbasisOptimizer`'s): same-shape matrices of a param group are stepped as
one stack (:mod:`soapbench.optimizers.batching`; each parameter's state entries stay views into the stacks). Issued
once per bucket instead of once per matrix: the rotations ``Q_Lᵀ G Q_R`` (KL-SOAP) and ``Q_Lᵀ m Q_R`` (KL-Shampoo),
the moment updates, KL-Shampoo's Kronecker scale ``s_L ⊗ s_R / (1 + ε s_L ⊗ s_R)``, KL-SOAP's ``m/(√v+ε)``, the
first back-rotation product, the whitened products ``diag(s_R) Q_Rᵀ Gᵀ`` and ``(Q_Lᵀ G) diag(s_L)``, the Gram
products of the curvature update (factors narrower than ``2·SYMMETRIC_BLOCK``), the factor and eigenvalue EMAs with
their clamps, and at refresh steps KL-SOAP's momentum move between bases.

Kept one per matrix, because a batched kernel would round them differently from the per-parameter code:

* the two matrix-vector products of the eigenvalue update, ``(F⊙F) s_R²`` and ``s_L² (F⊙F)`` (a GEMV alone; as a
  batch of ``n×1`` GEMMs they sum in another order);
* the block-symmetric factor update of factors at least ``2·SYMMETRIC_BLOCK`` wide (``linalg.gram_update_``);
* the fused weight update ``W ← c W − c η (X Q_Rᵀ)`` (``addmm_`` with a beta; the parameters are separate tensors);
* the QR refresh of the bases, every f steps (``power_qr_refresh`` per factor, with its failure fallback to the
  exact previous basis).

Same math per matrix, same rounding: stacked KL equals per-parameter KL (``tests/test_stacked_steps.py``, at one and
two threads), so the goldens are untouched. Under refresh sharing a rank refreshes the members it owns; a broadcast
replaces members' tensors, which :class:`soapbench.optimizers.batching.StackedState` notices and restacks.

A matrix joins a bucket when it is 2-D in KL's working shape (no squeezed or merged dims), its dtype, gradient and
state all in the state dtype, ``normalize_grads`` and ``using_damping`` off (their RMS and trace reductions would
sum differently over a stack), and already initialised; members also share their step count. Everything else,
and any bucket of one, is stepped by ``_step_param``.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from soapbench.optimizers.adamw import validate_adam_hyperparameters
from soapbench.optimizers.batching import StackedState, rebind, stacked_state
from soapbench.optimizers.eigenbasis import EigenbasisOptimizer
from soapbench.optimizers.kl_math import accumulate_factor, accumulate_gram, updated_inv_sqrt_eigenvalues, working_shape
from soapbench.optimizers.linalg import (
    eigenbasis,
    mode_gram,
    power_qr_refresh,
    rotate,
    rotate_matrix,
    unrotate,
    unrotate_matrix,
)
from soapbench.optimizers.registry import register_optimizer
from soapbench.optimizers.stepping import group_lr

CAST_DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
    "float64": torch.float64,
}
# The reference's clamp on s_k = D_k^{-1/2} is max(CLAMP_FLOOR, min(d_k, max_clamp_value)).
CLAMP_FLOOR = 10
# Roles KL trains when built from a model; 1-D parameters ("vector") go to the AdamW companion.
# The reference caps no factor: a 32k-token embedding or head would need 32k x 32k factors and bases (8 GB
# in float32) and an eigendecomposition of that size. So, as for Muon, embeddings and the head go to the
# AdamW companion by default; ``optimizer.main_roles=[matrix,input,embedding,head]`` brings them back
# for small vocabularies.
KL_MAIN_ROLES = ("matrix", "input")
# The state entries a bucket keeps as stacks (batching.Slot: the path into optimizer.state[p]).
KLSHAMPOO_STACK_SLOTS = (("exp_avg",), ("factors", 0), ("factors", 1), ("bases", 0), ("bases", 1),
                         ("inv_sqrt_eigenvalues", 0), ("inv_sqrt_eigenvalues", 1))  # fmt: skip
KLSOAP_STACK_SLOTS = KLSHAMPOO_STACK_SLOTS + (("exp_avg_sq",),)


def parse_cast_dtype(cast_dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``None`` or a floating dtype, given as a ``torch.dtype`` or its name (Hydra passes strings)."""
    if cast_dtype is None:
        return None
    if isinstance(cast_dtype, torch.dtype):
        if cast_dtype not in CAST_DTYPES.values():
            raise ValueError(f"cast_dtype must be None or one of {sorted(CAST_DTYPES)}, got {cast_dtype}")
        return cast_dtype
    name = str(cast_dtype).strip().removeprefix("torch.")
    if name.lower() in ("none", "null"):
        return None
    if name not in CAST_DTYPES:
        raise ValueError(f"cast_dtype must be None or one of {sorted(CAST_DTYPES)}, got {cast_dtype!r}")
    return CAST_DTYPES[name]


def state_dtype_for(cast_dtype: torch.dtype | None, param_dtype: torch.dtype) -> torch.dtype:
    """The dtype of KL's gradient copy and state: ``cast_dtype``, else the param dtype (float32 for 16-bit)."""
    if cast_dtype is not None:
        return cast_dtype
    return torch.float32 if param_dtype in (torch.bfloat16, torch.float16) else param_dtype


def _kronecker_scale(inv_sqrt_eigenvalues: Sequence[Tensor]) -> Tensor:
    """``s_1 ⊗ s_2 (⊗ s_3)`` as a tensor of the working shape, multiplied left to right like the reference."""
    order = len(inv_sqrt_eigenvalues)
    shapes = [[-1 if axis == dim else 1 for axis in range(order)] for dim in range(order)]
    scale = inv_sqrt_eigenvalues[0].view(shapes[0])
    for vector, shape in zip(inv_sqrt_eigenvalues[1:], shapes[1:]):
        scale = scale * vector.view(shape)
    return scale


class _KLOptimizer(EigenbasisOptimizer):
    """The shared implementation; :class:`KLShampoo` and :class:`KLSOAP` pick the direction.

    Args (the reference's keywords and defaults, except ``cast_dtype``):
        lr: η.  betas: (β1, β2); β1 is the momentum, β2 KL-SOAP's second-moment EMA and the default β.
        shampoo_beta: β of the factor and eigenvalue EMAs (negative → betas[1]).
        eps: ε. KL-Shampoo: damping of the direction, E/(1 + εE); KL-SOAP: Adam's ε; also the curvature damping
            when ``using_damping``.
        weight_decay: λ, decoupled, applied to the updated weight.
        precondition_frequency: f, the QR refresh period of the bases.
        normalize_grads: rescale the direction to RMS 1.
        init_factor: the initial eigenvalue estimate D_k of every direction.
        using_damping: add ε-scaled traces to the eigenvalue updates (off in the reference's default).
        using_clamping / max_clamp_value: clamp s_k ≤ max(10, min(d_k, max_clamp_value)).
        cast_dtype: dtype of the gradient copy and all state; None → the parameter's dtype (float32 for 16-bit
            parameters). The reference's default is torch.bfloat16.
        stack_shapes: step same-shape matrices of a group as one stack (module docstring, "Per shape"; the same
            math as stepping them one by one). False steps every parameter alone.
    """

    _using_klsoap: bool = False

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.98),
        shampoo_beta: float = -1,
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        precondition_frequency: int = 10,
        normalize_grads: bool = False,
        init_factor: float = 0.1,
        using_damping: bool = False,
        using_clamping: bool = True,
        max_clamp_value: int = 4000,
        cast_dtype: str | torch.dtype | None = None,
        stack_shapes: bool = True,
    ):
        betas = tuple(betas)
        if len(betas) != 2:
            raise ValueError(f"betas must be two values (beta1, beta2), got {betas}")
        validate_adam_hyperparameters(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        if shampoo_beta is not None and not shampoo_beta < 1.0:
            raise ValueError(f"shampoo_beta must be < 1 (negative means betas[1]), got {shampoo_beta}")
        if int(precondition_frequency) != precondition_frequency or precondition_frequency < 1:
            raise ValueError(f"precondition_frequency must be an integer >= 1, got {precondition_frequency}")
        if not init_factor > 0:
            raise ValueError(f"init_factor must be > 0 (the initial eigenvalue estimate), got {init_factor}")
        if not max_clamp_value > 0:
            raise ValueError(f"max_clamp_value must be > 0, got {max_clamp_value}")
        defaults = dict(
            lr=lr,
            betas=betas,
            shampoo_beta=shampoo_beta,
            eps=eps,
            weight_decay=weight_decay,
            precondition_frequency=int(precondition_frequency),
            normalize_grads=normalize_grads,
            init_factor=init_factor,
            using_damping=using_damping,
            using_clamping=using_clamping,
            max_clamp_value=max_clamp_value,
            cast_dtype=parse_cast_dtype(cast_dtype),
            stack_shapes=bool(stack_shapes),
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "cast_dtype" in param_group:
            param_group = {**param_group, "cast_dtype": parse_cast_dtype(param_group["cast_dtype"])}
        if "betas" in param_group:
            param_group = {**param_group, "betas": tuple(param_group["betas"])}
        super().add_param_group(param_group)

    def _state_dtype(self, param: Tensor, group: dict[str, Any], key: str) -> torch.dtype:
        return state_dtype_for(group["cast_dtype"], param.dtype)

    # ------------------------------------------------------------------------------------------------------------
    # One parameter
    # ------------------------------------------------------------------------------------------------------------

    @staticmethod
    def _shampoo_beta(group: dict[str, Any]) -> float:
        shampoo_beta = group["shampoo_beta"]
        return group["betas"][1] if shampoo_beta is None or shampoo_beta < 0 else shampoo_beta

    @staticmethod
    def _clamp_max(group: dict[str, Any], size: int) -> int | None:
        return max(CLAMP_FLOOR, min(size, group["max_clamp_value"])) if group["using_clamping"] else None

    def _step_param(self, param: Tensor, group: dict[str, Any]) -> None:
        if param.numel() == 0:
            return
        state = self.state[param]
        if state:
            dtype = state["exp_avg"].dtype
        else:
            dtype = state_dtype_for(group["cast_dtype"], param.dtype)
        grad = param.grad.to(dtype=dtype).reshape(working_shape(param.shape))

        if not state:
            self._initialize(param, grad, state, group)
            return  # The first call only builds the preconditioner, so Q never contains the gradient it rotates.

        state["step"] += 1
        if grad.dim() == 1:
            self._apply_update(param, self._diagonal_step(grad, state, group), group)
            return
        rotated = None
        if self._using_klsoap:
            if grad.dim() == 2:
                # Q_Lᵀ G and Q_Lᵀ G Q_R serve the direction and the curvature update alike: computed once.
                left_basis, right_basis = state["bases"]
                left_rotated = (grad.mT @ left_basis).mT
                rotated = (left_rotated, left_rotated @ right_basis)
            eigen_direction = self._klsoap_rotated_direction(
                grad, state, group, None if rotated is None else rotated[1]
            )
        else:
            eigen_direction = self._klshampoo_rotated_direction(grad, state, group)
        # The update only reads the bases the direction was formed in, so it goes before the curvature update
        # (which may refresh them); the reference updates W last, which is the same since W is read by neither.
        self._apply_rotated_update(param, eigen_direction, state["bases"], group)
        self._update_curvature(param, grad, state, group, rotated)

    @staticmethod
    def _apply_update(param: Tensor, direction: Tensor, group: dict[str, Any]) -> None:
        """``W ← W − η·D`` (D rescaled to RMS 1 with ``normalize_grads``), then ``W ← W − ηλW`` (the reference)."""
        if group["normalize_grads"]:
            direction = direction / (1e-30 + torch.mean(direction**2) ** 0.5)
        lr = group_lr(group)
        param.add_(direction.reshape(param.shape), alpha=-lr)
        if group["weight_decay"] > 0.0:
            param.add_(param, alpha=-lr * group["weight_decay"])

    def _apply_rotated_update(
        self, param: Tensor, eigen_direction: Tensor, bases: Sequence[Tensor], group: dict[str, Any]
    ) -> None:
        """:meth:`_apply_update` with ``D = unrot(eigen_direction)``.

        For a matrix the step and the decay go inside the last back-rotation GEMM,
        ``W ← c·W − c·η·(X Q_Rᵀ)`` with ``c = 1 − ηλ``: the same math as the reference's two steps, one pass
        over W and no temporary (as SOAP's fused update).
        """
        fusable = (
            eigen_direction.dim() == 2
            and eigen_direction.shape == param.shape
            and eigen_direction.dtype == param.dtype
            and not group["normalize_grads"]
        )
        if not fusable:
            self._apply_update(param, unrotate(eigen_direction, bases), group)
            return
        lr = group_lr(group)
        decay = 1.0 - lr * group["weight_decay"] if group["weight_decay"] > 0.0 else 1.0
        left, right = bases
        half = eigen_direction.mT @ left.mT
        param.addmm_(half.mT, right.mT, beta=decay, alpha=-lr * decay)

    def _initial_inv_sqrt_eigenvalues(self, size: int, group: dict[str, Any], grad: Tensor) -> Tensor:
        # The reference computes 1/sqrt(init_factor) in the dtype its eigh ran in, then casts to the state dtype.
        eigh_dtype = torch.promote_types(torch.float32, torch.get_default_dtype())
        estimates = torch.ones(size, dtype=eigh_dtype, device=grad.device) * group["init_factor"]
        inv_sqrt = (1.0 / torch.sqrt(estimates)).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        return inv_sqrt.to(grad.dtype)

    def _initialize(self, param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(grad, memory_format=torch.contiguous_format)
        if self._using_klsoap:
            state["exp_avg_sq"] = torch.zeros_like(grad, memory_format=torch.contiguous_format)
        if grad.dim() == 1:
            if not self._using_klsoap:
                state["inv_sqrt_eigenvalues"] = [self._initial_inv_sqrt_eigenvalues(grad.shape[0], group, grad)]
            return
        beta = self._shampoo_beta(group)
        factors = []
        for dim, size in enumerate(grad.shape):
            factor = torch.zeros(size, size, dtype=grad.dtype, device=grad.device)
            accumulate_factor(factor, mode_gram(grad, dim), beta, grad.numel())
            factors.append(factor)
        state["factors"] = factors
        computes = self._computes_refresh(param)
        state["bases"] = [
            eigenbasis(factor, precision="reference", out_dtype=grad.dtype, health=self.linalg_health)
            if computes
            else torch.empty_like(factor)  # the owner's basis arrives in _synchronize_refreshes
            for factor in factors
        ]
        self._publish_refresh(param, [(state["bases"], dim) for dim in range(len(factors))])
        state["inv_sqrt_eigenvalues"] = [self._initial_inv_sqrt_eigenvalues(size, group, grad) for size in grad.shape]

    # ------------------------------------------------------------------------------------------------------------
    # Directions
    # ------------------------------------------------------------------------------------------------------------

    @staticmethod
    def _klshampoo_rotated_direction(grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> Tensor:
        """KL-Shampoo's direction in the eigenbasis: ``rot(m) ⊙ s/(1 + ε s)`` (the caller rotates it back)."""
        exp_avg = state["exp_avg"]
        exp_avg.lerp_(grad, 1.0 - group["betas"][0])
        scale = _kronecker_scale(state["inv_sqrt_eigenvalues"])
        scale.div_(1.0 + (scale * group["eps"]))
        return rotate(exp_avg, state["bases"]) * scale

    @staticmethod
    def _klsoap_rotated_direction(
        grad: Tensor, state: dict[str, Any], group: dict[str, Any], grad_rotated: Tensor | None = None
    ) -> Tensor:
        """KL-SOAP's direction in the eigenbasis, ``m/(sqrt(v) + ε)`` after the moment updates."""
        beta1, beta2 = group["betas"]
        if grad_rotated is None:
            grad_rotated = rotate(grad, state["bases"])
        state["exp_avg"].lerp_(grad_rotated, 1.0 - beta1)
        state["exp_avg_sq"].lerp_(grad_rotated.square(), 1.0 - beta2)
        denominator = state["exp_avg_sq"].sqrt().add_(group["eps"])
        return torch.div(state["exp_avg"], denominator, out=denominator)

    def _diagonal_step(self, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> Tensor:
        """The identity-basis path of 0-D/1-D parameters (see the module docstring); returns the direction."""
        beta1, beta2 = group["betas"]
        exp_avg = state["exp_avg"]
        exp_avg.lerp_(grad, 1.0 - beta1)
        if self._using_klsoap:
            exp_avg_sq = state["exp_avg_sq"]
            exp_avg_sq.lerp_(grad.square(), 1.0 - beta2)
            return exp_avg / exp_avg_sq.sqrt().add_(group["eps"])
        inv_sqrt_eigenvalues = state["inv_sqrt_eigenvalues"]
        scale = inv_sqrt_eigenvalues[0] / (1.0 + (inv_sqrt_eigenvalues[0] * group["eps"]))
        direction = exp_avg * scale
        shifts = self._damping_shifts(inv_sqrt_eigenvalues, group)
        inv_sqrt_eigenvalues[0] = updated_inv_sqrt_eigenvalues(
            inv_sqrt_eigenvalues[0],
            grad**2,
            self._shampoo_beta(group),
            self._clamp_max(group, grad.shape[0]),
            shifts[0],
        )
        return direction

    # ------------------------------------------------------------------------------------------------------------
    # Curvature: factors, eigenvalue estimates, bases
    # ------------------------------------------------------------------------------------------------------------

    @staticmethod
    def _damping_shifts(inv_sqrt_eigenvalues: Sequence[Tensor], group: dict[str, Any]) -> list[Tensor | None]:
        """``ε·Π_j mean(s_j²)/mean(s_k²)`` per dim k with ``using_damping`` (from the old s), else None."""
        if not group["using_damping"] or not group["eps"] > 0:
            return [None] * len(inv_sqrt_eigenvalues)
        traces = [torch.mean(vector**2) for vector in inv_sqrt_eigenvalues]
        total = group["eps"]
        for trace in traces:
            total = total * trace
        return [total / trace for trace in traces]

    def _update_curvature(
        self,
        param: Tensor,
        grad: Tensor,
        state: dict[str, Any],
        group: dict[str, Any],
        rotated: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        due = state["step"] % group["precondition_frequency"] == 0
        refresh = due and self._computes_refresh(param)
        # KL-SOAP's m lives in the eigenbasis: taken out with the old Q at refresh steps only, back in with the new.
        momentum = unrotate(state["exp_avg"], state["bases"]) if self._using_klsoap and refresh else None
        if grad.dim() == 2:
            self._update_curvature_2d(grad, state, group, rotated)
        else:
            self._update_curvature_3d(grad, state, group)
        if refresh:
            state["bases"] = [
                self._refreshed_basis(factor, basis) for factor, basis in zip(state["factors"], state["bases"])
            ]
            if momentum is not None:
                state["exp_avg"] = rotate(momentum, state["bases"])
        if due:
            slots = [(state["bases"], dim) for dim in range(len(state["bases"]))]
            self._publish_refresh(param, slots + ([(state, "exp_avg")] if self._using_klsoap else []))

    def _refreshed_basis(self, factor: Tensor, basis: Tensor) -> Tensor:
        failures_before = self.linalg_health.failures
        refreshed, _ = power_qr_refresh(factor, basis, sort=False, precision="reference", health=self.linalg_health)
        # On failure the helper hands back the float32-rounded old basis; keep the exact one instead.
        return basis if self.linalg_health.failures != failures_before else refreshed

    def _update_curvature_2d(
        self, grad: Tensor, state: dict[str, Any], group: dict[str, Any], rotated: tuple[Tensor, Tensor] | None = None
    ) -> None:
        """``rotated``: (Q_Lᵀ G, Q_Lᵀ G Q_R) when the caller already has them (KL-SOAP's direction does)."""
        beta = self._shampoo_beta(group)
        numel = grad.numel()
        left_factor, right_factor = state["factors"]
        left_basis, right_basis = state["bases"]
        inv_sqrt = state["inv_sqrt_eigenvalues"]
        left_inv_sqrt, right_inv_sqrt = inv_sqrt
        shifts = self._damping_shifts(inv_sqrt, group)

        # diag(s_R) Q_Rᵀ Gᵀ, whose Gram matrix is G Ŝ_R^{-1} Gᵀ (and likewise on the left).
        right_whitened = (right_basis.T @ grad.T) * right_inv_sqrt.view(-1, 1)
        accumulate_gram(left_factor, right_whitened.T, beta, numel)
        if rotated is None:
            left_rotated = left_basis.T @ grad
            fully_rotated = left_rotated @ right_basis
        else:
            left_rotated, fully_rotated = rotated
        left_whitened = left_rotated * left_inv_sqrt.view(-1, 1)
        accumulate_gram(right_factor, left_whitened.T, beta, numel)

        # mean_j (F_ij s_j)² and mean_i (F_ij s_i)² as two matrix-vector products with F ⊙ F (one pass over F
        # instead of four; the same sums in another order).
        squared = fully_rotated.square()
        left_new_term = (squared @ right_inv_sqrt.square()).div_(squared.shape[1])
        right_new_term = (left_inv_sqrt.square() @ squared).div_(squared.shape[0])
        inv_sqrt[0] = updated_inv_sqrt_eigenvalues(
            left_inv_sqrt, left_new_term, beta, self._clamp_max(group, grad.shape[0]), shifts[0]
        )
        inv_sqrt[1] = updated_inv_sqrt_eigenvalues(
            right_inv_sqrt, right_new_term, beta, self._clamp_max(group, grad.shape[1]), shifts[1]
        )

    def _update_curvature_3d(self, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        """The reference's 3-D order, which mixes old and new s (module docstring); einsums as the reference's."""
        beta = self._shampoo_beta(group)
        numel = grad.numel()
        factors = state["factors"]
        basis_1, basis_2, basis_3 = state["bases"]
        inv_sqrt = state["inv_sqrt_eigenvalues"]
        shifts = self._damping_shifts(inv_sqrt, group)
        # Q_k diag(s_k), from the old s: the whitening of G along dims 1 and 3 below.
        whitening_1 = basis_1 * inv_sqrt[0].view(1, -1)
        whitening_3 = basis_3 * inv_sqrt[2].view(1, -1)

        white_1 = torch.einsum("abc,ax->xbc", grad, whitening_1)
        white_1_rot_2 = torch.einsum("xbc,by->xyc", white_1, basis_2)
        white_1_rot_23 = torch.einsum("xyc,cz->xyz", white_1_rot_2, basis_3)

        half = white_1_rot_2 * inv_sqrt[1].view(1, -1, 1)
        accumulate_factor(factors[2], torch.tensordot(half, half, dims=([0, 1], [0, 1])), beta, numel)

        white_1_rot_3 = torch.einsum("xbc,cz->xbz", white_1, basis_3)
        half = white_1_rot_3 * inv_sqrt[2].view(1, 1, -1)
        accumulate_factor(factors[1], torch.tensordot(half, half, dims=([0, 2], [0, 2])), beta, numel)

        new_term_3 = torch.mean((white_1_rot_23 * inv_sqrt[1].view(1, -1, 1)) ** 2, dim=(0, 1))
        inv_sqrt[2] = updated_inv_sqrt_eigenvalues(
            inv_sqrt[2], new_term_3, beta, self._clamp_max(group, grad.shape[2]), shifts[2]
        )
        new_term_2 = torch.mean((white_1_rot_23 * inv_sqrt[2].view(1, 1, -1)) ** 2, dim=(0, 2))
        inv_sqrt[1] = updated_inv_sqrt_eigenvalues(
            inv_sqrt[1], new_term_2, beta, self._clamp_max(group, grad.shape[1]), shifts[1]
        )

        white_3 = torch.einsum("abc,cz->abz", grad, whitening_3)
        white_3_rot_2 = torch.einsum("abz,by->ayz", white_3, basis_2)
        white_3_rot_21 = torch.einsum("ayz,ax->xyz", white_3_rot_2, basis_1)
        half = white_3_rot_2 * inv_sqrt[1].view(1, -1, 1)
        accumulate_factor(factors[0], torch.tensordot(half, half, dims=([1, 2], [1, 2])), beta, numel)

        new_term_1 = torch.mean((white_3_rot_21 * inv_sqrt[1].view(1, -1, 1)) ** 2, dim=(1, 2))
        inv_sqrt[0] = updated_inv_sqrt_eigenvalues(
            inv_sqrt[0], new_term_1, beta, self._clamp_max(group, grad.shape[0]), shifts[0]
        )

    # ------------------------------------------------------------------------------------------------------------
    # A bucket of same-shape matrices, as one stack (module docstring, "Per shape")
    # ------------------------------------------------------------------------------------------------------------

    def _bucket_key(self, param: Tensor, group: dict[str, Any]) -> Hashable | None:
        """What same-shape members must share to be stepped together, or None (stepped alone)."""
        state = self.state.get(param)
        if not state or "step" not in state:
            return None
        if group["normalize_grads"] or group["using_damping"] or param.dim() != 2:
            return None
        if working_shape(param.shape) != tuple(param.shape):
            return None
        dtype = state["exp_avg"].dtype
        if param.dtype != dtype or param.grad.dtype != dtype or state["factors"][0].dtype != dtype:
            return None
        return (tuple(param.shape), dtype, param.device, state["step"])

    def _step_stack(self, params: list[Tensor], group: dict[str, Any]) -> None:
        """:meth:`_step_param` for a bucket of matrices: direction, fused update, curvature, refresh when due."""
        stacked = stacked_state(self, params, KLSOAP_STACK_SLOTS if self._using_klsoap else KLSHAMPOO_STACK_SLOTS)
        states = [self.state[param] for param in params]
        left, right = stacked[("bases", 0)], stacked[("bases", 1)]
        grads = torch.stack([param.grad for param in params])
        step = states[0]["step"] + 1
        for state in states:
            state["step"] = step

        rotated = None
        if self._using_klsoap:
            left_rotated = (grads.mT @ left).mT
            rotated = (left_rotated, left_rotated @ right)
            moments = {"exp_avg": stacked[("exp_avg",)], "exp_avg_sq": stacked[("exp_avg_sq",)]}
            # The per-parameter direction works on stacks as they are: every op in it is elementwise.
            eigen_direction = self._klsoap_rotated_direction(grads, moments, group, rotated[1])
        else:
            eigen_direction = self._klshampoo_stack_direction(grads, stacked, group)
        lr = group_lr(group)
        decay = 1.0 - lr * group["weight_decay"] if group["weight_decay"] > 0.0 else 1.0
        half = eigen_direction.mT @ left.mT
        for param, half_one, right_one in zip(params, half.unbind(0), right.unbind(0)):
            param.addmm_(half_one.mT, right_one.mT, beta=decay, alpha=-lr * decay)

        due = step % group["precondition_frequency"] == 0
        owned = [index for index, param in enumerate(params) if due and self._computes_refresh(param)]
        if self._using_klsoap and owned:
            rows = slice(None) if len(owned) == len(params) else torch.tensor(owned, device=grads.device)
            momentum = unrotate_matrix(stacked[("exp_avg",)][rows], left[rows], right[rows])
        self._update_stack_curvature(grads, stacked, group, rotated)
        for index in owned:
            state = self.state[params[index]]
            for dim in (0, 1):
                state["bases"][dim] = self._refreshed_basis(state["factors"][dim], state["bases"][dim])
                rebind(state, ("bases", dim), stacked, index)
        if self._using_klsoap and owned:
            stacked[("exp_avg",)][rows] = rotate_matrix(momentum, left[rows], right[rows])
        if due:
            for param, state in zip(params, states):
                slots = [(state["bases"], dim) for dim in range(2)]
                self._publish_refresh(param, slots + ([(state, "exp_avg")] if self._using_klsoap else []))

    @staticmethod
    def _klshampoo_stack_direction(grads: Tensor, stacked: StackedState, group: dict[str, Any]) -> Tensor:
        """:meth:`_klshampoo_rotated_direction` on a stack: ``rot(m) ⊙ s_L ⊗ s_R / (1 + ε s_L ⊗ s_R)``."""
        exp_avg = stacked[("exp_avg",)]
        exp_avg.lerp_(grads, 1.0 - group["betas"][0])
        scale = stacked[("inv_sqrt_eigenvalues", 0)].unsqueeze(-1) * stacked[("inv_sqrt_eigenvalues", 1)].unsqueeze(-2)
        scale.div_(1.0 + (scale * group["eps"]))
        return rotate_matrix(exp_avg, stacked[("bases", 0)], stacked[("bases", 1)]) * scale

    def _update_stack_curvature(
        self, grads: Tensor, stacked: StackedState, group: dict[str, Any], rotated: tuple[Tensor, Tensor] | None
    ) -> None:
        """:meth:`_update_curvature_2d` on a stack (module docstring: which products stay per matrix)."""
        beta = self._shampoo_beta(group)
        rows, columns = grads.shape[1:]
        numel = rows * columns
        left_basis, right_basis = stacked[("bases", 0)], stacked[("bases", 1)]
        left_inv_sqrt, right_inv_sqrt = stacked[("inv_sqrt_eigenvalues", 0)], stacked[("inv_sqrt_eigenvalues", 1)]

        right_whitened = (right_basis.mT @ grads.mT) * right_inv_sqrt.unsqueeze(-1)
        accumulate_gram(stacked[("factors", 0)], right_whitened.mT, beta, numel)
        if rotated is None:
            left_rotated = left_basis.mT @ grads
            fully_rotated = left_rotated @ right_basis
        else:
            left_rotated, fully_rotated = rotated
        left_whitened = left_rotated * left_inv_sqrt.unsqueeze(-1)
        accumulate_gram(stacked[("factors", 1)], left_whitened.mT, beta, numel)

        squared = fully_rotated.square()
        right_squared, left_squared = right_inv_sqrt.square(), left_inv_sqrt.square()
        left_new_term = torch.stack([one @ vector for one, vector in zip(squared, right_squared)]).div_(columns)
        right_new_term = torch.stack([vector @ one for one, vector in zip(squared, left_squared)]).div_(rows)
        left_inv_sqrt.copy_(updated_inv_sqrt_eigenvalues(
            left_inv_sqrt, left_new_term, beta, self._clamp_max(group, rows), None
        ))  # fmt: skip
        right_inv_sqrt.copy_(updated_inv_sqrt_eigenvalues(
            right_inv_sqrt, right_new_term, beta, self._clamp_max(group, columns), None
        ))  # fmt: skip


@register_optimizer("kl_shampoo", main_roles=KL_MAIN_ROLES)
class KLShampoo(_KLOptimizer):
    """KL-Shampoo: Shampoo with power −1/2 per factor, KL-estimated factors and EMA eigenvalues, no grafting.

    ``U = unrot(rot(m) ⊙ E)``, ``E = 1/(sqrt(D_1 ⋯ D_K) + ε)``; see the module docstring for the full step.
    """

    _using_klsoap = False


@register_optimizer("kl_soap", main_roles=KL_MAIN_ROLES)
class KLSOAP(_KLOptimizer):
    """KL-SOAP: Adam (no bias correction) in the eigenbasis of KL-estimated Kronecker factors.

    ``U = unrot(m/(sqrt(v) + ε))`` with m, v kept in the rotated coordinates; see the module docstring.
    """

    _using_klsoap = True
