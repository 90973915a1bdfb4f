"""From runs to the numbers in the report: best configurations, targets, steps/time-to-target, efficiency.

Per workload (experiment × model × data) and optimizer:

* **Full budget.** The workload's full budget is the largest ``trainer.max_steps`` among its runs.
  Configurations at that budget are compared; shorter ones are the schedule family of the efficiency
  method (:mod:`soapbench.report.efficiency`).
* **Configuration score.** A configuration's final validation loss is averaged over its completed
  seeds: mean ± sample std (ddof = 1), n. A diverged seed counts as +inf, so a configuration with
  any diverged seed can never be "best" while a configuration without divergence exists (choosing
  by the surviving seeds would reward instability). Failed/running/no-summary runs do not enter
  the mean; they are counted and listed.
* **Best configuration** = lowest score among full-budget configurations.
* **Target** L* = the baseline's (default AdamW) best-configuration mean final loss, or ``--target``.
* **Steps/time to target.** On the best configuration's mean curve over seeds (mean of the loss at
  each eval step common to all its completed seeds; time = mean cumulative ``train_seconds``), the
  first crossing below L*, linearly interpolated between the two evals that bracket it
  (:func:`soapbench.report.curves.crossing`): with L_i > L* ≥ L_{i+1} at steps s_i, s_{i+1},
  s* = s_i + (s_{i+1} − s_i)·(L_i − L*)/(L_i − L_{i+1}), and the same fraction for seconds. Using the
  mean curve makes the baseline reach its own target exactly at its final eval (per-seed crossings
  would miss it for about half the seeds).
* **Versus the baseline**: each arm's best configuration against the baseline's, paired seed by seed
  (:mod:`soapbench.report.stats`), Holm-adjusted across the workload's arms (:func:`comparisons`).
* **Warnings** flag what can make a comparison unfair: unfinished seeds in a best configuration,
  best configurations averaging different numbers of seeds or run on different devices, a best
  learning rate on the edge of the values tried (with ≥ 3 tried), a different treatment of the parameters
  no arm compares (:mod:`soapbench.report.confounds`), and timing outliers: runs more than
  ``TIMING_OUTLIER_EXCESS`` slower per step than the median of their arm's runs of the same length.
* **Efficiency** vs the baseline: steps_base / steps_opt and seconds_base / seconds_opt (> 1 is
  better). Not reached within its budget → no ratio, only the bound ratio < base / budget_opt.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from soapbench.report.confounds import confounds, treatment
from soapbench.report.curves import crossing, mean_curve, run_curve, run_final, run_full_final, run_seconds
from soapbench.report.efficiency import BudgetPoint, ScheduleEfficiency, schedule_efficiency
from soapbench.report.stats import Comparison, Estimate, PairedTest, decimals_for, estimate, judge_all, paired_test
from soapbench.report.store import ReportError, Run, config_key, is_ignored, status_counts, swept_keys

OPTIMIZER_ORDER = ("adamw", "adafactor", "shampoo", "soap", "soap_muon", "muon", "kl_soap", "kl_shampoo")

# Swept keys whose last segment is one of these are *tuned* within an arm (the best value is picked);
# every other swept optimizer key (precondition_frequency, projection_type, ...) defines the arm itself.
TUNED_SEGMENTS = frozenset(
    {"lr", "learning_rate", "betas", "beta1", "beta2", "eps", "weight_decay", "momentum", "shampoo_beta"}
)
_SHORT_KEYS = {"precondition_frequency": "f"}
_ALWAYS_NAMED = ("optimizer.precondition_frequency",)


def is_tuned_key(key: str) -> bool:
    return key.split(".")[-1] in TUNED_SEGMENTS


def arm_label(optimizer: str, arm_values: Mapping[str, Any]) -> str:
    """``soap f=10``: the optimizer and the settings that make this arm (not the tuned ones)."""
    parts = [f"{_SHORT_KEYS.get(k.split('.')[-1], k.removeprefix('optimizer.'))}={v}" for k, v in arm_values.items()]
    return " ".join([optimizer, *parts])


# ---------------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------------


@dataclass
class ConfigResult:
    """All seeds of one configuration (same config up to the seed)."""

    workload: str
    optimizer: str
    key: tuple
    family: tuple
    runs: list[Run]
    max_steps: int | None
    metric: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    # ``tune`` or ``report`` when a tuning log (reproduce.py's tuning.json) says which its runs were; None without one
    role: str | None = None

    def __post_init__(self) -> None:
        finals = [run_final(r, self.metric) for r in self.runs]
        self.completed = [r for r, f in zip(self.runs, finals) if f is not None and math.isfinite(f)]
        self.counts = status_counts(self.runs)
        # The fixed evaluation set is what the curves (and so the target and its crossings) use; final
        # numbers come from the whole validation split when every completed seed measured it.
        self.curve_values = [f for f in finals if f is not None and math.isfinite(f)]
        whole = [run_full_final(r, self.metric) for r in self.completed]
        if self.completed and all(v is not None for v in whole):
            self.values, self.final_set = [float(v) for v in whole], "whole validation split"
        else:
            self.values, self.final_set = list(self.curve_values), "fixed validation set"
        self.estimate: Estimate = estimate(self.values)
        self.curve_estimate: Estimate = estimate(self.curve_values)
        self.n, self.mean, self.std = self.estimate.n, self.estimate.mean, self.estimate.std
        self.min = min(self.values) if self.values else math.nan
        self.max = max(self.values) if self.values else math.nan
        self.curve = mean_curve([run_curve(r, self.metric) for r in self.completed])
        self.seconds = float(np.nanmean([run_seconds(r) for r in self.completed])) if self.completed else math.nan

    @property
    def diverged(self) -> int:
        return self.counts["diverged"]

    @property
    def score(self) -> float:
        """Ranking key: mean final loss, +inf if any seed diverged or no seed completed."""
        if self.diverged or self.n == 0:
            return math.inf
        return self.mean

    def seed_values(self) -> dict[str, float]:
        """Final value per completed seed (the ranking values, whole split where measured)."""
        return {str(r.seed): v for r, v in zip(self.completed, self.values)}

    @property
    def curve_score(self) -> float:
        """Mean final loss on the curves' fixed evaluation set (+inf as ``score``): what a target is made of."""
        if self.diverged or self.curve_estimate.n == 0:
            return math.inf
        return self.curve_estimate.mean

    def value(self, key: str) -> Any:
        return self.runs[0].flat.get(key)


