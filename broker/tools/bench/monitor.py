"""Watches a running pipeline from another thread: progress, and when reading began and ended.

Input: the Pipeline's RunStats (only ever incremented by the pipeline's thread). Output: the
clock time of the first batch read, the time a given number of messages were finished
(stored or rejected, i.e. committed), and a tqdm bar on stderr while waiting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from broker.pipeline import RunStats

SAMPLE_SECONDS = 0.005


class PipelineWatcher:
    """Samples RunStats; `first_read` and `wait_for` use the same clock as the caller's."""

    def __init__(
        self,
        stats: RunStats,
        clock: Callable[[], float] = time.perf_counter,
        interval: float = SAMPLE_SECONDS,
        on_first_read: Callable[[], None] | None = None,
    ) -> None:
        self.stats = stats
        self.clock = clock
        self.interval = interval
        self.on_first_read = on_first_read
        self.first_read: float | None = None

    def finished(self) -> int:
        """Messages stored or rejected so far: their offsets are committed."""
        return self.stats.stored + self.stats.rejected

    def sample(self) -> int:
        now = self.clock()
        if self.first_read is None and self.stats.messages:
            # The first batch's read time is already in `decode` (poll + decode): back-date
            # to when that poll began, the start of the measured window.
            self.first_read = now - self.stats.stage_seconds.get("decode", 0.0)
            if self.on_first_read is not None:
                self.on_first_read()
        return self.finished()

    def wait_for(
        self,
        count: int,
        timeout: float,
        abort: threading.Event,
        bar: Any = None,
    ) -> float | None:
        """The clock time when `count` messages were finished; None on timeout or abort.

        `bar` (tqdm) advances by what gets finished from now on.
        """
        deadline = time.monotonic() + timeout
        shown = min(self.sample(), count)
        while not abort.is_set():
            done = self.sample()
            if bar is not None and done > shown:
                bar.update(min(done, count) - shown)
                shown = min(done, count)
            if done >= count:
                return self.clock()
            if time.monotonic() >= deadline:
                return None
            abort.wait(self.interval)
        return None

    def stages(self) -> dict[str, float]:
        return dict(self.stats.stage_seconds)
