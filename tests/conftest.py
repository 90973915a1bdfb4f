"""Shared test setup: offline data from ../shared/data, configs composed with Hydra's compose API."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"  # the checkout's: soapbench.composition.CONFIG_DIR must be it (test_configs)
os.environ.setdefault("SOAPBENCH_DATA", str(REPO.parent / "shared" / "data"))
os.environ.setdefault("WANDB_SILENT", "true")
# One thread per process: small eigh/QR calls slow down by orders of magnitude when BLAS threads compete
# for busy cores, and several tests run subprocesses side by side.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

# Small, fast overrides for runs in tests: tiny model, few steps, no W&B process.
FAST = [
    "model=nanogpt_char_cpu",
    "model.n_layer=2",
    "model.n_embd=32",
    "model.n_head=2",
    "model.seq_len=32",
    "trainer.batch_size=4",
    "trainer.max_steps=12",
    "trainer.eval_interval=6",
    "trainer.eval_batches=2",
    "trainer.log_interval=3",
    "trainer.checkpoint_interval=6",
    "trainer.schedule.warmup_steps=2",
    "trainer.final_eval_batches=2",
    "trainer.threads=1",
    "logger.wandb.mode=disabled",
]


class RunsCode:
    """Unpickling it executes a statement that writes ``marker``: what a crafted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def compose(overrides: list[str]):
    from soapbench.composition import compose_train_config

    return compose_train_config(overrides)


def resolved(overrides: list[str]) -> dict:
    from soapbench.cli import resolve

    return resolve(compose(overrides))


def train_in_process(overrides: list[str], results_dir: Path) -> dict:
    from soapbench.trainer import train

    return train(resolved([*FAST, f"paths.results_dir={results_dir}", *overrides]))


def run_cli(
    args: list[str], results_dir: Path, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    flags = [a for a in args if a.startswith("-")]  # Hydra's flags (e.g. -m) go before the overrides
    overrides = [a for a in args if not a.startswith("-")]
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "train.py"),
            *flags,
            *FAST,
            f"paths.results_dir={results_dir}",
            *overrides,
        ],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=results_dir.parent,
    )


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    path = tmp_path / "results"
    path.mkdir()
    return path


@pytest.fixture
def one_thread():
    """One BLAS thread for tests on tiny tensors (extra threads only add overhead on busy cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_identical(actual, expected, where: str) -> None:
    """Nested state (dicts, lists, tensors, numbers) equal bit for bit, tensor dtypes included."""
    import torch  # not at module level: the thread settings above must come before torch loads

    if isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype and torch.equal(actual, expected), where
    elif isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for key in expected:
            assert_identical(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for index, (a, e) in enumerate(zip(actual, expected)):
            assert_identical(a, e, f"{where}[{index}]")
    else:
        assert actual == expected, where


PRECISION_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@contextlib.contextmanager
def layer_output_dtypes():
    """The dtypes of every Linear and convolution output computed with gradients on while the block runs: what
    autocast really did to the training step's matmuls. Evaluation runs under no_grad, and a FLOP count's pass
    through a meta-device copy of the model is no step, so neither is recorded."""
    import torch
    from torch import nn

    seen: set = set()

    def record(module, args, output) -> None:
        layer = isinstance(module, (nn.Linear, nn.modules.conv._ConvNd))
        if layer and torch.is_grad_enabled() and output.device.type != "meta":
            seen.add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        yield seen
    finally:
        handle.remove()