def run_variant(run: Run) -> str | None:
    """The ``configs/variant`` arm a run was started as (``variant=<name>`` in its sweep_keys), if it says."""
    for entry in run.config.get("sweep_keys") or []:
        if isinstance(entry, str) and entry.startswith("variant="):
            return entry.removeprefix("variant=")
    return None


def tuning_roles(record: Mapping[str, Any]) -> dict[tuple[str, str, str], str]:
    """(arm, lr as tuning.py writes it (``%.6g``), seed) → ``tune`` | ``report``, from a tuning.json's ``runs``."""
    return {(str(r["arm"]), f"{float(r['lr']):.6g}", str(r["seed"])): str(r["role"]) for r in record.get("runs", [])}


def read_tuning_log(results_dir: Path, experiment: str) -> dict[str, Any] | None:
    """reproduce.py's ``runs/<experiment>/tuning.json``, checked readable (ReportError, one line, if not); None without one."""
    log = Path(results_dir) / "runs" / experiment / "tuning.json"
    if not log.is_file():
        return None
    try:
        record = json.loads(log.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ReportError(f"{log}: not valid JSON ({err}); re-run the reproduction to rewrite it") from err
    try:
        tuning_roles(record)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ReportError(
            f"{log}: a run in its 'runs' list lacks arm, lr, seed or role ({err!r}); re-run the reproduction to rewrite it"
        ) from err
    return record


def run_role(run: Run, roles: Mapping[tuple[str, str, str], str]) -> str | None:
    """What the tuning log says this run was, or None when the log does not list it (or there is no log)."""
    lr, variant = run.flat.get("optimizer.lr"), run_variant(run)
    if not roles or variant is None or not isinstance(lr, (int, float)):
        return None
    return roles.get((variant, f"{float(lr):.6g}", str(run.seed)))


def group_configurations(
    runs: Iterable[Run],
    metric: str,
    extra_ignored: Iterable[str] = (),
    roles: Mapping[tuple[str, str, str], str] | None = None,
) -> list[ConfigResult]:
    """Runs grouped by configuration (same config up to the seed); with a tuning log, the tuning and the report
    runs of one configuration are separate groups, so a tuning seed never enters a reported mean."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        if run.status == "unreadable":
            continue
        groups.setdefault((config_key(run, extra_ignored), run_role(run, roles or {})), []).append(run)
    results = []
    for (key, role), members in groups.items():
        first = members[0]
        results.append(
            ConfigResult(
                workload=first.workload,
                optimizer=first.optimizer,
                key=key,
                role=role,
                family=config_key(first, extra_ignored, drop_budget=True),
                runs=sorted(members, key=lambda r: str(r.seed)),
                # epoch budgets leave trainer.max_steps null; runs with a summary know their step count
                max_steps=max((r.max_steps for r in members if r.max_steps is not None), default=None),
                metric=metric,
            )
        )
    return results


def best_of(configs: Iterable[ConfigResult], match: Mapping[str, Any] | None = None) -> ConfigResult | None:
    """Lowest-score configuration, optionally among those whose ``optimizer.<key>`` equals ``match``.

    Configurations are ranked on the seeds they all completed, when they share any: a tuned grid runs
    every lr on the first seed and only the winner on more, and ranking the winner's 3-seed mean against
    the others' single lucky seed would undo the tuning's choice. Without shared seeds, on the full means.
    """
    candidates = [c for c in configs if _matches(c, match or {})]
    # With a tuning log the tuning has chosen: what is reported is the runs on the report seeds, never a tuning run.
    candidates = [c for c in candidates if c.role == "report"] or candidates
    if not candidates:
        return None
    usable = [c for c in candidates if math.isfinite(c.score)]
    common = set.intersection(*(set(c.seed_values()) for c in usable)) if len(usable) > 1 else set()

    def rank(c: ConfigResult) -> tuple:
        if not math.isfinite(c.score) or not common:
            return (c.score, -c.n, str(c.key))
        shared = [v for seed, v in c.seed_values().items() if seed in common]
        return (sum(shared) / len(shared), -c.n, str(c.key))

    return min(candidates, key=rank)


def _matches(config: ConfigResult, match: Mapping[str, Any]) -> bool:
    for key, wanted in match.items():
        actual = config.value(key if "." in key else f"optimizer.{key}")
        if isinstance(wanted, (int, float)) and isinstance(actual, (int, float)):
            if not math.isclose(float(actual), float(wanted), rel_tol=1e-9):
                return False
        elif actual != wanted:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# Per workload and optimizer
# ---------------------------------------------------------------------------------------------


@dataclass
class OptimizerResult:
    """One arm: an optimizer with the settings that define it (e.g. ``soap f=10``), its lr tuned."""

    optimizer: str
    runs: list[Run]
    configs: list[ConfigResult]  # at the workload's full budget
    shortened: list[ConfigResult]  # shorter schedules (any family)
    swept: list[str]
    best: ConfigResult | None
    counts: dict[str, int]
    steps_to_target: float | None = None
    seconds_to_target: float | None = None
    efficiency_steps: float | None = None
    efficiency_time: float | None = None
    efficiency_steps_bound: float | None = None  # upper bound when the target is not reached
    efficiency_time_bound: float | None = None
    schedule: ScheduleEfficiency | None = None
    arm: str = ""
    arm_values: dict[str, Any] = field(default_factory=dict)
    paired: PairedTest | None = None  # against the baseline arm's best configuration, seed by seed
    versus_baseline: Comparison | None = None  # the verdict without an equivalence margin
    differences: list[tuple[str, Any, Any, bool]] = field(default_factory=list)  # key, ours, baseline's, confound
    treatment: dict[str, Any] = field(default_factory=dict)  # confounds.treatment of the best configuration
    treatment_confounds: list[tuple[str, Any, Any]] = field(default_factory=list)  # setting, ours, baseline's

    def __post_init__(self) -> None:
        self.arm = self.arm or self.optimizer

    def tuned_configs(self) -> list[ConfigResult]:
        """The configurations the lr search ran (all of them without a tuning log; none for a borrowed lr)."""
        return [c for c in self.configs if c.role != "report"]

    def family_points(self, config: ConfigResult | None = None) -> list[BudgetPoint]:
        """Budget points (one per schedule length) of ``config``'s family (the best configuration's by default)."""
        if config is None:
            config = self.best
        if config is None:
            return []
        # the tuning runs at the best lr are the same budget as the reported ones: one point, from the report seeds
        family = [
            c
            for c in self.configs + self.shortened
            if c.family == config.family and not (c.role == "tune" and config.role == "report")
        ]
        points = []
        for c in sorted(family, key=lambda c: c.max_steps or 0):
            if c.max_steps is None or (c.n == 0 and not c.diverged):
                continue  # nothing measured at this budget (failed, running or never started)
            points.append(budget_point(c))
        return points


def budget_point(c: ConfigResult) -> BudgetPoint:
    """One schedule length: its loss on the fixed evaluation set (like the target), per seed and averaged."""
    assert c.max_steps is not None
    seeds = tuple((str(r.seed), v, run_seconds(r)) for r, v in zip(c.completed, c.curve_values))
    return BudgetPoint(float(c.max_steps), c.seconds, c.curve_score, c.n, tuple(r.source for r in c.runs), seeds)


@dataclass
class WorkloadResult:
    workload: str
    experiment: str
    runs: list[Run]
    full_budget: int | None
    baseline: str
    target: float | None
    target_source: str
    optimizers: dict[str, OptimizerResult]  # by arm label, baseline arm first
    decimals: int = 4  # how many the report prints its losses with (stats.decimals_for over the finals)
    tuning: dict[str, Any] | None = None  # the experiment's tuning.json, when reproduce.py wrote one

    def tuning_log(self, arm: OptimizerResult) -> dict[str, Any] | None:
        """The tuning log's entry for ``arm`` (matched by the variant its runs were started as), if any."""
        if not self.tuning:
            return None
        variants = {v for r in arm.runs if (v := run_variant(r)) is not None}
        entries = [self.tuning.get("arms", {}).get(v) for v in sorted(variants)]
        return next((e for e in entries if e is not None), None)

    def tuning_flags(self, arm: OptimizerResult) -> list[str]:
        """What the tuning could not do for ``arm`` (a borrowed lr, a best still on an edge at the cap): printed
        beside its verdict. tuning.py writes them as ``flags``; a log from before that field is read field by field."""
        log = self.tuning_log(arm)
        if log is None:
            return []
        if "flags" in log:
            return [str(f) for f in log["flags"]]
        flags = [f"not tuned: takes {log['tuned_from']}'s tuned lr"] if log.get("tuned_from") else []
        if log.get("still_on_edge"):
            flags.append("best lr still on an edge of its grid: the optimum may lie outside the grid")
        return flags

    def arms_of(self, optimizer: str) -> list[OptimizerResult]:
        """The arms named ``optimizer``: an optimizer (all its arms) or an arm label such as ``soap f=10``."""
        exact = [o for o in self.optimizers.values() if o.arm == optimizer]
        if exact:
            return exact
        name, *settings = optimizer.split()
        wanted = dict(part.split("=", 1) for part in settings if "=" in part)
        long = {v: k for k, v in _SHORT_KEYS.items()}
        return [
            o
            for o in self.optimizers.values()
            if o.optimizer == name
            and all(str(o.arm_values.get(f"optimizer.{long.get(k, k)}")) == v for k, v in wanted.items())
        ]

    def configs_of(self, optimizer: str) -> list[ConfigResult]:
        """Full-budget configurations of every arm of ``optimizer`` (or of the arm with that label)."""
        return [c for o in self.arms_of(optimizer) for c in o.configs]

    def best_arm(self, optimizer: str) -> OptimizerResult | None:
        arms = [o for o in self.arms_of(optimizer) if o.best is not None]
        return min(arms, key=lambda o: (o.best.score, o.arm)) if arms else None

    @property
    def eval_interval(self) -> int | None:
        values = {r.flat.get("trainer.eval_interval") for r in self.runs} - {None}
        return int(values.pop()) if len(values) == 1 else None


