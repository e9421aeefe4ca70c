"""Tests that SIGKILL a stage's driver: give the local Ray it starts a mark, and wait for every
process of that Ray to be gone before looking at what the killed run left.

    env, marker = isolated_ray_env()
    driver = subprocess.Popen(command, env=env, start_new_session=True)
    ... os.killpg(driver.pid, signal.SIGKILL); driver.wait()
    wait_for_processes_gone(marker)        # now nothing of the killed run writes any more

The raylet and the workers of a killed driver outlive it for a moment (until they notice it is
gone), and in that moment an actor or a Train worker may still commit the file or checkpoint it
was writing: counting before they are gone made the resume tests flaky on a loaded machine.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path


def isolated_ray_env() -> tuple[dict, str]:
    """(environment for a subprocess that starts its own local Ray, its marker): this process's
    environment without RAY_ADDRESS, one OpenMP thread, and a fresh RAY_TMPDIR (short: Ray's
    socket paths must stay under 108 bytes) that every process of that Ray carries in its command
    line or its environment. Start the subprocess with ``start_new_session=True`` and kill its
    process group: a driver killed alone can leave Ray's helper processes behind for minutes."""
    marker = tempfile.mkdtemp(prefix="sdffk", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"OMP_NUM_THREADS": "1", "RAY_TMPDIR": marker}
    return env, marker


def wait_for_processes_gone(marker: str, timeout_s: float = 60.0) -> None:
    """Wait until no process has ``marker`` in its command line or environment (Linux /proc; Ray
    workers retitle themselves, but inherit the environment), then remove the marker folder (the
    killed Ray's session files). Raises AssertionError after ``timeout_s``, leaving it for a look."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = []
        for process in Path("/proc").glob("[0-9]*"):
            try:
                if any(marker.encode() in (process / name).read_bytes() for name in ("cmdline", "environ")):
                    alive.append(process.name)
            except OSError:  # gone meanwhile, or not ours to read
                pass
        if not alive:
            shutil.rmtree(marker, ignore_errors=True)
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"processes of the killed run still alive after {timeout_s} s: {alive}")
        time.sleep(0.2)
