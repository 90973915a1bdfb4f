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
    margin: {value: 0.01, reason: <why gaps inside ±value count as equivalent>}  # in the metric's units
    regimes: {<setting id>: {tokens: 40.0e6, ...}}  # the regime of every claim of that setting without its own
    claims:                          # what the paper concludes, checked against our seeds
      - {setting: <id>, kind: spread, arms: [adamw, soap f=1, ...], value: 0.013, text: ..., source: ..., tag: ...,
         regime: {tokens: 40.0e6, steps: 2500, same_parameter_treatment: true, why: ...}}
      - {setting: <id>, kind: best, arm: shampoo f=1, among: [...], text: ..., regime: ..., source: ..., tag: ...}
      - {setting: <id>, kind: order, order: [shampoo f=1, shampoo f=10], text: ..., regime: ..., source: ..., tag: ...}
    orderings:                       # shorthand for kind: order claims (final loss, lowest first)
      - {setting: <id>, order: [kl_shampoo, soap, kl_soap], regime: ..., source: ..., tag: ...}
    scale: {<setting id>: {steps: 5000, params: 10.65e6, tokens_per_step: 16384}}  # the paper's budget
    legend: <one line explaining the source tags>

Names in claims are arms (``soap f=10``) or optimizers (their best arm).

A claim's ``regime`` holds the conditions under which a run can test it (:data:`REGIME_KEYS`): at least
``tokens`` (or ``samples``) seen per run, ``steps``, ``params``, ``tuning_runs_per_arm`` (where the paper's
verdict rests on its tuning) and ``same_parameter_treatment`` (the arms train the parameters they do not
compare alike, :mod:`soapbench.report.confounds`). A run that misses any is reported as measured effect sizes,
and the claim's verdict is ``not tested`` with each unmet condition named. A claim without a regime is
never tested.

Inside its regime a claim is judged by paired t-tests (:mod:`soapbench.report.stats`) on the gaps it asserts,
Holm-adjusted within the claim: an ordering's consecutive pairs, a best arm against each other arm, a spread's
largest gap. ``holds``: every asserted gap significant in its direction (a spread: the 95% interval of its
largest gap at most the stated value); ``does not hold``: a gap significantly reversed, every such pair named
(a spread: that interval above the value); else ``inconclusive``, naming the unresolved pairs.

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

from soapbench.report.analysis import OptimizerResult, WorkloadResult, best_of, pairwise, run_curve
from soapbench.report.confounds import confounds
from soapbench.report.stats import ALPHA, PairedTest, holm, paired_test
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


CLAIM_KINDS = ("spread", "best", "order")
# Regime conditions a run must meet for a claim to be tested; every number is a minimum per run.
REGIME_KEYS = ("tokens", "samples", "steps", "params", "tuning_runs_per_arm", "same_parameter_treatment", "why")
CLAIM_VERDICTS = ("holds", "does not hold", "inconclusive", "not tested")


@dataclass(frozen=True)
class Claim:
    setting: str
    kind: str  # spread | best | order
    names: tuple[str, ...]  # spread: the arms; best: the arm first, then the others; order: lowest first
    value: float | None
    text: str
    source: str
    tag: str
    regime: dict[str, Any] | None = None


@dataclass(frozen=True)
class Margin:
    """Gaps inside ±value (in the metric's units) count as equivalent; ``reason`` says where the value comes from."""

    value: float
    reason: str


@dataclass(frozen=True)
class Reference:
    name: str
    path: Path
    paper: str
    metric: str
    settings: dict[str, str]
    entries: tuple[ReferenceEntry, ...]
    claims: tuple[Claim, ...] = ()
    margin: Margin | None = None
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
    regimes = data.get("regimes") or {}
    if not isinstance(regimes, dict) or any(k not in settings for k in regimes):
        raise ReportError(f"{path.name}: 'regimes' must map declared settings to their regimes")
    claims = []
    raw_claims = [(f"claims[{i}]", raw) for i, raw in enumerate(data.get("claims") or [])]
    raw_claims += [(f"orderings[{i}]", {**raw, "kind": "order"}) for i, raw in enumerate(data.get("orderings") or [])]
    for label, raw in raw_claims:
        where = f"{path.name} {label}"
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
        regime = raw.get("regime", regimes.get(setting))
        if regime is not None and (not isinstance(regime, dict) or set(regime) - set(REGIME_KEYS)):
            raise ReportError(f"{where}: regime must be a mapping with keys among {', '.join(REGIME_KEYS)}")
        if only and setting != only:
            continue
        text = str(raw.get("text") or " ≤ ".join(map(str, names)))
        claims.append(
            Claim(
                setting,
                kind,
                tuple(map(str, names)),
                value,
                text,
                str(raw.get("source", "")),
                str(raw.get("tag", "")),
                dict(regime) if regime is not None else None,
            )
        )
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
        claims=tuple(claims),
        margin=_margin(data.get("margin"), path.name),
        scale={str(k): {str(a): float(b) for a, b in (v or {}).items()} for k, v in scale.items()},
        legend=str(data.get("legend") or ""),
    )


