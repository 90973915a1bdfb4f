"""The one shared trainer: any workload, any registered optimizer.

Read top to bottom: validate and build everything (nothing is written before the
config, the data, the model and the optimizer are known to be good) -> open or
resume the run directory -> the training loop -> the final record. The pieces live beside it:
one step is ``soapbench.training_step.TrainStep`` (the benchmarks time that same object), the run's
counters a ``RunState`` that resumes from its checkpoint (``soapbench.checkpoint``), and its summary,
metrics and failures a ``RunRecord`` (``soapbench.run_record``).

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
import signal
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel

from soapbench.checkpoint import LogWindow, RunState, resume_run, rng_state, save_run_checkpoint
from soapbench.config import RunConfig, load_run_config
from soapbench.distributed import (
    DistContext,
    any_rank,
    broadcast_object,
    gather_objects,
    init_from_environment,
    mean_across_ranks,
    shutdown,
)
from soapbench.environment import cpu_model, describe_device, git_commit, package_versions, resolve_device
from soapbench.errors import ConfigError, RunBusyError, RunInterrupted, SoapbenchError
from soapbench.gradients import build_grad_scaler
from soapbench.identity import RunIdentity, run_identity
from soapbench.launch import PARENT_ENV
from soapbench.machine_load import MachineLoad, apply_thread_policy
from soapbench.optimizers import build_optimizer
from soapbench.optimizers.composite import CompositeOptimizer
from soapbench.optimizers.imported import describe_source, with_label
from soapbench.optimizers.modes import evaluation_weights
from soapbench.optimizers.refreshes import share_refreshes
from soapbench.optimizers.registry import resolve_spec, split_optimizer_config
from soapbench.parameter_map import counts_by_optimizer, misplaced, parameter_map
from soapbench.progress import Progress
from soapbench.results import RunStore, utc_now
from soapbench.run_record import RunRecord
from soapbench.rundir import FINISHED, RunPlan, find_run_directory, lock_run_directory, plan_run
from soapbench.schedules import build_scheduler
from soapbench.timing import device_peak_flops, peak_memory_bytes
from soapbench.tracking import WandbTracker
from soapbench.training_step import StepResult, TrainStep, autocast
from soapbench.workloads import build_workload

# Metric keys that measure time or memory: they differ between otherwise identical runs.
TIMING_KEYS = (
    "train_seconds", "train/step_seconds", "train/optimizer_seconds", "train/cpu_seconds", "train/throughput",
    "train/mfu", "memory/peak_bytes", "system/load1",
)  # fmt: skip


def train(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Run (or resume, or skip if finished) the run described by a resolved config; return its summary."""
    with contextlib.ExitStack() as held:  # the run directory's lock, released however the run ends
        return _train(cfg, held)