@dataclass
class Analysis:
    metric: str
    baseline: str
    runs: list[Run]
    workloads: list[WorkloadResult]
    tuning: dict[str, dict[str, Any]] = field(default_factory=dict)  # experiment -> reproduce.py's tuning.json


def optimizer_sort_key(name: str, baseline: str) -> tuple:
    if name == baseline:
        return (0, 0, name)
    if name in OPTIMIZER_ORDER:
        return (1, OPTIMIZER_ORDER.index(name), name)
    return (2, 0, name)


def pick_metric(runs: Iterable[Run], requested: str | None) -> str:
    """``val/loss`` if any run logs it, else ``val/mse`` (colorization), unless one is requested."""
    if requested:
        return requested
    columns = {c for r in runs for c in r.metrics.columns}
    return "val/loss" if "val/loss" in columns or not {"val/mse"} & columns else "val/mse"


def _ratio(base: float | None, this: float | None) -> float | None:
    if base is None or this is None or this <= 0:
        return None
    return base / this


def _arm_keys(configs: list[ConfigResult], extra_ignored: Iterable[str]) -> list[str]:
    runs = [r for c in configs for r in c.runs]
    return [k for k in swept_keys(runs, extra_ignored) if not is_tuned_key(k)]


def analyze_workload(
    workload: str,
    runs: list[Run],
    metric: str,
    baseline: str,
    target: float | None,
    extra_ignored: Iterable[str] = (),
    tuning: dict[str, Any] | None = None,
) -> WorkloadResult:
    """``tuning``: the experiment's tuning.json; each run's role (tune/report) and each arm's tuning flags come
    from it."""
    configs = group_configurations(runs, metric, extra_ignored, tuning_roles(tuning or {}))
    budgets = [c.max_steps for c in configs if c.max_steps is not None]
    full = max(budgets) if budgets else None
    arms: list[OptimizerResult] = []
    for name in sorted({r.optimizer for r in runs}, key=lambda n: optimizer_sort_key(n, baseline)):
        mine = [c for c in configs if c.optimizer == name]
        at_full = [c for c in mine if c.max_steps == full or c.max_steps is None]
        keys = _arm_keys(at_full, extra_ignored)
        groups: dict[tuple, list[ConfigResult]] = {}
        for c in mine:
            groups.setdefault(tuple(repr(c.value(k)) for k in keys), []).append(c)
        for members in sorted(groups.values(), key=lambda cs: [_sortable(cs[0].value(k)) for k in keys]):
            # an arm is named by what defines it: the swept non-tuned keys, and the refresh frequency whenever
            # the optimizer has one (so "soap f=10" is said even when no other frequency ran)
            label_keys = keys + [k for k in _ALWAYS_NAMED if k not in keys and members[0].value(k) is not None]
            arm_values = {k: members[0].value(k) for k in label_keys}
            arm_full = [c for c in members if c in at_full]
            arm_runs = [r for c in members for r in c.runs]
            swept = swept_keys([r for c in arm_full for r in c.runs], extra_ignored)
            for c in members:
                c.hyperparameters = {k: c.value(k) for k in swept}
            arms.append(
                OptimizerResult(
                    optimizer=name,
                    runs=arm_runs,
                    configs=arm_full,
                    shortened=[c for c in members if c not in arm_full],
                    swept=swept,
                    best=best_of(arm_full),
                    counts=status_counts(arm_runs),
                    arm=arm_label(name, arm_values),
                    arm_values=arm_values,
                )
            )
    by_arm = {a.arm: a for a in arms}
    base = by_arm.get(baseline) or _best_arm_of(arms, baseline)
    if target is not None:
        target_source = "given with --target"
    elif base is not None and base.best is not None and math.isfinite(base.best.curve_score):
        target = base.best.curve_score
        target_source = f"best-tuned {base.arm} mean final {metric} on the fixed evaluation set the curves use"
    else:
        target_source = f"none: baseline {baseline!r} has no completed configuration without divergence"
    if base is not None:  # the baseline arm first, then the others in their order
        by_arm = {base.arm: base, **{k: v for k, v in by_arm.items() if k != base.arm}}
    finals = [c.mean for a in arms for c in a.configs if c.n]
    result = WorkloadResult(
        workload,
        runs[0].experiment,
        runs,
        full,
        base.arm if base else baseline,
        target,
        target_source,
        by_arm,
        decimals_for(finals),
        tuning,
    )
    _compare_with_baseline(result, extra_ignored)
    if target is not None:
        _fill_targets(result)
    return result


