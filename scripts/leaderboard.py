"""One score across the committed reproductions: performance-profile integral and speedup over AdamW, by steps and time.

    python scripts/leaderboard.py                     # results/reproductions/*/report.csv -> results/leaderboard/

Prints the table and writes leaderboard.md and leaderboard.csv (the definitions are in soapbench/report/leaderboard.py).
Bad input exits with status 2 and one line on stderr; the output folder is new, empty or an earlier leaderboard's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from soapbench.outputs import OutputFolderError, output_dir_error, owned_files, write_owner_marker
from soapbench.report.leaderboard import LeaderboardError, read_entries, render, score, write_csv

MARKER = ".soapbench-leaderboard"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--reproductions-dir",
        type=Path,
        default=Path("results/reproductions"),
        help="folder of reproductions, each with a report.csv",
    )
    parser.add_argument("--out", type=Path, default=Path("results/leaderboard"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sources = sorted(args.reproductions_dir.glob("*/report.csv"))
        if not sources:
            raise LeaderboardError(f"no */report.csv under {args.reproductions_dir}; pass --reproductions-dir")
        out = args.out
        problem = output_dir_error(out, "--out")
        if problem:
            raise LeaderboardError(problem)
        owned_files(out, MARKER, "leaderboard")
        scores = score(read_entries(sources))
    except (LeaderboardError, OutputFolderError) as err:
        print(f"leaderboard: error: {err}", file=sys.stderr)
        return 2
    text = render(scores, sources)
    out.mkdir(parents=True, exist_ok=True)
    (out / "leaderboard.md").write_text(text, encoding="utf-8")
    write_csv(scores, out / "leaderboard.csv")
    write_owner_marker(out, MARKER, "scripts/leaderboard.py", ["leaderboard.md", "leaderboard.csv"])
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