def _train(cfg: Mapping[str, Any], held: contextlib.ExitStack) -> dict[str, Any]:
    # ------------------------------------------------------------------ validate and build
    run = load_run_config(cfg)
    # The mapping stays what identity, config.yaml and W&B see (an imported optimizer's label names its runs).
    cfg = {**cfg, "optimizer": with_label(cfg["optimizer"])}
    trainer = run.trainer
    ctx = init_from_environment()  # torchrun: one process per device, rank 0 writes
    wandb_config = run.logger.wandb
    device = resolve_device(run.device)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    threads = apply_thread_policy(trainer.threads, trainer.parallel_jobs, device)  # before anything is built
    built = build_training(cfg, run, device, ctx, announce=ctx.is_main)

    # ------------------------------------------------------------------ run directory
    identity = run_identity(cfg, built.workload.data_fingerprint)
    plan = _plan(cfg, identity, ctx, held)
    if plan.action == "skip":
        if ctx.is_main:
            print(
                f"{plan.run_dir}: already {plan.previous_summary['status']}; skipping (delete it to run again)",
                flush=True,
            )
        shutdown(ctx)
        return plan.previous_summary
    record = _open_record(cfg, run, plan, identity, built, ctx, threads)
    record.tracker = WandbTracker(
        mode=wandb_config.mode if ctx.is_main else "disabled",
        project=wandb_config.project,
        entity=wandb_config.entity,
        group=wandb_config.group or run.experiment_name or "default",
        name=plan.run_name,
        tags=[built.optimizer_name, run.model["name"], *wandb_config.tags],
        config={**dict(cfg), "_meta": record.meta},
        run_dir=plan.run_dir,
        run_id=record.state.wandb_run_id,
    )
    record.state.wandb_run_id = record.tracker.run_id
    record.meta["wandb_mode"] = record.tracker.mode
    record.meta["parameters"] = (
        built.trained_by
    )  # in the summary only: W&B's config has no use for a per-parameter list

    # ------------------------------------------------------------------ training loop
    # SLURM preemption (SIGTERM) and Ctrl-C (SIGINT): finish the current step, checkpoint, and leave the
    # run resumable; a second Ctrl-C stops at once (the previous checkpoint stands).
    stop = StopRequest()
    previous_handlers = _catch_stop_signals(stop) if _in_main_thread() else {}
    _stop_when_parent_dies(stop)
    state = record.state
    progress = Progress(built.max_steps, state.step, plan.run_name, enabled=ctx.is_main)
    loop = TrainingLoop(built, record, trainer=trainer, ctx=ctx, plan=plan, identity=identity, progress=progress,
                        stop=stop, checkpointed_at=state.step if plan.action == "resume" else None)  # fmt: skip
    record.write_summary(record.summary("running"))
    try:
        status, extra = loop.run()
    except BaseException as error:
        progress.close()
        failed_status = "interrupted" if _environmental(error) else "failed"
        description = f"{type(error).__name__}: {error}"
        record.fail(failed_status, description, traceback.format_exc())
        if failed_status == "interrupted" and not isinstance(error, KeyboardInterrupt):
            raise RunInterrupted(
                f"{description}; the same command resumes {plan.run_dir} from its last checkpoint"
            ) from error
        raise
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)

    # ------------------------------------------------------------------ final record
    progress.close()
    if status == "running":
        progress.message(f"{plan.run_dir}: stopped at step {state.step}; the same command resumes it")
    elif status == "interrupted":
        record.add_failure("interrupted", extra["signal"])
        progress.message(
            f"{plan.run_dir}: {extra['signal']} at step {state.step}; checkpointed, the same command resumes it"
        )
    final = record.summary(status, **extra, finished_at=utc_now() if status in FINISHED else None,
                           optimizer_state_bytes=_state_bytes(built.step.optimizer))  # fmt: skip
    record.write_summary(final)
    if status == "completed" and not trainer.keep_final_checkpoint and ctx.is_main:
        record.store.remove_checkpoints()  # the periodic ones too: a completed run is never resumed
    record.tracker.finish(final)
    shutdown(ctx)
    return final


@dataclass
class Training:
    """What a run trains and how, built from its config: the workload, the step, and what the summary says of them."""

    workload: Any
    step: TrainStep
    max_steps: int
    optimizer_name: str
    # Where an imported optimizer came from (``soapbench.optimizers.imported``), else None.
    optimizer_source: dict[str, Any] | None
    # Which optimizer trains each parameter (``soapbench.parameter_map``), read before a schedule scales the lrs.
    trained_by: Any
    # The refreshes ranks share (DDP with ``trainer.share_refreshes``).
    refresh_sharing: list[Any]


