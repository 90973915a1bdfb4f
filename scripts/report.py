"""Report over the local results store: tables, efficiency vs a baseline, figures, paper references.

    python scripts/report.py --experiment shakespeare_cpu
    python scripts/report.py --experiment shakespeare_cpu --reference whitening_nanogpt:paper
    python scripts/report.py --experiment soap_efficiency --baseline adamw --target 1.52
    python scripts/report.py --experiment a b            # several workloads: performance profiles

Writes <out>/report.md, report.csv, configurations.csv, sources.json and the figures (PNG, each with a
.sources.json sidecar) and prints the main table. Output goes to a temp dir renamed into place at the end,
so bad input or a crash leaves nothing half-written. --out must be new, empty or a folder a report wrote
(it replaces only the files listed in its .soapbench-report), and outside the run store. Bad input exits
with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

from soapbench.outputs import output_dir_error
from soapbench.report.build import ReportRequest, prepare, publish
from soapbench.report.store import ReportError

DEFAULT_BASELINE = "adamw"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", nargs="+", required=True, help="experiment name(s) under <results-dir>/runs")
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument("--out", type=Path, default=None, help="default: <results-dir>/reports/<experiment>")
    parser.add_argument(
        "--baseline", default=None, help=f"optimizer whose best final loss is the target (default {DEFAULT_BASELINE})"
    )
    parser.add_argument("--target", type=float, default=None, help="explicit target loss (one workload only)")
    parser.add_argument("--metric", default=None, help="eval metric (default val/loss, else val/mse)")
    parser.add_argument("--reference", default=None, help="NAME or NAME:SETTING of <results-dir>/reference/NAME.yaml")
    parser.add_argument(
        "--reference-dir",
        type=Path,
        default=None,
        help="default: <results-dir>/reference, else the repository's results/reference",
    )
    parser.add_argument("--wandb-project", default=None, help="read runs from this W&B project instead of the store")
    parser.add_argument(
        "--ignore-key",
        action="append",
        default=[],
        help="extra config key (prefix) to ignore when grouping runs; repeatable",
    )
    parser.add_argument("--no-figures", action="store_true", help="tables only (faster)")
    return parser.parse_args(argv)


def check_request(args: argparse.Namespace, request: ReportRequest, out: Path) -> None:
    """Bad input that would otherwise give empty tables (a baseline or metric no run has), a meaningless target,
    or a traceback after the work (an unwritable --out)."""
    if args.target is not None and not (math.isfinite(args.target) and args.target > 0):
        raise ReportError(f"--target {args.target}: must be a positive finite loss")
    problem = output_dir_error(out, "--out")
    if problem:
        raise ReportError(problem)
    if args.baseline is None and args.metric is None:
        return
    analysis, _ = prepare(request)
    if args.metric is not None and not any(args.metric in r.metrics.columns for r in analysis.runs):
        logged = sorted({c for r in analysis.runs for c in r.metrics.columns if "/" in c})
        raise ReportError(f"--metric {args.metric}: no run logs it; logged: {', '.join(logged) or 'nothing'}")
    # as the analysis finds its baseline: an arm's label ("soap f=10") or an optimizer's name (its best arm)
    arms = [arm for w in analysis.workloads for arm in w.optimizers.values()]
    if args.baseline is not None and not any(args.baseline in (arm.arm, arm.optimizer) for arm in arms):
        names = sorted({arm.optimizer for arm in arms} | {arm.arm for arm in arms})
        raise ReportError(
            f"--baseline {args.baseline}: no such optimizer in these runs; choose from {', '.join(names)}"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or args.results_dir / "reports" / "+".join(args.experiment)
    request = ReportRequest(
        experiments=args.experiment,
        results_dir=args.results_dir,
        baseline=args.baseline or DEFAULT_BASELINE,
        target=args.target,
        metric=args.metric,
        reference=args.reference,
        reference_dir=args.reference_dir,
        wandb_project=args.wandb_project,
        ignore_keys=tuple(args.ignore_key),
        figures=not args.no_figures,
        command=shlex.join(["python", "scripts/report.py", *(argv if argv is not None else sys.argv[1:])]),
    )
    try:
        check_request(args, request, out)
        tables = publish(request, out)
    except ReportError as err:
        print(f"report: error: {err}", file=sys.stderr)
        return 2
    print(tables, end="")
    print(f"\nreport written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
