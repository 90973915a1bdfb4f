"""The benchmark report: ``<model>_<device>_<YYYY-MM-DD>.md`` and ``.json``, self-describing.

The JSON holds everything (metadata, protocol, every sample and byte count); the Markdown renders it: a header
(command, git commit, date, device, threads, versions of python/torch/soapbench and the peer libraries, model,
each optimizer's configuration source), then one section per measurement with its protocol and table. Both files
are written atomically (temp file + rename), as the trainer writes its summaries.
"""

from __future__ import annotations

import json
import platform
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from soapbench.environment import cpu_model, git_commit, package_versions
from soapbench.results import atomic_write_text


def describe_hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {cpu_model()}, {torch.get_num_threads()} torch threads"


def device_slug(device: torch.device) -> str:
    if device.type == "cuda":
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
    return "cpu"


def collect_metadata(argv: Sequence[str], device: torch.device, extra: Mapping[str, Any]) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "date": now.date().isoformat(), "timestamp_utc": now.isoformat(timespec="seconds"),
        "command": shlex.join(["python", *argv]), "git_commit": git_commit(), "device": describe_hardware(device),
        "device_slug": device_slug(device), "threads": torch.get_num_threads(), "platform": platform.platform(),
        "versions": package_versions(), "python_executable": sys.executable, **extra,
    }  # fmt: skip


def report_paths(out_dir: Path, model: str, metadata: Mapping[str, Any]) -> tuple[Path, Path]:
    """``<model>_<device>_<date>[_<tag>]``: a tag keeps several runs of one day apart."""
    stem = f"{model}_{metadata['device_slug']}_{metadata['date']}"
    if metadata.get("tag"):
        stem += f"_{metadata['tag']}"
    return out_dir / f"{stem}.md", out_dir / f"{stem}.json"


def _json_default(value: Any) -> Any:
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_report(report: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    md_path, json_path = report_paths(out_dir, report["model"]["preset"], report["metadata"])
    atomic_write_text(json_path, json.dumps(report, indent=2, default=_json_default, allow_nan=False) + "\n")
    atomic_write_text(md_path, render_markdown(report))
    return md_path, json_path


# ---------------------------------------------------------------------------------------------------- formatting


def fmt_bytes(value: int | None) -> str:
    if value is None:
        return "n/a"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value} B"


def fmt_ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.2f}"


