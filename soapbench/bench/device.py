"""The prepared device check (``scripts/device_check.py``): what a short GPU loan must measure, in priority order.

Sections, each appended to the report and written atomically as soon as it finishes (a timeout keeps them):

* ``lm_step``: the LM preset (lm_360m) through the real trainer, bf16 autocast + ``torch.compile``, one realistic
  micro-batch per step (no accumulation, the hardest case for a slow optimizer): warm-up steps, then a timed
  window per optimizer (rounded up to whole refresh periods). Step ms (mean, median), ``optimizer.step()`` ms,
  tokens/s, MFU against the detected device's bf16 peak, peak memory, and each step as a ratio to AdamW's. The
  required arms (AdamW, SOAP f=10, Shampoo f=10) run first; the optional ones (SOAP-Muon, KL-SOAP) only while the
  time budget still holds one more arm as long as the longest so far.
* ``nanogpt``: the paper's nanoGPT char preset trains AdamW and SOAP for a few hundred steps through the trainer,
  same precision and compile: first and final loss and ms/step, to check the GPU path trains, not only runs.
* ``refresh``: SOAP's eigenbasis refresh on the LM preset's factor sizes, largest first: one power-iteration + QR
  refresh (SOAP's default), one eigh (its first call and ``refresh_method=eigh``), and every factor of that size
  refreshed in one batched call as the per-shape step does it.

``tiny`` mode runs the same code on CPU in seconds (lm_tiny and nanogpt_char_cpu shrunk, a few steps; compiled
where a C++ compiler exists, else eager with a note), so a test keeps the GPU script from rotting unseen.
Nothing here needs the network: the LM arms train on the offline tiny-Shakespeare data (step time does not
depend on token values).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from soapbench.bench import throughput
from soapbench.bench.catalog import compose, optimizer_setup, preset_config
from soapbench.bench.discovery import import_submodules
from soapbench.bench.floor import main_optimizer_shapes, median_seconds
from soapbench.bench.report import fmt_bytes, fmt_ms, fmt_num, table
from soapbench.bench.shapes import build_preset_model, param_infos

# A run "trains" when its final validation loss is at least this fraction below its first training loss.
TRAINS_MIN_DROP = 0.10


@dataclass(frozen=True)
class CheckPlan:
    """Everything the check runs; ``gpu_plan`` and ``tiny_plan`` are the two prepared ones."""

    mode: str
    lm_preset: str
    lm_overrides: tuple[str, ...]
    lm_batch_size: int
    lm_steps: int
    lm_warmup: int
    lm_required: tuple[str, ...]
    lm_optional: tuple[str, ...]
    nanogpt_preset: str
    nanogpt_overrides: tuple[str, ...]
    nanogpt_steps: int
    nanogpt_optimizers: tuple[str, ...]
    precision: str
    compile: bool
    budget_seconds: float
    notes: tuple[str, ...] = ()


def compiler_available() -> str | None:
    """The C++ compiler inductor would use on CPU, or None (then the tiny check runs eager)."""
    import torch._inductor.config as inductor_config

    candidates = inductor_config.cpp.cxx
    for candidate in candidates if isinstance(candidates, (list, tuple)) else (candidates,):
        if candidate and shutil.which(candidate):
            return candidate
    return None


def gpu_plan(
    *, batch_size: int = 64, steps: int = 30, nanogpt_steps: int = 300, budget_seconds: float = 450
) -> CheckPlan:
    """lm_360m at OLMo's H100 micro-batch (64 × 512 tokens), nanogpt_char for 300 steps: about 8 minutes on an H100."""
    return CheckPlan(
        mode="gpu", lm_preset="lm_360m", lm_overrides=(), lm_batch_size=batch_size, lm_steps=steps, lm_warmup=3,
        lm_required=("adamw", "soap", "shampoo"), lm_optional=("soap_muon", "kl_soap"),
        nanogpt_preset="nanogpt_char", nanogpt_overrides=(), nanogpt_steps=nanogpt_steps,
        nanogpt_optimizers=("adamw", "soap"), precision="bf16", compile=True, budget_seconds=budget_seconds,
    )  # fmt: skip


