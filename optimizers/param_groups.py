"""Parameter roles: how a model's parameters are told apart for optimizer splits and weight decay.

Roles:
  matrix     hidden weight matrices and conv kernels (ndim >= 2)
  vector     biases, norm gains and any other parameter with ndim < 2
  embedding  nn.Embedding weights
  head       the output layer (LM head, final conv) -- "last layer" in the Muon papers
  input      the first layer of a network without an embedding (e.g. a CNN's first conv)

A model can name its own input/head parameters by defining
``parameter_roles(self) -> dict[str, str]`` (entries override the defaults below).
Weight tying is handled by ``named_parameters`` returning a shared tensor once.
"""

from __future__ import annotations

from torch import nn

ALL_ROLES = ("matrix", "vector", "embedding", "head", "input")
DEFAULT_WEIGHT_DECAY_ROLES = ("matrix", "head", "input")
_HEAD_PREFIXES = ("lm_head.", "head.", "output.")


def parameter_roles(model: nn.Module) -> dict[str, str]:
    embedding_params = {id(module.weight) for module in model.modules() if isinstance(module, nn.Embedding)}
    roles: dict[str, str] = {}
    for name, param in model.named_parameters():
        if id(param) in embedding_params:
            roles[name] = "embedding"
        elif param.ndim < 2:
            roles[name] = "vector"
        elif name.startswith(_HEAD_PREFIXES):
            roles[name] = "head"
        else:
            roles[name] = "matrix"
    custom = getattr(model, "parameter_roles", None)
    if callable(custom):
        overrides = custom()
        bad = {role for role in overrides.values() if role not in ALL_ROLES}
        if bad:
            raise ValueError(
                f"{type(model).__name__}.parameter_roles(): unknown roles {sorted(bad)}; valid: {ALL_ROLES}"
            )
        roles.update({name: role for name, role in overrides.items() if name in roles})
    return roles
