"""The machine line every benchmark and the demo print next to a timing (BENCHMARKS.md needs it)."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> str:
    """CPU model, cores, GPU (or "no GPU"), OS and torch build, e.g. "Intel(R) Xeon(R) Processor,
    2 cores, no GPU, Linux 6.1, torch 2.13.0+cpu"."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu_model()}, {os.cpu_count()} cores, {gpu}, {platform.system()} {platform.release()}, torch {torch.__version__}"
