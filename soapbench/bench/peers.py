"""Peer implementations timed beside ours: pytorch-optimizer and heavyball (``pip install -e ".[peers]"``).

Each peer is built from *our* optimizer's effective hyperparameters (its yaml over its constructor defaults), on the
same parameter groups our ``build_optimizer`` makes (same role split, same weight-decay groups). Where our optimizer
is a ``CompositeOptimizer`` (Muon, KL: an AdamW companion trains embeddings, head and 1-D parameters), the peer
replaces only the main optimizer and keeps our companion, so the comparison isolates the method itself.
``unmatched`` says which of our knobs the peer has no equivalent for; none of them changes which tensors are
stored or how often the preconditioner is refreshed unless it says so.

heavyball compiles its update functions with torch.compile (its ``heavyball.utils.compile_mode``, by default
"max-autotune-no-cudagraphs"); its contestants warm up through one full refresh period so timing starts after
compilation. A peer whose library is missing or fails to import gets a row saying why instead of a time.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import torch
from torch import nn

from soapbench.bench.catalog import OptimizerSetup

PEER_LIBRARIES = {"pytorch-optimizer": "pytorch_optimizer", "heavyball": "heavyball"}
INSTALL_HINT = "pip install -e '.[peers]'"

Groups = list[dict[str, Any]]


@dataclass(frozen=True)
class PeerSpec:
    label: str
    library: str  # distribution name
    ours: str  # registry name of the optimizer it is compared with
    build: Callable[[Groups, Mapping[str, Any]], torch.optim.Optimizer]
    unmatched: str

    @property
    def module(self) -> str:
        return PEER_LIBRARIES[self.library]


def _shampoo_beta(h: Mapping[str, Any]) -> float:
    beta = h.get("shampoo_beta")
    return h["betas"][1] if beta is None or beta < 0 else beta


def _po_soap(groups: Groups, h: Mapping[str, Any]) -> torch.optim.Optimizer:
    from pytorch_optimizer import SOAP

    return SOAP(
        groups, lr=h["lr"], betas=tuple(h["betas"]), shampoo_beta=_shampoo_beta(h), weight_decay=h["weight_decay"],
        precondition_frequency=h["precondition_frequency"], max_precondition_dim=h["max_precond_dim"],
        merge_dims=h["merge_dims"], precondition_1d=h["precondition_1d"], correct_bias=h["correct_bias"],
        normalize_gradient=h["normalize_grads"], data_format=h["data_format"], eps=h["eps"],
    )  # fmt: skip


def _hb_soap_family(class_name: str, every_dim: bool) -> Callable[[Groups, Mapping[str, Any]], torch.optim.Optimizer]:
    def build(groups: Groups, h: Mapping[str, Any]) -> torch.optim.Optimizer:
        import heavyball

        extra: dict[str, Any] = {}
        if class_name == "KLShampoo":
            extra["init_factor"] = h["init_factor"]
        # Our KL methods factor every dim (no max dim): give heavyball a max at least the largest side.
        max_dim = (
            max((max(p.shape) for g in groups for p in g["params"]), default=1) if every_dim else h["max_precond_dim"]
        )
        return getattr(heavyball, class_name)(
            groups, lr=h["lr"], betas=tuple(h["betas"]), shampoo_beta=_shampoo_beta(h), eps=h["eps"],
            weight_decay=h["weight_decay"], precondition_frequency=h["precondition_frequency"],
            use_precond_schedule=False, max_precond_dim=max_dim, merge_dims=bool(h.get("merge_dims", False)),
            precondition_1d=bool(h.get("precondition_1d", False)), storage_dtype="float32", **extra,
        )  # fmt: skip

    return build


def _po_scalable_shampoo(groups: Groups, h: Mapping[str, Any]) -> torch.optim.Optimizer:
    from pytorch_optimizer import ScalableShampoo
    from pytorch_optimizer.optimizer.shampoo import LayerWiseGrafting

    frequency = h["precondition_frequency"]
    start = frequency if h["start_preconditioning_step"] == -1 else h["start_preconditioning_step"]
    return ScalableShampoo(
        groups, lr=h["lr"], betas=tuple(h["betas"]), moving_average_for_momentum=True,
        weight_decay=h["weight_decay"], decoupled_weight_decay=h["use_decoupled_weight_decay"],
        start_preconditioning_step=start, preconditioning_compute_steps=frequency, statistics_compute_steps=1,
        block_size=h["max_preconditioner_dim"], no_preconditioning_for_layers_with_dim_gt=h["max_preconditioner_dim"],
        shape_interpretation=h["use_merge_dims"], graft_type=LayerWiseGrafting.RMSPROP, nesterov=h["use_nesterov"],
        diagonal_eps=h["grafting_epsilon"], matrix_eps=h["epsilon"],
    )  # fmt: skip


def _po_muon(groups: Groups, h: Mapping[str, Any]) -> torch.optim.Optimizer:
    from pytorch_optimizer import Muon

    muon_groups = [{**group, "use_muon": True} for group in groups]
    return Muon(
        muon_groups, lr=h["lr"], momentum=h["momentum"], weight_decay=h["weight_decay"], nesterov=h["nesterov"],
        ns_steps=h["ns_steps"],
    )  # fmt: skip


def _hb_muon(groups: Groups, h: Mapping[str, Any]) -> torch.optim.Optimizer:
    import heavyball

    return heavyball.Muon(
        groups, lr=h["lr"], betas=(h["momentum"], 0.99), weight_decay=h["weight_decay"], nesterov=h["nesterov"]
    )


PEERS: tuple[PeerSpec, ...] = (
    PeerSpec("pytorch-optimizer SOAP", "pytorch-optimizer", "soap", _po_soap, "none (same keywords as the reference)"),
    PeerSpec(
        "heavyball SOAP",
        "heavyball",
        "soap",
        _hb_soap_family("SOAP", every_dim=False),
        "correct_bias, normalize_grads, data_format (no heavyball knob); heavyball bias-corrects β_s and refreshes "
        "on a cumulative 1/f counter (≈ every f calls)",
    ),
    PeerSpec(
        "pytorch-optimizer ScalableShampoo",
        "pytorch-optimizer",
        "shampoo",
        _po_scalable_shampoo,
        "inv_root_override 2.5 (integer overrides only: default root 2·order used), Adam grafting (RMSProp grafting, "
        "no bias correction), eigh inverse roots (coupled Schur–Newton), blocking rule "
        "(layers with a dim > max_preconditioner_dim are not preconditioned)",
    ),
    PeerSpec(
        "heavyball KLSOAP",
        "heavyball",
        "kl_soap",
        _hb_soap_family("KLSOAP", every_dim=True),
        "init_factor, using_clamping/max_clamp_value, using_damping (no heavyball knob); heavyball bias-corrects β "
        "and refreshes on a cumulative 1/f counter",
    ),
    PeerSpec(
        "heavyball KLShampoo",
        "heavyball",
        "kl_shampoo",
        _hb_soap_family("KLShampoo", every_dim=True),
        "using_clamping/max_clamp_value, using_damping (heavyball's dampening 1e-9 kept); heavyball rebalances the "
        "factors' scales each step",
    ),
    PeerSpec(
        "pytorch-optimizer Muon",
        "pytorch-optimizer",
        "muon",
        _po_muon,
        "Keller's sqrt(max(1, m/n)) update scale and bf16 Newton–Schulz precision are pytorch-optimizer's own",
    ),
    PeerSpec(
        "heavyball Muon",
        "heavyball",
        "muon",
        _hb_muon,
        "ns_steps and Newton–Schulz variant are heavyball's own",
    ),
)


def library_status() -> dict[str, str]:
    """Installed version of each peer library, or why it cannot be used."""
    status = {}
    for library in PEER_LIBRARIES:
        status[library] = peer_unavailable_reason(library) or metadata.version(library)
    return status


def peer_unavailable_reason(library: str) -> str | None:
    module = PEER_LIBRARIES[library]
    if importlib.util.find_spec(module) is None:
        return f"not installed ({INSTALL_HINT})"
    try:
        importlib.import_module(module)
    except Exception as error:
        return f"import failed: {type(error).__name__}: {error}"
    return None


def configure_heavyball(compile_step: bool) -> str | None:
    """Set heavyball's compile mode (None: eager); return the mode in force, or None if heavyball is absent."""
    if peer_unavailable_reason("heavyball"):
        return None
    import heavyball.utils

    if not compile_step:
        heavyball.utils.compile_mode = None
    return heavyball.utils.compile_mode