def _sortable(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0, repr(value))


def _best_arm_of(arms: list[OptimizerResult], optimizer: str) -> OptimizerResult | None:
    candidates = [a for a in arms if a.optimizer == optimizer and a.best is not None]
    return min(candidates, key=lambda a: (a.best.score, a.arm)) if candidates else None


def _compare_with_baseline(result: WorkloadResult, extra_ignored: Iterable[str]) -> None:
    """Paired test of each arm's gap to the baseline arm, and every setting in which it differs."""
    base = result.optimizers.get(result.baseline)
    if base is None or base.best is None:
        return
    base_flat = {k: v for k, v in base.best.runs[0].flat.items() if not is_ignored(k, extra_ignored)}
    for arm in result.optimizers.values():
        if arm.best is not None:
            arm.treatment = treatment(arm.best.runs[0].config)
    for arm in result.optimizers.values():
        if arm is not base and arm.best is not None:
            arm.treatment_confounds = confounds(arm.treatment, base.treatment)
        if arm is base or arm.best is None or (arm.best.n == 0 and not arm.best.diverged):
            continue
        if not arm.best.diverged:
            arm.paired = paired_test(arm.best.seed_values(), base.best.seed_values())
        flat = {k: v for k, v in arm.best.runs[0].flat.items() if not is_ignored(k, extra_ignored)}
        for key in sorted(set(flat) | set(base_flat)):
            ours, theirs = flat.get(key), base_flat.get(key)
            if ours == theirs:
                continue
            # The optimizer's own settings are what is being compared; everything else (the trainer, the data,
            # the model, and the AdamW companion that trains embeddings and head) must match, or it is a confound.
            confound = not key.startswith("optimizer.") or key.startswith("optimizer.companion.")
            arm.differences.append((key, ours, theirs, confound))
    for label, comparison in comparisons(result, None).items():
        result.optimizers[label].versus_baseline = comparison


