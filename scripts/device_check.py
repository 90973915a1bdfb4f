"""The prepared GPU check: lm_360m step times per optimizer (bf16 + compile), nanoGPT trains, SOAP's refresh.

    python scripts/device_check.py                 # on the GPU: about 8 minutes on one H100/H200, no network
    python scripts/device_check.py --tiny          # CPU smoke mode (CI): the same code on tiny models, ~1 minute

Writes ``<out>/<model>_<device>_<date>_device-check.{md,json}`` atomically after every arm and section, so a run
cut off by a time limit keeps what finished; prints one line per section and the final tables. What each section
measures: soapbench/bench/device.py, restated in the report.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from soapbench.bench import device as check
from soapbench.bench.report import collect_metadata, report_paths
from soapbench.outputs import output_dir_error
from soapbench.results import atomic_write_text

SECTIONS = ("lm_step", "nanogpt", "refresh")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke mode: tiny models, a few steps (CI)")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--batch-size", type=int, default=64, help="lm_360m sequences per micro-batch (GPU mode)")
    parser.add_argument("--steps", type=int, default=30, help="timed lm steps per optimizer (GPU mode)")
    parser.add_argument("--nanogpt-steps", type=int, default=300, help="nanogpt_char training steps (GPU mode)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=450.0,
        help="optional lm arms (SOAP-Muon, KL-SOAP) start only while this budget holds one more arm",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"), help="report directory")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.sections.split(",")) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    for name in ("batch_size", "steps", "nanogpt_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    problem = output_dir_error(args.out, "--out")
    if problem:  # before the device time is spent
        parser.exit(2, f"device_check: error: {problem}\n")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("device_check: error: --device cuda but CUDA is not available; use --tiny for the CPU check",
              file=sys.stderr)  # fmt: skip
        return 2
    plan = check.tiny_plan() if args.tiny else check.gpu_plan(
        batch_size=args.batch_size, steps=args.steps, nanogpt_steps=args.nanogpt_steps, budget_seconds=args.budget_s
    )  # fmt: skip
    metadata = collect_metadata(["scripts/device_check.py", *argv], device, {"tag": "device-check"})
    report = {"metadata": metadata, "model": {"preset": plan.lm_preset}, "plan": check.plan_dict(plan),
              "sections": {}, "notes": list(plan.notes)}  # fmt: skip
    md_path, json_path = report_paths(args.out, plan.lm_preset, metadata)

    def write() -> None:
        import json

        atomic_write_text(json_path, json.dumps(report, indent=2, default=str) + "\n")
        atomic_write_text(md_path, check.render_device_check(report))

    def keep(name: str):
        def emit(section: dict) -> None:
            report["sections"][name] = section
            write()

        return emit

    runners = {"lm_step": check.lm_step_section, "nanogpt": check.nanogpt_section,
               "refresh": lambda plan, device, emit: check.refresh_section(plan, device)}  # fmt: skip
    write()
    for name in args.sections.split(","):
        start = time.perf_counter()
        section = runners[name](plan, device, keep(name))
        section["wall_seconds"] = time.perf_counter() - start
        keep(name)(section)
        print(f"{check.section_line(name, section)}  [{section['wall_seconds']:.0f} s]", flush=True)
    print(check.render_device_check(report))
    print(f"wrote {md_path} and {json_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
