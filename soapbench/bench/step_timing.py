"""Step timing (issue 6 item 4): ``optimizer.step()`` alone, every contestant interleaved in one process.

Protocol, as nanoGPT's bench.py mirrors its loop's inner step:

* Every contestant (ours and peers) owns a copy of the same materialised model and shares one
  :class:`~soapbench.bench.shapes.GradientBank`: at its k-th call each sees gradient set ``k mod sets``. The copy into
  ``param.grad`` happens before the timer starts, so only ``step()`` is timed; the interval is closed by a device
  synchronisation (:func:`soapbench.timing.synchronize`).
* Warmup calls come first and are not timed: ``warmup`` for every contestant, and for a contestant that compiles
  its step (heavyball) also one full preconditioner period plus one call, so both the plain and the refresh path are
  compiled before timing. SOAP-like optimizers only build their preconditioner on their first call, which warmup
  absorbs.
* Timed window: ``steps`` calls, rounded up to a whole number of refresh periods when the optimizer has a
  ``precondition_frequency`` f, so the mean includes exactly window/f refreshes wherever they fall (30 steps at
  f = 10: 3 refreshes; SOAP-Muon at f = 40: 40 steps, 1 refresh). The median is the typical non-refresh step.
* Interleaving: round r times one call of every contestant whose window is not yet complete, in an order rotated
  by one each round, so machine noise (other processes on a shared CPU) hits every contestant alike. Python's
  garbage collector is off inside the timed rounds.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from soapbench.bench.catalog import OptimizerSetup
from soapbench.bench.memory import measure_parts
from soapbench.bench.peers import is_compiled, peer_builder, peer_unavailable_reason, peers_for
from soapbench.bench.shapes import GradientBank, trainable_params
from soapbench.timing import synchronize


@dataclass(frozen=True)
class TimingStats:
    n: int
    mean: float
    median: float
    std: float
    min: float
    max: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> TimingStats:
        if not samples:
            raise ValueError("no timing samples")
        std = statistics.stdev(samples) if len(samples) > 1 else 0.0
        return cls(len(samples), statistics.fmean(samples), statistics.median(samples), std, min(samples), max(samples))


def window_length(steps: int, frequency: int | None) -> int:
    """``steps`` rounded up to whole refresh periods (unchanged without a frequency)."""
    if not frequency or frequency <= 1:
        return steps
    return math.ceil(steps / frequency) * frequency


@dataclass
class Contestant:
    """One optimizer over its own copy of the parameters (aligned with the gradient bank)."""

    label: str
    source: str  # "ours" or the peer library's distribution name
    ours: str  # registry name of our optimizer it is (or is compared with)
    optimizer: torch.optim.Optimizer | None
    params: list[Tensor]
    steps: int
    warmup: int
    frequency: int | None = None
    notes: list[str] = field(default_factory=list)
    samples: list[float] = field(default_factory=list)
    calls: int = 0
    error: str | None = None

    @property
    def refreshes(self) -> int | None:
        return self.steps // self.frequency if self.frequency and self.steps % self.frequency == 0 else None

    def call(self, bank: GradientBank, device: torch.device) -> float:
        """Assign this call's gradients (untimed), then time ``step()`` alone."""
        bank.assign(self.params, self.calls)
        self.calls += 1
        synchronize(device)
        start = time.perf_counter()
        self.optimizer.step()
        synchronize(device)
        return time.perf_counter() - start

    def stats(self) -> TimingStats | None:
        return TimingStats.of(self.samples) if self.samples else None

    def summary(self) -> dict[str, Any]:
        stats = self.stats()
        state = None
        if self.optimizer is not None and self.error is None:
            parts = measure_parts(self.optimizer, self.params)
            state = {"main": parts["main"].arrays, "companion": parts["companion"].arrays}
        return {
            "label": self.label, "source": self.source, "ours": self.ours, "warmup": self.warmup,
            "window": self.steps, "frequency": self.frequency, "refreshes": self.refreshes,
            "stats": None if stats is None else stats.__dict__, "samples": list(self.samples),
            "notes": list(self.notes), "error": self.error, "state_bytes": state,
        }  # fmt: skip