def comparisons(result: WorkloadResult, margin: float | None) -> dict[str, Comparison]:
    """Each tested arm's verdict (by arm label) against the baseline: one Holm family per workload, equivalence
    within ``margin``."""
    tested = [o for o in result.optimizers.values() if o.paired is not None]
    return dict(zip((o.arm for o in tested), judge_all([o.paired for o in tested], margin, result.decimals)))


def _fill_targets(result: WorkloadResult) -> None:
    target = result.target
    assert target is not None
    for opt in result.optimizers.values():
        hit = crossing(opt.best.curve, target, "mean") if opt.best is not None else None
        if hit is not None:
            opt.steps_to_target, opt.seconds_to_target = hit
    base = result.optimizers.get(result.baseline)
    base_steps = base.steps_to_target if base else None
    base_secs = base.seconds_to_target if base else None
    for opt in result.optimizers.values():
        opt.efficiency_steps = _ratio(base_steps, opt.steps_to_target)
        opt.efficiency_time = _ratio(base_secs, opt.seconds_to_target)
        if opt.steps_to_target is None and opt.best is not None and opt.best.curve is not None:
            opt.efficiency_steps_bound = _ratio(base_steps, float(opt.best.curve["step"].iloc[-1]))
            opt.efficiency_time_bound = _ratio(base_secs, float(opt.best.curve["seconds"].iloc[-1]))
    # SOAP-paper method: N_base is the baseline's full budget when the target is its own final loss;
    # with an explicit target it is where the baseline's own curve reaches that target.
    if base is not None and base.best is not None and result.target_source.startswith("best-tuned"):
        n_base = float(base.best.max_steps) if base.best.max_steps else None
        t_base = base.best.seconds if math.isfinite(base.best.seconds) else None
    else:
        n_base, t_base = base_steps, base_secs
    for opt in result.optimizers.values():
        points = opt.family_points()
        # One budget is not a schedule sweep; two are reported as "cannot fit" so the gap is visible.
        if len({p.steps for p in points}) >= 2:
            opt.schedule = schedule_efficiency(points, target, n_base, t_base)


