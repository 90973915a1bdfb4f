"""The one shared trainer: any workload, any registered optimizer.

Read top to bottom: validate and build everything (nothing is written before the
config, the data, the model and the optimizer are known to be good) -> open or
resume the run directory -> the training loop -> the final record.

Fairness: the model's initial weights depend only on the seed, batches only on
(seed, step, micro_step), the validation set on nothing at all.
Honest timing: ``train_seconds`` sums synchronised step times (data, forward, backward,
clipping, optimizer, schedule, EMA) and excludes evaluation, logging and checkpointing;
``optimizer_seconds`` is the ``optimizer.step()`` share of it. Torch threads are set explicitly
(``trainer.threads``), and each step's process CPU time and the load average are kept beside its
wall time, so ``summary.json`` can say when the machine was shared (``soapbench.machine_load``).
Final numbers: after the last step the whole validation split is scored (``val_full/*``,
``final_full_val_loss``); the fixed, cheaper set (``final_val_loss``) gives the curve.
No run is lost or mislabelled: the run directory is named by the run's identity (config
and data fingerprint) and locked while it trains; divergence is a result (``diverged``);
an exception of the training code is ``failed`` (kept, skipped by re-runs); a signal or an
environmental error (disk, permissions, W&B transport) is ``interrupted`` and the next plain
re-run resumes it; checkpoints and summaries are written atomically; a resumed run continues
exactly where its checkpoint left off, log-window sums included.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from datetime import datetime, timezone
from typing import Any, Mapping

import torch
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel

from soapbench.optimizers import build_optimizer
from soapbench.optimizers.imported import describe_source, with_label
from soapbench.optimizers.composite import CompositeOptimizer
from soapbench.optimizers.modes import evaluation_weights, set_mode
from soapbench.optimizers.registry import resolve_spec, split_optimizer_config
from soapbench.optimizers.refreshes import share_refreshes
from soapbench.checkpoint import load_for_resume, refuse_changed_dtypes, restore_rng_state, rng_state, save_checkpoint
from soapbench.config import load_trainer_config, validate_run_config
from soapbench.distributed import (
    any_rank, broadcast_object, gather_objects, init_from_environment, mean_across_ranks, shutdown,
)
from soapbench.environment import cpu_model, describe_device, git_commit, package_versions, resolve_device
from soapbench.errors import ConfigError, RunBusyError, RunInterrupted, SoapbenchError
from soapbench.gradients import build_grad_scaler, prepare_gradients, scale_loss
from soapbench.identity import run_identity
from soapbench.launch import PARENT_ENV
from soapbench.machine_load import MachineLoad, apply_thread_policy
from soapbench.parameter_map import counts_by_optimizer, misplaced, parameter_map
from soapbench.progress import Progress
from soapbench.results import METRICS_FILE, RunStore
from soapbench.rundir import FINISHED, find_run_directory, lock_run_directory, plan_run
from soapbench.schedules import build_scheduler
from soapbench.timing import Stopwatch, device_peak_flops, peak_memory_bytes
from soapbench.tracking import WANDB_MODES, WandbTracker
from soapbench.workloads import build_workload

# Metric keys that measure time or memory: they differ between otherwise identical runs.
TIMING_KEYS = (
    "train_seconds", "train/step_seconds", "train/optimizer_seconds", "train/cpu_seconds", "train/throughput",
    "train/mfu", "memory/peak_bytes", "system/load1",
)  # fmt: skip


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def train(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Run (or resume, or skip if finished) the run described by a resolved config; return its summary."""
    with contextlib.ExitStack() as held:  # the run directory's lock, released however the run ends
        return _train(cfg, held)


