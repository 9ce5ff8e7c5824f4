"""Per-object progress of a stage run: a bar on a terminal, a plain line per 10 % in logs.

The runner reports every finished object once (:meth:`StageProgress.advance`), whatever the
shard size. On a terminal the progress is a ``tqdm`` bar; anywhere else (a log file, CI, a pipe)
a bar's carriage returns would fill the log with redraws, so one plain line is printed each time
another ``step_percent`` of the objects is done, and a last one when the stage ends::

    render-instantmesh32: 4/40 objects (10 %), 0 failed, 3 s
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

STEP_PERCENT = 10
"""Non-terminal streams: one line each time another this many percent of the objects is done."""


class StageProgress:
    """Progress display of one stage run over ``total`` objects, on ``stream`` (default stderr).

    ``enabled=False`` shows nothing (``--run.no-progress``). ``tty`` overrides the stream's own
    ``isatty()`` (tests). Thread-safe: the runner advances it from two threads."""

    def __init__(
        self,
        desc: str,
        total: int,
        *,
        stream: TextIO | None = None,
        enabled: bool = True,
        tty: bool | None = None,
        step_percent: int = STEP_PERCENT,
    ) -> None:
        if not 0 < step_percent <= 100:
            raise ValueError(f"step_percent must be in (0, 100], got {step_percent}")
        self.desc = desc
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and total > 0
        self.step_percent = step_percent
        self.done = 0
        self.failed = 0
        self._t0 = time.perf_counter()
        self._lock = threading.Lock()
        self._printed_step = 0
        self._printed_done = -1
        self._bar: Any = None
        is_tty = tty if tty is not None else _isatty(self.stream)
        if self.enabled and is_tty:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, desc=desc, unit="obj", file=self.stream, dynamic_ncols=True
            )

    def advance(self, status: str) -> None:
        """One more object finished with ``status`` (ok, failed or skipped)."""
        with self._lock:
            self.done += 1
            self.failed += status == "failed"
            if not self.enabled:
                return
            if self._bar is not None:
                self._bar.update(1)
                self._bar.set_postfix(failed=self.failed, refresh=False)
                return
            step = self.done * 100 // (self.total * self.step_percent)
            if step > self._printed_step:
                self._printed_step = step
                self._line()

    def close(self) -> None:
        """End the display (a last line in logs unless the last one already said it all)."""
        with self._lock:
            if not self.enabled:
                return
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            elif self._printed_done != self.done:
                self._line()
            self.enabled = False

    def _line(self) -> None:
        percent = 100 * self.done // self.total
        seconds = time.perf_counter() - self._t0
        print(
            f"{self.desc}: {self.done}/{self.total} objects ({percent} %), "
            f"{self.failed} failed, {seconds:.0f} s",
            file=self.stream,
            flush=True,
        )
        self._printed_done = self.done

    def __enter__(self) -> StageProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _isatty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except ValueError:  # a closed stream
        return False
