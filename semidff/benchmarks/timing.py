"""How every benchmark times things and sums up its runs (one place, so that every report's
"median of N runs" means the same).

- :class:`Stopwatch`: seconds of one measure on a clock (wall time by default; ``time.process_time``
  or ``time.thread_time`` for CPU time), with laps for per-step rates;
- :func:`time_calls`: call a function N times (after untimed warm-up calls) and keep every run's
  seconds and result (:class:`Runs`);
- :func:`median`: the median of runs (nan when there are none), :func:`format_runs`: every run as
  the reports list them.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Generic, Iterable, Optional, TypeVar

T = TypeVar("T")


def median(values: Iterable[float]) -> float:
    """The median of ``values``; nan when there are none (a measure that never ran)."""
    values = list(values)
    return statistics.median(values) if values else float("nan")


def format_runs(values: Iterable[float], digits: int = 2, unit: str = "") -> str:
    """Every run as the reports list them: ``1.23, 1.31`` (``unit`` after each number)."""
    return ", ".join(f"{v:.{digits}f}{unit}" for v in values)


class Stopwatch:
    """Seconds on ``clock`` since the start: ``with Stopwatch() as watch: ...`` then
    ``watch.seconds`` (read inside the block: the seconds so far). :meth:`lap` gives the seconds
    since the previous lap (or the start), e.g. one training step of a loop."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.restart()

    def restart(self) -> "Stopwatch":
        self._start = self._last = self.clock()
        self._stop: Optional[float] = None
        return self

    def __enter__(self) -> "Stopwatch":
        return self.restart()

    def __exit__(self, *exc) -> None:
        self._stop = self.clock()

    @property
    def seconds(self) -> float:
        return (self.clock() if self._stop is None else self._stop) - self._start

    def lap(self) -> float:
        now = self.clock()
        seconds, self._last = now - self._last, now
        return seconds


@dataclass
class Runs(Generic[T]):
    """The timed calls of :func:`time_calls`: each call's seconds and what it returned."""

    seconds: list[float] = field(default_factory=list)
    results: list[T] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return median(self.seconds)


def time_calls(function: Callable[[], T], repeats: int, *, warmup: int = 0, clock: Callable[[], float] = time.perf_counter) -> Runs[T]:
    """Call ``function`` ``warmup`` times untimed, then ``repeats`` times, each on a
    :class:`Stopwatch` of ``clock``."""
    for _ in range(warmup):
        function()
    runs: Runs[T] = Runs()
    for _ in range(repeats):
        with Stopwatch(clock) as watch:
            result = function()
        runs.seconds.append(watch.seconds)
        runs.results.append(result)
    return runs