def run_interleaved(
    contestants: Sequence[Contestant],
    bank: GradientBank,
    device: torch.device,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Warm every contestant up (one after the other), then time them in rotated round-robin order."""
    report = progress or (lambda message: None)
    for contestant in contestants:
        if contestant.error is not None:
            report(f"  {contestant.label}: {contestant.error}")
            continue
        start = time.perf_counter()
        try:
            for _ in range(contestant.warmup):
                contestant.call(bank, device)
        except Exception as error:  # a failing peer is a result, not a crash
            contestant.error = f"warmup failed: {type(error).__name__}: {error}"
        report(f"  warmup {contestant.label}: {contestant.warmup} calls, {time.perf_counter() - start:.1f} s"
               + (f" ({contestant.error})" if contestant.error else ""))  # fmt: skip
    live = [c for c in contestants if c.error is None]
    rounds = max((c.steps for c in live), default=0)
    with garbage_collection_paused():
        for round_index in range(rounds):
            for contestant in rotated(live, round_index):
                if contestant.error is not None or len(contestant.samples) >= contestant.steps:
                    continue
                try:
                    contestant.samples.append(contestant.call(bank, device))
                except Exception as error:
                    contestant.error = f"step failed: {type(error).__name__}: {error}"
            if (round_index + 1) % 5 == 0:
                gc.collect()  # between rounds, outside every timed interval
                report(f"  round {round_index + 1}/{rounds}")


def rotated(items: Sequence[Any], round_index: int) -> list[Any]:
    """``items`` in the order of round ``round_index``: rotated by one per round, so noise hits each alike."""
    shift = round_index % len(items) if items else 0
    return [*items[shift:], *items[:shift]]


@contextlib.contextmanager
def garbage_collection_paused() -> Iterator[None]:
    """Python's collector off (after one collection) inside timed rounds; callers collect between rounds."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def make_contestant(
    label: str,
    source: str,
    ours: str,
    build: Callable[[nn.Module], torch.optim.Optimizer],
    base_model: nn.Module,
    *,
    steps: int,
    warmup: int,
    frequency: int | None,
    notes: Sequence[str] = (),
) -> Contestant:
    """A contestant on its own deep copy of ``base_model``; a build failure becomes its error."""
    model = copy.deepcopy(base_model)
    params = trainable_params(model)
    contestant = Contestant(label, source, ours, None, params, steps, warmup, frequency, list(notes))
    try:
        contestant.optimizer = build(model)
    except Exception as error:
        contestant.error = f"build failed: {type(error).__name__}: {error}"
    return contestant


def build_contestants(
    setups: Sequence[OptimizerSetup], base_model: nn.Module, *, steps: int, warmup: int, with_peers: bool
) -> list[Contestant]:
    """Ours (every setup) and, with ``with_peers``, each peer of each, in that order."""
    contestants = []
    for setup in setups:
        frequency = setup.precondition_frequency
        window = window_length(steps, frequency)
        contestants.append(
            make_contestant(setup.name, "ours", setup.name, setup.build, base_model, steps=window, warmup=warmup,
                            frequency=frequency)
        )  # fmt: skip
        if not with_peers:
            continue
        for spec in peers_for(setup.name):
            reason = peer_unavailable_reason(spec.library)
            if reason is not None:
                contestants.append(
                    Contestant(spec.label, spec.library, setup.name, None, [], window, 0, frequency, error=reason)
                )
                continue
            compiled = is_compiled(spec)
            notes = [f"unmatched: {spec.unmatched}"]
            if compiled:
                notes.append("torch.compile'd step; timed after compilation (warmup covers one refresh period)")
            contestants.append(
                make_contestant(
                    spec.label, spec.library, setup.name, peer_builder(spec, setup), base_model, steps=window,
                    warmup=warmup + (frequency or 0) + 1 if compiled else warmup, frequency=frequency, notes=notes,
                )
            )  # fmt: skip
    return contestants


def protocol(*, steps: int, warmup: int, sets: int, scale: float, threads: int, device: str) -> str:
    return (
        f"`optimizer.step()` alone on {device}, {threads} torch threads. Every contestant owns a copy of the "
        f"materialised preset (seeded init) and sees the same fixed N(0, {scale:g}²) gradients ({sets} sets, used in "
        f"turn), copied into `param.grad` before the timer starts. Warmup: {warmup} untimed calls each; compiled "
        f"peers also one refresh period + 1, so compilation is over before timing. Timed window: {steps} calls, "
        "rounded up to whole refresh periods of the optimizer's precondition_frequency f, so the mean includes "
        "window/f refreshes and the median is the typical non-refresh step. Interleaved: each round times one call "
        "of every contestant in an order rotated by one per round, so machine noise hits all alike; garbage "
        "collection off in timed rounds; every interval closed by a device synchronisation. Peers are built from "
        "our optimizer's yaml on our parameter groups (composites keep our AdamW companion). "
        "'ours ÷ peer' > 1 means ours is slower. State: bytes reachable from `optimizer.state` after timing."
    )
