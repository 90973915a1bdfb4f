"""SOAP: ShampoO with Adam in the Preconditioner's eigenbasis (Vyas et al., 2024, arXiv 2409.11321).

Reference: nikhilvyas/SOAP @ a1e5535, ``soap.py`` (class ``SOAP``, after the "momentum change" f42d296);
step order and precision quirks as in docs/algorithms.md §4. tests/test_soap.py checks the golden trajectories
within the golden README's tolerances (well-posed entries ≤ 1e-6); ``bitwise_reference=True`` replays the
reference's exact op order, but bitwise equality also needs the goldens' CPU (MKL on AVX512): on an AVX2 CPU the
float32 QR alone rounds differently by ~1e-7.

For a parameter W with gradient G, viewed as a tensor whose (merged) dims k carry Kronecker factors
``L_k ≈ E[G_(k) G_(k)ᵀ]`` and eigenbases ``Q_k`` (dims larger than ``max_precond_dim`` carry none):

    first call:   L_k = (1−β_s) G_(k) G_(k)ᵀ;   Q_k = eigenvectors(L_k), descending;   W unchanged, t stays 0
    later calls:  G' = rot(G) = G ×_k Q_kᵀ                                   (gradient into the eigenbasis)
                  t ← t + 1
                  m ← β1 m + (1−β1) G'                                       (m and v live in the eigenbasis)
                  v ← β2 v + (1−β2) G'²
                  U = unrot(m / (sqrt(v) + ε))                               (ε on the raw sqrt(v))
                  W ← W − η·sqrt(1−β2^t)/(1−β1^t) · U                        (bias correction in the step size)
                  W ← W − η λ W                                              (decoupled, on the updated W)
                  L_k ← β_s L_k + (1−β_s) G_(k) G_(k)ᵀ                       (this step's G, after it was used)
                  if t mod f = 0, for each preconditioned k (in float32):
                      π = argsort(diag(Q_kᵀ L_k Q_k), descending)
                      v ← v permuted by π along k;  Q_k ← Q_k[:, π]
                      Q_k ← QR(L_k Q_k).Q                                    (one power-iteration step)
                      m ← rot_new(unrot_old(m))                              (m follows the basis exactly)

1-D parameters take the plain-Adam path (no factor) unless ``precondition_1d``. ``merge_dims`` greedily merges
neighbouring dims while the product stays ≤ ``max_precond_dim`` (so with the defaults a small 2-D layer becomes a
single axis with a full-matrix factor; a warning says so). ``data_format="channels_last"`` permutes 4-D tensors
(N, H, W, C) → (N, C, H, W) before merging.

Deliberate deviations from the reference (all within the golden tolerances; none changes the math):

* Factors and bases are allocated in float32, or float64 for float64 parameters, instead of torch's default
  dtype, so parameters whose dtype differs from the default no longer crash; bf16 parameters keep float32 state.
* ``m`` is moved between bases only at refresh steps. The reference un-rotates and re-rotates it every step with
  the same Q, which is the identity up to rounding and costs four matmuls per matrix per step; the rounding it
  adds is reproduced with ``bitwise_reference=True``.
* The refresh estimates ``diag(Qᵀ L Q)`` as ``colsum(Q ⊙ L Q)`` and reuses ``L Q`` as the power-iteration
  product (one ``d³`` product instead of three); ``bitwise_reference=True`` restores the reference's form.
* Fused kernels by default: m by ``lerp_``, v by ``addcmul_``, the factor EMA inside ``addmm_`` (beta = β_s; factors
  ≥ 768 wide only compute the blocks on and below the diagonal, ``linalg.gram_update_``), and for matrices the
  update and the weight decay inside the last back-rotation GEMM. Same formulas, roundings
  differ in the last bit; ``bitwise_reference=True`` uses the reference's ops.
* A failed eigh/QR (error or non-finite output) is retried in float64 and otherwise keeps the previous basis,
  counted in ``diagnostics()``; the reference retries eigh on errors only and has no fallback.
* ``precondition_frequency`` and ``shampoo_beta`` are read from the param group at every step (the reference
  freezes them into the state on the first call), so schedules and param-group edits take effect.

Per shape (``stack_shapes=True``, the default): same-shape matrices of a param group are stepped as one stack
(:mod:`soapbench.optimizers.batching`; ``step()`` is :class:`soapbench.optimizers.eigenbasis.EigenbasisOptimizer`'s).
Each operation of the per-parameter fused path is issued once per bucket instead of once per matrix: the gradient
rotation ``Q_Lᵀ G Q_R``, the moment updates, ``m/(√v+ε)``, the first back-rotation product, and at refresh steps the
momentum's move between bases, the power-iteration products ``L·Q``, the eigenvalue estimates, their sort and the
Householder QR (batched on a GPU; a CPU refreshes member by member, see ``BATCHED_REFRESH_DEVICES``). Two products
stay one per matrix: the factor EMA ``L ← β L + (1−β) G Gᵀ`` and the fused weight update ``W ← c W − c α (X Q_Rᵀ)``
(``addmm_`` with a beta): a batched ``baddbmm_`` rounds these differently from ``addmm_`` when BLAS runs on several
threads, and the parameters are separate tensors anyway.

Same math per matrix, same rounding: every batched kernel of the stacked step (``bmm``, elementwise ops, per-matrix
reductions and sorts, batched ``geqrf``/``householder_product``) computes each matrix of a stack as it computes that
matrix alone on CPU, so stacked SOAP equals per-parameter SOAP (``tests/test_stacked_steps.py``, at one and at two
threads, bounds the last-bit difference some CPUs' batched GEMMs make). A QR failure is judged matrix by matrix
(``linalg.orthonormalize_qr``), so retries, fallbacks and health counts are the per-parameter ones. Under refresh
sharing a rank refreshes the stack of the members it owns. ``refresh_method="eigh"`` refreshes member by member
everywhere. On a GPU, whether cuBLAS and cuSOLVER round each matrix of a batch as they would alone is theirs to
choose; the CPU tests cannot check it.

A matrix joins a bucket when it takes the fused path anyway: 2-D, not reshaped, right side preconditioned, its
dtype (and m, v's) the compute dtype, no ``normalize_grads`` / ``bitwise_reference``, already initialised; members
also share their step count. Everything else, and any bucket of one, is stepped by ``_step_param``.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from soapbench.optimizers.batching import StackedState, rebind, stacked_state
from soapbench.optimizers.eigenbasis import EigenbasisOptimizer
from soapbench.optimizers.linalg import (
    eigenbasis,
    estimated_eigenvalues,
    gram_update_,
    linalg_dtype,
    mode_gram,
    power_qr_refresh,
    rotate,
    rotate_matrix,
    select_along,
    unrotate,
    unrotate_matrix,
)
from soapbench.optimizers.registry import register_optimizer
from soapbench.optimizers.state import state_dtype_for
from soapbench.optimizers.stepping import check_lr, group_lr

DATA_FORMATS = ("channels_first", "channels_last")
REFRESH_METHODS = ("qr", "eigh")
LINALG_PRECISIONS = ("reference", "float64")
STATE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}
# The state entries a bucket keeps as stacks (batching.Slot: the path into optimizer.state[p]).
STACK_SLOTS = (("exp_avg",), ("exp_avg_sq",), ("GG", 0), ("GG", 1), ("Q", 0), ("Q", 1))
# Devices whose QR refresh runs on the whole stack at once. On CPU, LAPACK factorises a batch one matrix at a time
# anyway, and the stack's gathers cost more than they save (measured: 4 × 512² refreshes 114 ms batched vs 90 ms
# one by one, 1 thread), so the CPU refreshes member by member; a GPU saves the launches.
BATCHED_REFRESH_DEVICES = ("cuda",)


def merge_dims_shape(shape: Sequence[int], max_precond_dim: int) -> tuple[int, ...]:
    """The reference's greedy merge: join neighbouring dims while the product stays ≤ ``max_precond_dim``.

    (16, 8, 3, 3) → (16, 24, 3) at 40; (64, 32) → (2048,) at 10000; (8, 200) → (8, 200) at 40.
    """
    emitted: list[int] = []
    accumulated = 1
    for size in shape:
        if accumulated * size > max_precond_dim:
            if accumulated > 1:
                emitted.append(accumulated)
                accumulated = size
            else:
                emitted.append(size)
                accumulated = 1
        else:
            accumulated *= size
    if accumulated > 1 or not emitted:
        emitted.append(accumulated)
    return tuple(emitted)


@dataclass(frozen=True)
class FactorLayout:
    """How a parameter-shaped tensor maps onto the tensor its Kronecker factors act on."""

    param_shape: tuple[int, ...]
    # (N, H, W, C) is permuted to (N, C, H, W) before merging (data_format="channels_last" with merge_dims).
    channels_last: bool
    # Shape the factors act on: the merged shape, or the parameter shape.
    shape: tuple[int, ...]
    # Whether each dim of ``shape`` carries a factor.
    preconditioned: tuple[bool, ...]

    @property
    def any_preconditioned(self) -> bool:
        return any(self.preconditioned)

    @property
    def is_reshaped(self) -> bool:
        return self.channels_last or self.shape != self.param_shape

    def to_factor_space(self, tensor: Tensor) -> Tensor:
        if self.channels_last:
            tensor = tensor.permute(0, 3, 1, 2)
        return tensor.reshape(self.shape) if self.is_reshaped else tensor

    def from_factor_space(self, tensor: Tensor) -> Tensor:
        if self.channels_last:
            n, h, w, c = self.param_shape
            return tensor.reshape(n, c, h, w).permute(0, 2, 3, 1)
        return tensor.reshape(self.param_shape) if self.is_reshaped else tensor


@lru_cache(maxsize=4096)
def factor_layout(
    param_shape: tuple[int, ...], max_precond_dim: int, merge_dims: bool, precondition_1d: bool, data_format: str
) -> FactorLayout:
    """The reference's choice of factors: 1-D only with ``precondition_1d``; else every (merged) dim ≤ mpd."""
    if len(param_shape) == 1:
        size = param_shape[0]
        return FactorLayout(param_shape, False, param_shape, (precondition_1d and size <= max_precond_dim,))
    channels_last = merge_dims and data_format == "channels_last" and len(param_shape) == 4
    shape = param_shape
    if merge_dims:
        if channels_last:
            n, h, w, c = param_shape
            shape = (n, c, h, w)
        shape = merge_dims_shape(shape, max_precond_dim)
    return FactorLayout(param_shape, channels_last, tuple(shape), tuple(size <= max_precond_dim for size in shape))


