"""Models benchmarked by soapbench; ``build_model(cfg)`` builds one from a ``configs/model`` preset."""

from soapbench.models.colorization import ColorizationNet
from soapbench.models.gpt import GPT
from soapbench.models.olmo import OLMo
from soapbench.models.registry import ModelConfigError, available_architectures, build_model, register_model

__all__ = [
    "ColorizationNet",
    "GPT",
    "OLMo",
    "ModelConfigError",
    "available_architectures",
    "build_model",
    "register_model",
]
