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
    claims:                          # what the paper concludes, checked against our seeds
      - {setting: <id>, kind: spread, arms: [adamw, soap f=1, ...], value: 0.013, text: ..., source: ..., tag: ...}
      - {setting: <id>, kind: best, arm: shampoo f=1, among: [...], text: ..., source: ..., tag: ...}
      - {setting: <id>, kind: order, order: [shampoo f=1, shampoo f=10], text: ..., source: ..., tag: ...}
    scale: {<setting id>: {steps: 5000, params: 10.65e6, tokens_per_step: 16384}}  # the paper's budget
    legend: <one line explaining the source tags>

Names in orderings and claims are arms (``soap f=10``) or optimizers (their best arm).

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
from soapbench.report.stats import difference_interval, estimate, welch
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


CLAIM_KINDS = ("spread", "best", "order")


@dataclass(frozen=True)
class Claim:
    setting: str
    kind: str  # spread | best | order
    names: tuple[str, ...]  # spread: the arms; best: the arm first, then the others; order: lowest first
    value: float | None
    text: str
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
    claims: tuple[Claim, ...] = ()
    scale: dict[str, dict[str, float]] | None = None
    legend: str = ""


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
    claims = []
    for i, raw in enumerate(data.get("claims") or []):
        where = f"{path.name} claims[{i}]"
        kind = str(_require(raw, "kind", where))
        setting = str(_require(raw, "setting", where))
        if kind not in CLAIM_KINDS:
            raise ReportError(f"{where}: kind {kind!r} is not one of {', '.join(CLAIM_KINDS)}")
        if setting not in settings:
            raise ReportError(f"{where}: setting {setting!r} is not declared under 'settings'")
        if kind == "spread":
            names, value = tuple(_require(raw, "arms", where)), float(_require(raw, "value", where))
        elif kind == "best":
            names, value = (str(_require(raw, "arm", where)), *_require(raw, "among", where)), None
        else:
            names, value = tuple(_require(raw, "order", where)), None
        if only and setting != only:
            continue
        claims.append(Claim(setting, kind, tuple(map(str, names)), value, str(raw.get("text", "")),
                            str(raw.get("source", "")), str(raw.get("tag", ""))))
    scale = data.get("scale") or {}
    if not isinstance(scale, dict) or any(k not in settings for k in scale):
        raise ReportError(f"{path.name}: 'scale' must map declared settings to their budgets")
    return Reference(
        name=spec,
        path=path,
        paper=str(_require(data, "paper", path.name)),
        metric=str(data.get("metric", "val/loss")),
        settings={k: v for k, v in settings.items() if not only or k == only},
        entries=tuple(entries),
        orderings=tuple(orderings),
        claims=tuple(claims),
        scale={str(k): {str(a): float(b) for a, b in (v or {}).items()} for k, v in scale.items()},
        legend=str(data.get("legend") or ""),
    )


def _saving(efficiency: float | None) -> float | None:
    return None if efficiency is None or efficiency <= 0 else 1.0 - 1.0 / efficiency


def ours_for(entry: ReferenceEntry, workload: WorkloadResult) -> tuple[float | None, str]:
    """Our number for a reference entry and a note on how it was obtained (or why it is missing)."""
    configs = workload.configs_of(entry.optimizer)
    if not configs:
        return None, f"no {entry.optimizer} runs"
    config = best_of(configs, entry.match)
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
        other = workload.best_arm(entry.versus)
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
                "our scale vs paper's": scale_note(reference, entry.setting, workload) or "–",
                "source": f"{entry.source}; {entry.tag}",
            }
        )
    return rows


def _arm_values(workload: WorkloadResult, name: str) -> tuple[str, list[float] | None]:
    arm = workload.best_arm(name)
    if arm is None or arm.best is None or not math.isfinite(arm.best.score):
        return name, None
    return arm.arm, arm.best.values


def _order_verdict(workload: WorkloadResult, order: tuple[str, ...]) -> tuple[str, str]:
    """(verdict, our numbers) for 'lowest first' along ``order``: holds / does not hold / within noise."""
    found = [_arm_values(workload, n) for n in order]
    missing = [n for n, v in found if v is None]
    d = workload.decimals
    ours = ", ".join(f"{n} {estimate(v).mean:.{d}f}" for n, v in found if v is not None)
    if missing:
        return "n/a (missing: " + ", ".join(missing) + ")", ours
    pairs = [welch(later, earlier) for (_, earlier), (_, later) in zip(found, found[1:])]
    if any(p.verdict == "better" for p in pairs):  # a later arm significantly lower: reversed
        return "does not hold", ours
    if all(p.verdict == "worse" for p in pairs):
        return "holds", ours
    if any(p.verdict == "n/a" for p in pairs):
        agrees = all(p.delta >= 0 for p in pairs)
        return ("holds" if agrees else "does not hold") + " (n = 1: no noise estimate)", ours
    agrees = all(p.delta >= 0 for p in pairs)
    return "within noise (" + ("same order, gaps not significant" if agrees else "reversed, not significant") + ")", ours


