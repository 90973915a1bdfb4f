"""The Hydra app behind ``scripts/train.py``: resolve, train, and turn every error into one line.

Exit codes (a single run; see the README's table):
  0    completed or diverged (divergence is a result, so sweeps go on)
  1    failed: the training code raised (kept as a result; re-runs skip it)
  2    bad input: config, override, hyperparameter, data, results dir, checkpoint
  3    the run directory is being trained by another process
  75   interrupted by the environment (disk, permissions, W&B transport); the same command resumes
  130  / 143  interrupted by SIGINT / SIGTERM (checkpointed; the same command resumes)
A multirun records every arm, goes on past failed ones, ends with one table of the arms and
exits 0 only if every arm completed or diverged (1 otherwise; 130/143 if a signal stopped it).
Hydra's own errors (unknown config group option, unknown key, bad override syntax, YAML syntax)
are caught at the app boundary and printed as one ``error:`` line with exit 2.
"""

from __future__ import annotations

import difflib
import json
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from soapbench.data.errors import DataError
from soapbench.errors import EXIT_BUSY, RunBusyError, RunInterrupted, SoapbenchError
from soapbench.models.registry import ModelConfigError
from soapbench.naming import experiment_folder
from soapbench.optimizers.registry import OptimizerConfigError

USER_ERRORS = (SoapbenchError, DataError, OptimizerConfigError, ModelConfigError)


def _sweep_id() -> str:
    """A multirun's own folder name: when it started and which process launched it, unique among concurrent sweeps."""
    return f"{datetime.now():%Y-%m-%d_%H-%M-%S}-{os.getpid()}"


# Cached: resolved once in the launching process; Hydra copies the cache into every job's config, joblib workers too.
if not OmegaConf.has_resolver("soapbench.sweep_id"):
    OmegaConf.register_new_resolver("soapbench.sweep_id", _sweep_id, use_cache=True)
EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 75
# Where multirun jobs (also in joblib worker processes) record their outcome for the final table.
LEDGER_ENV = "SOAPBENCH_SWEEP_LEDGER"
# configs/train.yaml's sweep dir: Hydra creates it and writes multirun.yaml there before any job validates its config.
OmegaConf.register_new_resolver("soapbench.experiment_folder", experiment_folder, replace=True)


def _is_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def resolve(cfg: DictConfig) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None)
        raise SoapbenchError(f"{key or 'config'}: {str(error).splitlines()[0]}") from error


def _shared_line(machine: Any) -> str | None:
    """``machine_shared`` as the one line a reader needs before trusting the train seconds above it."""
    if not isinstance(machine, dict):
        return None
    if not machine.get("shared"):
        return "no (timings are clean)"
    return "yes: " + "; ".join(machine.get("reasons") or []) + " (wall-clock numbers are unreliable)"


