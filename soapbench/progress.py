"""Progress while training: a tqdm bar on a terminal, plain periodic lines otherwise (logs, SLURM)."""

from __future__ import annotations

import sys
import time
from datetime import timedelta

from tqdm import tqdm


class Progress:
    def __init__(self, total_steps: int, start_step: int, description: str, enabled: bool = True):
        self.enabled = enabled
        self.total = total_steps
        self.start_step = start_step
        self.started = time.perf_counter()
        self.interactive = enabled and sys.stderr.isatty()
        self.bar = (
            tqdm(total=total_steps, initial=start_step, desc=description, dynamic_ncols=True)
            if self.interactive
            else None
        )
        self.description = description

    def update(self, step: int, loss: float, lr: float, step_seconds: float) -> None:
        if not self.enabled:
            return
        done = step - self.start_step
        elapsed = time.perf_counter() - self.started
        eta = timedelta(seconds=int(elapsed / max(done, 1) * (self.total - step)))
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", step_ms=f"{step_seconds * 1e3:.1f}", refresh=False)
            self.bar.refresh()
        else:
            print(
                f"[{self.description}] step {step}/{self.total} | loss {loss:.4f} | lr {lr:.2e} | "
                f"{step_seconds * 1e3:.1f} ms/step | ETA {eta}",
                flush=True,
            )

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