def analyze(
    runs: list[Run],
    metric: str | None = None,
    baseline: str = "adamw",
    target: float | None = None,
    extra_ignored: Iterable[str] = (),
    tuning: Mapping[str, dict[str, Any]] | None = None,
) -> Analysis:
    """``tuning``: experiment → its tuning.json; where given, each run's role (tune/report) comes from it."""
    tuning = dict(tuning or {})
    metric = pick_metric(runs, metric)
    by_workload: dict[str, list[Run]] = {}
    for run in runs:
        if run.status != "unreadable":
            by_workload.setdefault(run.workload, []).append(run)
    workloads = [
        analyze_workload(w, rs, metric, baseline, target, tuple(extra_ignored), tuning.get(rs[0].experiment))
        for w, rs in sorted(by_workload.items())
    ]
    return Analysis(metric=metric, baseline=baseline, runs=runs, workloads=workloads, tuning=tuning)


def machine_shared(runs: Iterable[Run]) -> str | None:
    """Why wall-clock numbers from these runs are unreliable (a shared machine), or None if they look clean.

    The trainer marks a run ``machine_shared`` in its summary when its steps' wall time outran their CPU
    time or the load average exceeded what the run itself explains (see ``soapbench.machine_load``).
    """
    shared = [(r, (r.summary or {}).get("machine_shared") or {}) for r in runs]
    shared = [(r, m) for r, m in shared if m.get("shared")]
    if not shared:
        return None
    worst = max(float(m.get("slowed_fraction") or 0.0) for _, m in shared)
    load = max(float(m.get("max_load") or 0.0) for _, m in shared)
    return f"machine shared: {worst:.0%} of steps slowed >1.5× in the worst of {len(shared)} run(s)" + (
        f", load up to {load:.1f}" if load else ""
    )