def check_orderings(reference: Reference, workload: WorkloadResult) -> list[dict[str, Any]]:
    rows = []
    for ordering in reference.orderings:
        verdict, ours = _order_verdict(workload, ordering.order)
        rows.append({"setting": ordering.setting, "claim": " ≤ ".join(ordering.order), "ours": ours,
                     "check": verdict, "source": f"{ordering.source}; {ordering.tag}"})
    return rows


def _spread_verdict(workload: WorkloadResult, claim: Claim) -> tuple[str, str]:
    found = [_arm_values(workload, n) for n in claim.names]
    missing = [n for n, v in found if v is None]
    if missing:
        return "n/a (missing: " + ", ".join(missing) + ")", ""
    means = [(estimate(v).mean, n, v) for n, v in found]
    (low, low_name, low_values), (high, high_name, high_values) = min(means), max(means)
    d = workload.decimals
    ours = f"spread {high - low:.{d}f} ({high_name} {high:.{d}f} − {low_name} {low:.{d}f})"
    interval = difference_interval(high_values, low_values)
    if interval is None:
        verdict = "holds" if high - low <= claim.value else "does not hold"
        return verdict + " (n = 1: no noise estimate)", ours
    ours += f"; 95% CI of the gap [{interval[0]:.{d}f}, {interval[1]:.{d}f}]"
    if interval[1] <= claim.value:
        return "holds", ours
    if interval[0] > claim.value:
        return "does not hold", ours
    return "within noise", ours


def check_claims(reference: Reference, workload: WorkloadResult) -> list[dict[str, Any]]:
    """One row per paper claim: holds / does not hold / within noise, with our numbers."""
    rows = []
    for claim in reference.claims:
        if claim.kind == "spread":
            verdict, ours = _spread_verdict(workload, claim)
            what = f"final losses of {', '.join(claim.names)} within {claim.value:g}"
        elif claim.kind == "best":
            # "X is best" = X below each other arm: the order X ≤ other, pair by pair.
            verdicts = [_order_verdict(workload, (claim.names[0], other)) for other in claim.names[1:]]
            texts = [v for v, _ in verdicts]
            verdict = next((v for v in texts if v.startswith(("n/a", "does not hold"))), None) or next(
                (v for v in texts if not v.startswith("holds")), texts[0] if texts else "n/a")
            found = [_arm_values(workload, n) for n in claim.names]
            ours = ", ".join(f"{n} {estimate(v).mean:.{workload.decimals}f}" for n, v in found if v is not None)
            what = f"{claim.names[0]} lowest among {', '.join(claim.names)}"
        else:
            verdict, ours = _order_verdict(workload, claim.names)
            what = " ≤ ".join(claim.names)
        rows.append({"setting": claim.setting, "claim": claim.text or what, "ours": ours, "check": verdict,
                     "source": claim.source})
    return rows


def scale_note(reference: Reference, setting: str, workload: WorkloadResult) -> str:
    """'ours 1000 vs paper 5000 steps (0.2×); 0.8M vs 10.65M params (13× smaller)': budget and scale mismatch."""
    paper = (reference.scale or {}).get(setting)
    if not paper:
        return ""
    summaries = [r.summary or {} for r in workload.runs if r.status == "completed"]
    parts = []
    if "steps" in paper and workload.full_budget:
        ratio = workload.full_budget / paper["steps"]
        parts.append(f"{workload.full_budget} vs {paper['steps']:.0f} steps ({ratio:.2g} of the paper's)")
    params = sorted(s["params"] for s in summaries if s.get("params"))
    if "params" in paper and params:
        ours = params[len(params) // 2]
        factor = paper["params"] / ours
        parts.append(f"{_millions(ours)} vs {_millions(paper['params'])} params ("
                     + (f"{_times(factor)} smaller" if factor > 1 else f"{_times(1 / factor)} larger") + ")")
    tokens = sorted(s["tokens"] / s["steps"] for s in summaries if s.get("tokens") and s.get("steps"))
    if "tokens_per_step" in paper and tokens:
        parts.append(f"{tokens[len(tokens) // 2]:.0f} vs {paper['tokens_per_step']:.0f} tokens/step")
    return "; ".join(parts)


def _times(factor: float) -> str:
    return f"{factor:.0f}×" if factor >= 10 else f"{factor:.1f}×"


def _millions(count: float) -> str:
    return f"{count / 1e6:.3g}M"


def paper_final_for(reference: Reference, workload: WorkloadResult, optimizer: str) -> str:
    """Paper final losses whose ``match`` our best configuration of ``optimizer`` satisfies."""
    opt = workload.optimizers.get(optimizer)
    if opt is None or opt.best is None:
        return ""
    best = opt.best
    found = []
    for entry in reference.entries:
        if entry.optimizer != opt.optimizer or entry.quantity != "final_loss":
            continue
        if best_of([best], entry.match) is None:
            continue
        label = ", ".join(f"{k}={v}" for k, v in entry.match.items())
        prefix = "≈" if entry.relation == "~" else ""
        found.append(f"{prefix}{entry.value:g}" + (f" ({label})" if label else "") + f" [{entry.setting}]")
    return "; ".join(found)
