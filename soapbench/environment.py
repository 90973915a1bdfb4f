"""What a run records about where it ran: device (CPU model and threads on CPU), package versions, git commit."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

_PACKAGES = ("torch", "hydra-core", "wandb", "numpy", "transformers", "datasets", "kornia", "soapbench")


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        from soapbench.errors import ConfigError

        raise ConfigError(f"device: {requested!r} requested but CUDA is not available; use device=cpu or device=auto")
    return device


def describe_device(device: torch.device) -> str:
    """``cuda:<GPU name>``, or ``cpu:<arch> <CPU model> (<widest vector ISA>) x<threads> threads``."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    isa = f" ({cpu_vector_isa()})" if cpu_vector_isa() else ""
    return f"cpu:{platform.machine()} {cpu_model()}{isa} x{torch.get_num_threads()} threads"


@functools.cache
def _cpuinfo_field(name: str) -> str | None:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's marketing name (/proc/cpuinfo "model name"; elsewhere what the platform reports)."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown CPU"


def cpu_vector_isa() -> str | None:
    """AVX-512 or AVX2 when the CPU has it: float32 linear algebra rounds differently on the two."""
    flags = (_cpuinfo_field("flags") or "").split()
    if "avx512f" in flags:
        return "AVX-512"
    if "avx2" in flags:
        return "AVX2"
    return None


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. under taskset or a SLURM allocation)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def git_commit(repo: Path | None = None) -> str | None:
    repo = repo or Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None