def _parse_dtype(name: str | torch.dtype | None, field: str, allowed: dict[str, torch.dtype]) -> torch.dtype | None:
    if name is None or isinstance(name, torch.dtype):
        if name is not None and name not in allowed.values():
            raise ValueError(f"{field} must be one of {sorted(allowed)} or None, got {name}")
        return name
    key = str(name).removeprefix("torch.")
    if key not in allowed:
        raise ValueError(f"{field} must be one of {sorted(allowed)} or None, got {name!r}")
    return allowed[key]


@register_optimizer("soap")
class SOAP(EigenbasisOptimizer):
    """SOAP with the reference's constructor keywords, plus options (off by default) documented below.

    Args (reference keywords, reference defaults):
        lr: η.  betas: (β1, β2) of the Adam run in the eigenbasis.  shampoo_beta: β_s of the factor EMA
        (negative or None → β2).  eps: ε, added to the raw sqrt(v).  weight_decay: λ, decoupled, applied after the
        update.  precondition_frequency: f, eigenbasis refresh period.  max_precond_dim: dims larger than this get
        no factor (identity basis).  merge_dims: greedy merge of small dims.  precondition_1d: give 1-D params a
        factor.  normalize_grads: rescale the final direction to RMS 1.  data_format: "channels_first" or
        "channels_last" (4-D, only with merge_dims).  correct_bias: Adam bias correction, folded into the step.

    Our options:
        refresh_method: "qr" (reference: sort, one power-iteration step, QR) or "eigh" (sort by the old basis'
            estimated eigenvalues and permute v the same way, then take a fresh eigh basis, descending; the
            paper's §7.3 comparison).
        linalg_precision: "reference" (factor rounded to float32 before eigh, +1e-30·I in the default dtype,
            float32 QR; reproduces the goldens) or "float64" (factors accumulated in float64 and every eigh/QR in
            float64 without rounding: the golden README's "clean" mode).
        state_dtype: storage dtype of m and v ("bfloat16" halves their memory; math still runs in float32).
            None keeps them in the compute dtype (float32, or float64 for float64 params).
        bitwise_reference: also repeat the reference's per-step m round trip and its two-product eigenvalue
            estimate, so every rounding matches the reference (costs ~4 extra matmuls per matrix per step).
        stack_shapes: step same-shape matrices of a group as one stack (module docstring, "Per shape"; the same
            math as stepping them one by one, which False does).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 3e-3,
        betas: tuple[float, float] = (0.95, 0.95),
        shampoo_beta: float | None = -1,
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        precondition_frequency: int = 10,
        max_precond_dim: int = 10000,
        merge_dims: bool = False,
        precondition_1d: bool = False,
        normalize_grads: bool = False,
        data_format: str = "channels_first",
        correct_bias: bool = True,
        refresh_method: str = "qr",
        linalg_precision: str = "reference",
        state_dtype: str | torch.dtype | None = None,
        bitwise_reference: bool = False,
        stack_shapes: bool = True,
    ):
        betas = tuple(betas)
        check_lr(lr)
        if len(betas) != 2 or not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"betas must be two values in [0, 1), got {betas}")
        if shampoo_beta is not None and not shampoo_beta < 1.0:
            raise ValueError(f"shampoo_beta must be < 1 (negative or None means betas[1]), got {shampoo_beta}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if int(precondition_frequency) != precondition_frequency or precondition_frequency < 1:
            raise ValueError(f"precondition_frequency must be an integer >= 1, got {precondition_frequency}")
        if int(max_precond_dim) != max_precond_dim or max_precond_dim < 0:
            raise ValueError(f"max_precond_dim must be an integer >= 0, got {max_precond_dim}")
        if data_format not in DATA_FORMATS:
            raise ValueError(f"data_format must be one of {DATA_FORMATS}, got {data_format!r}")
        if refresh_method not in REFRESH_METHODS:
            raise ValueError(f"refresh_method must be one of {REFRESH_METHODS}, got {refresh_method!r}")
        if linalg_precision not in LINALG_PRECISIONS:
            raise ValueError(f"linalg_precision must be one of {LINALG_PRECISIONS}, got {linalg_precision!r}")
        state_dtype = _parse_dtype(state_dtype, "state_dtype", STATE_DTYPES)
        if merge_dims:
            warnings.warn(
                "SOAP merge_dims=True merges every tensor whose numel fits max_precond_dim into one axis, "
                "including small 2-D layers (a 64x32 matrix gets a single 2048x2048 factor), as the reference does",
                stacklevel=2,
            )
        defaults = dict(
            lr=lr,
            betas=betas,
            shampoo_beta=shampoo_beta,
            eps=eps,
            weight_decay=weight_decay,
            precondition_frequency=int(precondition_frequency),
            max_precond_dim=int(max_precond_dim),
            merge_dims=merge_dims,
            precondition_1d=precondition_1d,
            normalize_grads=normalize_grads,
            data_format=data_format,
            correct_bias=correct_bias,
            refresh_method=refresh_method,
            linalg_precision=linalg_precision,
            state_dtype=state_dtype,
            bitwise_reference=bitwise_reference,
            stack_shapes=bool(stack_shapes),
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # A group may name its own state_dtype, as a string too (Hydra and hand-written group dicts pass strings).
        if "state_dtype" in param_group:
            state_dtype = _parse_dtype(param_group["state_dtype"], "state_dtype", STATE_DTYPES)
            param_group = {**param_group, "state_dtype": state_dtype}
        super().add_param_group(param_group)

    def _state_dtype(self, param: Tensor, group: dict[str, Any], key: str) -> torch.dtype:
        """The dtype ``_init_state`` gives ``state[key]``: a loaded checkpoint's state is cast to it."""
        if key in ("exp_avg", "exp_avg_sq") and group["state_dtype"] is not None:
            return group["state_dtype"]
        if key == "GG" and group["linalg_precision"] == "float64":
            return torch.float64
        return state_dtype_for(param.dtype)

    # ------------------------------------------------------------------------------------------------------------
    # One parameter
    # ------------------------------------------------------------------------------------------------------------

    def _layout(self, param: Tensor, group: dict[str, Any]) -> FactorLayout:
        return factor_layout(
            tuple(param.shape),
            group["max_precond_dim"],
            group["merge_dims"],
            group["precondition_1d"],
            group["data_format"],
        )

    def preconditioned_parameters(self) -> int:
        """How many parameters carry at least one eigenbasis; 0 (every dim above max_precond_dim) is plain Adam."""
        return sum(self._layout(p, g).any_preconditioned for g in self.param_groups for p in g["params"])

    @staticmethod
    def _shampoo_beta(group: dict[str, Any]) -> float:
        shampoo_beta = group["shampoo_beta"]
        return group["betas"][1] if shampoo_beta is None or shampoo_beta < 0 else shampoo_beta

    @staticmethod
    def _adam_in_eigenbasis_(
        exp_avg: Tensor, exp_avg_sq: Tensor, grad_rotated: Tensor, group: dict[str, Any], *, reference_ops: bool = False
    ) -> Tensor:
        """m, v ← their EMAs of the rotated gradient G' (in place); returns ``m / (sqrt(v) + ε)`` (a new tensor).

        ε is added to the raw sqrt(v): the bias correction of v is folded into the step size (``_step_size``), as
        the reference does. Works on one matrix or on a stack of them.
        """
        beta1, beta2 = group["betas"]
        if reference_ops:
            exp_avg.mul_(beta1).add_(grad_rotated, alpha=1.0 - beta1)
            exp_avg_sq.mul_(beta2).add_(grad_rotated.square(), alpha=1.0 - beta2)
        else:
            exp_avg.lerp_(grad_rotated, 1.0 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad_rotated, grad_rotated, value=1.0 - beta2)
        normalized = exp_avg_sq.sqrt().add_(group["eps"])
        return torch.div(exp_avg, normalized, out=normalized)

    @staticmethod
    def _step_size(group: dict[str, Any], step: int) -> float:
        """η·sqrt(1−β2^t)/(1−β1^t) with bias correction, else η (the group's lr read as a number)."""
        step_size = group_lr(group)
        if group["correct_bias"]:
            beta1, beta2 = group["betas"]
            bias_correction1 = 1.0 - beta1**step
            bias_correction2 = 1.0 - beta2**step
            step_size = step_size * (bias_correction2**0.5) / bias_correction1
        return step_size

    def _step_param(self, param: Tensor, group: dict[str, Any]) -> None:
        state = self.state[param]
        layout = self._layout(param, group)
        compute_dtype = state_dtype_for(param.dtype)
        grad = param.grad if param.grad.dtype == compute_dtype else param.grad.to(compute_dtype)

        if "step" not in state:
            self._init_state(param, grad, state, group, layout, compute_dtype)
            return  # The first call only builds the preconditioner, so Q never contains the gradient it rotates.

        reference_ops = group["bitwise_reference"]
        bases: list[Tensor | None] = state["Q"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        stored_dtype = exp_avg.dtype
        if stored_dtype != compute_dtype:
            exp_avg, exp_avg_sq = exp_avg.to(compute_dtype), exp_avg_sq.to(compute_dtype)

        grad_rotated = self._rotate(grad, bases, layout)
        state["step"] += 1
        step = state["step"]
        normalized = self._adam_in_eigenbasis_(exp_avg, exp_avg_sq, grad_rotated, group, reference_ops=reference_ops)
        step_size = self._step_size(group, step)
        self._apply_update(param, normalized, bases, layout, group, step_size, fuse=not reference_ops)

        if layout.any_preconditioned:
            refresh = step % group["precondition_frequency"] == 0
            if refresh and not self._computes_refresh(param):
                # Another rank refreshes this parameter; its new Q, m and v arrive in _synchronize_refreshes.
                self._accumulate_factors(grad, state, group, layout, fuse=not reference_ops)
                self._publish_refreshed_state(param, state)
                return
            # m lives in the eigenbasis; it only has to move when the basis does (the reference moves it
            # back and forth every step, which bitwise_reference repeats for its rounding).
            track_momentum = refresh or reference_ops
            if track_momentum:
                momentum = self._unrotate(exp_avg, bases, layout)
            self._accumulate_factors(grad, state, group, layout, fuse=not reference_ops)
            if refresh:
                self._refresh_bases(state, group, layout, exp_avg_sq)
            if track_momentum:
                exp_avg.copy_(self._rotate(momentum, state["Q"], layout))

        if stored_dtype != compute_dtype:
            state["exp_avg"].copy_(exp_avg)
            state["exp_avg_sq"].copy_(exp_avg_sq)
        if layout.any_preconditioned and step % group["precondition_frequency"] == 0:
            self._publish_refreshed_state(param, state)

    def _publish_refreshed_state(self, param: Tensor, state: dict[str, Any]) -> None:
        bases = state["Q"]
        slots = [(bases, dim) for dim, basis in enumerate(bases) if basis is not None]
        self._publish_refresh(param, [*slots, (state, "exp_avg"), (state, "exp_avg_sq")])

    def _apply_update(
        self,
        param: Tensor,
        normalized: Tensor,
        bases: Sequence[Tensor | None],
        layout: FactorLayout,
        group: dict[str, Any],
        step_size: float,
        fuse: bool,
    ) -> None:
        """``W ← W − α·unrot(N)``, then ``W ← W − ηλW`` (on the updated W, with the raw lr; the reference).

        The fused form folds both into the last GEMM of the back-rotation, ``W ← c·W − c·α·(X Q_Rᵀ)`` with
        ``c = 1 − ηλ``: the same math as the reference's two steps, one pass over W and no temporary.
        """
        decay = 1.0 - group_lr(group) * group["weight_decay"] if group["weight_decay"] > 0.0 else 1.0
        fusable = (
            fuse
            and not group["normalize_grads"]
            and not layout.is_reshaped
            and len(layout.shape) == 2
            and layout.preconditioned[1]
            and param.dtype == normalized.dtype
        )
        if fusable:
            left, right = bases
            half = normalized.mT if left is None else normalized.mT @ left.mT
            param.addmm_(half.mT, right.mT, beta=decay, alpha=-step_size * decay)
            return
        direction = self._unrotate(normalized, bases, layout)
        if group["normalize_grads"]:
            direction = direction / (1e-30 + torch.mean(direction**2) ** 0.5)
        param.add_(direction, alpha=-step_size)
        if group["weight_decay"] > 0.0:
            if fuse:
                param.mul_(decay)
            else:
                param.add_(param, alpha=-group_lr(group) * group["weight_decay"])

    def _init_state(
        self,
        param: Tensor,
        grad: Tensor,
        state: dict[str, Any],
        group: dict[str, Any],
        layout: FactorLayout,
        compute_dtype: torch.dtype,
    ) -> None:
        moment_dtype = group["state_dtype"] or compute_dtype
        state["step"] = 0
        state["exp_avg"] = torch.zeros(param.shape, dtype=moment_dtype, device=param.device)
        state["exp_avg_sq"] = torch.zeros(param.shape, dtype=moment_dtype, device=param.device)
        factor_dtype = torch.float64 if group["linalg_precision"] == "float64" else compute_dtype
        state["GG"] = [
            torch.zeros(size, size, dtype=factor_dtype, device=param.device) if preconditioned else None
            for size, preconditioned in zip(layout.shape, layout.preconditioned)
        ]
        self._accumulate_factors(grad, state, group, layout, fuse=False)
        computes = self._computes_refresh(param)
        state["Q"] = [
            None
            if factor is None
            else eigenbasis(
                factor, precision=group["linalg_precision"], out_dtype=compute_dtype, health=self.linalg_health
            )
            if computes
            else torch.empty(factor.shape, dtype=compute_dtype, device=param.device)  # the owner's arrives
            for factor in state["GG"]
        ]
        self._publish_refresh(param, [(state["Q"], dim) for dim, basis in enumerate(state["Q"]) if basis is not None])

    def _accumulate_factors(
        self, grad: Tensor, state: dict[str, Any], group: dict[str, Any], layout: FactorLayout, fuse: bool
    ) -> None:
        """``L_k ← β_s L_k + (1−β_s) G_(k) G_(k)ᵀ`` for every preconditioned dim.

        The reference's form is a lerp towards a temporary Gram matrix; for matrices ``fuse`` computes the same
        EMA inside the GEMM (``addmm_`` with beta = β_s, by symmetric blocks for large factors), without the
        temporary.
        """
        shampoo_beta = self._shampoo_beta(group)
        weight = 1.0 - shampoo_beta
        factors: list[Tensor | None] = state["GG"]
        if fuse and len(layout.shape) == 2 and not layout.is_reshaped:
            left, right = factors
            source = grad if left is None or grad.dtype == left.dtype else grad.to(left.dtype)
            if left is not None:
                gram_update_(left, source, beta=shampoo_beta, alpha=weight)
            if right is not None:
                source = source if source.dtype == right.dtype else grad.to(right.dtype)
                gram_update_(right, source.mT, beta=shampoo_beta, alpha=weight)
            return
        if len(layout.shape) == 1:
            if factors[0] is not None:
                # A ≥2-D parameter merged into one axis (merge_dims) contributes its flattened gradient.
                vector = layout.to_factor_space(grad).to(factors[0].dtype)
                factors[0].lerp_(torch.outer(vector, vector), weight)
            return
        viewed = layout.to_factor_space(grad)
        for dim, factor in enumerate(factors):
            if factor is None:
                continue
            source = viewed if viewed.dtype == factor.dtype else viewed.to(factor.dtype)
            factor.lerp_(mode_gram(source, dim), weight)

    def _refresh_bases(
        self, state: dict[str, Any], group: dict[str, Any], layout: FactorLayout, exp_avg_sq: Tensor
    ) -> None:
        """Refresh every basis in dim order; permute v (in place) along each dim to follow its sorted basis."""
        precision = group["linalg_precision"]
        exact = group["bitwise_reference"]
        second_moment = layout.to_factor_space(exp_avg_sq)
        bases: list[Tensor | None] = state["Q"]
        for dim, (factor, basis) in enumerate(zip(state["GG"], bases)):
            if factor is None:
                continue
            if group["refresh_method"] == "qr":
                new_basis, permutation = power_qr_refresh(
                    factor, basis, sort=True, precision=precision, exact_estimate=exact, health=self.linalg_health
                )
            else:
                compute = linalg_dtype(precision)
                permutation = torch.argsort(
                    estimated_eigenvalues(factor.to(compute), basis.to(compute)), descending=True
                )
                new_basis = eigenbasis(
                    factor,
                    precision=precision,
                    out_dtype=basis.dtype,
                    previous=basis[:, permutation],
                    health=self.linalg_health,
                )
            second_moment = second_moment.index_select(dim, permutation)
            bases[dim] = new_basis
        exp_avg_sq.copy_(layout.from_factor_space(second_moment))

    @staticmethod
    def _rotate(tensor: Tensor, bases: Sequence[Tensor | None], layout: FactorLayout) -> Tensor:
        if not layout.any_preconditioned:
            return tensor
        return layout.from_factor_space(rotate(layout.to_factor_space(tensor), bases))

    @staticmethod
    def _unrotate(tensor: Tensor, bases: Sequence[Tensor | None], layout: FactorLayout) -> Tensor:
        if not layout.any_preconditioned:
            return tensor
        return layout.from_factor_space(unrotate(layout.to_factor_space(tensor), bases))

    # ------------------------------------------------------------------------------------------------------------
    # A bucket of same-shape matrices, as one stack (module docstring, "Per shape")
    # ------------------------------------------------------------------------------------------------------------

    def _bucket_key(self, param: Tensor, group: dict[str, Any]) -> Hashable | None:
        """What same-shape members must share to be stepped together, or None (stepped alone)."""
        state = self.state.get(param)
        if not state or "step" not in state:
            return None
        if group["bitwise_reference"] or group["normalize_grads"] or param.dim() != 2:
            return None
        compute_dtype = state_dtype_for(param.dtype)
        if param.dtype != compute_dtype or param.grad.dtype != compute_dtype or state["exp_avg"].dtype != compute_dtype:
            return None
        layout = self._layout(param, group)
        if layout.is_reshaped or not layout.preconditioned[1]:
            return None
        return (tuple(param.shape), param.dtype, param.device, state["step"], state["GG"][0] is None)

    def _step_stack(self, params: list[Tensor], group: dict[str, Any]) -> None:
        """:meth:`_step_param`'s fused path for a bucket: rotation, moments, update, factors, refresh when due."""
        stacked = stacked_state(self, params, STACK_SLOTS)
        states = [self.state[param] for param in params]
        exp_avg, exp_avg_sq = stacked[("exp_avg",)], stacked[("exp_avg_sq",)]
        left, right = stacked[("Q", 0)], stacked[("Q", 1)]
        grads = torch.stack([param.grad for param in params])

        grad_rotated = rotate_matrix(grads, left, right)
        step = states[0]["step"] + 1
        for state in states:
            state["step"] = step
        normalized = self._adam_in_eigenbasis_(exp_avg, exp_avg_sq, grad_rotated, group)
        step_size = self._step_size(group, step)
        decay = 1.0 - group_lr(group) * group["weight_decay"] if group["weight_decay"] > 0.0 else 1.0
        half = normalized.mT if left is None else normalized.mT @ left.mT
        for param, half_one, right_one in zip(params, half.unbind(0), right.unbind(0)):
            param.addmm_(half_one.mT, right_one.mT, beta=decay, alpha=-step_size * decay)

        refresh = step % group["precondition_frequency"] == 0
        owned = [index for index, param in enumerate(params) if not refresh or self._computes_refresh(param)]
        if refresh and owned:
            rows = slice(None) if len(owned) == len(params) else torch.tensor(owned, device=grads.device)
            momentum = unrotate_matrix(exp_avg[rows], None if left is None else left[rows], right[rows])
        self._accumulate_stacked_factors(grads, stacked, group)
        if refresh:
            if owned:
                self._refresh_stack(params, owned, rows, stacked, group)
                new_left = stacked[("Q", 0)]
                exp_avg[rows] = rotate_matrix(momentum, None if new_left is None else new_left[rows], right[rows])
            for param, state in zip(params, states):
                self._publish_refreshed_state(param, state)

    def _accumulate_stacked_factors(self, grads: Tensor, stacked: StackedState, group: dict[str, Any]) -> None:
        shampoo_beta = self._shampoo_beta(group)
        left, right = stacked[("GG", 0)], stacked[("GG", 1)]
        if grads.dtype != right.dtype:  # float64 factors (linalg_precision="float64") of float32 matrices
            grads = grads.to(right.dtype)
        for index, grad in enumerate(grads.unbind(0)):  # one addmm_ each: see the module docstring
            if left is not None:
                gram_update_(left[index], grad, beta=shampoo_beta, alpha=1.0 - shampoo_beta)
            gram_update_(right[index], grad.mT, beta=shampoo_beta, alpha=1.0 - shampoo_beta)

    def _refresh_stack(
        self, params: list[Tensor], owned: list[int], rows: slice | Tensor, stacked: StackedState, group: dict[str, Any]
    ) -> None:
        """Refresh the owned members' bases (dim 0, then dim 1) and permute their v to follow, in the stacks."""
        exp_avg_sq = stacked[("exp_avg_sq",)]
        if group["refresh_method"] != "qr" or exp_avg_sq.device.type not in BATCHED_REFRESH_DEVICES:
            # Member by member (the per-parameter code), then the new bases back into the stacks.
            for index in owned:
                state = self.state[params[index]]
                self._refresh_bases(state, group, self._layout(params[index], group), state["exp_avg_sq"])
                for dim in (0, 1):
                    if state["Q"][dim] is not None:
                        rebind(state, ("Q", dim), stacked, index)
            return
        second_moment = exp_avg_sq[rows]
        for dim in (0, 1):
            factor, basis = stacked[("GG", dim)], stacked[("Q", dim)]
            if factor is None:
                continue
            new_basis, permutation = power_qr_refresh(
                factor[rows], basis[rows], sort=True, precision=group["linalg_precision"], exact_estimate=False,
                health=self.linalg_health,
            )  # fmt: skip
            second_moment = select_along(second_moment, dim + 1, permutation)
            basis[rows] = new_basis
        exp_avg_sq[rows] = second_moment