def tiny_plan() -> CheckPlan:
    """The CI check: every code path of the GPU check on CPU, shrunk so the whole check takes about a minute."""
    compiler = compiler_available()
    notes = () if compiler else ("no C++ compiler on this machine: torch.compile skipped, the tiny check ran eager",)
    return CheckPlan(
        mode="tiny", lm_preset="lm_tiny",
        # A 128-row vocabulary instead of T5's 32k keeps Shampoo's 8192-row embedding blocks out of a CPU test.
        lm_overrides=("model.n_layers=2", "model.vocab_size=128", "model.embedding_size=128", "model.seq_len=32"),
        lm_batch_size=4, lm_steps=4, lm_warmup=2, lm_required=("adamw", "soap", "shampoo"),
        lm_optional=("soap_muon", "kl_soap"), nanogpt_preset="nanogpt_char_cpu",
        nanogpt_overrides=("model.n_layer=2", "model.n_embd=32", "model.n_head=2", "model.seq_len=32",
                           "trainer.batch_size=8", "trainer.schedule.warmup_steps=2", "optimizer.lr=1e-2",
                           "trainer.final_eval_batches=2"),
        nanogpt_steps=30, nanogpt_optimizers=("adamw", "soap"), precision="bf16", compile=compiler is not None,
        budget_seconds=float("inf"), notes=notes,
    )  # fmt: skip


def _reset_compiled_state(device: torch.device) -> None:
    """Fresh dynamo caches and peak-memory counters per arm, so arms neither share guards nor peaks."""
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# ---------------------------------------------------------------------------------------------------- lm_step