def _train(cfg: Mapping[str, Any], held: contextlib.ExitStack) -> dict[str, Any]:
    # ------------------------------------------------------------------ validate and build
    validate_run_config(cfg)
    cfg = {**cfg, "optimizer": with_label(cfg["optimizer"])}  # an imported optimizer's label names its runs
    trainer = load_trainer_config(cfg["trainer"])
    ctx = init_from_environment()  # torchrun: one process per device, rank 0 writes
    logger_cfg = cfg.get("logger", {}).get("wandb", {})
    if logger_cfg.get("mode", "offline") not in WANDB_MODES:
        raise ConfigError(f"logger.wandb.mode: {logger_cfg.get('mode')!r} is not one of {', '.join(WANDB_MODES)}")
    device = resolve_device(str(cfg.get("device", "auto")))
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    threads = apply_thread_policy(trainer.threads, trainer.parallel_jobs, device)  # before anything is built
    torch.manual_seed(int(cfg["seed"]))
    workload = build_workload(cfg, trainer, device, shard=ctx.shard(trainer.batch_size))
    model = workload.model
    if trainer.max_epochs is not None:
        if workload.steps_per_epoch is None:
            raise ConfigError("trainer.max_epochs: this workload samples windows, not epochs; set trainer.max_steps instead")
        max_steps = math.ceil(trainer.max_epochs * workload.steps_per_epoch)
    else:
        max_steps = trainer.max_steps

    optimizer_name, hparams, build_args = split_optimizer_config(cfg["optimizer"])
    optimizer_source = describe_source(cfg["optimizer"])
    if optimizer_source and optimizer_source.get("warning") and ctx.is_main:
        print(f"warning: optimizer.package: {optimizer_source['warning']}", flush=True)
    optimizer = build_optimizer(
        optimizer_name, model, weight_decay_roles=trainer.weight_decay_roles, **build_args, **hparams
    )
    main_name = next(iter(optimizer.optimizers)) if isinstance(optimizer, CompositeOptimizer) else optimizer_name
    trained_by = parameter_map(model, optimizer, main_name)  # before a schedule scales the group lrs
    main_roles = build_args.get("main_roles") or resolve_spec(optimizer_name, build_args.get("source")).main_roles
    misplaced_line = misplaced(trained_by, main_name, main_roles)
    if misplaced_line and ctx.is_main:
        print(misplaced_line, file=sys.stderr, flush=True)
    if ctx.is_main:
        _warn_if_nothing_preconditioned(optimizer, cfg["optimizer"])
    refresh_sharing = share_refreshes(optimizer) if ctx.enabled and trainer.share_refreshes else []
    scheduler = build_scheduler(optimizer, trainer.schedule, max_steps)
    scaler = build_grad_scaler(trainer, device)
    ema = None
    if trainer.ema.enabled:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(trainer.ema.decay), use_buffers=True
        )
    forward_model = model
    if ctx.enabled:
        forward_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if trainer.compile:
        forward_model = torch.compile(forward_model)
    param_count = sum(p.numel() for p in model.parameters())

    # ------------------------------------------------------------------ run directory
    identity = run_identity(cfg, workload.data_fingerprint)
    decision: Any = None
    if ctx.is_main:  # rank 0 locks and decides; the other ranks follow its plan, or raise its error with it
        try:
            try:
                lock = lock_run_directory(cfg, identity.hash)
                held.callback(lock.release)
                run_dir = lock.run_dir
            except SoapbenchError:  # a read-only results dir can still report a finished run
                run_dir, _ = find_run_directory(cfg, identity.hash)
                stored = RunStore(run_dir).read_summary()
                if not (stored and stored.get("status") in FINISHED and not identity.differing_keys(stored.get("identity"))):
                    raise
            decision = plan_run(cfg, run_dir, run_dir.name, identity)
        except (SoapbenchError, RunBusyError) as error:
            decision = error
    plan = broadcast_object(decision, ctx)
    if isinstance(plan, Exception):
        raise plan
    store = RunStore(plan.run_dir)
    if plan.action == "skip":
        if ctx.is_main:
            print(f"{plan.run_dir}: already {plan.previous_summary['status']}; skipping (delete it to run again)", flush=True)
        shutdown(ctx)
        return plan.previous_summary

    state = {
        "step": 0, "train_seconds": 0.0, "optimizer_seconds": 0.0, "tokens": 0, "samples": 0,
        "metric_records": 0, "initial_loss": None, "best_val_loss": None, "final_val_loss": None,
        "final_val_metrics": {}, "final_full_val_loss": None, "final_full_val_metrics": {},
        "final_full_eval_seconds": None, "segments": [], "wandb_run_id": None, "started_at": _now(),
        # The current log window's sums: checkpointed, so a resume at any step logs what an uninterrupted run logs.
        "log_window": {"loss": 0.0, "steps": 0, "seconds": 0.0, "optimizer_seconds": 0.0, "items": 0},
    }  # fmt: skip
    previous = plan.previous_summary or {}
    failures = list(previous.get("failures", []))  # environment and code failures of earlier attempts
    metrics_gaps = list(previous.get("metrics_gaps", []))  # records of metrics.jsonl lost to damage
    resumed_from = None
    if plan.action == "resume":
        loaded = load_for_resume(
            plan.checkpoints, identity, allow_other_identity=bool(cfg.get("allow_identity_mismatch")), explicit=plan.explicit
        )
        for bad_path, reason in loaded.unreadable:
            if ctx.is_main:
                print(f"warning: {bad_path} is unreadable ({reason}); resuming from {loaded.path}", file=sys.stderr, flush=True)
                bad_path.replace(bad_path.with_name(bad_path.name + ".unreadable"))  # kept for inspection, out of the rotation
            failures.append({"status": "interrupted", "error": f"unreadable checkpoint {bad_path} ({reason})", "at": _now()})
        checkpoint = loaded.payload
        if checkpoint["state"]["step"] > max_steps:
            raise ConfigError(
                f"resume: {loaded.path} is at step {checkpoint['state']['step']}, past trainer.max_steps={max_steps}; "
                "raise trainer.max_steps or resume an earlier checkpoint"
            )
        if plan.explicit or loaded.identity_differences:
            resumed_from = {"checkpoint": str(loaded.path), "step": checkpoint["state"]["step"],
                            "identity_differences": loaded.identity_differences}  # fmt: skip
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        if ema is not None:
            ema.load_state_dict(checkpoint["ema"])
        refuse_changed_dtypes(
            loaded.path,
            {"model": checkpoint["model"], "optimizer": checkpoint["optimizer"], "ema": checkpoint.get("ema")},
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "ema": ema.state_dict() if ema else None},
        )
        state.update(checkpoint["state"])
        restore_rng_state(checkpoint["rng_per_rank"][ctx.rank % len(checkpoint["rng_per_rank"])])
        if ctx.is_main:
            source_metrics = loaded.path.parent / METRICS_FILE
            if loaded.path.parent.resolve() != plan.run_dir.resolve() and source_metrics.is_file():
                shutil.copyfile(source_metrics, store.metrics_path)  # the log up to the checkpoint comes with it
            kept = store.truncate_metrics(state["metric_records"])
            if len(kept) < state["metric_records"]:
                metrics_gaps.append(_metrics_gap(store, kept, state))
                state["metric_records"] = len(kept)  # counts the log as it now is (rank 0's state is checkpointed)
            print(f"{plan.run_dir}: resuming from step {state['step']} ({loaded.path.name})", flush=True)
    elif ctx.is_main:
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        store.metrics_path.unlink(missing_ok=True)  # left by a run killed before its first checkpoint
    if ctx.is_main:
        store.write_config(OmegaConf.to_yaml(OmegaConf.create(dict(cfg))))
    machine = MachineLoad(
        state["segments"], start_step=state["step"], device=describe_device(device), cpu_model=cpu_model(),
        threads=threads, parallel_jobs=trainer.parallel_jobs,
    )  # fmt: skip

    meta = {
        "run_name": plan.run_name, "run_dir": str(plan.run_dir), "config_hash": plan.config_hash,
        "identity": identity.as_record(), "resumed_from": resumed_from,
        "experiment": cfg.get("experiment_name"), "optimizer": optimizer_name, "model": cfg["model"]["name"],
        "optimizer_source": optimizer_source,
        "data": cfg["data"]["name"], "seed": int(cfg["seed"]), "device": describe_device(device),
        "cpu_model": cpu_model(), "threads": threads,
        "params": param_count, "params_by_optimizer": counts_by_optimizer(trained_by),
        "max_steps": max_steps, "unit": workload.unit, "processes": ctx.world_size, "world_size": ctx.world_size,
        "refreshes_shared_by": refresh_sharing, "versions": package_versions(), "git_commit": git_commit(),
    }  # fmt: skip
    tracker = WandbTracker(
        mode=logger_cfg.get("mode", "offline") if ctx.is_main else "disabled",
        project=logger_cfg.get("project", "soapbench"),
        entity=logger_cfg.get("entity"),
        group=logger_cfg.get("group") or cfg.get("experiment_name") or "default",
        name=plan.run_name,
        tags=[optimizer_name, cfg["model"]["name"], *logger_cfg.get("tags", [])],
        config={**dict(cfg), "_meta": meta},
        run_dir=plan.run_dir,
        run_id=state["wandb_run_id"],
    )
    state["wandb_run_id"] = tracker.run_id
    meta["wandb_mode"] = tracker.mode
    meta["parameters"] = trained_by  # in the summary only: W&B's config has no use for a per-parameter list

    def summary(status: str, **extra: Any) -> dict[str, Any]:
        return {
            **meta, "status": status, "steps": state["step"], "train_seconds": state["train_seconds"],
            "optimizer_seconds": state["optimizer_seconds"],
            "tokens": state["tokens"] if workload.unit == "tokens" else None, "samples": state["samples"],
            "final_val_loss": state["final_val_loss"], "best_val_loss": state["best_val_loss"],
            "final_val_metrics": state["final_val_metrics"], "initial_loss": state["initial_loss"],
            "final_full_val_loss": state["final_full_val_loss"], "final_full_val_metrics": state["final_full_val_metrics"],
            "final_full_eval_seconds": state["final_full_eval_seconds"], **machine.summary(),
            "started_at": state["started_at"], "updated_at": _now(), "diverged_step": None, "error": None,
            "failures": failures, "last_failure": failures[-1] if failures else None, "metrics_gaps": metrics_gaps,
            **extra,
        }  # fmt: skip

    def write_summary(content: dict[str, Any]) -> None:
        if ctx.is_main:
            store.write_summary(content)

    def log(record: dict[str, Any]) -> None:
        record = {"step": state["step"], "train_seconds": state["train_seconds"], "tokens": state["tokens"],
                  "samples": state["samples"], **record}  # fmt: skip
        if ctx.is_main:
            store.append_metrics(record)
            tracker.log(record)
        state["metric_records"] += 1

    def evaluated(prefix: str, evaluate_model, artifacts: bool = False) -> dict[str, float]:
        # At the optimizer's evaluation weights (Schedule-Free's x, not the y it takes gradients at).
        with evaluation_weights(model, optimizer):
            with torch.no_grad(), _autocast(trainer.precision, device):
                # Every rank evaluates the unwrapped model: no collectives, so ranks stay in step.
                metrics = {f"{prefix}/{k.removeprefix('val_')}": v for k, v in evaluate_model(model).items()}
                if ema is not None:
                    metrics |= {f"{prefix}_ema/{k.removeprefix('val_')}": v for k, v in evaluate_model(ema.module).items()}
            if artifacts and ctx.is_main:
                tracker.log_images(state["step"], workload.save_artifacts(model, state["step"], plan.run_dir))
        return metrics

    def evaluate() -> None:
        metrics = evaluated("val", workload.evaluate, artifacts=True)
        state["final_val_loss"] = metrics["val/loss"]
        state["final_val_metrics"] = metrics
        if math.isfinite(metrics["val/loss"]) and (state["best_val_loss"] is None or metrics["val/loss"] < state["best_val_loss"]):
            state["best_val_loss"] = metrics["val/loss"]
        log({"event": "eval", **metrics})
        write_summary(summary("running"))
        progress.message(f"[{plan.run_name}] step {state['step']}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    def evaluate_full_split() -> None:
        started = time.perf_counter()
        metrics = evaluated("val_full", lambda m: workload.evaluate_full(m, trainer.final_eval_batches))
        state["final_full_eval_seconds"] = time.perf_counter() - started
        state["final_full_val_loss"], state["final_full_val_metrics"] = metrics["val_full/loss"], metrics
        log({"event": "eval", **metrics})
        progress.message(f"[{plan.run_name}] whole validation split: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    checkpointed_at = [state["step"] if plan.action == "resume" else None]

    def checkpoint() -> None:
        if checkpointed_at[0] == state["step"]:
            return  # this very state is on disk already (a stop right after a checkpoint step)
        checkpointed_at[0] = state["step"]
        rng_per_rank = gather_objects(rng_state(), ctx)  # a collective: every rank takes part
        if ctx.is_main:
            save_checkpoint(store.checkpoint_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                "state": dict(state), "rng_per_rank": rng_per_rank, "identity": identity.as_record(),
            })  # fmt: skip
            tracker.commit()

    # SLURM preemption (SIGTERM) and Ctrl-C (SIGINT): finish the current step, checkpoint, and leave the
    # run resumable; a second Ctrl-C stops at once (the previous checkpoint stands).
    stop_requested: list[int] = []
    previous_handlers = _catch_stop_signals(stop_requested) if _in_main_thread() else {}
    _stop_when_parent_dies(stop_requested)

    # ------------------------------------------------------------------ training loop
    step_clock, optimizer_clock = Stopwatch(device), Stopwatch(device)
    peak_flops = device_peak_flops(device)
    flops_per_item = workload.flops_per_item()
    progress = Progress(max_steps, state["step"], plan.run_name, enabled=ctx.is_main)
    write_summary(summary("running"))
    interval = state["log_window"]
    steps_this_process = 0
    status, extra = "completed", {}
    try:
        if state["step"] == 0 and trainer.eval_at_start and state["metric_records"] == 0:
            evaluate()
        model.train()
        set_mode(optimizer, "train")  # an optimizer with modes (Schedule-Free) starts in neither
        while state["step"] < max_steps:
            if any_rank(bool(stop_requested), ctx):
                status, extra = "interrupted", {"signal": signal.Signals(stop_requested[0] if stop_requested else signal.SIGTERM).name}
                checkpoint()
                break
            if trainer.stop_after_steps and steps_this_process >= trainer.stop_after_steps:
                status = "running"
                checkpoint()
                break
            step_clock.start()
            loss_sum = torch.zeros((), device=device)
            items = 0
            for micro_step in range(trainer.grad_accum_steps):
                batch = workload.train_batch(state["step"], micro_step)
                with _autocast(trainer.precision, device):
                    loss = workload.loss(forward_model, batch)
                scale_loss(loss, trainer, scaler).backward()
                loss_sum += loss.detach().float()
                items += workload.batch_items(batch) * ctx.world_size
            grad_norm = prepare_gradients(list(model.parameters()), optimizer, scaler, trainer)
            optimizer_clock.start()
            scaler.step(optimizer)
            scaler.update()
            optimizer_seconds = optimizer_clock.stop()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update_parameters(model)
                if trainer.ema.overwrite_interval and (state["step"] + 1) % trainer.ema.overwrite_interval == 0:
                    with torch.no_grad():
                        for ema_param, param in zip(ema.module.parameters(), model.parameters()):
                            param.copy_(ema_param)
            step_seconds = step_clock.stop()

            train_loss = mean_across_ranks(loss_sum / trainer.grad_accum_steps, ctx).item()
            state["step"] += 1
            steps_this_process += 1
            machine.step(state["step"], step_seconds, step_clock.last_cpu)
            state["train_seconds"] += step_seconds
            state["optimizer_seconds"] += optimizer_seconds
            state["tokens" if workload.unit == "tokens" else "samples"] += items
            if workload.unit == "tokens":
                state["samples"] += trainer.batch_size * trainer.grad_accum_steps
            if state["initial_loss"] is None:
                state["initial_loss"] = train_loss
            interval["loss"] += train_loss
            interval["steps"] += 1
            interval["seconds"] += step_seconds
            interval["optimizer_seconds"] += optimizer_seconds
            interval["items"] += items

            if not math.isfinite(train_loss) or train_loss > trainer.divergence_factor * state["initial_loss"]:
                log({"event": "train", "train/loss": train_loss, "train/lr": optimizer.param_groups[0]["lr"]})
                status = "diverged"
                extra = {"diverged_step": state["step"], "diverged_loss": train_loss}
                progress.message(f"[{plan.run_name}] diverged at step {state['step']}: loss {train_loss}")
                break

            last_step = state["step"] == max_steps
            if state["step"] % trainer.log_interval == 0 or last_step:
                record = {
                    "event": "train",
                    "train/loss": interval["loss"] / interval["steps"],
                    "train/lr": optimizer.param_groups[0]["lr"],
                    "train/step_seconds": interval["seconds"] / interval["steps"],
                    "train/optimizer_seconds": interval["optimizer_seconds"] / interval["steps"],
                    "train/throughput": interval["items"] / interval["seconds"],
                    "memory/peak_bytes": peak_memory_bytes(device),
                    **machine.log_event(),
                }
                if grad_norm is not None:
                    record["train/grad_norm"] = float(grad_norm)
                if peak_flops and flops_per_item:
                    record["train/mfu"] = flops_per_item * record["train/throughput"] / peak_flops
                diagnostics = getattr(optimizer, "diagnostics", None)
                if callable(diagnostics):
                    record |= {f"optimizer/{k}": v for k, v in diagnostics().items()}
                log(record)
                progress.update(state["step"], record["train/loss"], record["train/lr"], record["train/step_seconds"])
                interval = state["log_window"] = dict.fromkeys(interval, 0)
            if state["step"] % trainer.eval_interval == 0 or last_step:
                evaluate()
            if state["step"] % trainer.checkpoint_interval == 0 or (last_step and trainer.keep_final_checkpoint):
                checkpoint()
        if status == "completed":  # after the last step only (also when a resume finds the steps all done)
            evaluate_full_split()
    except BaseException as error:
        progress.close()
        failed_status = "interrupted" if _environmental(error) else "failed"
        description = f"{type(error).__name__}: {error}"
        failures.append({"status": failed_status, "error": description, "step": state["step"], "at": _now()})
        failure = summary(failed_status, error=description, traceback=traceback.format_exc())
        with contextlib.suppress(Exception):  # the disk that failed the run may refuse the summary too
            write_summary(failure)
        with contextlib.suppress(Exception):
            tracker.finish(failure, exit_code=1, commit=failed_status == "failed")
        if failed_status == "interrupted" and not isinstance(error, KeyboardInterrupt):
            raise RunInterrupted(f"{description}; the same command resumes {plan.run_dir} from its last checkpoint") from error
        raise
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)

    # ------------------------------------------------------------------ final record
    progress.close()
    if status == "running":
        progress.message(f"{plan.run_dir}: stopped at step {state['step']}; the same command resumes it")
    elif status == "interrupted":
        failures.append({"status": "interrupted", "error": extra["signal"], "step": state["step"], "at": _now()})
        progress.message(f"{plan.run_dir}: {extra['signal']} at step {state['step']}; checkpointed, the same command resumes it")
    final = summary(status, **extra, finished_at=_now() if status in FINISHED else None,
                    optimizer_state_bytes=_state_bytes(optimizer))
    write_summary(final)
    if status == "completed" and not trainer.keep_final_checkpoint and ctx.is_main:
        store.remove_checkpoints()  # the periodic ones too: a completed run is never resumed
    tracker.finish(final)
    shutdown(ctx)
    return final