def is_compiled(spec: PeerSpec) -> bool:
    if spec.library != "heavyball" or peer_unavailable_reason("heavyball"):
        return False
    import heavyball.utils

    return heavyball.utils.compile_mode is not None


def _groups_of(optimizer: torch.optim.Optimizer) -> Groups:
    return [
        {"params": list(group["params"]), "weight_decay": group["weight_decay"]} for group in optimizer.param_groups
    ]


def peer_builder(spec: PeerSpec, setup: OptimizerSetup) -> Callable[[nn.Module], torch.optim.Optimizer]:
    """model → the peer on our parameter groups (our companion kept for a composite)."""
    hparams = setup.effective_hparams()

    def build(model: nn.Module) -> torch.optim.Optimizer:
        from soapbench.optimizers.composite import CompositeOptimizer

        ours = setup.build(model)  # only for its param groups; it never steps
        if isinstance(ours, CompositeOptimizer):
            children = list(ours.optimizers.items())
            peer = spec.build(_groups_of(children[0][1]), hparams)
            return CompositeOptimizer({spec.label: peer, **dict(children[1:])})
        return spec.build(_groups_of(ours), hparams)

    return build


def peers_for(name: str) -> list[PeerSpec]:
    return [spec for spec in PEERS if spec.ours == name]
