"""One score across workloads: AlgoPerf's performance-profile integral and the geometric-mean speedup over AdamW.

The inputs are the committed reproductions' ``report.csv`` files (one row per arm: its optimizer, workload,
steps and seconds to the reproduction's target, whether its wall-clock is unreliable, its verdict against the
reproduction's baseline). An *arm family* is the optimizer (``soap`` covers SOAP f=1 and f=10); on each workload a
family is represented by its arm that reaches the target first — by steps for the step scores, by seconds for the
time scores — and the table names that arm.

Scores, by steps and by wall-clock side by side:

* **Performance-profile integral** (AlgoPerf): on workload w, family s's ratio is r = t(s, w) / min over families
  t(·, w) (∞ when s never reaches the target); its profile ρ_s(τ) is the share of its workloads with r ≤ τ, and the
  score is ∫₁^τmax ρ_s(τ) dτ / (τmax − 1) with τmax = 4: 1 for a family that is fastest everywhere, 0 for one that is
  never within 4× of the fastest. Families are scored only on the workloads they ran (the reproductions are not a
  common suite), and the table says on how many.
* **Geometric-mean speedup over AdamW**: over the workloads where both AdamW and the family reached the target,
  exp(mean log(t_AdamW / t_s)). A workload without an AdamW arm, or where either did not reach the target,
  contributes nothing, and the table lists which workloads the number rests on.

Families seen on fewer than ``MIN_WORKLOADS_TO_RANK`` workloads are scored but not ranked. The rank shift is the
family's rank by time minus its rank by steps (AlgoPerf's analysis found many submissions
change rank between the two). An entry whose verdict against its baseline is ``not tested`` gives no score, nor
does one that did not reach the target while its verdict leaves open whether it is worse than the baseline
(``equivalent``, ``inconclusive``): a not-reached by noise would count as ∞. The
verdict words of the rest (``better``, ``equivalent``, ``inconclusive``, ...) are carried beside the scores, and
wall-clock entries a report marks unreliable (a shared machine, or a timing outlier among the best
configuration's seeds) are counted and marked.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

TAU_MAX = 4.0
BASELINE_FAMILY = "adamw"
# A family seen on one workload is fastest there by construction when it is alone in its class; it is scored, not ranked.
MIN_WORKLOADS_TO_RANK = 2
NOT_SCORED = {"not tested"}
# Verdicts that leave open whether the arm is worse than the baseline ("tie" is the wording of older reports).
UNDETERMINED = {"equivalent", "inconclusive", "tie", "within noise"}


class LeaderboardError(Exception):
    """Nothing to score: no report.csv, or one without the columns the scores need."""


@dataclass(frozen=True)
class Entry:
    """One arm of one reproduction."""

    reproduction: str
    workload: str
    family: str
    arm: str
    steps: float  # to the target; inf when not reached
    seconds: float
    time_unreliable: bool
    verdict: str


@dataclass
class FamilyScore:
    family: str
    profile_steps: float
    profile_seconds: float
    speedup_steps: float | None
    speedup_seconds: float | None
    workloads: list[str] = field(default_factory=list)
    speedup_workloads_steps: list[str] = field(default_factory=list)
    speedup_workloads_seconds: list[str] = field(default_factory=list)
    arms_steps: list[str] = field(default_factory=list)
    arms_seconds: list[str] = field(default_factory=list)
    unreliable_time: int = 0
    verdicts: list[str] = field(default_factory=list)
    unscored: list[str] = field(default_factory=list)
    rank_steps: int | None = None
    rank_seconds: int | None = None


def _to_target(text: str | None) -> float:
    try:
        value = float(text) if text not in (None, "") else math.inf
    except ValueError:
        return math.inf
    return value if math.isfinite(value) and value > 0 else math.inf


REQUIRED = ("arm", "optimizer", "workload", "steps_to_target", "seconds_to_target", "verdict_vs_baseline")


def read_entries(report_csvs: Iterable[Path]) -> list[Entry]:
    entries = []
    for path in report_csvs:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in REQUIRED if column not in (reader.fieldnames or [])]
            if missing:
                raise LeaderboardError(f"{path}: no column {missing[0]!r}; regenerate it with scripts/report.py")
            for row in reader:
                entries.append(
                    Entry(
                        reproduction=path.parent.name,
                        workload=row["workload"],
                        family=row["optimizer"],
                        arm=row["arm"],
                        steps=_to_target(row["steps_to_target"]),
                        seconds=_to_target(row["seconds_to_target"]),
                        time_unreliable=bool((row.get("wallclock_unreliable") or "").strip()),
                        verdict=(row["verdict_vs_baseline"] or "").strip(),
                    )
                )
    if not entries:
        raise LeaderboardError("no arms in the report.csv files given")
    return entries


def _best(entries: list[Entry], attribute: str) -> Entry:
    return min(entries, key=lambda entry: getattr(entry, attribute))


def _profile_integral(ratios: list[float]) -> float:
    """∫₁^τmax ρ(τ) dτ / (τmax − 1) for a step-function profile: each workload adds (τmax − r)/(τmax − 1) if r ≤ τmax."""
    return sum(max(0.0, TAU_MAX - max(ratio, 1.0)) for ratio in ratios) / ((TAU_MAX - 1.0) * len(ratios))


def _geometric_mean(values: list[float]) -> float | None:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def undetermined(entry: Entry) -> bool:
    """Not at the target, but not shown worse than the baseline either: its ratio would be ∞ by noise alone."""
    return math.isinf(entry.steps) and entry.verdict in UNDETERMINED


def score(entries: list[Entry]) -> list[FamilyScore]:
    scored = [entry for entry in entries if entry.verdict not in NOT_SCORED and not undetermined(entry)]
    by_workload: dict[str, dict[str, list[Entry]]] = {}
    for entry in scored:
        by_workload.setdefault(entry.workload, {}).setdefault(entry.family, []).append(entry)
    families = sorted({entry.family for entry in scored})
    results = []
    for family in families:
        result = FamilyScore(family, 0.0, 0.0, None, None)
        ratios: dict[str, list[float]] = {"steps": [], "seconds": []}
        speedups: dict[str, list[float]] = {"steps": [], "seconds": []}
        for workload, arms in sorted(by_workload.items()):
            if family not in arms:
                continue
            result.workloads.append(workload)
            result.verdicts += [f"{entry.arm}: {entry.verdict}" for entry in arms[family]]
            for attribute in ("steps", "seconds"):
                mine = _best(arms[family], attribute)
                fastest = min(getattr(_best(group, attribute), attribute) for group in arms.values())
                value = getattr(mine, attribute)
                ratios[attribute].append(value / fastest if math.isfinite(fastest) else math.inf)
                (result.arms_steps if attribute == "steps" else result.arms_seconds).append(f"{mine.arm} ({workload})")
                if attribute == "seconds" and mine.time_unreliable:
                    result.unreliable_time += 1
                if BASELINE_FAMILY in arms:
                    baseline = getattr(_best(arms[BASELINE_FAMILY], attribute), attribute)
                    if math.isfinite(baseline) and math.isfinite(value):
                        speedups[attribute].append(baseline / value)
                        getattr(result, f"speedup_workloads_{attribute}").append(workload)
        result.profile_steps = _profile_integral(ratios["steps"])
        result.profile_seconds = _profile_integral(ratios["seconds"])
        result.speedup_steps = _geometric_mean(speedups["steps"])
        result.speedup_seconds = _geometric_mean(speedups["seconds"])
        result.unscored = [
            f"{entry.arm} ({entry.workload}: {entry.verdict}"
            f"{', target not reached' if math.isinf(entry.steps) else ''})"
            for entry in entries
            if entry.family == family and entry not in scored
        ]
        results.append(result)
    ranked = [result for result in results if len(result.workloads) >= MIN_WORKLOADS_TO_RANK]
    for attribute in ("steps", "seconds"):
        ordered = sorted(ranked, key=lambda r: -getattr(r, f"profile_{attribute}"))
        for rank, result in enumerate(ordered, start=1):
            setattr(result, f"rank_{attribute}", rank)
    return sorted(results, key=lambda r: (r.rank_steps is None, r.rank_steps or 0, -r.profile_steps))


def _number(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render(scores: list[FamilyScore], sources: list[Path]) -> str:
    lines = [
        "# Leaderboard across the committed reproductions",
        "",
        "Performance-profile integral (AlgoPerf, τmax = 4; 1 = fastest to the target on every workload it ran) and",
        "geometric-mean speedup over tuned AdamW, by steps and by wall-clock. A family is represented on each workload by",
        "its arm that reaches the target first. Rank shift = rank by time − rank by steps; a family seen on fewer than",
        f"{MIN_WORKLOADS_TO_RANK} workloads is scored but not ranked (alone in its reproduction's class, it is fastest by",
        "construction). Computed by",
        "`python scripts/leaderboard.py` from: " + ", ".join(f"`{path}`" for path in sources) + ".",
        "",
        "| family | profile (steps) | profile (time) | rank steps → time | speedup vs AdamW (steps) | "
        "speedup vs AdamW (time) | workloads | time entries marked unreliable (shared machine or timing outlier) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in scores:
        if s.rank_steps is None:
            ranks = f"not ranked ({len(s.workloads)} workload)"
        else:
            ranks = f"{s.rank_steps} → {s.rank_seconds} ({s.rank_seconds - s.rank_steps:+d})"
        lines.append(
            f"| {s.family} | {_number(s.profile_steps)} | {_number(s.profile_seconds)} | "
            f"{ranks} | {_number(s.speedup_steps, 2)} "
            f"(n={len(s.speedup_workloads_steps)}) | {_number(s.speedup_seconds, 2)} "
            f"(n={len(s.speedup_workloads_seconds)}) | {len(s.workloads)} | "
            f"{s.unreliable_time}{' (time scores unreliable)' if s.unreliable_time else ''} |"
        )
    lines += ["", "## What each score rests on", ""]
    for s in scores:
        lines += [
            f"- **{s.family}**: workloads {', '.join(s.workloads)}; by steps {', '.join(s.arms_steps)}; "
            f"by time {', '.join(s.arms_seconds)}; speedup over AdamW by steps on "
            f"{', '.join(s.speedup_workloads_steps) or 'no workload'}; verdicts vs each reproduction's baseline: "
            f"{'; '.join(s.verdicts)}" + (f"; not scored: {', '.join(s.unscored)}" if s.unscored else "") + ".",
        ]
    lines += [
        "",
        "Scores are only as good as the reproductions under them: read each reproduction's README (its scale, seeds, "
        "and which claims it could test) before quoting a rank. A verdict `not tested` gives no score.",
        "",
    ]
    return "\n".join(lines)


def write_csv(scores: list[FamilyScore], path: Path) -> None:
    columns = [
        "family",
        "profile_steps",
        "profile_seconds",
        "rank_steps",
        "rank_seconds",
        "speedup_steps",
        "speedup_seconds",
        "workloads",
        "speedup_workloads_steps",
        "speedup_workloads_seconds",
        "unreliable_time",
    ]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for s in scores:
            writer.writerow(
                [
                    s.family,
                    s.profile_steps,
                    s.profile_seconds,
                    s.rank_steps,
                    s.rank_seconds,
                    s.speedup_steps,
                    s.speedup_seconds,
                    ";".join(s.workloads),
                    ";".join(s.speedup_workloads_steps),
                    ";".join(s.speedup_workloads_seconds),
                    s.unreliable_time,
                ]
            )