def _warn_if_nothing_preconditioned(optimizer: torch.optim.Optimizer, optimizer_cfg: Mapping[str, Any]) -> None:
    """An eigenbasis optimizer whose size bound excludes every dimension of every parameter is Adam under another
    name: legal, but almost always a typo (max_precond_dim=0), and a comparison would mislabel it."""
    for child in getattr(optimizer, "optimizers", {"": optimizer}).values():
        count = getattr(child, "preconditioned_parameters", None)
        if callable(count) and count() == 0:
            bound = {k: optimizer_cfg[k] for k in ("max_precond_dim",) if k in optimizer_cfg}
            setting = ", ".join(f"optimizer.{k}={v}" for k, v in bound.items()) or "its settings"
            print(f"warning: {type(child).__name__} preconditions no dimension of any parameter ({setting} excludes every "
                  "one), so it runs as Adam in the original basis; raise max_precond_dim to precondition",
                  file=sys.stderr, flush=True)


def _metrics_gap(store: RunStore, kept: list[dict[str, Any]], state: dict[str, Any]) -> dict[str, Any]:
    """Say (one line) and record that metrics.jsonl lost records its checkpoint counted: they cannot be remade."""
    after_step = kept[-1]["step"] if kept else None
    gap = {"records_expected": state["metric_records"], "records_found": len(kept), "after_step": after_step,
           "until_step": state["step"], "at": _now()}  # fmt: skip
    print(f"warning: {store.metrics_path} holds {len(kept)} of the {state['metric_records']} records logged up to "
          f"step {state['step']} (cut short or damaged); the records after step {after_step} are lost, training "
          "resumes, and summary.json marks the gap under metrics_gaps", file=sys.stderr, flush=True)
    return gap