def fairness_warnings(workload: WorkloadResult) -> list[str]:
    """Things a reader must know before trusting the comparison (shown under the main table)."""
    notes = []
    seeds: dict[str, int] = {}
    for opt in workload.optimizers.values():
        best = opt.best
        if best is None or not math.isfinite(best.score):
            continue
        seeds[opt.arm] = best.n
        pending = best.counts["running"] + best.counts["no_summary"] + best.counts["failed"]
        if pending:
            notes.append(
                f"{opt.arm}: {pending} seed(s) of the best configuration did not complete "
                f"(running, failed or no summary); its mean uses n={best.n}."
            )
        # Only learning rates: an edge value of e.g. precondition_frequency = 1 is a hard floor, not a tuning gap.
        for key in (k for k in opt.swept if k.split(".")[-1] in ("lr", "learning_rate")):
            tried = sorted(
                {v for c in opt.configs if isinstance(v := c.value(key), (int, float)) and not isinstance(v, bool)}
            )
            # With three or more values tried, a best value on the edge means the optimum may lie outside.
            if len(tried) >= 3 and best.value(key) in (tried[0], tried[-1]):
                notes.append(
                    f"{opt.arm}: best {key} = {best.value(key)} is at the edge of the values "
                    f"tried ({', '.join(map(str, tried))}); the optimum may lie outside the grid."
                )
        differing_settings = [k for k, _, _, confound in opt.differences if confound]
        if differing_settings:
            notes.append(
                f"{opt.arm}: confound: differs from the baseline arm {workload.baseline} in "
                f"non-optimizer settings ({', '.join(differing_settings)}); see the arms table."
            )
        if opt.treatment_confounds:
            notes.append(
                f"{opt.arm}: confound: treats the parameters it does not compare differently from "
                f"{workload.baseline}: "
                + "; ".join(f"{k} {_short(v)} (baseline {_short(b)})" for k, v, b in opt.treatment_confounds)
                + "."
            )
        slow = timing_outliers(opt)
        slow_best = [name for name in slow if name in {r.name for r in best.completed}]
        if slow:
            notes.append(
                f"{opt.arm}: timing outlier(s): "
                + ", ".join(
                    f"{name} {v:.3g} s/step vs the arm's median {m:.3g} for the same number of steps"
                    for name, (v, m) in slow.items()
                )
                + f" (> {TIMING_OUTLIER_EXCESS:.0%} slower for the same work)"
                + (
                    f"; {len(slow_best)} of them in the best configuration, so its times are suspect."
                    if slow_best
                    else "."
                )
            )
        differing = [r.name for r in best.completed if (r.summary or {}).get("segments_differ")]
        if differing:
            notes.append(
                f"{opt.arm}: resumed on a different device, CPU or thread count part-way "
                f"({', '.join(differing)}): its wall-clock mixes segments that are not comparable."
            )
    if len(set(seeds.values())) > 1:
        notes.append(
            "best configurations average different numbers of seeds: "
            + ", ".join(f"{k} n={v}" for k, v in seeds.items())
            + "."
        )
    devices = sorted(
        {str((r.summary or {}).get("device")) for o in workload.optimizers.values() if o.best for r in o.best.completed}
    )
    if len(devices) > 1:
        notes.append(
            f"the best configurations ran on different devices ({'; '.join(devices)}): "
            "wall-clock numbers are not comparable."
        )
    shared = machine_shared(r for o in workload.optimizers.values() if o.best for r in o.best.completed)
    if shared:
        notes.append(f"{shared}: every wall-clock number from those runs is marked unreliable.")
    return notes


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, tuple):
        return "(" + ", ".join(map(_short, value)) + ")"
    return str(value)


