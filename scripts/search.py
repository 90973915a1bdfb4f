"""Hyperparameter search (Optuna TPE / random, or quasi-random Halton / Sobol) over a space in configs/hparams_search/.

    python scripts/search.py soap_lr_betas
    python scripts/search.py soap_lr_betas --sampler halton --trials 16 --study soap_lr_betas_halton
    python scripts/search.py soap_lr_betas trainer.max_steps=600 --study soap_lr_betas_600   # extra train overrides

Each trial is a run of scripts/train.py under results/runs/<study>/; the study (results/searches/<study>/study.db)
is resumable: the same command continues it, and trials interrupted by a kill resume from their checkpoints.
The objective is the final validation loss (diverged = +inf). Bad input: one error line, exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from soapbench.errors import SoapbenchError
from soapbench.search.driver import SAMPLERS, best_line, load_search, run_search, validate_overrides


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("search", help="name of configs/hparams_search/<name>.yaml, or a path to a search yaml")
    parser.add_argument("overrides", nargs="*", help="extra scripts/train.py overrides for every trial")
    parser.add_argument("--trials", type=int, default=None, help="finished trials to reach (default: the yaml's)")
    parser.add_argument("--sampler", choices=SAMPLERS, default=None, help="default: the yaml's")
    parser.add_argument("--study", default=None, help="study name (default: the yaml's study)")
    parser.add_argument("--jobs", type=int, default=1, help="trials at once (the cores are shared between them)")
    parser.add_argument("--results-dir", type=Path, default=None, help="default: $SOAPBENCH_RESULTS or results")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        search = load_search(args.search, overrides=args.overrides, trials=args.trials, sampler=args.sampler,
                             study=args.study, jobs=args.jobs, results_dir=args.results_dir)  # fmt: skip
        validate_overrides(search)
        study = run_search(search, print_line=lambda line: print(line, flush=True))
    except SoapbenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(best_line(study, search))
    print(f"trials: {search.directory / 'trials.csv'}; report: python scripts/report.py --experiment {search.study}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
