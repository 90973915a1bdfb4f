"""Models benchmarked by soapbench; ``build_model(cfg)`` builds one from a ``configs/model`` preset."""

from models.registry import ModelConfigError, available_architectures, build_model, register_model
from models.gpt import GPT

__all__ = ["GPT", "ModelConfigError", "available_architectures", "build_model", "register_model"]