def _margin(raw: Any, where: str) -> Margin | None:
    if raw is None:
        return None
    if (
        not isinstance(raw, dict)
        or not isinstance(raw.get("value"), (int, float))
        or raw["value"] <= 0
        or not str(raw.get("reason") or "").strip()
    ):
        raise ReportError(f"{where}: 'margin' must be {{value: <positive number>, reason: <where it comes from>}}")
    return Margin(float(raw["value"]), str(raw["reason"]).strip())


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
    # The schedule fit is the paper's method, but it is trusted only where it has an uncertainty: with no more
    # budgets than its three parameters it passes through every point, so the curve crossing is used instead.
    fitted = getattr(eff["fit"], axis) if eff["fit"] is not None else None
    if fitted is not None and fitted.interval is not None:
        low, high = (_saving(v) for v in fitted.interval)
        interval = f" [{low:.3g}, {high:.3g}]" if low is not None and high is not None else ""
        return _saving(fitted.efficiency), f"schedule fit, 95% seed bootstrap{interval}"
    if eff[axis] is not None:
        why = fitted.interval_note if fitted is not None and fitted.interval_note else "no schedule fit"
        return _saving(eff[axis]), f"curve crossing (schedule fit: {why})"
    return None, f"target of {entry.versus} not reached or no runs"


def check(relation: str, ours: float, paper: float) -> str:
    """Our number beside the paper's: a comparison of two numbers, never a verdict on the paper (that is a claim's)."""
    if relation == ">=":
        return "ours ≥ paper's" if ours >= paper else "ours < paper's"
    if relation == "<=":
        return "ours ≤ paper's" if ours <= paper else "ours > paper's"
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


# ---------------------------------------------------------------------------------------------
# Claims: the regime first, then paired tests between the claim's arms
# ---------------------------------------------------------------------------------------------


def _claim_arms(workload: WorkloadResult, names: tuple[str, ...]) -> tuple[list[OptimizerResult], list[str]]:
    found, missing = [], []
    for name in names:
        arm = workload.best_arm(name)
        if arm is None or arm.best is None or not math.isfinite(arm.best.score):
            missing.append(name)
        else:
            found.append(arm)
    return found, missing


def _measured(arms: list[OptimizerResult], key: str) -> float | None:
    """The smallest per-run value of ``key`` (tokens, samples, steps, params) among the arms' reported runs."""
    values = [
        float(v) for a in arms for r in a.best.completed if isinstance(v := (r.summary or {}).get(key), (int, float))
    ]
    if key == "steps" and not values:
        values = [float(a.best.max_steps) for a in arms if a.best.max_steps]
    return min(values) if values else None


def _amount(value: float) -> str:
    return _millions(value) if value >= 1e5 else f"{value:.0f}"


def unmet_regime(claim: Claim, arms: list[OptimizerResult]) -> list[str]:
    """Each condition of the claim's regime these arms' runs do not meet, said as 'what we ran, what it is about'."""
    if claim.regime is None:
        return ["the reference file states no regime for this claim"]
    unmet = []
    for key, noun in (("tokens", "tokens seen"), ("samples", "samples seen"), ("steps", "steps"), ("params", "params")):
        wanted = claim.regime.get(key)
        if wanted is None:
            continue
        ours = _measured(arms, key)
        if ours is None:
            unmet.append(f"{noun} unknown (no run records them), the claim is about ≥ {_amount(float(wanted))}")
        elif ours < float(wanted):
            unmet.append(f"{_amount(ours)} {noun}, the claim is about ≥ {_amount(float(wanted))}")
    runs_wanted = claim.regime.get("tuning_runs_per_arm")
    if runs_wanted is not None:
        fewest = min(arms, key=lambda a: len(a.tuned_configs()))
        if len(fewest.tuned_configs()) < int(runs_wanted):
            unmet.append(
                f"{len(fewest.tuned_configs())} tuning configurations for {fewest.arm}, the paper's verdict rests "
                f"on {int(runs_wanted)} per arm"
            )
    if claim.regime.get("same_parameter_treatment"):
        differing = sorted({k for a in arms[1:] for k, _, _ in confounds(a.treatment, arms[0].treatment)})
        if differing:
            unmet.append(f"the arms treat the parameters they do not compare differently ({', '.join(differing)})")
    return unmet


