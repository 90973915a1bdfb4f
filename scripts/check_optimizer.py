"""Check any optimizer against soapbench's optimizer contract and print a pass/fail table.

    python scripts/check_optimizer.py soap                                   # ours, at configs/optimizer/soap.yaml
    python scripts/check_optimizer.py torch.optim.AdamW --kwargs lr=1e-3
    python scripts/check_optimizer.py heavyball_soap                         # a peer (pip install -e ".[peers]")
    python scripts/check_optimizer.py mypkg.MyOpt --kwargs lr=3e-4 betas=[0.9,0.95] --steps 200

The target is a registered optimizer or an optimizer yaml (its hyperparameters), or pkg.module.Class (its defaults);
--kwargs overrides them. Exit 0 when every check passes (or does not apply), 1 when one fails, 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from soapbench.errors import SoapbenchError
from soapbench.optimizer_check import check_optimizer, parse_kwargs, render
from soapbench.optimizers.registry import OptimizerConfigError
from soapbench.outputs import output_file_error
from soapbench.results import atomic_write_text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "optimizer", help="registered name or optimizer yaml (soap, heavyball_soap) or pkg.module.Class"
    )
    parser.add_argument(
        "--kwargs", nargs="*", default=[], metavar="NAME=VALUE", help="constructor keywords (YAML values)"
    )
    parser.add_argument("--steps", type=int, default=100, help="nanogpt_char_cpu steps for the run beside AdamW")
    parser.add_argument(
        "--golden", default="auto", help="golden run for parity (soap_f64, adamw_f64, ...), auto, or none"
    )
    parser.add_argument("--no-contract", action="store_true", help="skip the generic contract")
    parser.add_argument("--no-training", action="store_true", help="skip the nanogpt_char_cpu and resume runs")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be >= 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # before the checks: an unwritable --json would otherwise fail only after minutes of them
    problem = args.json and output_file_error(args.json, "--json")
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        target, rows = check_optimizer(
            args.optimizer, parse_kwargs(args.kwargs), steps=args.steps, contract=not args.no_contract,
            training=not args.no_training, golden=args.golden, progress=lambda line: print(line, file=sys.stderr, flush=True),
        )  # fmt: skip
    except (SoapbenchError, OptimizerConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(render(target, rows))
    if args.json:
        atomic_write_text(args.json, json.dumps({"optimizer": target.description, "kwargs": repr(target.kwargs),
                                         "rows": [asdict(r) for r in rows]}, indent=2) + "\n")  # fmt: skip
    return 1 if any(r.status == "fail" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