def build_training(
    cfg: Mapping[str, Any], run: RunConfig, device: torch.device, ctx: DistContext, *, announce: bool
) -> Training:
    """The run's model, optimizer, schedule, scaler and EMA, in the order that makes the initial weights depend only
    on the seed. ``cfg`` is the resolved mapping ``run`` was loaded from (the optimizer section possibly labelled).
    ``announce``: print the warnings about the optimizer's setup (one process of a run does).
    The benchmarks build their arms here too, so they time exactly what a run trains."""
    trainer = run.trainer
    torch.manual_seed(run.seed)
    workload = build_workload(cfg, trainer, device, shard=ctx.shard(trainer.batch_size))
    model = workload.model
    if trainer.max_epochs is not None:
        if workload.steps_per_epoch is None:
            raise ConfigError(
                "trainer.max_epochs: this workload samples windows, not epochs; set trainer.max_steps instead"
            )
        max_steps = math.ceil(trainer.max_epochs * workload.steps_per_epoch)
    else:
        max_steps = trainer.max_steps

    optimizer_name, hparams, build_args = split_optimizer_config(cfg["optimizer"])
    optimizer_source = describe_source(cfg["optimizer"])
    if optimizer_source and optimizer_source.get("warning") and announce:
        print(f"warning: optimizer.package: {optimizer_source['warning']}", flush=True)
    optimizer = build_optimizer(
        optimizer_name, model, weight_decay_roles=trainer.weight_decay_roles, **build_args, **hparams
    )
    main_name = next(iter(optimizer.optimizers)) if isinstance(optimizer, CompositeOptimizer) else optimizer_name
    trained_by = parameter_map(model, optimizer, main_name)  # before a schedule scales the group lrs
    main_roles = build_args.get("main_roles") or resolve_spec(optimizer_name, build_args.get("source")).main_roles
    misplaced_line = misplaced(trained_by, main_name, main_roles)
    if misplaced_line and announce:
        print(misplaced_line, file=sys.stderr, flush=True)
    if announce:
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
    step = TrainStep(workload, model, optimizer, scheduler, scaler, trainer, device, ema=ema,
                     forward_model=forward_model, world_size=ctx.world_size)  # fmt: skip
    return Training(workload, step, max_steps, optimizer_name, optimizer_source, trained_by, refresh_sharing)


def _plan(cfg: Mapping[str, Any], identity: RunIdentity, ctx: DistContext, held: contextlib.ExitStack) -> RunPlan:
    """Rank 0 locks the run directory (held until the run ends) and decides; the other ranks follow its plan,
    or raise its error with it."""
    decision: Any = None
    if ctx.is_main:
        try:
            try:
                lock = lock_run_directory(cfg, identity.hash)
                held.callback(lock.release)
                run_dir = lock.run_dir
            except SoapbenchError:  # a read-only results dir can still report a finished run
                run_dir, _ = find_run_directory(cfg, identity.hash)
                stored = RunStore(run_dir).read_summary()
                if not (
                    stored and stored.get("status") in FINISHED and not identity.differing_keys(stored.get("identity"))
                ):
                    raise
            decision = plan_run(cfg, run_dir, run_dir.name, identity)
        except (SoapbenchError, RunBusyError) as error:
            decision = error
    plan = broadcast_object(decision, ctx)
    if isinstance(plan, Exception):
        raise plan
    return plan


