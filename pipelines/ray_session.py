"""The Ray a stage runs on (the one already initialised, a cluster, or a private local Ray) and
the questions a stage asks of it: local or cluster, GPUs or not, CPUs left for the data readers.

    with ray_session(num_cpus=cfg.ray.num_cpus, address=cfg.ray.address):
        ...  # ray.data / ray.train work here
        read_cpus = data_cpus(cfg, 0.25, workers_cpus=2.0, lower="training.cpus_per_worker", say=print)

Embedded default: with no address (and no $RAY_ADDRESS) a local Ray is started for the stage and
shut down after it; it never attaches to some other `ray start` on the same machine.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Callable, Iterator, Optional

import ray

from semidff.config import Config, ConfigError


@contextlib.contextmanager
def ray_session(num_cpus: Optional[int] = None, address: Optional[str] = None, log_to_driver: bool = False) -> Iterator[None]:
    """Use the Ray already initialised; else connect to ``address`` (or $RAY_ADDRESS), else start a
    private local Ray with ``num_cpus`` CPUs (default: all). What this starts or connects, it shuts down."""
    if ray.is_initialized():
        yield
        return
    quiet = dict(log_to_driver=log_to_driver, logging_level=logging.WARNING)
    if not is_local(address):
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


def use_gpus(setting: Optional[bool]) -> bool:
    """Whether training workers take a GPU each: the config's ``use_gpu`` when set, else whether
    the cluster has GPUs (``device: auto``)."""
    return setting if setting is not None else cluster_has_gpus()


def is_local(address: Optional[str]) -> bool:
    """Whether a stage with this ``ray.address`` runs on a local Ray it starts itself (no address
    and no $RAY_ADDRESS), rather than on a cluster (which an autoscaler may grow)."""
    return not (address or os.environ.get("RAY_ADDRESS"))


def data_cpus(cfg: Config, needed: float, workers_cpus: float, lower: str, say: Callable[[str], None]) -> float:
    """CPUs per data task beside actors or workers holding ``workers_cpus``: what they leave free,
    at most 1 and at least ``needed``.

    Workers holding every CPU starve Ray Data's tasks and the run hangs silently, so a local Ray
    without room for one data task is refused (ConfigError naming ``lower``, the settings to
    lower); on a cluster it is a warning (an autoscaler may add nodes).
    """
    total = ray.cluster_resources().get("CPU", 0.0)
    free = total - workers_cpus
    if free >= needed - 1e-9:
        return max(needed, min(1.0, free))
    message = (
        f"the workers' {workers_cpus:g} CPUs leave {max(free, 0):g} of the cluster's {total:g} CPUs for the data tasks, "
        f"which need {needed:g} each: the run would hang. Lower {lower} (fractions are fine), or give Ray more CPUs (ray.num_cpus)"
    )
    if is_local(cfg.ray.address):
        raise ConfigError(message)
    say(f"warning: {message} (waiting for the cluster to add nodes)")
    return needed