def fmt_num(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- sections


def memory_markdown(section: Mapping[str, Any]) -> str:
    rows = []
    for row in section["rows"]:
        measured, theory = row["measured_total"], row["theoretical_total"]
        if row["error"]:
            check = f"error: {row['error']}"
        elif measured is None or theory is None:
            check = "n/a"
        else:
            check = "exact" if measured == theory else f"{measured - theory:+,} B"
        rows.append([
            row["optimizer"], f"{row['params_main']:,} / {row['params_companion']:,}",
            fmt_bytes(row["measured_main"]),
            fmt_bytes(row["measured_companion"]) + (f" ({row['companion']})" if row["companion"] else ""),
            fmt_bytes(measured), fmt_bytes(theory), check,
            "n/a" if measured is None else f"{measured / row['adamw_bytes']:.2f}×", row["method"],
        ])  # fmt: skip
    header = ["optimizer", "params main / companion", "measured main", "measured companion", "measured total",
              "theoretical", "measured − theoretical", "÷ AdamW (2N·4 B)", "method"]  # fmt: skip
    return "\n\n".join([section["protocol"], table(header, rows)])


def timing_markdown(section: Mapping[str, Any]) -> str:
    contestants = section["contestants"]
    ours = {c["ours"]: c for c in contestants if c["source"] == "ours"}
    rows = []
    for c in contestants:
        stats = c["stats"]
        ratio_mean = ratio_median = ""
        if c["source"] != "ours" and stats and ours.get(c["ours"], {}).get("stats"):
            mine = ours[c["ours"]]["stats"]
            ratio_mean, ratio_median = f"{mine['mean'] / stats['mean']:.2f}", f"{mine['median'] / stats['median']:.2f}"
        state = c.get("state_bytes")
        count = "?" if c["refreshes"] is None else c["refreshes"]
        refreshes = f"{count} (f={c['frequency']})" if c["frequency"] else ""
        notes = "; ".join(([f"**{c['error']}**"] if c["error"] else []) + c["notes"])
        rows.append([
            c["label"] if c["source"] == "ours" else f"↳ {c['label']}", c["source"],
            fmt_ms(stats and stats["mean"]), fmt_ms(stats and stats["median"]), fmt_ms(stats and stats["std"]),
            fmt_ms(stats and stats["min"]), fmt_ms(stats and stats["max"]), stats["n"] if stats else 0, refreshes,
            fmt_bytes(state["main"] + state["companion"]) if state else "n/a", ratio_mean, ratio_median, notes,
        ])  # fmt: skip
    header = ["optimizer", "implementation", "mean ms", "median ms", "std ms", "min ms", "max ms", "n",
              "refreshes in window", "state", "ours ÷ peer (mean)", "ours ÷ peer (median)", "notes"]  # fmt: skip
    partial = (
        f"**Partial: written after {section['partial']}; the run did not finish.**" if section.get("partial") else ""
    )
    return "\n\n".join(part for part in [partial, section["protocol"], table(header, rows)] if part)


def floor_markdown(section: Mapping[str, Any], timing: Mapping[str, Any] | None) -> str:
    lines = [
        f"SOAP's unavoidable products on this preset's {section['matrices']} preconditioned matrices "
        f"(f = {section['frequency']}): per step {fmt_ms(section['per_step_seconds'])} ms, per refresh "
        f"{fmt_ms(section['per_refresh_seconds'])} ms, so a mean step of at least "
        f"**{fmt_ms(section['mean_seconds'])} ms** (`soapbench/bench/floor.py` lists the products).",
    ]
    rows = []
    for contestant in (timing or {}).get("contestants", []):
        stats = contestant.get("stats")
        if contestant["ours"] != "soap" or not stats:
            continue
        rows.append([
            contestant["label"], contestant["source"], fmt_ms(stats["mean"]),
            f"{stats['mean'] / section['mean_seconds']:.2f}", f"{section['mean_seconds'] / stats['mean']:.2f}",
        ])  # fmt: skip
    if rows:
        header = [
            "SOAP implementation",
            "source",
            "mean ms",
            "mean ÷ floor",
            "best possible ours ÷ this (floor ÷ mean)",
        ]
        lines.append(table(header, rows))
    if section["skipped_shapes"]:
        lines.append(f"Not counted (not a fully preconditioned matrix): {section['skipped_shapes']}")
    return "\n\n".join(line for line in lines if line)


def throughput_markdown(section: Mapping[str, Any]) -> str:
    rows = []
    for row in section["rows"]:
        rows.append([
            row["optimizer"], fmt_num(row["tokens_per_second"], ",.0f"), fmt_ms(row["step_seconds"]),
            fmt_ms(row["optimizer_seconds"]),
            "n/a" if row["optimizer_share"] is None else f"{100 * row['optimizer_share']:.1f}%",
            "n/a" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%", fmt_num(row["tokens_per_step"], ",.0f"),
            f"{row['steps_measured']}" + (f" (f={row['frequency']})" if row.get("frequency") else ""),
            row["status"] + (f": {row['error']}" if row["error"] else ""),
        ])  # fmt: skip
    header = ["optimizer", "tokens/s", "step ms", "optimizer ms", "optimizer share", "MFU", "tokens/step",
              "steps", "status"]  # fmt: skip
    overrides = section["rows"][0]["overrides"] if section["rows"] else []
    command = f"Trainer overrides (first optimizer's run): `{' '.join(overrides)}`" if overrides else ""
    return "\n\n".join(part for part in [section["protocol"], table(header, rows), command] if part)


def train_step_ratio_markdown(section: Mapping[str, Any]) -> str:
    rows = [[
        row["optimizer"], fmt_ms(row["step"]["mean"]), fmt_ms(row["step"]["median"]), fmt_ms(row["step"]["std"]),
        fmt_ms(row["optimizer_step"]["mean"]), fmt_ms(row["optimizer_step"]["median"]),
        f"**{row['ratio_mean']:.2f}×**", f"{row['ratio_median']:.2f}×", row["step"]["n"],
        row["frequency"] or "",
    ] for row in section["rows"]]  # fmt: skip
    header = ["optimizer", "step mean ms", "step median ms", "step std ms", "optimizer.step() mean ms",
              "optimizer.step() median ms", "step ÷ AdamW (mean)", "step ÷ AdamW (median)", "steps", "f"]  # fmt: skip
    parts = [section["protocol"], table(header, rows)]
    load = section.get("load_average")
    if load and load["before"] is not None and load["cores"] and max(load["before"], load["after"]) > load["cores"]:
        parts.append(
            f"**Measured on a contended machine**: 1-minute load average {load['before']:.1f} before and "
            f"{load['after']:.1f} after, on {load['cores']} cores. Absolute times are inflated; the alternating "
            "blocks expose every arm to the same contention, so the ratios are the numbers to read."
        )
    elif load and load["before"] is not None:
        parts.append(f"1-minute load average {load['before']:.1f} before and {load['after']:.1f} after, on "
                     f"{load['cores']} cores.")  # fmt: skip
    soap_floor = section.get("soap_floor")
    if soap_floor:
        parts.append(
            f"SOAP's matmul floor on these shapes (`soapbench/bench/floor.py`, timed in the same process): "
            f"{fmt_ms(soap_floor['mean_seconds'])} ms per step at f = {soap_floor['frequency']} "
            f"({fmt_ms(soap_floor['per_step_seconds'])} ms every step + {fmt_ms(soap_floor['per_refresh_seconds'])} ms "
            f"per refresh). AdamW's step with its `optimizer.step()` replaced by that floor would be "
            f"**{soap_floor['best_possible_ratio']:.2f}×** AdamW's: no implementation of SOAP's math does better here."
        )
    return "\n\n".join(parts)


def render_markdown(report: Mapping[str, Any]) -> str:
    meta, model = report["metadata"], report["model"]
    versions = ", ".join(f"{name} {version}" for name, version in meta["versions"].items())
    peers = ", ".join(f"{name}: {status}" for name, status in meta.get("peer_libraries", {}).items()) or "not used"
    header_rows = [
        ["command", f"`{meta['command']}`"], ["git commit", meta["git_commit"]],
        ["date (UTC)", meta["timestamp_utc"]], ["device", meta["device"]], ["torch threads", meta["threads"]],
        ["platform", meta["platform"]], ["versions", versions], ["peer libraries", peers],
        ["heavyball compile mode", meta.get("heavyball_compile_mode")],
        ["model", f"{model['preset']}: {model['params']:,} parameters"
                  + (f" (overrides: {' '.join(model['overrides'])})" if model["overrides"] else "")],
    ]  # fmt: skip
    title = f"# Optimizer benchmark: {model['preset']} on {meta['device_slug']}, {meta['date']}"
    parts = [title, table(["", ""], header_rows)]
    titles = {"step_timing": ("Step time: `optimizer.step()` alone", timing_markdown),
              "memory": ("Optimizer-state memory", memory_markdown),
              "throughput": ("Training throughput (real trainer)", throughput_markdown),
              "train_step_ratio": ("Training step vs AdamW (alternating blocks)", train_step_ratio_markdown)}  # fmt: skip
    for key, (title, render) in titles.items():
        if key in report["sections"]:
            parts += [f"## {title}", render(report["sections"][key])]
        if key == "step_timing" and "soap_floor" in report["sections"]:
            floor_section = floor_markdown(report["sections"]["soap_floor"], report["sections"].get("step_timing"))
            parts += ["## SOAP's matmul floor on these shapes", floor_section]
    config_rows = [
        [name, setup["source"], json.dumps(setup["hparams"], default=_json_default),
         json.dumps(setup["companion"], default=_json_default)]
        for name, setup in report["optimizers"].items()
    ]  # fmt: skip
    parts += [
        "## Optimizer configurations",
        table(["optimizer", "source", "hyperparameters", "companion"], config_rows),
    ]
    if report.get("notes"):
        parts += ["## Notes", "\n".join(f"- {note}" for note in report["notes"])]
    return "\n\n".join(parts) + "\n"