def _open_record(
    cfg: Mapping[str, Any],
    run: RunConfig,
    plan: RunPlan,
    identity: RunIdentity,
    built: Training,
    ctx: DistContext,
    threads: int,
) -> RunRecord:
    """Resume the run from its checkpoint or start it afresh; write its config; the record it will keep."""
    store = RunStore(plan.run_dir)
    state = RunState(started_at=utc_now())
    previous = plan.previous_summary or {}
    failures = list(previous.get("failures", []))  # environment and code failures of earlier attempts
    metrics_gaps = list(previous.get("metrics_gaps", []))  # records of metrics.jsonl lost to damage
    resumed_from = None
    if plan.action == "resume":
        resumed = resume_run(
            plan.checkpoints, built.step, state, identity, run_dir=plan.run_dir, max_steps=built.max_steps,
            allow_other_identity=run.allow_identity_mismatch, explicit=plan.explicit,
            rank=ctx.rank, is_main=ctx.is_main,
        )  # fmt: skip
        state, resumed_from = resumed.state, resumed.resumed_from
        failures += resumed.failures
        metrics_gaps += [resumed.metrics_gap] if resumed.metrics_gap else []
    elif ctx.is_main:
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        store.metrics_path.unlink(missing_ok=True)  # left by a run killed before its first checkpoint
    if ctx.is_main:
        store.write_config(OmegaConf.to_yaml(OmegaConf.create(dict(cfg))))
    device = built.step.device
    machine = MachineLoad(
        state.segments, start_step=state.step, device=describe_device(device), cpu_model=cpu_model(),
        threads=threads, parallel_jobs=run.trainer.parallel_jobs,
    )  # fmt: skip
    meta = {
        "run_name": plan.run_name, "run_dir": str(plan.run_dir), "config_hash": plan.config_hash,
        "identity": identity.as_record(), "resumed_from": resumed_from,
        "experiment": run.experiment_name, "optimizer": built.optimizer_name, "model": run.model["name"],
        "optimizer_source": built.optimizer_source,
        "data": run.data["name"], "seed": run.seed, "device": describe_device(device),
        "cpu_model": cpu_model(), "threads": threads,
        "params": sum(p.numel() for p in built.step.model.parameters()),
        "params_by_optimizer": counts_by_optimizer(built.trained_by), "max_steps": built.max_steps,
        "unit": built.workload.unit, "processes": ctx.world_size, "world_size": ctx.world_size,
        "refreshes_shared_by": built.refresh_sharing, "versions": package_versions(), "git_commit": git_commit(),
    }  # fmt: skip
    return RunRecord(store, state, meta=meta, machine=machine, unit=built.workload.unit, failures=failures,
                     metrics_gaps=metrics_gaps, writes=ctx.is_main)  # fmt: skip


