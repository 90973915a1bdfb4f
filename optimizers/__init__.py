"""The optimizers soapbench compares, each a ``torch.optim.Optimizer`` faithful to its reference code.

``build_optimizer(name, model_or_params, **hparams)`` is what the trainer uses; the classes
are importable directly so they can be dropped into other training code.
"""

from soapbench.optimizers.adafactor import Adafactor, TorchAdafactor
from soapbench.optimizers.adamw import AdamW
from soapbench.optimizers.composite import CompositeOptimizer
from soapbench.optimizers.kl import KLSOAP, KLShampoo
from soapbench.optimizers.muon import Muon, TorchMuon
from soapbench.optimizers.registry import (
    OptimizerConfigError,
    available_optimizers,
    build_optimizer,
    get_spec,
    register_optimizer,
)
from soapbench.optimizers.shampoo import Shampoo
from soapbench.optimizers.soap import SOAP
from soapbench.optimizers.soap_muon import SOAPMuon

__all__ = [
    "Adafactor",
    "AdamW",
    "CompositeOptimizer",
    "KLSOAP",
    "KLShampoo",
    "Muon",
    "SOAP",
    "SOAPMuon",
    "Shampoo",
    "TorchAdafactor",
    "TorchMuon",
    "OptimizerConfigError",
    "available_optimizers",
    "build_optimizer",
    "get_spec",
    "register_optimizer",
]
