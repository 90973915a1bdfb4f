"""SOAP-Muon's projections into and out of its eigenbases, shared by the per-parameter step
(:mod:`soapbench.optimizers.soap_muon`) and the per-shape one (:mod:`soapbench.optimizers.soap_muon_stacked`)."""

from __future__ import annotations

from typing import Any

from torch import Tensor


def project(matrix: Tensor, state: dict[str, Any]) -> Tensor:
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
    projection = state["projection"]
    if projection == "identity":
        return matrix
    if projection == "left":
        return state["basis_left"] @ matrix
    if projection == "right":
        return matrix @ state["basis_right"].mT
    return (state["basis_left"] @ matrix) @ state["basis_right"].mT