class TrainingLoop:
    """One process's steps of a run, with the evaluations, logs and checkpoints made between them."""

    def __init__(
        self, built: Training, record: RunRecord, *, trainer: Any, ctx: DistContext, plan: RunPlan,
        identity: RunIdentity, progress: Progress, stop: StopRequest, checkpointed_at: int | None,
    ) -> None:  # fmt: skip
        self.built, self.step, self.workload = built, built.step, built.workload
        self.record, self.state = record, record.state
        self.trainer, self.ctx, self.plan, self.identity = trainer, ctx, plan, identity
        self.progress, self.stop = progress, stop
        self.checkpointed_at = checkpointed_at  # the step whose state is on disk already
        self.peak_flops = device_peak_flops(self.step.device)
        self.flops_per_item = self.workload.flops_per_item()

    def run(self) -> tuple[str, dict[str, Any]]:
        """Train to ``max_steps`` or until stopped; return the status and what the summary adds for it."""
        state, trainer, ctx = self.state, self.trainer, self.ctx
        steps_this_process = 0
        if state.step == 0 and trainer.eval_at_start and state.metric_records == 0:
            self.evaluate()
        self.step.enter_training_mode()
        while state.step < self.built.max_steps:
            if any_rank(self.stop.requested, ctx):
                extra = {"signal": self.stop.signal_name()}
                self.checkpoint()
                return "interrupted", extra
            if trainer.stop_after_steps and steps_this_process >= trainer.stop_after_steps:
                self.checkpoint()
                return "running", {}
            result = self.step(state.step)
            train_loss = mean_across_ranks(result.loss, ctx).item()
            steps_this_process += 1
            self.count_step(result, train_loss)
            if not math.isfinite(train_loss) or train_loss > trainer.divergence_factor * state.initial_loss:
                self.record.log({"event": "train", "train/loss": train_loss, "train/lr": self.learning_rate()})
                self.progress.message(f"[{self.plan.run_name}] diverged at step {state.step}: loss {train_loss}")
                return "diverged", {"diverged_step": state.step, "diverged_loss": train_loss}
            last_step = state.step == self.built.max_steps
            if state.step % trainer.log_interval == 0 or last_step:
                self.log_train_window(result.grad_norm)
            if state.step % trainer.eval_interval == 0 or last_step:
                self.evaluate()
            if state.step % trainer.checkpoint_interval == 0 or (last_step and trainer.keep_final_checkpoint):
                self.checkpoint()
        self.evaluate_full_split()  # after the last step only (also when a resume finds the steps all done)
        return "completed", {}

    def learning_rate(self) -> float:
        return self.step.optimizer.param_groups[0]["lr"]

    def count_step(self, result: StepResult, train_loss: float) -> None:
        """Add a finished step to the run's counters, its segment's timings and the current log window."""
        state = self.state
        state.step += 1
        self.record.machine.step(state.step, result.seconds, result.cpu_seconds)
        state.train_seconds += result.seconds
        state.optimizer_seconds += result.optimizer_seconds
        if self.workload.unit == "tokens":
            state.tokens += result.items
            state.samples += self.trainer.batch_size * self.trainer.grad_accum_steps
        else:
            state.samples += result.items
        if state.initial_loss is None:
            state.initial_loss = train_loss
        window = state.log_window
        window.loss += train_loss
        window.steps += 1
        window.seconds += result.seconds
        window.optimizer_seconds += result.optimizer_seconds
        window.items += result.items

    def log_train_window(self, grad_norm: torch.Tensor | None) -> None:
        """The train record: the window's mean loss and timings, then a fresh window."""
        window = self.state.log_window
        record = {
            "event": "train",
            "train/loss": window.loss / window.steps,
            "train/lr": self.learning_rate(),
            "train/step_seconds": window.seconds / window.steps,
            "train/optimizer_seconds": window.optimizer_seconds / window.steps,
            "train/throughput": window.items / window.seconds,
            "memory/peak_bytes": peak_memory_bytes(self.step.device),
            **self.record.machine.log_event(),
        }
        if grad_norm is not None:
            record["train/grad_norm"] = float(grad_norm)
        if self.peak_flops and self.flops_per_item:
            record["train/mfu"] = self.flops_per_item * record["train/throughput"] / self.peak_flops
        diagnostics = getattr(self.step.optimizer, "diagnostics", None)
        if callable(diagnostics):
            record |= {f"optimizer/{k}": v for k, v in diagnostics().items()}
        self.record.log(record)
        self.progress.update(self.state.step, record["train/loss"], record["train/lr"], record["train/step_seconds"])
        self.state.log_window = LogWindow()

    def evaluated(self, prefix: str, evaluate_model: Any, artifacts: bool = False) -> dict[str, float]:
        model, ema, step = self.step.model, self.step.ema, self.state.step
        # At the optimizer's evaluation weights (Schedule-Free's x, not the y it takes gradients at).
        with evaluation_weights(model, self.step.optimizer):
            with torch.no_grad(), autocast(self.trainer.precision, self.step.device):
                # Every rank evaluates the unwrapped model: no collectives, so ranks stay in step.
                metrics = {f"{prefix}/{k.removeprefix('val_')}": v for k, v in evaluate_model(model).items()}
                if ema is not None:
                    metrics |= {
                        f"{prefix}_ema/{k.removeprefix('val_')}": v for k, v in evaluate_model(ema.module).items()
                    }
            if artifacts and self.ctx.is_main:
                self.record.tracker.log_images(step, self.workload.save_artifacts(model, step, self.plan.run_dir))
        return metrics

    def evaluate(self) -> None:
        state = self.state
        metrics = self.evaluated("val", self.workload.evaluate, artifacts=True)
        state.final_val_loss = metrics["val/loss"]
        state.final_val_metrics = metrics
        if math.isfinite(metrics["val/loss"]) and (
            state.best_val_loss is None or metrics["val/loss"] < state.best_val_loss
        ):
            state.best_val_loss = metrics["val/loss"]
        self.record.log({"event": "eval", **metrics})
        self.record.write_summary(self.record.summary("running"))
        self.progress.message(
            f"[{self.plan.run_name}] step {state.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        )

    def evaluate_full_split(self) -> None:
        started = time.perf_counter()
        metrics = self.evaluated("val_full", lambda m: self.workload.evaluate_full(m, self.trainer.final_eval_batches))
        self.state.final_full_eval_seconds = time.perf_counter() - started
        self.state.final_full_val_loss, self.state.final_full_val_metrics = metrics["val_full/loss"], metrics
        self.record.log({"event": "eval", **metrics})
        self.progress.message(
            f"[{self.plan.run_name}] whole validation split: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        )

    def checkpoint(self) -> None:
        if self.checkpointed_at == self.state.step:
            return  # this very state is on disk already (a stop right after a checkpoint step)
        self.checkpointed_at = self.state.step
        rng_per_rank = gather_objects(rng_state(), self.ctx)  # a collective: every rank takes part
        if self.ctx.is_main:
            save_run_checkpoint(self.record.store.checkpoint_path, self.step, self.state, rng_per_rank, self.identity)
            self.record.tracker.commit()


def _warn_if_nothing_preconditioned(optimizer: torch.optim.Optimizer, optimizer_cfg: Mapping[str, Any]) -> None:
    """An eigenbasis optimizer whose size bound excludes every dimension of every parameter is Adam under another
    name: legal, but almost always a typo (max_precond_dim=0), and a comparison would mislabel it."""
    for child in getattr(optimizer, "optimizers", {"": optimizer}).values():
        count = getattr(child, "preconditioned_parameters", None)
        if callable(count) and count() == 0:
            bound = {k: optimizer_cfg[k] for k in ("max_precond_dim",) if k in optimizer_cfg}
            setting = ", ".join(f"optimizer.{k}={v}" for k, v in bound.items()) or "its settings"
            print(
                f"warning: {type(child).__name__} preconditions no dimension of any parameter ({setting} excludes every "
                "one), so it runs as Adam in the original basis; raise max_precond_dim to precondition",
                file=sys.stderr,
                flush=True,
            )


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


class StopRequest:
    """The signals asking this process to stop, in arrival order (a signal handler or the parent watcher adds them)."""

    def __init__(self) -> None:
        self.signals: list[int] = []

    @property
    def requested(self) -> bool:
        return bool(self.signals)

    def add(self, signum: int) -> None:
        self.signals.append(signum)

    def signal_name(self) -> str:
        """The first signal's name; SIGTERM when another rank was asked (every rank stops at the same step)."""
        return signal.Signals(self.signals[0] if self.signals else signal.SIGTERM).name


def _catch_stop_signals(stop: StopRequest) -> dict[int, Any]:
    def request_stop(signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and stop.requested:
            raise KeyboardInterrupt  # asked twice: stop now
        stop.add(signum)

    return {signum: signal.signal(signum, request_stop) for signum in (signal.SIGTERM, signal.SIGINT)}


def _stop_when_parent_dies(stop: StopRequest) -> None:
    """A driver's job stops as on SIGTERM once its driver is gone, also where the kernel cannot signal it (not Linux)."""
    parent = os.environ.get(PARENT_ENV, "")
    if not parent.isdigit():
        return

    def watch() -> None:
        while os.getppid() == int(parent):
            time.sleep(1.0)
        stop.add(signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _environmental(error: BaseException) -> bool:
    """Failures of the machine, not of the training code: the run is resumable, not a result."""
    if isinstance(error, (OSError, KeyboardInterrupt, RunInterrupted)):
        return True
    return type(error).__module__.startswith("wandb")  # W&B transport and service errors


__all__ = ["TIMING_KEYS", "Training", "TrainingLoop", "build_training", "train"]
