"""Progress reporting: a tqdm bar with step rate and ETA on terminals, plain log lines
otherwise, and TensorBoard scalars when asked for and importable. Only the main rank reports."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tqdm import tqdm


def log(message: str, rank: int = 0) -> None:
    """Print a line (main rank only), flushed so it shows up in logs at once."""
    if rank == 0:
        print(message, flush=True)


def use_bar(mode: str) -> bool:
    """ "bar", "lines", or "auto": a bar when stderr is an interactive terminal."""
    return mode == "bar" or (mode == "auto" and sys.stderr.isatty())


class EpochProgress:
    """Reports one epoch's steps: ``update(loss, lr)`` after each step; loss and lr are None
    between the loop's reads of the device totals (the bar advances, no line is printed)."""

    def __init__(
        self, epoch: int, total: int, start: int, mode: str, log_every: int, rank: int
    ) -> None:
        self.epoch, self.total, self.done = epoch, total, start
        self.rank, self.log_every = rank, max(1, log_every)
        self.started, self.first = time.perf_counter(), start
        self.bar = None
        if rank == 0 and use_bar(mode):
            self.bar = tqdm(
                total=total, initial=start, desc=f"epoch {epoch + 1}", unit="step", leave=False
            )

    def update(self, loss: float | None, lr: float | None) -> None:
        self.done += 1
        if self.rank != 0:
            return
        if self.bar is not None:
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4g}", lr=f"{lr:.2e}", refresh=False)
            self.bar.update(1)
            return
        if loss is not None:
            elapsed = time.perf_counter() - self.started
            rate = (self.done - self.first) / elapsed if elapsed > 0 else 0.0
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            print(
                f"epoch {self.epoch + 1} step {self.done}/{self.total} loss {loss:.4g} "
                f"lr {lr:.2e} {rate:.2f} steps/s ETA {eta:.0f} s",
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Scalars:
    """TensorBoard writer when enabled and ``tensorboard`` is installed; a no-op otherwise."""

    def __init__(self, enabled: bool, out_dir: Path, rank: int) -> None:
        self.writer = None
        if not enabled or rank != 0:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log("tensorboard is not installed: TensorBoard logging is off", rank)
            return
        self.writer = SummaryWriter(str(out_dir / "tensorboard"))

    def add(self, values: dict[str, float], step: int, prefix: str) -> None:
        if self.writer is None:
            return
        for name, value in values.items():
            self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
