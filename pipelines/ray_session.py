"""The Ray a stage runs on: the one already initialised, a cluster, or a private local Ray.

    with ray_session(num_cpus=cfg.ray.num_cpus, address=cfg.ray.address):
        ...  # ray.data / ray.train work here

Embedded default: with no address (and no $RAY_ADDRESS) a local Ray is started for the stage and
shut down after it; it never attaches to some other `ray start` on the same machine.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator, Optional

import ray


@contextlib.contextmanager
def ray_session(num_cpus: Optional[int] = None, address: Optional[str] = None, log_to_driver: bool = False) -> Iterator[None]:
    """Use the Ray already initialised; else connect to ``address`` (or $RAY_ADDRESS), else start a
    private local Ray with ``num_cpus`` CPUs (default: all). What this starts or connects, it shuts down."""
    if ray.is_initialized():
        yield
        return
    quiet = dict(log_to_driver=log_to_driver, logging_level=logging.WARNING)
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, **quiet)
    else:  # "local": never attach to some other `ray start` on this machine
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, **quiet)
    try:
        yield
    finally:
        ray.shutdown()


def cluster_has_gpus() -> bool:
    """Whether the running Ray cluster offers at least one GPU."""
    return ray.cluster_resources().get("GPU", 0) > 0
