"""Models benchmarked by soapbench; ``build_model(cfg)`` builds one from a ``configs/model`` preset."""

from models.registry import ModelConfigError, available_architectures, build_model, register_model
from models.colorization import ColorizationNet
from models.gpt import GPT
from models.olmo import OLMo

__all__ = ["ColorizationNet", "GPT", "OLMo", "ModelConfigError", "available_architectures", "build_model", "register_model"]