def _state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's state tensors (moments, factors, bases): its memory cost beside the model."""
    def size(value: Any) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, Mapping):
            return sum(size(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(size(v) for v in value)
        return 0

    return sum(size(state) for state in optimizer.state.values())


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _catch_stop_signals(stop_requested: list[int]) -> dict[int, Any]:
    def request_stop(signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and stop_requested:
            raise KeyboardInterrupt  # asked twice: stop now
        stop_requested.append(signum)

    return {signum: signal.signal(signum, request_stop) for signum in (signal.SIGTERM, signal.SIGINT)}


def _stop_when_parent_dies(stop_requested: list[int]) -> None:
    """A driver's job stops as on SIGTERM once its driver is gone, also where the kernel cannot signal it (not Linux)."""
    parent = os.environ.get(PARENT_ENV, "")
    if not parent.isdigit():
        return

    def watch() -> None:
        while os.getppid() == int(parent):
            time.sleep(1.0)
        stop_requested.append(signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _environmental(error: BaseException) -> bool:
    """Failures of the machine, not of the training code: the run is resumable, not a result."""
    if isinstance(error, (OSError, KeyboardInterrupt, RunInterrupted)):
        return True
    return type(error).__module__.startswith("wandb")  # W&B transport and service errors


__all__ = ["TIMING_KEYS", "train"]