def lm_step_section(plan: CheckPlan, device: torch.device, emit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Time every LM arm through the trainer; ``emit`` receives the section after each arm (for atomic writes)."""
    import_submodules("soapbench.optimizers")
    cfg = preset_config(plan.lm_preset, plan.lm_overrides)
    params = sum(info.numel for info in param_infos(build_preset_model(cfg["model"], "meta")))
    micro_tokens = plan.lm_batch_size * int(cfg["model"]["seq_len"])
    options = throughput.ThroughputOptions(
        steps=plan.lm_steps, warmup=plan.lm_warmup, device=str(device), batch_size=plan.lm_batch_size,
        precision=plan.precision, compile=plan.compile, min_batch_tokens=micro_tokens, overrides=plan.lm_overrides,
    )  # fmt: skip
    section: dict[str, Any] = {
        "protocol": (
            f"Real trainer, {plan.lm_preset} ({params:,} parameters), {plan.precision} autocast"
            f"{' + torch.compile' if plan.compile else ' (eager)'}, micro-batch {plan.lm_batch_size} × "
            f"{cfg['model']['seq_len']} tokens, no accumulation; {plan.lm_warmup} warm-up steps (compilation and the "
            f"first preconditioner build), then {plan.lm_steps} timed steps rounded up to whole refresh periods. "
            "Ratios are mean step times over AdamW's."
        ),
        "rows": [],
        "skipped": [],
    }
    started = time.perf_counter()
    longest = 0.0
    for name in (*plan.lm_required, *plan.lm_optional):
        elapsed = time.perf_counter() - started
        if name in plan.lm_optional and elapsed + longest > plan.budget_seconds:
            section["skipped"].append(f"{name}: time budget ({plan.budget_seconds:.0f} s) would be exceeded")
            continue
        _reset_compiled_state(device)
        arm_start = time.perf_counter()
        row = throughput.trainer_throughput(plan.lm_preset, optimizer_setup(name), cfg, params, options)
        longest = max(longest, time.perf_counter() - arm_start)
        section["rows"].append({**asdict(row), "wall_seconds": time.perf_counter() - arm_start})
        _add_ratios(section["rows"])
        emit(section)
    return section


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    baseline = next((row for row in rows if row["optimizer"] == "adamw" and row["step_seconds"]), None)
    for row in rows:
        ok = baseline is not None and row["step_seconds"]
        row["step_ratio_to_adamw"] = row["step_seconds"] / baseline["step_seconds"] if ok else None


# ---------------------------------------------------------------------------------------------------- nanogpt


def nanogpt_section(plan: CheckPlan, device: torch.device, emit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Train each optimizer ``nanogpt_steps`` steps through the trainer: does the device path learn?"""
    from soapbench.results import RunStore
    from soapbench.trainer import train

    import_submodules("soapbench.optimizers")
    steps = plan.nanogpt_steps
    log_interval = max(1, steps // 30)
    section: dict[str, Any] = {
        "protocol": (
            f"Real trainer, {plan.nanogpt_preset} with its recipe, {steps} steps, {plan.precision} autocast"
            f"{' + torch.compile' if plan.compile else ' (eager)'}; ms/step over the logged intervals after the first "
            f"(which holds compilation); 'trains' means the final validation loss is at least "
            f"{100 * TRAINS_MIN_DROP:.0f}% below the first step's training loss."
        ),
        "rows": [],
    }
    for name in plan.nanogpt_optimizers:
        _reset_compiled_state(device)
        with tempfile.TemporaryDirectory(prefix="soapbench-device-check-") as tmp:
            overrides = [
                f"model={plan.nanogpt_preset}", f"optimizer={name}", f"device={device}", f"trainer.max_steps={steps}",
                f"trainer.precision={plan.precision}", f"trainer.compile={str(plan.compile).lower()}",
                "trainer.eval_at_start=false", f"trainer.eval_interval={steps}", f"trainer.log_interval={log_interval}",
                f"trainer.checkpoint_interval={steps + 1}", "trainer.keep_final_checkpoint=false",
                "logger.wandb.mode=disabled", f"paths.results_dir={tmp}", "experiment_name=device_check",
                f"run_name=device-check-{name}", *plan.nanogpt_overrides,
            ]  # fmt: skip
            row: dict[str, Any] = {"optimizer": name, "steps": steps, "status": "not run", "error": None}
            try:
                summary = train(compose(overrides))
                records = RunStore(Path(summary["run_dir"])).read_metrics()
            except Exception as error:  # a failing arm is a row, not a crash
                row.update(status="failed", error=f"{type(error).__name__}: {error}")
            else:
                row.update(_nanogpt_row(summary, records))
        section["rows"].append(row)
        emit(section)
    return section


def _nanogpt_row(summary: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    train_records = [r for r in records if r.get("event") == "train" and "train/step_seconds" in r]
    timed = train_records[1:] or train_records
    seconds = [float(r["train/step_seconds"]) for r in timed]
    initial, final = summary["initial_loss"], summary["final_val_loss"]
    return {
        "status": summary["status"], "initial_loss": initial,
        "final_train_loss": train_records[-1]["train/loss"] if train_records else None, "final_val_loss": final,
        "step_seconds": statistics.fmean(seconds) if seconds else None,
        "step_seconds_median": statistics.median(seconds) if seconds else None,
        "trains": bool(initial and final is not None and final <= (1 - TRAINS_MIN_DROP) * initial),
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------------- refresh


def factor_sizes(preset: str, overrides: Sequence[str]) -> dict[int, int]:
    """Preconditioned factor size → how many factors of that size SOAP (its yaml) keeps on the preset."""
    from soapbench.optimizers.soap import factor_layout

    setup = optimizer_setup("soap")
    hparams = setup.effective_hparams()
    counts: dict[int, int] = {}
    for shape in main_optimizer_shapes(setup, preset_config(preset, overrides)["model"]):
        layout = factor_layout(shape, hparams["max_precond_dim"], hparams["merge_dims"], hparams["precondition_1d"],
                               hparams["data_format"])  # fmt: skip
        for size, preconditioned in zip(layout.shape, layout.preconditioned):
            if preconditioned:
                counts[size] = counts.get(size, 0) + 1
    return dict(sorted(counts.items(), reverse=True))


def _refresh_inputs(size: int, count: int, device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` PSD factors (size × size), made on the device, and one previous eigenbasis for all of them.

    One eigh instead of ``count`` keeps the set-up short (lm_360m has 48 factors of 4096); the refresh costs the
    same whichever orthonormal basis it starts from.
    """
    from soapbench.optimizers.linalg import eigenbasis

    generator = torch.Generator(device=device).manual_seed(seed)
    rows = torch.randn(count, size, 2 * size, generator=generator, device=device)
    factors = rows @ rows.mT / (2 * size)
    del rows
    previous = eigenbasis(factors[0] + torch.eye(size, device=device))
    return factors, previous.expand(count, size, size).contiguous()


def refresh_section(plan: CheckPlan, device: torch.device, *, repeats: int = 3, sizes: int = 2) -> dict[str, Any]:
    """SOAP's refresh on the ``sizes`` largest factor sizes of the LM preset: single QR, single eigh, all batched."""
    counts = factor_sizes(plan.lm_preset, plan.lm_overrides)
    section: dict[str, Any] = {
        "protocol": (
            f"SOAP's factors on {plan.lm_preset}, largest sizes first, float32 on {device}: one power-iteration + QR "
            "refresh (sort by estimated eigenvalues, L·Q, Householder QR: SOAP's default), one eigh (the first call "
            f"and refresh_method=eigh), and all factors of that size refreshed in one batched call; median of {repeats}."
        ),
        "rows": [],
    }
    for index, (size, count) in enumerate(list(counts.items())[:sizes]):
        section["rows"].append(_refresh_row(size, count, device, index, repeats))
    return section


def _refresh_row(size: int, count: int, device: torch.device, seed: int, repeats: int) -> dict[str, Any]:
    """One factor size's refresh timings (its factors are freed on return, before the next size's are made)."""
    from soapbench.optimizers.linalg import eigh_descending, power_qr_refresh

    factors, bases = _refresh_inputs(size, count, device, seed=seed)
    qr_one = median_seconds(lambda: power_qr_refresh(factors[0], bases[0], exact_estimate=False), repeats, device)
    eigh_one = median_seconds(lambda: eigh_descending(factors[0]), repeats, device)
    qr_all = median_seconds(lambda: power_qr_refresh(factors, bases, exact_estimate=False), repeats, device)
    return {
        "size": size, "count": count, "qr_refresh_seconds": qr_one, "eigh_seconds": eigh_one,
        "batched_qr_refresh_seconds": qr_all, "per_factor_loop_seconds": qr_one * count,
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------------- rendering


def section_line(name: str, section: Mapping[str, Any]) -> str:
    """The one line the check prints when a section finishes."""
    rows = section.get("rows", [])
    if name == "lm_step":
        parts = [
            f"{r['optimizer']} {fmt_ms(r['step_seconds'])} ms ({fmt_num(r['step_ratio_to_adamw'])}×)" for r in rows
        ]
        return (
            "lm_step: " + ", ".join(parts) + (f"; skipped {len(section['skipped'])}" if section.get("skipped") else "")
        )
    if name == "nanogpt":
        parts = [f"{r['optimizer']} {fmt_num(r.get('initial_loss'), '.3f')}→{fmt_num(r.get('final_val_loss'), '.3f')} "
                 f"{fmt_ms(r.get('step_seconds'))} ms/step{'' if r.get('trains') else ' (NOT TRAINING)'}" for r in rows]  # fmt: skip
        return "nanogpt: " + ", ".join(parts)
    parts = [f"d={r['size']}: QR {fmt_ms(r['qr_refresh_seconds'])} ms, eigh {fmt_ms(r['eigh_seconds'])} ms, "
             f"{r['count']} batched {fmt_ms(r['batched_qr_refresh_seconds'])} ms" for r in rows]  # fmt: skip
    return "refresh: " + "; ".join(parts)


def lm_step_markdown(section: Mapping[str, Any]) -> str:
    rows = [[
        r["optimizer"], fmt_ms(r["step_seconds"]), fmt_ms(r["step_seconds_median"]), fmt_ms(r["optimizer_seconds"]),
        fmt_num(r["step_ratio_to_adamw"]), fmt_num(r["tokens_per_second"], ",.0f"),
        "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%", fmt_bytes(r["peak_memory_bytes"]),
        f"{r['steps_measured']}" + (f" (f={r['frequency']})" if r.get("frequency") else ""),
        r["status"] + (f": {r['error']}" if r["error"] else ""),
    ] for r in section["rows"]]  # fmt: skip
    header = ["optimizer", "step ms (mean)", "step ms (median)", "optimizer.step() ms", "step ÷ AdamW", "tokens/s",
              "MFU", "peak memory", "steps", "status"]  # fmt: skip
    parts = [section["protocol"], table(header, rows)]
    if section.get("skipped"):
        parts.append("Skipped: " + "; ".join(section["skipped"]))
    return "\n\n".join(parts)


def nanogpt_markdown(section: Mapping[str, Any]) -> str:
    rows = [[
        r["optimizer"], r["steps"], fmt_num(r.get("initial_loss"), ".4f"), fmt_num(r.get("final_train_loss"), ".4f"),
        fmt_num(r.get("final_val_loss"), ".4f"), fmt_ms(r.get("step_seconds")), fmt_ms(r.get("step_seconds_median")),
        "yes" if r.get("trains") else "**no**", r["status"] + (f": {r['error']}" if r.get("error") else ""),
    ] for r in section["rows"]]  # fmt: skip
    header = ["optimizer", "steps", "first loss", "final train loss", "final val loss", "ms/step (mean)",
              "ms/step (median)", "trains", "status"]  # fmt: skip
    return "\n\n".join([section["protocol"], table(header, rows)])


def refresh_markdown(section: Mapping[str, Any]) -> str:
    rows = [[
        r["size"], r["count"], fmt_ms(r["qr_refresh_seconds"]), fmt_ms(r["eigh_seconds"]),
        fmt_ms(r["batched_qr_refresh_seconds"]), fmt_ms(r["per_factor_loop_seconds"]),
    ] for r in section["rows"]]  # fmt: skip
    header = [
        "factor size",
        "factors",
        "one QR refresh ms",
        "one eigh ms",
        "all, batched ms",
        "all, one by one ms (est.)",
    ]
    return "\n\n".join([section["protocol"], table(header, rows)])


SECTION_TITLES = {
    "lm_step": ("LM training step: bf16 + compile, per optimizer", lm_step_markdown),
    "nanogpt": ("nanoGPT char: does the device path train?", nanogpt_markdown),
    "refresh": ("SOAP eigenbasis refresh on the LM's largest factors", refresh_markdown),
}


def render_device_check(report: Mapping[str, Any]) -> str:
    meta = report["metadata"]
    versions = ", ".join(f"{name} {version}" for name, version in meta["versions"].items())
    header = [
        ["command", f"`{meta['command']}`"], ["git commit", meta["git_commit"]], ["date (UTC)", meta["timestamp_utc"]],
        ["device", meta["device"]], ["torch threads", meta["threads"]], ["platform", meta["platform"]],
        ["versions", versions], ["mode", report["plan"]["mode"]],
    ]  # fmt: skip
    parts = [f"# Device check: {report['model']['preset']} on {meta['device_slug']}, {meta['date']}",
             table(["", ""], header)]  # fmt: skip
    for key, (title, render) in SECTION_TITLES.items():
        if key in report["sections"]:
            parts += [f"## {title}", render(report["sections"][key])]
    if report.get("notes"):
        parts += ["## Notes", "\n".join(f"- {note}" for note in report["notes"])]
    return "\n\n".join(parts) + "\n"


def plan_dict(plan: CheckPlan) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(plan).items()}


__all__ = [
    "CheckPlan", "SECTION_TITLES", "compiler_available", "factor_sizes", "gpu_plan", "lm_step_section",
    "nanogpt_section", "plan_dict", "refresh_section", "render_device_check", "section_line", "tiny_plan",
]  # fmt: skip
