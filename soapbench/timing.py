"""Honest timing: every interval is closed by a device synchronisation, so queued GPU work is counted
where it happens rather than leaking into whichever later call happens to block. The process CPU time
over the same span is kept beside it (``soapbench.machine_load`` compares the two)."""

from __future__ import annotations

import resource
import sys
import time

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Accumulates synchronised durations of one kind of work (a training step, an optimizer step).

    ``last_cpu`` is the process CPU time (all threads) over the last interval, read right after the
    same synchronisations as the wall clock."""

    def __init__(self, device: torch.device):
        self.device = device
        self.total = 0.0
        self.last = 0.0
        self.last_cpu = 0.0
        self._start: float | None = None
        self._start_cpu = 0.0

    def start(self) -> None:
        synchronize(self.device)
        self._start = time.perf_counter()
        self._start_cpu = time.process_time()

    def stop(self) -> float:
        synchronize(self.device)
        self.last = time.perf_counter() - self._start
        self.last_cpu = time.process_time() - self._start_cpu
        self.total += self.last
        self._start = None
        return self.last


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated device memory on GPU; peak resident set size of the process on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is kilobytes on Linux, bytes on macOS.
    return int(peak if sys.platform == "darwin" else peak * 1024)


# Dense bf16 tensor-core peaks by GPU model, from the vendors' data sheets (no sparsity).
_GPU_PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "V100": 125e12,
}


def device_peak_flops(device: torch.device) -> float | None:
    """Peak bf16 FLOP/s of the detected GPU, or None (CPU or an unknown model: MFU is then not reported)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for model, peak in _GPU_PEAK_BF16_FLOPS.items():
        if model in name:
            return peak
    return None
