"""Progress for people: a tqdm bar on a terminal; elsewhere (CI, ``nohup``, cluster logs) one log
line every N steps with loss, accuracy, speed and the time left, instead of carriage-return floods.

    progress = Progress(total_steps, start_step, "dpo", enabled=accelerator.is_main_process)
    progress.update(step, row)      # after each optimizer step
    progress.close()
"""

from __future__ import annotations

import logging
import sys
import time

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

LINES_PER_RUN = 20  # default number of progress lines without a terminal


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    def __init__(self, total: int, initial: int, desc: str, enabled: bool = True, every: int | None = None,
                 stream=None):
        stream = stream if stream is not None else sys.stderr
        self.total, self.initial, self.desc = total, initial, desc
        self.enabled = enabled
        self.bar = None
        if enabled and getattr(stream, "isatty", lambda: False)():
            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=stream)
        self.every = every or max(1, (total - initial) // LINES_PER_RUN)
        self.t0 = time.perf_counter()

    def update(self, step: int, row: dict) -> None:
        if not self.enabled:
            return
        loss, acc = row.get("loss", float("nan")), row.get("rewards/accuracies", float("nan"))
        speed = row.get("examples_per_second", float("nan"))
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.2f}", ex_s=f"{speed:.1f}")
            self.bar.update(1)
            return
        if step % self.every and step != self.total:
            return
        elapsed = time.perf_counter() - self.t0
        per_step = elapsed / max(1, step - self.initial)
        log.info("%s step %d/%d  loss %.4f  accuracy %.3f  %.1f examples/s  elapsed %s  eta %s", self.desc, step,
                 self.total, loss, acc, speed, _clock(elapsed), _clock(per_step * (self.total - step)))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
