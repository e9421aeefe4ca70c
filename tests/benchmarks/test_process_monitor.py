"""ProcessTreeMonitor reads the memory and CPU seconds of this process and its descendants from /proc."""
import subprocess
import sys
import time

import pytest

from semidff.benchmarks.process_monitor import PROC, ProcessTreeMonitor, descendants, rss_and_cpu

pytestmark = pytest.mark.skipif(not PROC.is_dir(), reason="reads Linux's /proc")

# A child that spins 0.5 s of CPU, then starts a grandchild that sleeps.
SPIN = "import subprocess, time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\nsubprocess.run(['sleep', '2'])"


def test_the_monitor_counts_the_cpu_and_memory_of_children_and_grandchildren():
    with ProcessTreeMonitor(interval_s=0.02) as monitor:
        child = subprocess.Popen([sys.executable, "-c", SPIN])
        deadline = time.monotonic() + 30
        while not any(pid != child.pid for pid in descendants(monitor.root)) and time.monotonic() < deadline:
            time.sleep(0.05)
        tree = descendants(monitor.root)
        assert child.pid in tree and len(tree) >= 2  # the grandchild (sleep) too
        own_rss, _ = rss_and_cpu(monitor.root)
        child.wait(timeout=30)
    assert monitor.cpu_seconds >= 0.4  # the child's spin (its CPU seconds at the last sample before it exited)
    assert monitor.idle_bytes >= own_rss / 2 and monitor.peak_bytes > monitor.idle_bytes  # the child's memory counted on top


def test_a_monitor_without_interval_samples_only_at_the_ends():
    with ProcessTreeMonitor(interval_s=None) as monitor:
        assert monitor._thread is None
    assert monitor.peak_bytes >= monitor.idle_bytes > 0 and monitor.cpu_seconds >= 0
