"""Search spaces (``configs/hparams_search/*.yaml``) and the quasi-random points AlgoPerf-style searches draw.

A space maps a dotted config key to a range::

    optimizer.lr: {low: 1.0e-4, high: 3.0e-2, log: true}        # log-uniform
    optimizer.weight_decay: {low: 0.0, high: 0.1}                # uniform
    optimizer.precondition_frequency: {low: 1, high: 100, log: true, int: true}
    optimizer.betas:                                             # a list key: one range (or fixed value) per element
      - {low: 0.8, high: 0.99, one_minus: true, log: true}       # 1 - β log-uniform in [0.01, 0.2], as AlgoPerf
      - 0.95
    trainer.schedule.name: {choices: [cosine, wsd]}

Each range is one Optuna distribution, named by its key (``optimizer.betas.0`` for list elements;
``1-optimizer.betas.0`` when sampled as 1 - β). Quasi-random points come from a Halton sequence (prime
bases, a seeded Cranley–Patterson shift so the first point is not the corner) or torch's scrambled
Sobol engine, and are mapped through the same distributions, so every sampler stores comparable trials.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from soapbench.errors import ConfigError

_RANGE_KEYS = {"low", "high", "log", "int", "one_minus", "choices"}


@dataclass(frozen=True)
class Dimension:
    key: str  # dotted config key
    index: int | None  # element of a list-valued key
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    one_minus: bool = False
    choices: tuple | None = None

    @property
    def param_name(self) -> str:
        name = self.key if self.index is None else f"{self.key}.{self.index}"
        return f"1-{name}" if self.one_minus else name

    def distribution(self):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.choices is not None:
            return CategoricalDistribution(list(self.choices))
        low, high = (1 - self.high, 1 - self.low) if self.one_minus else (self.low, self.high)
        if self.integer:
            return IntDistribution(int(low), int(high), log=self.log)
        return FloatDistribution(low, high, log=self.log)

    def from_unit(self, u: float) -> Any:
        """The parameter (in the distribution's space) at quantile ``u`` in [0, 1)."""
        if self.choices is not None:
            return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]
        d = self.distribution()
        # Integers: the range is [low, high + 1) so that high is drawn as often as any other value.
        low, high = d.low, d.high + (1 if self.integer else 0)
        if d.log:
            value = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
        else:
            value = low + u * (high - low)
        return min(int(math.floor(value)), d.high) if self.integer else value

    def config_value(self, param: Any) -> Any:
        return 1 - param if self.one_minus else param


@dataclass(frozen=True)
class SearchSpace:
    dimensions: tuple[Dimension, ...]
    # Fixed elements of list-valued keys: key -> {index: value}.
    fixed: Mapping[str, Mapping[int, Any]]
    lengths: Mapping[str, int]

    @property
    def keys(self) -> list[str]:
        return list(dict.fromkeys([d.key for d in self.dimensions] + list(self.fixed)))

    def distributions(self) -> dict[str, Any]:
        return {d.param_name: d.distribution() for d in self.dimensions}

    def config_values(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """A trial's values as the config sees them (``optimizer.betas.0`` = 1 - the sampled ``1-optimizer.betas.0``)."""
        return {
            (d.key if d.index is None else f"{d.key}.{d.index}"): d.config_value(params[d.param_name])
            for d in self.dimensions
            if d.param_name in params
        }

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """Hydra overrides (``optimizer.lr=0.003``, ``optimizer.betas=[0.9,0.95]``) for a trial's parameters."""
        values: dict[str, Any] = {}
        for d in self.dimensions:
            value = d.config_value(params[d.param_name])
            if d.index is None:
                values[d.key] = value
            else:
                values.setdefault(d.key, dict(self.fixed.get(d.key, {})))[d.index] = value
        out = []
        for key in self.keys:
            value = values.get(key, dict(self.fixed.get(key, {})))
            if isinstance(value, dict):
                value = [value[i] for i in range(self.lengths[key])]
            out.append(f"{key}={_override_value(value)}")
        return out

    def quasi_random_params(self, index: int, kind: str, seed: int) -> dict[str, Any]:
        point = quasi_random_point(index, len(self.dimensions), kind, seed)
        return {d.param_name: d.from_unit(u) for d, u in zip(self.dimensions, point)}


def _override_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _dimension(key: str, index: int | None, spec: Mapping[str, Any], where: str) -> Dimension:
    unknown = sorted(set(spec) - _RANGE_KEYS)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown range key; valid: {', '.join(sorted(_RANGE_KEYS))}")
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, (list, tuple)) or not choices:
            raise ConfigError(f"{where}.choices: give a non-empty list")
        return Dimension(key, index, choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: give low and high (or choices)")
    low, high = spec["low"], spec["high"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low < high:
        raise ConfigError(f"{where}: need numbers low < high, got low={low!r}, high={high!r}")
    one_minus, log = bool(spec.get("one_minus", False)), bool(spec.get("log", False))
    if one_minus and not high < 1:
        raise ConfigError(f"{where}: one_minus samples 1 - x, so high must be < 1, got {high}")
    if log and not (1 - high if one_minus else low) > 0:
        raise ConfigError(f"{where}: a log range must be positive{' (1 - high)' if one_minus else ''}, got low={low}")
    return Dimension(key, index, float(low), float(high), log, bool(spec.get("int", False)), one_minus)


def parse_space(space: Mapping[str, Any], where: str = "space") -> SearchSpace:
    if not isinstance(space, Mapping) or not space:
        raise ConfigError(f"{where}: give a mapping of dotted config keys to ranges")
    dimensions, fixed, lengths = [], {}, {}
    for key, spec in space.items():
        if isinstance(spec, (list, tuple)):
            lengths[key] = len(spec)
            for index, element in enumerate(spec):
                if isinstance(element, Mapping):
                    dimensions.append(_dimension(key, index, element, f"{where}.{key}[{index}]"))
                else:
                    fixed.setdefault(key, {})[index] = element
        elif isinstance(spec, Mapping):
            dimensions.append(_dimension(key, None, spec, f"{where}.{key}"))
        else:
            raise ConfigError(f"{where}.{key}: give a range {{low, high, log}}, {{choices: [...]}} or a list of them")
    if not dimensions:
        raise ConfigError(f"{where}: nothing to search (every value is fixed)")
    return SearchSpace(tuple(dimensions), fixed, lengths)


def _primes(count: int) -> list[int]:
    primes: list[int] = []
    candidate = 2
    while len(primes) < count:
        if all(candidate % p for p in primes):
            primes.append(candidate)
        candidate += 1
    return primes


def _radical_inverse(index: int, base: int) -> float:
    result, scale = 0.0, 1.0 / base
    while index:
        index, digit = divmod(index, base)
        result += digit * scale
        scale /= base
    return result


def quasi_random_point(index: int, dimensions: int, kind: str, seed: int) -> list[float]:
    """Point ``index`` (0, 1, 2, ...) of a ``dimensions``-D low-discrepancy sequence in [0, 1)."""
    if kind == "halton":
        shift = torch.rand(dimensions, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).tolist()
        return [(_radical_inverse(index + 1, base) + s) % 1.0 for base, s in zip(_primes(dimensions), shift)]
    if kind == "sobol":
        engine = torch.quasirandom.SobolEngine(dimensions, scramble=True, seed=seed)
        engine.fast_forward(index)
        return engine.draw(1, dtype=torch.float64)[0].tolist()
    raise ValueError(f"unknown quasi-random sequence {kind!r}")
