"""Benchmark every registered optimizer on a model preset: step time (vs peer libraries), state memory, throughput.

    python scripts/bench_optimizers.py --model nanogpt_char --optimizers all --steps 30 --warmup 3 --threads 2
    python scripts/bench_optimizers.py --model nanogpt_char_cpu --optimizers soap,adamw --no-peers --no-throughput
    python scripts/bench_optimizers.py --model lm_360m --device cuda --no-timing          # GPU: bf16, ≥0.5M tokens
    python scripts/bench_optimizers.py --model nanogpt_char_cpu --optimizers adamw,soap --threads 2 \
        --no-timing --no-memory --no-throughput --train-step-ratio                         # whole step vs AdamW

Writes ``<out>/<model>_<device>_<YYYY-MM-DD>.md`` and ``.json`` (atomically) and prints the Markdown. What each
section measures and how: soapbench/bench/{step_timing,peers,memory,throughput,train_step}.py, restated in the report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from soapbench.bench import catalog, floor, memory, peers, step_timing, throughput, train_step
from soapbench.bench.report import collect_metadata, render_markdown, write_report
from soapbench.bench.shapes import GradientBank, build_preset_model
from soapbench.errors import ConfigError
from soapbench.naming import plain_name
from soapbench.outputs import output_dir_error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nanogpt_char", help="preset in configs/model (default nanogpt_char)")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Hydra override applied to the preset's config, e.g. model.n_layer=2 (repeatable)",
    )
    parser.add_argument("--optimizers", default="all", help="'all' (every registered optimizer) or a comma list")
    parser.add_argument(
        "--steps", type=int, default=30, help="timed step() calls (rounded up to whole refresh periods)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed step() calls before timing (>= 1)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1")
    parser.add_argument("--seed", type=int, default=0, help="model init and gradient bank seed")
    parser.add_argument("--grad-sets", type=int, default=2, help="distinct fixed gradient sets, used in turn")
    parser.add_argument("--grad-scale", type=float, default=1e-2, help="std of the fixed random gradients")
    parser.add_argument("--timing", action=argparse.BooleanOptionalAction, default=True, help="step timing")
    parser.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time pytorch-optimizer / heavyball implementations beside ours",
    )
    parser.add_argument(
        "--heavyball-compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="leave heavyball's torch.compile on (its default)",
    )
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True, help="state memory table")
    parser.add_argument("--memory-steps", type=int, default=2, help="step() calls before measuring state")
    parser.add_argument(
        "--materialize-limit",
        type=int,
        default=50_000_000,
        help="presets up to this many parameters are measured on real tensors, larger on meta",
    )
    parser.add_argument(
        "--throughput",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="short real-trainer runs per optimizer",
    )
    parser.add_argument("--throughput-steps", type=int, default=5)
    parser.add_argument("--throughput-warmup", type=int, default=2)
    parser.add_argument("--throughput-batch-size", type=int, default=None, help="sequences per micro-batch")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default=None,
        help="trainer precision (default: bf16 for >100M-parameter presets on GPU, else the preset's)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the model in the throughput runs")
    parser.add_argument(
        "--min-batch-tokens",
        type=int,
        default=None,
        help="accumulate to at least this many tokens per step (default 524288 for large presets on GPU)",
    )
    parser.add_argument(
        "--train-step-ratio",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="whole training steps of every optimizer vs AdamW's, in alternating blocks",
    )
    parser.add_argument(
        "--ratio-variant",
        action="append",
        default=[],
        metavar="NAME+KEY=VALUE",
        help="an extra arm of the ratio benchmark, e.g. soap+stack_shapes=false (repeatable)",
    )
    parser.add_argument("--ratio-blocks", type=int, default=8, help="rounds of one block per optimizer")
    parser.add_argument("--ratio-warmup", type=int, default=2, help="untimed training steps per optimizer first")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"), help="report directory")
    parser.add_argument("--tag", default=None, help="suffix of the report name, to keep several runs of a day apart")
    args = parser.parse_args(argv)
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (SOAP-like optimizers only build their preconditioner on the first call)")
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.ratio_blocks < 1 or args.ratio_warmup < 1:
        parser.error("--ratio-blocks and --ratio-warmup must be >= 1")
    if args.tag is not None:
        try:
            plain_name("--tag", args.tag, "rerun2")  # part of the report's file name under --out
        except ConfigError as error:
            parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    problem = output_dir_error(args.out, "--out")
    if problem:  # before any measurement: the first section's report would otherwise fail after minutes
        print(f"bench_optimizers: error: {problem}", file=sys.stderr)
        return 2
    try:
        inputs = catalog.resolve_inputs(args.model, args.override, args.optimizers, args.device)
    except catalog.BenchInputError as error:
        print(f"bench_optimizers: error: {error}", file=sys.stderr)
        return 2
    for variant in args.ratio_variant:
        name, knobs = train_step.arm_overrides(variant)
        if name not in catalog.discover_optimizers()[0] or not knobs or not all("=" in knob for knob in knobs):
            print(f"bench_optimizers: error: --ratio-variant {variant!r}: expected <optimizer>+<key>=<value>[+...] "
                  "with a registered optimizer, e.g. soap+stack_shapes=false", file=sys.stderr)  # fmt: skip
            return 2
    names, cfg, setups, device, params = inputs.names, inputs.config, inputs.setups, inputs.device, inputs.params
    import_failures = inputs.import_failures
    model_cfg = cfg["model"]
    notes = [
        f"`{module}` failed to import, its optimizers are missing: {error}" for module, error in import_failures.items()
    ]

    arguments = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    extra = {"tag": args.tag, "arguments": arguments}
    if args.timing and args.peers:
        extra["peer_libraries"] = peers.library_status()
        extra["heavyball_compile_mode"] = peers.configure_heavyball(args.heavyball_compile)
    metadata = collect_metadata(["scripts/bench_optimizers.py", *argv], device, extra)
    sections: dict = {}
    report = {
        "metadata": metadata,
        "model": {"preset": args.model, "params": params, "overrides": list(args.override), "config": model_cfg},
        "optimizers": {setup.name: setup.describe() for setup in setups},
        "sections": sections,
        "notes": notes,
    }

    if args.timing:
        print(f"step timing: {len(setups)} optimizers{' + peers' if args.peers else ''} on {args.model}", flush=True)
        base_model = build_preset_model(model_cfg, device, args.seed)
        bank = GradientBank.for_model(base_model, sets=args.grad_sets, scale=args.grad_scale, seed=args.seed,
                                      device=device)  # fmt: skip
        contestants = step_timing.build_contestants(
            setups, base_model, steps=args.steps, warmup=args.warmup, with_peers=args.peers
        )
        del base_model
        timing_protocol = step_timing.protocol(
            steps=args.steps,
            warmup=args.warmup,
            sets=args.grad_sets,
            scale=args.grad_scale,
            threads=args.threads,
            device=str(device),
        )

        def progress(line: str) -> None:
            print(line, flush=True)
            if line.lstrip().startswith("round"):  # between rounds: keep what is measured so far
                sections["step_timing"] = {"protocol": timing_protocol, "partial": line.strip(),
                                           "contestants": [c.summary() for c in contestants]}  # fmt: skip
                write_report(report, args.out)

        step_timing.run_interleaved(contestants, bank, device, progress=progress)
        sections["step_timing"] = {"protocol": timing_protocol, "contestants": [c.summary() for c in contestants]}
        del contestants, bank
        write_report(report, args.out)  # after every section: a later failure keeps what was measured
        soap = next((setup for setup in setups if setup.name == "soap"), None)
        if soap is not None:
            print("soap matmul floor", flush=True)
            shapes = floor.main_optimizer_shapes(soap, model_cfg)
            sections["soap_floor"] = floor.soap_floor(shapes, soap.effective_hparams(), device)
            write_report(report, args.out)

    if args.memory:
        print(f"memory: {len(setups)} optimizers on {args.model} ({params:,} parameters)", flush=True)
        rows = memory.memory_rows(setups, model_cfg, device=str(device), steps=args.memory_steps,
                                  materialize_limit=args.materialize_limit, seed=args.seed)  # fmt: skip
        sections["memory"] = {
            "protocol": memory.protocol(steps=args.memory_steps, materialize_limit=args.materialize_limit),
            "rows": [row.as_dict() for row in rows],
        }
        write_report(report, args.out)

    if args.throughput:
        options = throughput.ThroughputOptions(
            steps=args.throughput_steps, warmup=args.throughput_warmup, device=str(device),
            batch_size=args.throughput_batch_size, precision=args.precision, compile=args.compile,
            min_batch_tokens=args.min_batch_tokens, overrides=tuple(args.override),
        )  # fmt: skip
        print(f"throughput: {len(names)} short trainer runs on {args.model}", flush=True)
        rows = throughput.throughput_rows(args.model, setups, cfg, params, options)
        sections["throughput"] = {"protocol": throughput.protocol(options), "rows": [row.__dict__ for row in rows]}

    if args.train_step_ratio:
        print(f"training-step ratio: {', '.join(names)} on {args.model}, alternating blocks", flush=True)
        sections["train_step_ratio"] = train_step.ratio_section(
            args.model, [*names, *args.ratio_variant], overrides=args.override, device=device, warmup=args.ratio_warmup,
            blocks=args.ratio_blocks, threads=args.threads, progress=lambda line: print(line, flush=True),
        )  # fmt: skip

    md_path, json_path = write_report(report, args.out)
    print(render_markdown(report))
    print(f"wrote {md_path} and {json_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
