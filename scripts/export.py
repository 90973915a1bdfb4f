"""The run store as parquet tables: one row per run (runs.parquet) and one per logged record (metrics.parquet).

    python scripts/export.py                                  # every experiment under results/runs -> results/export
    python scripts/export.py --experiment whitening_nanogpt_cpu --out /tmp/tables

Read them with pandas (``pd.read_parquet``) or DuckDB; the columns are described in soapbench/report/export.py.
Bad input exits with status 2 and one line on stderr; the output folder is new, empty or an earlier export's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from soapbench.outputs import output_dir_error
from soapbench.report.export import export_store
from soapbench.report.store import ReportError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument("--experiment", nargs="+", default=None, help="default: every experiment in the store")
    parser.add_argument("--out", type=Path, default=None, help="default: <results-dir>/export")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or args.results_dir / "export"
    try:
        problem = output_dir_error(out, "--out")
        if problem:
            raise ReportError(problem)
        runs, records = export_store(args.results_dir, out, args.experiment)
    except ReportError as err:
        print(f"export: error: {err}", file=sys.stderr)
        return 2
    print(f"{runs} runs and {records} metric records written to {out}/runs.parquet and {out}/metrics.parquet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
