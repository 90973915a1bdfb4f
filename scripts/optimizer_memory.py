"""Optimizer-state memory of every registered optimizer on a model preset: measured vs theoretical vs AdamW.

    python scripts/optimizer_memory.py --model lm_360m
    python scripts/optimizer_memory.py --model nanogpt_char --optimizers soap,adamw --json memory.json

Prints the memory table of scripts/bench_optimizers.py (issue 3 item 8) with how it was produced; large presets
are measured on the meta device, see soapbench/bench/memory.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from soapbench.bench import catalog, memory
from soapbench.bench.report import collect_metadata, memory_markdown
from soapbench.outputs import output_file_error
from soapbench.results import atomic_write_text


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nanogpt_char", help="preset in configs/model")
    parser.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE", help="Hydra override (repeatable)"
    )
    parser.add_argument("--optimizers", default="all", help="'all' or a comma list of registered names")
    parser.add_argument("--device", default="cpu", help="where presets small enough to materialise are measured")
    parser.add_argument("--steps", type=int, default=2, help="step() calls before measuring")
    parser.add_argument("--materialize-limit", type=int, default=50_000_000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, default=None, help="also write the rows (and metadata) as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    problem = args.json and output_file_error(args.json, "--json")
    if problem:  # before measuring: the rows would otherwise be lost to a traceback at the end
        print(f"optimizer_memory: error: {problem}", file=sys.stderr)
        return 2
    try:
        inputs = catalog.resolve_inputs(args.model, args.override, args.optimizers, args.device)
    except catalog.BenchInputError as error:
        print(f"optimizer_memory: error: {error}", file=sys.stderr)
        return 2
    cfg, setups, device, params = inputs.config, inputs.setups, inputs.device, inputs.params
    import_failures = inputs.import_failures
    rows = memory.memory_rows(setups, cfg["model"], device=str(device), steps=args.steps,
                              materialize_limit=args.materialize_limit)  # fmt: skip
    section = {
        "protocol": memory.protocol(steps=args.steps, materialize_limit=args.materialize_limit),
        "rows": [row.as_dict() for row in rows],
    }
    metadata = collect_metadata(["scripts/optimizer_memory.py", *argv], device, {})
    print(f"# Optimizer-state memory: {args.model} ({params:,} parameters)\n")
    print(f"`{metadata['command']}` at {metadata['git_commit']}, {metadata['timestamp_utc']}, {metadata['device']}\n")
    print(memory_markdown(section))
    for module, error in import_failures.items():
        print(f"\nnote: `{module}` failed to import, its optimizers are missing: {error}")
    if args.json:
        payload = {"metadata": metadata, "model": {"preset": args.model, "params": params}, "memory": section}
        atomic_write_text(args.json, json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
