"""The optimizers soapbench compares, each a ``torch.optim.Optimizer`` faithful to its reference code.

``build_optimizer(name, model_or_params, **hparams)`` is what the trainer uses; the classes
are importable directly so they can be dropped into other training code.
"""

from optimizers.registry import (
    OptimizerConfigError,
    available_optimizers,
    build_optimizer,
    get_spec,
    register_optimizer,
)
from optimizers.composite import CompositeOptimizer
from optimizers.adamw import AdamW

__all__ = [
    "AdamW",
    "CompositeOptimizer",
    "OptimizerConfigError",
    "available_optimizers",
    "build_optimizer",
    "get_spec",
    "register_optimizer",
]