def _pair_text(
    lower: OptimizerResult, higher: OptimizerResult, test: PairedTest, p_adjusted: float | None, d: int
) -> str:
    """'soap f=1 − shampoo f=1: −0.0100 [−0.0150, −0.0050], p_adj 0.01 (n=3)': an effect size with its interval."""
    text = f"{higher.arm} − {lower.arm}: {test.mean_diff:+.{d}f}"
    if test.ci95 is not None:
        text += f" [{test.ci95[0]:+.{d}f}, {test.ci95[1]:+.{d}f}]"
    if p_adjusted is not None:
        text += f", Holm p {p_adjusted:.2g}"
    return text + f" (n={test.n})"


def _pairs(claim: Claim, arms: list[OptimizerResult]) -> list[tuple[OptimizerResult, OptimizerResult]]:
    """(the arm the claim puts lower, the one it puts higher) for each gap the claim asserts."""
    if claim.kind == "order":
        return list(zip(arms, arms[1:]))
    if claim.kind == "best":
        return [(arms[0], other) for other in arms[1:]]
    ranked = sorted(arms, key=lambda a: a.best.mean)
    return [(ranked[0], ranked[-1])]


def judge_claim(claim: Claim, workload: WorkloadResult) -> dict[str, Any]:
    """Verdict, reason and the measured effects of one claim (see the module docstring)."""
    arms, missing = _claim_arms(workload, claim.names)
    d = workload.decimals
    if missing:
        return {"verdict": "not tested", "reason": "no usable runs of " + ", ".join(missing), "measured": ""}
    pairs = _pairs(claim, arms)
    tests = [paired_test(higher.best.seed_values(), lower.best.seed_values()) for lower, higher in pairs]
    adjusted = holm([t.p_value for t in tests])
    measured = "; ".join(_pair_text(lo, hi, t, p, d) for (lo, hi), t, p in zip(pairs, tests, adjusted))
    unmet = unmet_regime(claim, arms)
    if unmet:
        return {"verdict": "not tested", "reason": "; ".join(unmet), "measured": measured}
    if any(p is None for p in adjusted):
        return {"verdict": "inconclusive", "reason": "fewer than 2 paired seeds: no test", "measured": measured}
    if claim.kind == "spread":
        (test,) = tests
        low, high = test.ci95
        if high <= claim.value:
            return {
                "verdict": "holds",
                "reason": f"95% interval of the largest gap ≤ {claim.value:g}",
                "measured": measured,
            }
        if low > claim.value:
            return {
                "verdict": "does not hold",
                "reason": f"95% interval of the largest gap > {claim.value:g}",
                "measured": measured,
            }
        return {
            "verdict": "inconclusive",
            "reason": f"95% interval of the largest gap straddles {claim.value:g}",
            "measured": measured,
        }
    reversed_ = [
        f"{hi.arm} below {lo.arm}" for (lo, hi), t, p in zip(pairs, tests, adjusted) if p < ALPHA and t.mean_diff < 0
    ]
    if reversed_:
        return {
            "verdict": "does not hold",
            "reason": "reversed (Holm p < 0.05): " + "; ".join(reversed_),
            "measured": measured,
        }
    if all(p < ALPHA for p in adjusted):
        return {
            "verdict": "holds",
            "reason": "every gap in the claimed direction (Holm p < 0.05)",
            "measured": measured,
        }
    open_pairs = [
        f"{lo.arm} vs {hi.arm}" + (" (reversed, not significant)" if t.mean_diff < 0 else "")
        for (lo, hi), t, p in zip(pairs, tests, adjusted)
        if p >= ALPHA
    ]
    return {
        "verdict": "inconclusive",
        "reason": "not significant after Holm: " + "; ".join(open_pairs),
        "measured": measured,
    }


def check_claims(reference: Reference, workload: WorkloadResult) -> list[dict[str, Any]]:
    """One row per paper claim: holds / does not hold / inconclusive / not tested, why, and what we measured."""
    rows = []
    for claim in reference.claims:
        found = [workload.best_arm(n) for n in claim.names]
        ours = ", ".join(
            f"{a.arm} {a.best.mean:.{workload.decimals}f}"
            for a in found
            if a is not None and a.best is not None and math.isfinite(a.best.score)
        )
        rows.append(
            {
                "setting": claim.setting,
                "claim": claim.text,
                "ours": ours,
                **judge_claim(claim, workload),
                "source": claim.source,
            }
        )
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
        parts.append(
            f"{_millions(ours)} vs {_millions(paper['params'])} params ("
            + (f"{_times(factor)} smaller" if factor > 1 else f"{_times(1 / factor)} larger")
            + ")"
        )
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
