"""Run names that say what differs: ``soap-nanogpt_char_cpu-lr3e-3-betas0.9_0.95-s0-<hash>``.

``sweep_keys`` (set by ``scripts/search.py``, or read from the sweep for ``scripts/train.py -m``) lists
what a sweep varies: dotted config keys, whose values go into the name, or ``group=choice`` for a swept
config group (``variant=soap_f10``), whose choice does. The optimizer, model and seed are always in the
name; the hash still tells apart runs whose rounded values coincide.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from soapbench.errors import ConfigError

# Always in the name already.
_IN_BASE_NAME = ("optimizer", "model", "seed", "optimizer.name", "model.name")
# Where things live, not what is trained: a machine path in a name would give the same run another name elsewhere.
_NEVER_IN_NAME = ("paths.", "hydra.")
_MAX_VALUE_CHARS = 24


def format_value(value: Any) -> str:
    """3e-3, 0.95, 0.9_0.95, true, cosine: short, file-name safe."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e4):
            mantissa, exponent = f"{value:.2e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return "_".join(format_value(v) for v in value)
    text = re.sub(r"[^A-Za-z0-9._+-]+", "_", str(value))
    return text[:_MAX_VALUE_CHARS]


def _lookup(config: Mapping[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, (list, tuple)) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _labels(keys: list[str]) -> dict[str, str]:
    """The last dotted segment names a key, unless two swept keys share it (then the whole path, dots as _)."""
    last = [key.split(".")[-1] for key in keys]
    return {key: (tail if last.count(tail) == 1 else key.replace(".", "_")) for key, tail in zip(keys, last)}


def swept_values(config: Mapping[str, Any], sweep_keys: Iterable[str] | None) -> list[str]:
    parts, keys = [], []
    for entry in sweep_keys or []:
        if entry.startswith(_NEVER_IN_NAME):
            continue
        if "=" in entry:
            group, _, choice = entry.partition("=")
            if group not in _IN_BASE_NAME:
                parts.append(format_value(choice))
        elif entry not in _IN_BASE_NAME:
            keys.append(entry)
    labels = _labels(keys)
    parts += [f"{labels[key]}{format_value(_lookup(config, key))}" for key in keys]
    return parts


def run_name(config: Mapping[str, Any], digest: str) -> str:
    base = [str(config["optimizer"]["name"]), str(config["model"]["name"])]
    return "-".join([*base, *swept_values(config, config.get("sweep_keys")), f"s{config['seed']}", digest])


def plain_name(key: str, value: Any, example: str) -> str:
    """A user-supplied name that becomes one folder: without a separator or ``..`` it cannot leave its root."""
    text = str(value)
    if text in ("", ".", "..") or any(c in text for c in ("/", "\\", "\0")):
        raise ConfigError(
            f"{key}: {text!r} is a path, not a name; use a plain name without '/' or '..' (e.g. {example})"
        )
    return text


def experiment_folder(value: Any) -> str:
    """``experiment_name`` as the folder under ``runs/`` and ``sweeps/`` it becomes."""
    return plain_name("experiment_name", value or "default", "lm_sweep")
