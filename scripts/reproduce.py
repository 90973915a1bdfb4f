"""Reproduce a paper comparison with one command: run its sweep, then report ours beside the paper's numbers.

    python scripts/reproduce.py whitening_nanogpt --scale cpu
    python scripts/reproduce.py whitening_nanogpt --scale full -- hydra/launcher=local_parallel hydra.launcher.n_jobs=8

Each reproduction is an experiment preset per scale (``configs/experiment/``, whose
``hydra.sweeper.params`` define the grid) and a reference file of paper numbers
(``results/reference/``). Re-running is safe: finished runs are skipped, interrupted ones resume.
Everything after ``--`` is passed to the sweep (launcher settings, extra overrides).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Reproduction:
    description: str
    experiments: dict[str, str]  # scale -> experiment preset
    reference: str
    compute: dict[str, str]
    # The optimizer whose best final loss is the target for steps/time-to-target and efficiency ratios.
    baseline: str = "adamw"


REPRODUCTIONS = {
    "whitening_nanogpt": Reproduction(
        "(a) gradient-whitening paper: AdamW vs Shampoo vs SOAP at precondition frequency 1 and 10, nanoGPT char",
        {"cpu": "whitening_nanogpt_cpu", "full": "whitening_nanogpt"},
        "whitening_nanogpt",
        {"cpu": "about 25 minutes on 2 CPU cores", "full": "15 runs, about 1.5 H100-hours"},
    ),
    "whitening_colorization": Reproduction(
        "(b) gradient-whitening paper: Adam vs Shampoo vs SOAP (frequency 1 and 10) on image colorization",
        {"cpu": "whitening_colorization_cpu", "full": "whitening_colorization"},
        "whitening_colorization",
        {"cpu": "about 25 minutes on 2 CPU cores", "full": "15 runs, about 3 H100-hours"},
    ),
    "soap_lm": Reproduction(
        "(c) SOAP paper: AdamW vs Shampoo vs SOAP on 360m/660m LMs (lr sweep, frequency ablation, efficiency fit)",
        {"cpu": "soap_lm_cpu", "full": "soap_lm_360m"},
        "soap_lm",
        {"cpu": "about 30 minutes on 2 CPU cores", "full": "about 40 runs of ~4 H100-hours: a cluster job (hydra/launcher=slurm)"},
    ),
    "soap_muon": Reproduction(
        "(d) SOAP-Muon report: Muon vs SOAP-Muon at precondition frequency 1 and 40",
        {"cpu": "soap_muon_cpu", "full": "soap_muon_124m"},
        "soap_muon",
        {"cpu": "about 20 minutes on 2 CPU cores", "full": "18 runs of ~2.5 H100-hours"},
        baseline="muon",
    ),
    "kl_methods": Reproduction(
        "(e) KL paper: KL-Shampoo and KL-SOAP vs Shampoo and SOAP",
        {"cpu": "kl_methods_cpu", "full": "kl_methods_124m"},
        "kl_methods",
        {"cpu": "about 30 minutes on 2 CPU cores", "full": "4 runs of ~3 H100-hours"},
        baseline="shampoo",
    ),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(REPRODUCTIONS), help="which paper comparison")
    parser.add_argument("--scale", choices=("cpu", "full"), default="cpu", help="cpu: minutes on a laptop; full: the paper's setup on GPUs")
    parser.add_argument("--results-dir", default="results", help="the results store (default: results)")
    parser.add_argument("--report-only", action="store_true", help="skip the sweep; remake the report from the store")
    args = parser.parse_args(argv)

    reproduction = REPRODUCTIONS[args.name]
    experiment = reproduction.experiments[args.scale]
    print(f"{reproduction.description}\nscale: {args.scale} (expected compute: {reproduction.compute[args.scale]})", flush=True)
    if not args.report_only:
        sweep = [sys.executable, str(REPO / "scripts" / "train.py"), "-m", f"experiment={experiment}",
                 f"paths.results_dir={args.results_dir}", *extra]  # fmt: skip
        print("$ " + " ".join(sweep[1:]), flush=True)
        if subprocess.run(sweep).returncode != 0:
            print(f"reproduce: error: the sweep for {experiment} did not start (see above)", file=sys.stderr)
            return 2
    report = [sys.executable, str(REPO / "scripts" / "report.py"), "--experiment", experiment,
              "--results-dir", args.results_dir, "--reference", reproduction.reference,
              "--baseline", reproduction.baseline]  # fmt: skip
    print("$ " + " ".join(report[1:]), flush=True)
    return subprocess.run(report).returncode


if __name__ == "__main__":
    sys.exit(main())
