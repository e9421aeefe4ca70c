"""The resident memory and CPU seconds of a process and all its descendants (a local Ray's GCS,
raylet and workers, or ffmpeg children), read from Linux's /proc (no psutil: it is not a
dependency of the library, only shipped inside ray).

What it reads is what psutil reads: RSS from ``/proc/<pid>/statm`` (resident pages x page size),
user + system CPU seconds from ``/proc/<pid>/stat``, and the descendants from the parent pid of
every ``/proc/<pid>/stat``. Without /proc (not Linux) every sample is 0.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Optional

PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (field 3, the state, first)."""
    text = (PROC / str(pid) / "stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def descendants(root: int) -> list[int]:
    """Every living descendant of ``root`` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    try:
        entries = [entry.name for entry in PROC.iterdir() if entry.name.isdigit()]
    except OSError:
        return []
    for name in entries:
        try:
            parent = int(_stat_fields(int(name))[1])
        except (OSError, ValueError, IndexError):  # exited while listing
            continue
        children.setdefault(parent, []).append(int(name))
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def rss_and_cpu(pid: int) -> tuple[int, float]:
    """(resident bytes, user + system CPU seconds) of ``pid``; OSError when it has exited."""
    resident = int((PROC / str(pid) / "statm").read_text().split()[1])
    fields = _stat_fields(pid)
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of stat(5), in clock ticks
    return resident * os.sysconf("SC_PAGE_SIZE"), (utime + stime) / os.sysconf("SC_CLK_TCK")


class ProcessTreeMonitor:
    """Samples the RSS of this process and all its descendants (a local Ray's GCS, raylet and
    workers) every ``interval_s`` (None: only at the start and the end, so that the sampling costs
    no CPU during a timed run); keeps the peak of the sum and the CPU seconds they used."""

    def __init__(self, interval_s: Optional[float] = 0.02):
        self.interval_s = interval_s
        self.root = os.getpid()
        self.peak_bytes = self.idle_bytes = 0
        self._cpu_start: dict[int, float] = {}  # pid -> CPU seconds when the measure started
        self._cpu_last: dict[int, float] = {}  # pid -> CPU seconds at the last sample
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def sample(self) -> int:
        total = 0
        for pid in [self.root, *descendants(self.root)]:
            try:
                rss, cpu = rss_and_cpu(pid)
            except (OSError, ValueError, IndexError):  # exited between listing and reading
                continue
            total += rss
            self._cpu_last[pid] = cpu
        self.peak_bytes = max(self.peak_bytes, total)
        return total

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> "ProcessTreeMonitor":
        self.idle_bytes = self.sample()
        self._cpu_start = dict(self._cpu_last)  # processes alive now count from here, later ones from 0
        if self.interval_s is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self.sample()

    @property
    def cpu_seconds(self) -> float:
        return sum(cpu - self._cpu_start.get(pid, 0.0) for pid, cpu in self._cpu_last.items())
