"""An ``OptimizerInfo`` for every optimizer in soapbench's registry, with inputs that exercise its real options
and error inputs for its own validation (torch's generic ones are added to every optimizer)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from soapbench.contract.torch_testing import (
    ErrorOptimizerInput,
    OptimizerErrorEnum,
    OptimizerInfo,
    OptimizerInput,
    get_error_inputs_for_all_optims,
)
from soapbench.optimizers import get_spec


class ContractInput(OptimizerInput):
    """An ``OptimizerInput`` that may also ask for the conv kernel in channels-last memory format."""

    __slots__ = ["channels_last"]

    def __init__(self, kwargs: dict[str, Any], desc: str, *, channels_last: bool = False):
        super().__init__(params=None, kwargs=kwargs, desc=desc)
        self.channels_last = channels_last


class ContractInfo(OptimizerInfo):
    """An ``OptimizerInfo`` named by its registry name; ``matrices_only`` optimizers get no vector parameter."""

    def __init__(self, optim_cls: Callable, *, name: str, matrices_only: bool = False, **kwargs: Any):
        super().__init__(optim_cls, **kwargs)
        self.contract_name = name
        self.matrices_only = matrices_only

    @property
    def name(self) -> str:
        return self.contract_name


def _inputs(*entries: tuple[str, dict[str, Any]] | ContractInput) -> Callable[..., list[OptimizerInput]]:
    built = [entry if isinstance(entry, OptimizerInput) else ContractInput(entry[1], entry[0]) for entry in entries]
    return lambda device=None, dtype=None: list(built)


def _matrix(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(shape or (3, 4)))


def _with_sparse_grad() -> list[nn.Parameter]:
    param = _matrix(3, 4)
    param.grad = torch.randn(3, 4).to_sparse()
    return [param]


def _errors(
    *entries: tuple[str, Any, dict[str, Any], type, str] | tuple[str, Any, dict[str, Any], type, str, bool],
    sparse_message: str | None = "does not support sparse gradients",
) -> Callable[..., list[ErrorOptimizerInput]]:
    """Error inputs: (desc, params or None, kwargs, error type, regex[, raised at step]) plus a sparse-gradient step."""

    def build(device, dtype) -> list[ErrorOptimizerInput]:
        errors = []
        for desc, params, kwargs, error_type, regex, *at_step in entries:
            errors.append(
                ErrorOptimizerInput(
                    OptimizerInput(params=params() if callable(params) else params, kwargs=kwargs, desc=desc),
                    error_type=error_type,
                    error_regex=regex,
                    error_on=OptimizerErrorEnum.STEP_ERROR
                    if at_step and at_step[0]
                    else OptimizerErrorEnum.CONSTRUCTION_ERROR,
                )
            )
        if sparse_message is not None:
            errors.append(
                ErrorOptimizerInput(
                    OptimizerInput(params=_with_sparse_grad(), kwargs={}, desc="sparse gradient"),
                    error_type=RuntimeError,
                    error_regex=sparse_message,
                    error_on=OptimizerErrorEnum.STEP_ERROR,
                )
            )
        return errors

    return build


# Optimizers that reject parameters with fewer than 2 dims (their trainer builds give those to a companion).
MATRICES_ONLY = {"muon", "muon_torch"}
NEGATIVE_LR = ("negative lr", None, {"lr": -1e-3}, ValueError, "lr must be > 0")

INPUTS: dict[str, Callable] = {
    "adamw": _inputs(
        ("default", {}),
        ("weight_decay 0.1", {"weight_decay": 0.1}),
        ("amsgrad", {"amsgrad": True}),
        ("foreach", {"foreach": True}),
        ("single-tensor", {"foreach": False}),
    ),
    "adafactor": _inputs(
        ("default", {}),
        ("neuron_only", {"neuron_only": True}),
        ("reference_1d_quirk", {"reference_1d_quirk": True}),
        ("betas (0.5, 0.9), weight_decay 0", {"betas": (0.5, 0.9), "weight_decay": 0.0}),
    ),
    "adafactor_torch": _inputs(
        ("default", {}),
        ("beta2_decay -0.5", {"beta2_decay": -0.5}),
        ("d 2, weight_decay 0.1", {"d": 2.0, "weight_decay": 0.1}),
        ("eps (1e-8, 1e-3)", {"eps": (1e-8, 1e-3)}),
    ),
    "muon": _inputs(
        ("default", {}),
        ("nesterov off", {"nesterov": False}),
        ("ns_steps 3", {"ns_steps": 3}),
        ("momentum 0.8, weight_decay 0.1", {"momentum": 0.8, "weight_decay": 0.1}),
    ),
    "muon_torch": _inputs(
        ("default", {}),
        ("lr 0.01", {"lr": 0.01}),
        ("adjust_lr_fn match_rms_adamw", {"adjust_lr_fn": "match_rms_adamw"}),
        ("nesterov off", {"nesterov": False}),
        ("ns_steps 6", {"ns_steps": 6}),
        ("ns_coefficients (3.4, -4.7, 2.0)", {"ns_coefficients": (3.4, -4.7, 2.0)}),
    ),
    "soap": _inputs(
        ("f 10 (default)", {}),
        ("f 1", {"precondition_frequency": 1}),
        ("merge_dims", {"merge_dims": True, "precondition_frequency": 2}),
        ("merge_dims, max_precond_dim 8", {"merge_dims": True, "max_precond_dim": 8, "precondition_frequency": 2}),
        ("max_precond_dim 4", {"max_precond_dim": 4, "precondition_frequency": 2}),
        ("precondition_1d", {"precondition_1d": True, "precondition_frequency": 2}),
        ("normalize_grads", {"normalize_grads": True, "precondition_frequency": 2}),
        ContractInput(
            {"merge_dims": True, "data_format": "channels_last", "precondition_frequency": 2},
            "channels_last conv, merge_dims",
            channels_last=True,
        ),
        ContractInput({"precondition_frequency": 2}, "channels_last memory format", channels_last=True),
        ("refresh_method eigh", {"refresh_method": "eigh", "precondition_frequency": 2}),
        ("linalg_precision float64", {"linalg_precision": "float64", "precondition_frequency": 2}),
        ("state_dtype bfloat16", {"state_dtype": "bfloat16", "precondition_frequency": 2}),
        ("bitwise_reference", {"bitwise_reference": True, "precondition_frequency": 2}),
        (
            "no bias correction, shampoo_beta 0.9",
            {"correct_bias": False, "shampoo_beta": 0.9, "precondition_frequency": 2},
        ),
    ),
    "shampoo": _inputs(
        *[
            (f"grafting {kind}", {"grafting_type": kind, "precondition_frequency": 2})
            for kind in ("adam", "adagrad", "rmsprop", "sgd", "none")
        ],
        ("inv_root_override 0 (1/(2·order))", {"inv_root_override": 0, "precondition_frequency": 2}),
        ("blocks of 4, no merge", {"max_preconditioner_dim": 4, "use_merge_dims": False, "precondition_frequency": 2}),
        ("nesterov momentum 0.5", {"momentum": 0.5, "use_nesterov": True, "precondition_frequency": 2}),
        ("coupled weight decay", {"use_decoupled_weight_decay": False, "precondition_frequency": 2}),
        ("f 10 (default), start 10", {}),
    ),
    "soap_muon": _inputs(
        *[
            (f"projection {kind}", {"projection_type": kind, "precondition_frequency": 2})
            for kind in ("identity", "left", "right", "full", "std")
        ],
        ("scale graft, std", {"scale": "graft", "projection_type": "std", "precondition_frequency": 2}),
        ("scale graft, full", {"scale": "graft", "precondition_frequency": 2}),
        (
            "paper: std, nestrov, 10 NS steps",
            {
                "projection_type": "std",
                "nestrov": True,
                "newton_schulz_steps": 10,
                "betas": (0.95, 0.95),
                "precondition_frequency": 2,
            },
        ),
        ("full, max_precond_dim 4", {"max_precond_dim": 4, "precondition_frequency": 2}),
    ),
}
_KL_INPUTS = _inputs(
    ("f 10 (default)", {}),
    ("f 1", {"precondition_frequency": 1}),
    ("damping, no clamping", {"using_damping": True, "using_clamping": False, "precondition_frequency": 2}),
    ("normalize_grads", {"normalize_grads": True, "precondition_frequency": 2}),
    ("cast_dtype float64", {"cast_dtype": "float64", "precondition_frequency": 2}),
    ("shampoo_beta 0.5, weight_decay 0", {"shampoo_beta": 0.5, "weight_decay": 0.0, "precondition_frequency": 2}),
)
INPUTS["kl_shampoo"] = INPUTS["kl_soap"] = _KL_INPUTS

_ADAM_ERRORS = (
    NEGATIVE_LR,
    ("beta1 of 1", None, {"betas": (1.0, 0.9)}, ValueError, r"betas\[0\] must be in \[0, 1\)"),
    ("negative eps", None, {"eps": -1.0}, ValueError, "eps must be >= 0"),
    ("negative weight_decay", None, {"weight_decay": -0.1}, ValueError, "weight_decay must be >= 0"),
)
ERRORS: dict[str, Callable] = {
    "adamw": _errors(*_ADAM_ERRORS, sparse_message=None),
    "adafactor": _errors(*_ADAM_ERRORS),
    "adafactor_torch": _errors(
        NEGATIVE_LR,
        ("positive beta2_decay", None, {"beta2_decay": 0.5}, ValueError, "beta2_decay must be <= 0"),
        ("d below 1", None, {"d": 0.5}, ValueError, r"d \(the update-clipping RMS threshold\) must be >= 1"),
        sparse_message=None,
    ),
    "muon": _errors(
        NEGATIVE_LR,
        ("a vector parameter", lambda: [nn.Parameter(torch.randn(4))], {}, ValueError, "Muon trains matrices only"),
        ("ns_steps 0", None, {"ns_steps": 0}, ValueError, r"ns_steps must be an integer in \[1, 100\)"),
        ("momentum 1", None, {"momentum": 1.0}, ValueError, r"momentum must be in \[0, 1\)"),
    ),
    "muon_torch": _errors(
        NEGATIVE_LR,
        ("a vector parameter", lambda: [nn.Parameter(torch.randn(4))], {}, ValueError, "trains matrices only"),
        ("unknown adjust_lr_fn", None, {"adjust_lr_fn": "arbitrary"}, ValueError, "adjust_lr_fn must be null"),
        ("complex parameter", lambda: [_complex_matrix()], {}, RuntimeError, "Muon does not support complex", True),
        sparse_message="Muon does not support sparse gradients",
    ),
    "soap": _errors(
        NEGATIVE_LR,
        ("beta2 of 1", None, {"betas": (0.9, 1.0)}, ValueError, r"betas must be two values in \[0, 1\)"),
        (
            "precondition_frequency 0",
            None,
            {"precondition_frequency": 0},
            ValueError,
            "precondition_frequency must be an integer >= 1",
        ),
        ("unknown data_format", None, {"data_format": "nchw"}, ValueError, "data_format must be one of"),
        ("unknown refresh_method", None, {"refresh_method": "svd"}, ValueError, "refresh_method must be one of"),
        ("state_dtype float16", None, {"state_dtype": "float16"}, ValueError, "state_dtype must be one of"),
        (
            "state_dtype float16 in a group",
            lambda: [{"params": [_matrix()], "state_dtype": "float16"}],
            {},
            ValueError,
            "state_dtype must be one of",
        ),
    ),
    "shampoo": _errors(
        NEGATIVE_LR,
        ("unknown grafting_type", None, {"grafting_type": "adamw"}, ValueError, "grafting_type must be one of"),
        ("epsilon 0", None, {"epsilon": 0.0}, ValueError, "epsilon must be > 0"),
        ("negative inv_root_override", None, {"inv_root_override": -1}, ValueError, "inv_root_override must be >= 0"),
        (
            "start_preconditioning_step 0",
            None,
            {"start_preconditioning_step": 0},
            ValueError,
            "start_preconditioning_step must be -1",
        ),
    ),
    "soap_muon": _errors(
        *_ADAM_ERRORS[:2],
        ("unknown projection_type", None, {"projection_type": "both"}, ValueError, "projection_type must be one of"),
        ("unknown scale", None, {"scale": "rms"}, ValueError, "scale must be one of"),
        (
            "newton_schulz_steps -1",
            None,
            {"newton_schulz_steps": -1},
            ValueError,
            "newton_schulz_steps must be an integer >= 0",
        ),
    ),
}
ERRORS["kl_shampoo"] = ERRORS["kl_soap"] = _errors(
    *_ADAM_ERRORS[:2],
    ("unknown cast_dtype", None, {"cast_dtype": "int8"}, ValueError, "cast_dtype must be None or one of"),
    ("init_factor 0", None, {"init_factor": 0.0}, ValueError, "init_factor must be > 0"),
    (
        "precondition_frequency 0",
        None,
        {"precondition_frequency": 0},
        ValueError,
        "precondition_frequency must be an integer >= 1",
    ),
)


def _complex_matrix() -> nn.Parameter:
    param = nn.Parameter(torch.randn(3, 4, dtype=torch.complex64))
    param.grad = torch.randn(3, 4, dtype=torch.complex64)
    return param


def generic_error_inputs(device: str, dtype: torch.dtype) -> list[ErrorOptimizerInput]:
    """torch's error inputs for every optimizer, less the tensor-lr one (the tensor_lr category checks it)."""
    return [
        error
        for error in get_error_inputs_for_all_optims(device, dtype)
        if error.optimizer_error_input.desc != "Tensor lr must be 1-element"
    ]


def registered_info(name: str) -> ContractInfo:
    """The ``OptimizerInfo`` of a registered optimizer (its class, or its factory for torch's own)."""
    spec = get_spec(name)
    if name not in INPUTS:
        raise KeyError(f"no contract inputs for registered optimizer {name!r}; add them to {__name__}.INPUTS")
    own_errors = ERRORS[name]
    return ContractInfo(
        spec.factory,
        name=name,
        matrices_only=name in MATRICES_ONLY,
        optim_inputs_func=INPUTS[name],
        optim_error_inputs_func=lambda device, dtype: generic_error_inputs(device, dtype) + own_errors(device, dtype),
        supported_impls=(),
        supports_complex=False,
    )
