"""Shared linear algebra for the eigenbasis optimizer family: SOAP, Shampoo, SOAP-Muon, KL-Shampoo, KL-SOAP.

Conventions (docs/algorithms.md, "Notation"):

* A *factor* is a symmetric PSD ``d×d`` Kronecker factor ``L_k ≈ E[G_(k) G_(k)ᵀ]``.
* A *basis* ``Q_k`` holds eigenvectors of ``L_k`` as **columns**, sorted by **descending** eigenvalue.
* ``rotate(X, bases)`` multiplies mode k of X by ``Q_kᵀ`` for every k (for a matrix: ``Q_Lᵀ X Q_R``);
  ``unrotate`` multiplies mode k by ``Q_k`` (``Q_L X Q_Rᵀ``). A ``None`` entry means "no preconditioner on
  this dim" (the references use an empty list as that sentinel).

Precision quirks of the references, reproduced when ``precision="reference"`` (the default), because the golden
trajectories depend on them bit for bit (algorithms.md §0 item 6):

* the factor is rounded to float32 before ``eigh``;
* ``1e-30·I`` is added, with the identity built in torch's *default* dtype, so under default float64 the eigh
  runs in float64 on the float32-rounded factor, and under default float32 it runs in float32;
* every QR refresh runs in float32 (factor and basis are both cast).

``precision="float32"`` forces float32 whatever the default dtype (SOAP-Muon's eigh, with ``eye_shift=None``);
``precision="float64"`` is the "clean" mode: no float32 rounding, every eigh/QR in float64.

Robustness: every decomposition goes through :func:`eigh_descending` or :func:`orthonormalize_qr`. A
``torch.linalg`` error (``RuntimeError``, which includes ``torch.linalg.LinAlgError``) or a non-finite output is
retried once in float64 (the reference retries eigh in float64 on exceptions only). If the retry fails too, the
caller's fallback (normally the previous basis) is returned, so a linear-algebra failure never puts a NaN into the
parameters. Both events are counted in a :class:`LinalgHealth` that optimizers expose through ``diagnostics()``.

Signatures in this module are shared by several optimizers: add new functions or keyword arguments, never
rename or reorder existing ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Precision = Literal["reference", "float32", "float64"]
PRECISIONS: tuple[str, ...] = ("reference", "float32", "float64")

# The references' eigh regulariser. It is added in torch's default dtype, which is what promotes a
# float32-rounded factor back to float64 under default float64.
REFERENCE_EYE_SHIFT = 1e-30


@dataclass
class LinalgHealth:
    """Counters of linear-algebra trouble, reported by an optimizer's ``diagnostics()``.

    ``float64_retries``: the first attempt raised or returned non-finite values and the float64 retry succeeded.
    ``failures``: the float64 retry failed too, so the caller's fallback (the previous basis) was kept.
    """

    float64_retries: int = 0
    failures: int = 0

    def diagnostics(self) -> dict[str, float]:
        return {"linalg_failures": float(self.failures), "linalg_float64_retries": float(self.float64_retries)}


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def is_finite(tensor: Tensor) -> bool:
    """True when every entry is finite, checked through the sum (one reduction pass; a device sync on GPU).

    A NaN or inf anywhere makes the sum non-finite. A sum that overflows although every entry is finite also
    reports False; for the bases and eigenvalues checked here that only costs a float64 retry.
    """
    return bool(torch.isfinite(tensor.sum()))


def _eigh_input(factor: Tensor, precision: Precision, eye_shift: float | None) -> Tensor:
    """The matrix the references actually hand to ``torch.linalg.eigh``."""
    if precision == "float64":
        matrix = factor.to(torch.float64)
        eye_dtype = torch.float64
    else:
        matrix = factor.to(torch.float32)
        eye_dtype = torch.get_default_dtype() if precision == "reference" else torch.float32
    if eye_shift is not None and eye_shift != 0.0:
        # Out of place and in eye_dtype on purpose: with precision="reference" this is the promotion quirk.
        matrix = matrix + eye_shift * torch.eye(matrix.shape[-1], dtype=eye_dtype, device=matrix.device)
    return matrix


def eigh_descending(
    factor: Tensor,
    *,
    precision: Precision = "reference",
    eye_shift: float | None = REFERENCE_EYE_SHIFT,
    health: LinalgHealth | None = None,
) -> tuple[Tensor, Tensor] | None:
    """Eigen-decompose a symmetric ``factor`` (``d×d``, or batched ``...×d×d``); eigenvalues descending.

    Returns ``(eigenvalues, eigenvectors)`` with eigenvectors as columns, both in the dtype the eigh ran in
    (see the module docstring for ``precision`` and ``eye_shift``), or ``None`` when the first attempt and the
    float64 retry both failed (an error or non-finite output); ``health`` counts retries and failures.
    Descending order is obtained by flipping eigh's ascending output, as the references do (``torch.flip``),
    so ties keep the references' order.
    """
    _check_precision(precision)
    matrix = _eigh_input(factor, precision, eye_shift)
    try:
        eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
        if is_finite(eigenvectors) and is_finite(eigenvalues):
            return eigenvalues.flip(-1), eigenvectors.flip(-1)
    except RuntimeError:
        pass
    if matrix.dtype != torch.float64:
        try:
            # The references' retry: the same (already float32-rounded) matrix, promoted to float64.
            retry = matrix.to(torch.float64)
            eigenvalues, eigenvectors = torch.linalg.eigh(retry)
            if is_finite(eigenvectors) and is_finite(eigenvalues):
                if health is not None:
                    health.float64_retries += 1
                return eigenvalues.flip(-1), eigenvectors.flip(-1)
        except RuntimeError:
            pass
    if health is not None:
        health.failures += 1
    return None


def identity_basis(size: int, *, dtype: torch.dtype, device: torch.device | str | None = None) -> Tensor:
    """The basis used when there is no previous one to fall back on (the first call): no rotation."""
    return torch.eye(size, dtype=dtype, device=device)


def eigenbasis(
    factor: Tensor,
    *,
    precision: Precision = "reference",
    eye_shift: float | None = REFERENCE_EYE_SHIFT,
    out_dtype: torch.dtype | None = None,
    previous: Tensor | None = None,
    health: LinalgHealth | None = None,
) -> Tensor:
    """Eigenvectors of ``factor`` as columns, descending eigenvalue order, cast to ``out_dtype``.

    This is SOAP's / KL's first basis (``get_orthogonal_matrix``): the eigenvalues are discarded.
    ``out_dtype`` defaults to ``factor.dtype`` (the references cast Q back to the factor's dtype).
    On failure returns ``previous`` (or the identity when there is none) and counts it in ``health``.
    """
    out_dtype = factor.dtype if out_dtype is None else out_dtype
    decomposition = eigh_descending(factor, precision=precision, eye_shift=eye_shift, health=health)
    if decomposition is None:
        if previous is not None:
            return previous
        return identity_basis(factor.shape[-1], dtype=out_dtype, device=factor.device)
    return decomposition[1].to(out_dtype)


def householder_q(matrix: Tensor) -> Tensor:
    """Q of ``torch.linalg.qr(matrix)`` (the same LAPACK geqrf + orgqr, bit for bit) without forming R (~10% less)."""
    reflectors, scales = torch.geqrf(matrix)
    return torch.linalg.householder_product(reflectors, scales)


def orthonormalize_qr(
    matrix: Tensor, *, fallback: Tensor | None = None, health: LinalgHealth | None = None
) -> Tensor | None:
    """Householder QR's Q of ``matrix``, in ``matrix``'s dtype; column signs are whatever LAPACK gives.

    An error or a non-finite Q is retried in float64 (cast back to ``matrix.dtype``); if that fails too,
    ``fallback`` is returned (may be None) and the failure counted in ``health``. A stack (``B×d×d``) is
    factorised in one batched call and judged matrix by matrix: only the failed ones take the retry, each
    counted, each falling back to its own slice of ``fallback`` (required for a stack).
    """
    if matrix.dim() > 2:
        return _orthonormalize_qr_stack(matrix, fallback, health)
    try:
        basis = householder_q(matrix)
        if is_finite(basis):
            return basis
    except RuntimeError:
        pass
    if matrix.dtype != torch.float64:
        try:
            basis = householder_q(matrix.to(torch.float64))
            if is_finite(basis):
                if health is not None:
                    health.float64_retries += 1
                return basis.to(matrix.dtype)
        except RuntimeError:
            pass
    if health is not None:
        health.failures += 1
    return fallback


def _orthonormalize_qr_stack(matrix: Tensor, fallback: Tensor | None, health: LinalgHealth | None) -> Tensor:
    if fallback is None:
        raise ValueError("orthonormalize_qr: a stack of matrices needs a fallback stack")
    try:
        basis = householder_q(matrix)
        failed = (~torch.isfinite(basis.sum(dim=(-2, -1)))).nonzero().flatten().tolist()  # one read per stack
    except RuntimeError:  # one bad matrix fails the whole call: judge every matrix on its own
        basis, failed = torch.empty_like(matrix), list(range(matrix.shape[0]))
    for index in failed:
        basis[index] = orthonormalize_qr(matrix[index], fallback=fallback[index], health=health)
    return basis


def linalg_dtype(precision: Precision) -> torch.dtype:
    """The dtype a refresh computes in: float64 for the clean mode, otherwise float32 (as every reference QR)."""
    _check_precision(precision)
    return torch.float64 if precision == "float64" else torch.float32


def estimated_eigenvalues(factor: Tensor, basis: Tensor) -> Tensor:
    """``diag(Qᵀ L Q)``, evaluated as the references do: ``(Qᵀ @ L) @ Q`` then the diagonal.

    Both inputs must already be in the compute dtype. Costs two ``d³`` products; see
    :func:`power_qr_refresh` (``exact_estimate=False``) for the one-product form.
    """
    return torch.diagonal((basis.mT @ factor) @ basis, dim1=-2, dim2=-1)


def select_along(tensor: Tensor, dim: int, permutation: Tensor) -> Tensor:
    """``tensor.index_select(dim, permutation)``; a ``B×d`` permutation applies one per matrix of a ``B×…`` stack.

    The stacked form is one flat ``index_select`` (``take_along_dim`` is several times slower on CPU) and returns a
    contiguous tensor, the layout the per-matrix ``index_select`` gives, so later products round the same.
    """
    if permutation.dim() == 1:
        # index_select gives the same values as advanced indexing, several times faster on CPU.
        return tensor.index_select(dim, permutation)
    batch, size = permutation.shape
    moved = tensor.movedim(dim, 1)
    offsets = permutation + size * torch.arange(batch, device=permutation.device).unsqueeze(1)
    selected = moved.reshape(batch * size, -1).index_select(0, offsets.reshape(-1)).reshape(moved.shape)
    return selected.movedim(1, dim).contiguous()


def power_qr_refresh(
    factor: Tensor,
    basis: Tensor,
    *,
    sort: bool = True,
    precision: Precision = "reference",
    exact_estimate: bool = True,
    health: LinalgHealth | None = None,
) -> tuple[Tensor, Tensor | None]:
    """One power-iteration step plus QR: SOAP's ``get_orthogonal_matrix_QR`` for one ``d×d`` factor and basis, or a batch (``...×d×d``, one permutation per matrix).

    With ``sort`` (SOAP, SOAP-Muon): the columns of ``basis`` are first reordered by the estimated eigenvalues
    ``diag(Qᵀ L Q)``, descending, with torch's default (unstable) argsort as the reference; the permutation is
    returned so the caller can permute its second moment along this dim (``v.index_select(dim, perm)``).
    Without ``sort`` (KL-Shampoo, KL-SOAP) the permutation is None.

    Computation in float32 (or float64 for ``precision="float64"``): ``Q_new = QR(L · Q_sorted).Q``, cast back
    to ``basis.dtype``. ``exact_estimate=False`` reuses the power-iteration product for the estimate,
    ``diag(Qᵀ L Q) = colsum(Q ⊙ (L Q))``, saving two of the three ``d³`` products; the estimate then differs
    from the reference's in the last bits, which only matters for near-tied eigenvalues.
    On a QR failure the sorted previous basis is kept, so a permutation applied by the caller stays consistent.
    """
    compute_dtype = linalg_dtype(precision)
    factor_c = factor.to(compute_dtype)
    basis_c = basis.to(compute_dtype)
    permutation: Tensor | None = None
    if sort:
        if exact_estimate:
            estimate = estimated_eigenvalues(factor_c, basis_c)
            permutation = torch.argsort(estimate, descending=True)
            basis_c = select_along(basis_c, -1, permutation)
            power = factor_c @ basis_c
        else:
            product = factor_c @ basis_c
            estimate = (basis_c * product).sum(dim=-2)
            permutation = torch.argsort(estimate, descending=True)
            basis_c = select_along(basis_c, -1, permutation)
            power = select_along(product, -1, permutation)
    else:
        power = factor_c @ basis_c
    refreshed = orthonormalize_qr(power, fallback=basis_c, health=health)
    return refreshed.to(basis.dtype), permutation


def matrix_inverse_root(
    factor: Tensor,
    root: float,
    *,
    epsilon: float = 0.0,
    precision: Precision = "float32",
    make_positive_semidefinite: bool = True,
    previous: Tensor | None = None,
    health: LinalgHealth | None = None,
) -> Tensor:
    """``(L + εI)^(-1/root)`` through an eigendecomposition, in ``factor.dtype`` (Distributed Shampoo's eigen root).

    As Distributed Shampoo: ``L = Q diag(λ) Qᵀ`` by eigh (no regulariser); with ``make_positive_semidefinite``
    the eigenvalues are shifted up by ``-min(λ_min, 0)`` so rounding-negative eigenvalues of a PSD factor cannot
    produce NaN powers; then ``λ ← λ + ε`` and ``X = Q diag(λ^(-1/root)) Qᵀ``. ``root`` may be fractional
    (2.5 gives the power -0.4). ``precision`` "float32"/"reference" computes in float32, "float64" in float64;
    both retry in float64 on failure. Eigenvalues that are still exactly 0 (ε = 0 and a rank-deficient factor)
    map to 0 instead of +inf: those directions carry no gradient, so the pseudo-inverse is the meaningful root.
    On failure (or a non-finite result) returns ``previous`` (or the identity) and counts it in ``health``.
    """
    if not root > 0:
        raise ValueError(f"root must be > 0, got {root}")
    size = factor.shape[-1]
    decomposition = eigh_descending(
        factor, precision="float64" if precision == "float64" else "float32", eye_shift=None, health=health
    )
    if decomposition is not None:
        eigenvalues, eigenvectors = decomposition
        if make_positive_semidefinite:
            eigenvalues = eigenvalues - torch.clamp(eigenvalues.min(dim=-1, keepdim=True).values, max=0.0)
        eigenvalues = eigenvalues + epsilon
        powered = torch.where(
            eigenvalues > 0,
            eigenvalues.clamp(min=torch.finfo(eigenvalues.dtype).tiny).pow(-1.0 / root),
            torch.zeros_like(eigenvalues),
        )
        root_matrix = (eigenvectors * powered.unsqueeze(-2)) @ eigenvectors.mT
        if is_finite(root_matrix):
            return root_matrix.to(factor.dtype)
        if health is not None:
            health.failures += 1
    if previous is not None:
        return previous
    return identity_basis(size, dtype=factor.dtype, device=factor.device)


def mode_gram(tensor: Tensor, dim: int) -> Tensor:
    """``G_(k) G_(k)ᵀ``: ``tensor`` contracted with itself over every dim except ``dim`` (``d_k×d_k``).

    Uses ``torch.tensordot`` exactly as the references do, so the products round identically.
    """
    others = [axis for axis in range(tensor.dim()) if axis != dim]
    return torch.tensordot(tensor, tensor, dims=(others, others))


# Factors at least twice this size are updated block by block (lower triangle only, then mirrored).
SYMMETRIC_BLOCK = 384


def gram_update_(factor: Tensor, rows: Tensor, *, beta: float, alpha: float) -> Tensor:
    """``factor ← β·factor + α·rows rowsᵀ`` in place (``factor`` d×d symmetric, ``rows`` d×k): the factor EMA.

    ``rows rowsᵀ`` is symmetric, so for large factors only the blocks on and below the diagonal are multiplied
    (a block split into c parts costs (c+1)/(2c) of the full product: 0.625 for a 1536-wide factor) and the
    blocks above are copied from their mirror images, as BLAS ``syrk`` would. The result is exactly symmetric; each
    block is one GEMM over the same k, so entries round like the full product's up to the GEMM's own blocking.
    Small factors take a single ``addmm_``.
    """
    size = factor.shape[-1]
    parts = size // SYMMETRIC_BLOCK
    if parts < 2 or factor.dim() != 2 or not factor.is_contiguous():
        return factor.addmm_(rows, rows.mT, beta=beta, alpha=alpha)
    edges = [size * part // parts for part in range(parts + 1)]
    spans = [slice(start, stop) for start, stop in zip(edges[:-1], edges[1:])]
    for i, row_span in enumerate(spans):
        for column_span in spans[: i + 1]:
            factor[row_span, column_span].addmm_(rows[row_span], rows[column_span].mT, beta=beta, alpha=alpha)
    for i, row_span in enumerate(spans):
        for column_span in spans[:i]:
            factor[column_span, row_span].copy_(factor[row_span, column_span].mT)
    return factor


def rotate(tensor: Tensor, bases: Sequence[Tensor | None]) -> Tensor:
    """Multiply mode k of ``tensor`` by ``Q_kᵀ`` for every k (``len(bases) == tensor.dim()``).

    Follows the references' loop (contract axis 0 with ``Q_k``, the new axis lands at the end; a ``None`` basis
    just moves axis 0 to the end), so after a full pass the axis order is restored and the products round as in
    the references. The result may be a non-contiguous view.
    """
    if len(bases) != tensor.dim():
        raise ValueError(f"rotate: {len(bases)} bases for a {tensor.dim()}-D tensor")
    if tensor.dim() == 2:
        return rotate_matrix(tensor, bases[0], bases[1])
    for basis in bases:
        if basis is None:
            tensor = tensor.permute(*range(1, tensor.dim()), 0)
        else:
            tensor = torch.tensordot(tensor, basis, dims=([0], [0]))
    return tensor


def unrotate(tensor: Tensor, bases: Sequence[Tensor | None]) -> Tensor:
    """Multiply mode k of ``tensor`` by ``Q_k`` for every k: the inverse of :func:`rotate` (same loop order)."""
    if len(bases) != tensor.dim():
        raise ValueError(f"unrotate: {len(bases)} bases for a {tensor.dim()}-D tensor")
    if tensor.dim() == 2:
        return unrotate_matrix(tensor, bases[0], bases[1])
    for basis in bases:
        if basis is None:
            tensor = tensor.permute(*range(1, tensor.dim()), 0)
        else:
            tensor = torch.tensordot(tensor, basis, dims=([0], [1]))
    return tensor


def rotate_matrix(matrix: Tensor, left: Tensor | None, right: Tensor | None) -> Tensor:
    """``Q_Lᵀ X Q_R`` for a matrix or a stack of matrices (``...×m×n`` with ``...×m×m`` / ``...×n×n`` bases).

    Evaluated as ``((Xᵀ Q_L)ᵀ Q_R)``, the same products (and rounding) as the references' tensordot loop on a
    2-D tensor; the leading batch dims let same-shape parameters be rotated together.
    """
    step = matrix.mT if left is None else matrix.mT @ left
    return step.mT if right is None else step.mT @ right


def unrotate_matrix(matrix: Tensor, left: Tensor | None, right: Tensor | None) -> Tensor:
    """``Q_L X Q_Rᵀ`` for a matrix or a stack of matrices, as ``((Xᵀ Q_Lᵀ)ᵀ Q_Rᵀ)`` like the references."""
    step = matrix.mT if left is None else matrix.mT @ left.mT
    return step.mT if right is None else step.mT @ right.mT
