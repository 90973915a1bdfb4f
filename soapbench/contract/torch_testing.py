"""torch's optimizer-test vocabulary (``OptimizerInfo``, ``OptimizerInput``, ``ErrorOptimizerInput``), imported
from the torch wheel without its side effects.

``torch.testing._internal.common_optimizers`` pulls in torch's unittest harness, which at import time parses
``sys.argv`` (and prints unittest's help when it sees ``-h``), reseeds every RNG and freezes
``torch.backends`` flags (``cudnn.benchmark`` and friends then raise when set). A training program or a CLI that
runs the contract must see none of that, so the import happens here once, with argv, the RNG states and the flag
switch put back afterwards. It needs the ``expecttest`` package (a soapbench dependency).
"""

from __future__ import annotations

import random
import sys

import torch
import torch.backends

_saved_argv = sys.argv
_saved_python_rng = random.getstate()
_saved_torch_rng = torch.random.get_rng_state()
try:
    import numpy

    _saved_numpy_rng = numpy.random.get_state()
except ImportError:  # numpy is a soapbench dependency; stay importable without it all the same
    numpy = None
sys.argv = sys.argv[:1]
try:
    from torch.testing._internal.common_optimizers import (  # noqa: E402
        ErrorOptimizerInput,
        OptimizerErrorEnum,
        OptimizerInfo,
        OptimizerInput,
        get_error_inputs_for_all_optims,
    )
finally:
    sys.argv = _saved_argv
    random.setstate(_saved_python_rng)
    torch.random.set_rng_state(_saved_torch_rng)
    if numpy is not None:
        numpy.random.set_state(_saved_numpy_rng)
    # common_utils calls torch.backends.disable_global_flags(); this is its inverse (the global it clears).
    torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True

__all__ = [
    "ErrorOptimizerInput",
    "OptimizerErrorEnum",
    "OptimizerInfo",
    "OptimizerInput",
    "get_error_inputs_for_all_optims",
]