def format_result(summary: dict[str, Any]) -> str:
    def loss(key: str) -> Any:
        value = summary.get(key)
        return f"{value:.4f}" if isinstance(value, float) else value

    rows = [
        ("run", summary.get("run_dir")),
        (
            "status",
            summary.get("status") + (f" at step {summary['diverged_step']}" if summary.get("diverged_step") else ""),
        ),
        ("optimizer / model", f"{summary.get('optimizer')} / {summary.get('model')}"),
        ("steps", summary.get("steps")),
        ("final val loss", f"{loss('final_val_loss')} (fixed evaluation set)"),
        ("whole-split val loss", loss("final_full_val_loss")),
        ("best val loss", loss("best_val_loss")),
        (
            "train seconds",
            f"{summary.get('train_seconds', 0):.1f} (optimizer {summary.get('optimizer_seconds', 0):.1f})",
        ),
        ("machine shared", _shared_line(summary.get("machine_shared"))),
        ("device", summary.get("device")),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _swept_keys(hydra_cfg: Any) -> list[str]:
    """What this multirun varies, from the sweep's own record (``multirun.yaml``, which Hydra writes before any job):
    dotted keys for value sweeps, ``group=choice`` (this job's choice) for swept config groups."""
    from pathlib import Path

    from hydra.core.override_parser.overrides_parser import OverridesParser

    record = Path(hydra_cfg.sweep.dir) / "multirun.yaml"
    if not record.is_file():
        return []
    sweep = OmegaConf.load(record).hydra
    arguments = list(sweep.overrides.task) + [f"{k}={v}" for k, v in (sweep.sweeper.get("params") or {}).items()]
    choices = hydra_cfg.runtime.choices
    keys = []
    for override in OverridesParser.create().parse_overrides(arguments):
        if override.is_sweep_override():
            key = override.get_key_element().lstrip("+~")
            keys.append(f"{key}={choices[key]}" if key in choices else key)
    return list(dict.fromkeys(keys))


def _place_sweep_job(config: dict[str, Any]) -> None:
    from soapbench.launch import concurrent_jobs_from_hydra, placement

    hydra_cfg = HydraConfig.get()
    concurrent_jobs = concurrent_jobs_from_hydra(hydra_cfg)
    placed = placement(int(hydra_cfg.job.num), concurrent_jobs, str(config.get("device", "auto")))
    config["device"] = placed["device"]
    # The trainer applies the thread policy; the sweep only fills in what the user left at its default.
    trainer = config.setdefault("trainer", {})
    if placed["threads"] and trainer.get("threads") is None:
        trainer["threads"] = placed["threads"]
    if trainer.get("parallel_jobs", 1) == 1:
        trainer["parallel_jobs"] = concurrent_jobs


def _signal_exit_code(name: str) -> int:
    return 128 + int(getattr(signal, name, signal.SIGTERM))


# ---------------------------------------------------------------------------------- one job


def run_job(cfg: DictConfig) -> float | None:
    """One run (or one arm of a multirun). A single run exits with its code; an arm records it and returns."""
    from soapbench.trainer import train

    multirun = _is_multirun()
    summary: dict[str, Any] | None = None
    try:
        config = resolve(cfg)
        if multirun:
            _place_sweep_job(config)
            if config.get("sweep_keys") is None:
                config["sweep_keys"] = _swept_keys(HydraConfig.get())
        summary = train(config)
    except USER_ERRORS as error:
        outcome, code, line = "bad input", EXIT_BAD_INPUT, f"error: {error}"
    except RunBusyError as error:
        outcome, code, line = "busy", EXIT_BUSY, f"error: {error}"
    except RunInterrupted as error:
        outcome, code, line = "interrupted", EXIT_INTERRUPTED, f"error: run interrupted: {error}"
    except OSError as error:  # the environment, before training started: nothing is stranded, re-run when fixed
        outcome, code, line = (
            "interrupted",
            EXIT_INTERRUPTED,
            f"error: run interrupted: {type(error).__name__}: {error}",
        )
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside the training loop
        outcome, code, line = "interrupted", 130, "interrupted (SIGINT); the same command resumes the run"
    except Exception as error:  # recorded as "failed" in the run's summary.json by the trainer
        outcome, code, line = "failed", EXIT_FAILED, f"error: run failed: {type(error).__name__}: {error}"
    else:
        outcome, line = summary["status"], None
        code = {"completed": 0, "diverged": 0, "running": 0, "failed": EXIT_FAILED}.get(outcome, EXIT_INTERRUPTED)
        if outcome == "interrupted" and summary.get("signal"):
            code = _signal_exit_code(summary["signal"])
            line = f"interrupted ({summary['signal']}) at step {summary['steps']}; checkpointed, the same command resumes {summary['run_dir']}"
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one table for the run
            print(format_result(summary), flush=True)
    if line is not None:
        print(line, file=sys.stderr, flush=True)
    if multirun:
        _record_arm(outcome, code, summary)
        if code >= 128:
            sys.exit(code)  # a signal stops the whole sweep, not only this arm
        val = (summary or {}).get("final_val_loss")
        return val if isinstance(val, float) else None
    if code:
        sys.exit(code)
    val = summary.get("final_val_loss")
    return val if isinstance(val, float) else None


def _record_arm(outcome: str, code: int, summary: dict[str, Any] | None) -> None:
    path = os.environ.get(LEDGER_ENV)
    if not path:
        return
    hydra_cfg = HydraConfig.get()
    record = {
        "job": int(hydra_cfg.job.num), "overrides": " ".join(hydra_cfg.overrides.task), "outcome": outcome, "code": code,
        "run": (summary or {}).get("run_name"), "final_val_loss": (summary or {}).get("final_val_loss"),
    }  # fmt: skip
    with open(path, "a") as handle:  # one short append per arm: atomic between worker processes
        handle.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------------------------- the app


def sweep_table(arms: list[dict[str, Any]]) -> str:
    # Overrides every arm shares say nothing about an arm: show what varies.
    shared = set.intersection(*(set(arm["overrides"].split()) for arm in arms)) if len(arms) > 1 else set()
    rows = [("job", "outcome", "final val loss", "run", "overrides")]
    for arm in sorted(arms, key=lambda a: a["job"]):
        val = arm.get("final_val_loss")
        varying = " ".join(o for o in arm["overrides"].split() if o not in shared)
        rows.append(
            (
                str(arm["job"]),
                arm["outcome"],
                f"{val:.4f}" if isinstance(val, float) else "-",
                arm.get("run") or "-",
                varying,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths)) + "  " + row[-1] for row in rows]
    counts = {}
    for arm in arms:
        counts[arm["outcome"]] = counts.get(arm["outcome"], 0) + 1
    return "\n".join([*lines, "sweep: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))])


def sweep_exit_code(arms: list[dict[str, Any]]) -> int:
    signalled = [a["code"] for a in arms if a["code"] >= 128]
    if signalled:
        return signalled[-1]
    return 0 if all(a["outcome"] in ("completed", "diverged") for a in arms) else EXIT_FAILED


def hydra_error_line(error: BaseException) -> str | None:
    """Hydra's and YAML's composition errors as one line naming the field or file and the fix; None if not one."""
    import yaml
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    cause = error
    while cause is not None and not isinstance(cause, SoapbenchError):
        # Our own check inside an interpolation (the sweep dir's experiment folder); OmegaConf keeps it as the context.
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        return str(cause)
    if isinstance(error, MissingConfigException):
        missing = str(error.missing_cfg_file or "")
        group, _, option = missing.rpartition("/")
        options = list(error.options or [])
        if group and options:
            close = difflib.get_close_matches(option, options, n=1)
            hint = f"did you mean {group}={close[0]}? " if close else ""
            return f"{group}={option}: no such {group} config; {hint}available: {', '.join(options)}"
        return (
            f"{missing or 'config'}: config not found; check the name and --config-dir ({str(error).splitlines()[0]})"
        )
    if isinstance(error, OverrideParseException):
        return f"override syntax: {str(error).splitlines()[0]}; quote the value or see Hydra's override grammar"
    if isinstance(error, ConfigCompositionException):
        cause = error.__cause__
        first = str(error).splitlines()[0]
        key = getattr(cause, "full_key", None)
        if key and "not in struct" in str(cause):
            if key.startswith("optimizer."):
                return unlisted_optimizer_keyword_line(key)
            return f"{key}: unknown key; check the spelling (python scripts/train.py --cfg job prints every key)"
        if isinstance(cause, yaml.YAMLError):
            return hydra_error_line(cause)
        detail = str(cause).splitlines()[0] if cause is not None else ""
        return f"{first.rstrip('.')}{': ' + detail if detail else ''}"
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        where = f"{mark.name}:{mark.line + 1}:{mark.column + 1}" if mark else "config"
        context = f" ({error.context})" if error.context else ""
        return f"{where}: YAML syntax error: {error.problem}{context}; fix the file"
    if isinstance(error, OmegaConfBaseException):
        key = getattr(error, "full_key", None)
        return f"{key or 'config'}: {str(error).splitlines()[0]}"
    return None


def unlisted_optimizer_keyword_line(key: str, argv: list[str] | None = None) -> str:
    """An optimizer keyword its yaml does not list (``optimizer=custom``'s class keywords, most often) is added
    with Hydra's ``+``; the line repeats the user's own override with the ``+`` in front."""
    argv = sys.argv[1:] if argv is None else argv
    override = next((arg for arg in argv if arg.startswith(f"{key}=")), f"{key}=<value>")
    return (
        f"{key}: not a key of the optimizer's yaml; use +{override} to pass a keyword the yaml does not list "
        "(it is checked against the optimizer's signature)"
    )


def run_app(hydra_main: Callable[[], Any]) -> None:
    """Call a ``@hydra.main`` function with the project's error contract and the multirun table."""
    full_tracebacks = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises its errors, so they can be printed as one line here
    fd, ledger = tempfile.mkstemp(prefix="soapbench-sweep-", suffix=".jsonl")
    os.close(fd)
    os.environ[LEDGER_ENV] = ledger
    code = 0
    try:
        hydra_main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except KeyboardInterrupt:
        print("interrupted (SIGINT)", file=sys.stderr, flush=True)
        code = 130
    except Exception as error:
        line = None if full_tracebacks else hydra_error_line(error)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr, flush=True)
        code = EXIT_BAD_INPUT
    finally:
        arms = [json.loads(text) for text in Path(ledger).read_text().splitlines() if text.strip()]
        Path(ledger).unlink(missing_ok=True)
    if arms:
        print(sweep_table(arms), flush=True)
        code = code or sweep_exit_code(arms)
    sys.exit(code)