def pairwise(workload: WorkloadResult, optimizer: str, versus: str, match: Mapping[str, Any] | None = None) -> dict:
    """Efficiency of ``optimizer`` (best config, optionally constrained by ``match``) vs ``versus``'s best.

    Used to put our numbers beside a paper's claims against a baseline other than the report's. The
    target is ``versus``'s mean final loss; curve ratios always, the schedule fit when possible.
    """
    mine = workload.configs_of(optimizer)
    theirs = workload.best_arm(versus)
    out: dict[str, Any] = {"steps": None, "time": None, "fit_steps": None, "fit_time": None, "fit": None}
    if not mine or not theirs or theirs.best is None or not math.isfinite(theirs.best.curve_score):
        return out
    config = best_of(mine, match)
    if config is None or config.curve is None:
        return out
    arm = next(o for o in workload.optimizers.values() if config in o.configs)
    target = theirs.best.curve_score
    hit_mine, hit_theirs = crossing(config.curve, target, "mean"), crossing(theirs.best.curve, target, "mean")
    if hit_mine and hit_theirs:
        out["steps"], out["time"] = hit_theirs[0] / hit_mine[0], hit_theirs[1] / hit_mine[1]
    points = arm.family_points(config)  # the arm's own fit's points: no tuning seed among them
    n_base = float(theirs.best.max_steps) if theirs.best.max_steps else None
    t_base = theirs.best.seconds if math.isfinite(theirs.best.seconds) else None
    fitted = schedule_efficiency(points, target, n_base, t_base)
    out["fit_steps"], out["fit_time"], out["fit"] = fitted.steps.efficiency, fitted.time.efficiency, fitted
    return out


# A run slower per step than the median of the same arm's runs of the same length by more than this fraction is a
# timing outlier: the same work took longer, so the machine (not the optimizer) is the likely cause.
TIMING_OUTLIER_EXCESS = 0.30


def seconds_per_step(run: Run) -> float | None:
    summary = run.summary or {}
    seconds, steps = summary.get("train_seconds"), summary.get("steps")
    if not isinstance(seconds, (int, float)) or not isinstance(steps, (int, float)) or steps <= 0:
        return None
    return float(seconds) / float(steps)


def timing_outliers(arm: OptimizerResult) -> dict[str, tuple[float, float]]:
    """Run name → (its seconds per step, the median of its arm's completed runs of the same length).

    Needs at least 3 runs of that length for the median to stand for "the same work".
    """
    by_length: dict[Any, list[tuple[Run, float]]] = {}
    for config in arm.configs + arm.shortened:
        for run in config.completed:
            if (per_step := seconds_per_step(run)) is not None:
                by_length.setdefault(config.max_steps, []).append((run, per_step))
    out = {}
    for members in by_length.values():
        if len(members) < 3:
            continue
        median = float(np.median([v for _, v in members]))
        out.update({run.name: (v, median) for run, v in members if v > (1 + TIMING_OUTLIER_EXCESS) * median})
    return out
