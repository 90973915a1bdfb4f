"""Paper numbers (``results/reference/*.yaml``) and how ours compare with them.

A reference file holds the numbers of one paper comparison, each with its source tag from
``paper_specs.md``. Schema::

    comparison: <file stem>          paper: <title, authors, arXiv id>
    metric: val/loss | val/mse       # which of our metrics the losses are comparable to
    settings: {<id>: <description>}  # the paper setups the entries belong to
    entries:                         # numbers
      - optimizer: soap              # name as registered in soapbench
        setting: <id>
        quantity: final_loss | best_loss | step_saving | time_saving | final_gap
        relation: "=" | "~" | ">=" | "<="   # "~": the paper says "about"
        value: 1.4654
        match: {precondition_frequency: 1}  # optimizer.<key> our configuration must have (may be {})
        versus: adamw                # savings and gaps: the other optimizer
        range: [lo, hi]  n_seeds: 6  paper_hyperparameters: {...}  note: ...
        source: <paper, table/figure>   tag: <paper_specs tag and section>
    orderings:                       # qualitative claims: final loss, lowest first
      - {setting: <id>, order: [kl_shampoo, soap, kl_soap], source: ..., tag: ...}

Our side of each comparison: ``final_loss`` = mean final loss of our best configuration among those
matching ``match``; ``best_loss`` = mean over its seeds of the lowest eval loss; ``step_saving`` =
1 − N_opt/N_versus = 1 − 1/efficiency, from the schedule fit when it exists (the paper's method),
else from the curves; ``time_saving`` likewise in seconds; ``final_gap`` = L_versus − L_opt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from soapbench.report.analysis import WorkloadResult, best_of, pairwise, run_curve
from soapbench.report.store import ReportError

QUANTITIES = ("final_loss", "best_loss", "step_saving", "time_saving", "final_gap")
RELATIONS = ("=", "~", ">=", "<=")
_NEEDS_VERSUS = ("step_saving", "time_saving", "final_gap")


@dataclass(frozen=True)
class ReferenceEntry:
    optimizer: str
    setting: str
    quantity: str
    relation: str
    value: float
    match: dict[str, Any]
    versus: str | None
    source: str
    tag: str
    range: tuple[float, float] | None = None
    n_seeds: int | None = None
    note: str | None = None


@dataclass(frozen=True)
class Ordering:
    setting: str
    order: tuple[str, ...]
    source: str
    tag: str


@dataclass(frozen=True)
class Reference:
    name: str
    path: Path
    paper: str
    metric: str
    settings: dict[str, str]
    entries: tuple[ReferenceEntry, ...]
    orderings: tuple[Ordering, ...]


def _require(mapping: dict, key: str, where: str) -> Any:
    if key not in mapping:
        raise ReportError(f"{where}: missing required field {key!r}")
    return mapping[key]


def load_reference(spec: str, reference_dir: Path) -> Reference:
    """Load ``NAME`` or ``NAME:SETTING`` (only that setting's entries) from ``reference_dir/NAME.yaml``."""
    name, _, only = spec.partition(":")
    path = reference_dir / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in reference_dir.glob("*.yaml")) if reference_dir.is_dir() else []
        raise ReportError(f"no reference file {path}; known: {', '.join(known) or 'none'}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ReportError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(data, dict):
        raise ReportError(f"{path}: top level must be a mapping")
    settings = {str(k): str(v) for k, v in (data.get("settings") or {}).items()}
    if only and only not in settings:
        raise ReportError(f"{path}: no setting {only!r}; settings: {', '.join(settings) or 'none'}")

    entries = []
    for i, raw in enumerate(data.get("entries") or []):
        where = f"{path.name} entries[{i}]"
        quantity = _require(raw, "quantity", where)
        relation = str(raw.get("relation", "="))
        if quantity not in QUANTITIES:
            raise ReportError(f"{where}: quantity {quantity!r} is not one of {', '.join(QUANTITIES)}")
        if relation not in RELATIONS:
            raise ReportError(f"{where}: relation {relation!r} is not one of {', '.join(RELATIONS)}")
        if quantity in _NEEDS_VERSUS and not raw.get("versus"):
            raise ReportError(f"{where}: quantity {quantity!r} needs 'versus'")
        setting = str(_require(raw, "setting", where))
        if setting not in settings:
            raise ReportError(f"{where}: setting {setting!r} is not declared under 'settings'")
        if only and setting != only:
            continue
        entries.append(
            ReferenceEntry(
                optimizer=str(_require(raw, "optimizer", where)),
                setting=setting,
                quantity=quantity,
                relation=relation,
                value=float(_require(raw, "value", where)),
                match=dict(raw.get("match") or {}),
                versus=raw.get("versus"),
                source=str(_require(raw, "source", where)),
                tag=str(_require(raw, "tag", where)),
                range=tuple(raw["range"]) if raw.get("range") else None,
                n_seeds=raw.get("n_seeds"),
                note=raw.get("note"),
            )
        )
    orderings = []
    for i, raw in enumerate(data.get("orderings") or []):
        where = f"{path.name} orderings[{i}]"
        setting = str(_require(raw, "setting", where))
        if only and setting != only:
            continue
        orderings.append(
            Ordering(setting, tuple(_require(raw, "order", where)), str(raw.get("source", "")), str(raw.get("tag", "")))
        )
    return Reference(
        name=spec,
        path=path,
        paper=str(_require(data, "paper", path.name)),
        metric=str(data.get("metric", "val/loss")),
        settings={k: v for k, v in settings.items() if not only or k == only},
        entries=tuple(entries),
        orderings=tuple(orderings),
    )


def _saving(efficiency: float | None) -> float | None:
    return None if efficiency is None or efficiency <= 0 else 1.0 - 1.0 / efficiency


def ours_for(entry: ReferenceEntry, workload: WorkloadResult) -> tuple[float | None, str]:
    """Our number for a reference entry and a note on how it was obtained (or why it is missing)."""
    opt = workload.optimizers.get(entry.optimizer)
    if opt is None:
        return None, f"no {entry.optimizer} runs"
    config = best_of(opt.configs, entry.match)
    if config is None:
        return None, f"no {entry.optimizer} configuration with {entry.match}"
    if entry.quantity == "final_loss":
        if not math.isfinite(config.score):
            return None, "best matching configuration diverged or has no completed seed"
        return config.mean, f"n={config.n}"
    if entry.quantity == "best_loss":
        lows = [float(run_curve(r, config.metric)["value"].min()) for r in config.completed]
        return (sum(lows) / len(lows), f"n={len(lows)}") if lows else (None, "no completed seed")
    assert entry.versus is not None
    if entry.quantity == "final_gap":
        other = workload.optimizers.get(entry.versus)
        if other is None or other.best is None or not math.isfinite(other.best.score):
            return None, f"no usable {entry.versus} configuration"
        if not math.isfinite(config.score):
            return None, "best matching configuration diverged or has no completed seed"
        return other.best.score - config.score, f"{entry.versus} − {entry.optimizer}"
    eff = pairwise(workload, entry.optimizer, entry.versus, entry.match)
    axis = "steps" if entry.quantity == "step_saving" else "time"
    if eff[f"fit_{axis}"] is not None:
        return _saving(eff[f"fit_{axis}"]), "schedule fit"
    if eff[axis] is not None:
        return _saving(eff[axis]), "curve crossing (no schedule fit)"
    return None, f"target of {entry.versus} not reached or no runs"


def check(relation: str, ours: float, paper: float) -> str:
    if relation == ">=":
        return "holds" if ours >= paper else "does not hold"
    if relation == "<=":
        return "holds" if ours <= paper else "does not hold"
    return f"Δ = {ours - paper:+.4g}"


def compare(reference: Reference, workload: WorkloadResult) -> list[dict[str, Any]]:
    """One row per reference entry: paper value beside ours."""
    rows = []
    for entry in reference.entries:
        ours, how = ours_for(entry, workload)
        match = ", ".join(f"{k}={v}" for k, v in entry.match.items())
        rows.append(
            {
                "setting": entry.setting,
                "optimizer": entry.optimizer + (f" ({match})" if match else ""),
                "quantity": entry.quantity + (f" vs {entry.versus}" if entry.versus else ""),
                "paper": f"{entry.relation} {entry.value:g}".replace("= ", "").replace("~ ", "≈ ")
                + (f" [{entry.range[0]:g}–{entry.range[1]:g}]" if entry.range else ""),
                "ours": None if ours is None else ours,
                "ours_how": how,
                "check": check(entry.relation, ours, entry.value) if ours is not None else "n/a",
                "source": f"{entry.source}; {entry.tag}",
            }
        )
    return rows


def check_orderings(reference: Reference, workload: WorkloadResult) -> list[dict[str, Any]]:
    rows = []
    for ordering in reference.orderings:
        scores = []
        for name in ordering.order:
            opt = workload.optimizers.get(name)
            score = opt.best.score if opt is not None and opt.best is not None else None
            scores.append(score if score is not None and math.isfinite(score) else None)
        if any(s is None for s in scores):
            verdict = "n/a (missing: " + ", ".join(n for n, s in zip(ordering.order, scores) if s is None) + ")"
        else:
            verdict = "holds" if all(a <= b for a, b in zip(scores, scores[1:])) else "does not hold"
        ours = ", ".join(f"{n} {s:.4f}" if s is not None else f"{n} –" for n, s in zip(ordering.order, scores))
        rows.append({"setting": ordering.setting, "claim": " ≤ ".join(ordering.order), "ours": ours,
                     "check": verdict, "source": f"{ordering.source}; {ordering.tag}"})
    return rows


def paper_final_for(reference: Reference, workload: WorkloadResult, optimizer: str) -> str:
    """Paper final losses whose ``match`` our best configuration of ``optimizer`` satisfies."""
    opt = workload.optimizers.get(optimizer)
    if opt is None or opt.best is None:
        return ""
    best = opt.best
    found = []
    for entry in reference.entries:
        if entry.optimizer != optimizer or entry.quantity != "final_loss":
            continue
        if best_of([best], entry.match) is None:
            continue
        label = ", ".join(f"{k}={v}" for k, v in entry.match.items())
        prefix = "≈" if entry.relation == "~" else ""
        found.append(f"{prefix}{entry.value:g}" + (f" ({label})" if label else "") + f" [{entry.setting}]")
    return "; ".join(found)
