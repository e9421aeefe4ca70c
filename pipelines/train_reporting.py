"""What the two Ray Train stages (``pipelines/teacher_trainer.py``, ``pipelines/flow_trainer.py``) share for
reporting: checkpoints, per-step MLflow metrics logged exactly once, progress lines from rank 0.

    # driver
    with ProgressPump(say) as pump:                      # prints the lines rank 0 sends
        TorchTrainer(loop, train_loop_config={"progress": pump.queue, ...}).fit()

    # each worker (rank 0 logs and talks; every rank reports)
    log = StepMetricLog(tracking_uri, run_id) if rank == 0 else None
    lines = ProgressReporter(config["progress"] if rank == 0 else None)
    log.add(step, {"train/total": 0.71})
    lines.maybe_line(f"step {step} loss 0.71")
    report_checkpoint(rank, state | {"pending_metrics": log.rows()}, {"step": step}, f"checkpoint_step{step:08d}")
    log.flush()                                          # only now: a committed checkpoint holds these steps

Why a step's metrics wait for its checkpoint: a worker failure (``FailureConfig``) or a rerun with
the same run name restarts from the latest *committed* checkpoint and trains the steps after it
again. Metrics sent before their checkpoint was committed would then be sent twice; metrics sent
after it never are. ``ray.train.report`` can return before the controller has committed the
checkpoint (recorded it in the run's ``checkpoint_manager_snapshot.json``, what a restart reads),
so :func:`report_checkpoint` waits for that. The rows not yet sent also travel inside each
checkpoint, so a run cut between the commit and the send logs them after its restart
(:meth:`StepMetricLog.restore`).
"""
from __future__ import annotations

import os
import tempfile
import threading
import time
from typing import Any, Callable, Optional

import torch

from semidff.safe_load import load_weights_only

STATE_FILE = "state.pt"  # the training state inside each Ray Train checkpoint folder
PROGRESS_EVERY_S = 10.0
MetricRow = tuple[str, float, int, int]  # (key, value, timestamp in ms, step)


def report_checkpoint(rank: int, state: dict[str, Any], metrics: dict[str, Any], checkpoint_dir_name: Optional[str] = None) -> None:
    """Report ``metrics`` from every rank (a barrier in Ray Train V2), rank 0 with a checkpoint
    holding ``state`` (``torch.save``d as :data:`STATE_FILE`; plain tensors, numbers, strings and
    containers, so it loads with ``weights_only``). Rank 0 returns only once the controller has
    committed the checkpoint: metrics logged after this call are never logged again by a restart.

    checkpoint_dir_name: the checkpoint's folder in the run (default: Ray's own name); the same on
    every rank.
    """
    import ray.train

    with tempfile.TemporaryDirectory(prefix="semidff-train-ckpt-") as folder:
        checkpoint = None
        if rank == 0:
            torch.save(state, os.path.join(folder, STATE_FILE))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_dir_name)
    if rank == 0:
        ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)


def load_checkpoint_state(checkpoint: Any) -> dict[str, Any]:
    """The state :func:`report_checkpoint` saved in a Ray Train checkpoint (``weights_only``, on CPU)."""
    with checkpoint.as_directory() as folder:
        return load_weights_only(os.path.join(folder, STATE_FILE))


class StepMetricLog:
    """Rank 0's per-step metrics for the stage's MLflow run, held until :meth:`flush`.

    Call :meth:`flush` right after :func:`report_checkpoint` and put :meth:`rows` into every
    checkpoint's state; after a restart, :meth:`restore` those rows. Every (metric, step) then
    reaches the run once, wherever the run was cut.
    """

    def __init__(self, tracking_uri: str, run_id: str):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id
        self.pending: list[MetricRow] = []

    def add(self, step: int, metrics: dict[str, float]) -> None:
        """Hold ``metrics`` (name -> value) for global step ``step``, stamped with the current time."""
        timestamp = int(time.time() * 1000)
        self.pending += [(key, float(value), timestamp, int(step)) for key, value in metrics.items()]

    def rows(self) -> list[MetricRow]:
        """The rows not sent yet, as plain tuples (for a checkpoint's state)."""
        return list(self.pending)

    def restore(self, rows: list, written_for_run_id: Optional[str]) -> None:
        """Send the rows a restored checkpoint held that this MLflow run lacks, then hold nothing.

        rows: :meth:`rows` as saved in the checkpoint; written_for_run_id: the MLflow run that
        checkpoint's worker logged to. Rows of another run are dropped (a stage that opens a new
        MLflow run on a rerun starts its curve at the resumed step). A row counts as logged when
        its metric already has a value at that step or later: one metric's rows reach MLflow in
        step order, also when a cut split a flush into several batches.
        """
        self.pending = []
        if written_for_run_id != self.run_id:
            return
        rows = [tuple(row) for row in rows]
        last_logged = {key: max((m.step for m in self.client.get_metric_history(self.run_id, key)), default=-1)
                       for key in {row[0] for row in rows}}
        self.pending = [(key, value, timestamp, step) for key, value, timestamp, step in rows if int(step) > last_logged[key]]
        self.flush()

    def tag(self, key: str, value: str) -> None:
        """Set a tag on the run (e.g. the step a restart resumed at)."""
        self.client.set_tag(self.run_id, key, value)

    def flush(self) -> None:
        """Send the held rows to MLflow (batches of 1000, MLflow's limit)."""
        from mlflow.entities import Metric

        metrics = [Metric(key, value, timestamp, step) for key, value, timestamp, step in self.pending]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])
        self.pending = []


class ProgressReporter:
    """Rank 0's progress lines, sent to the driver's :class:`ProgressPump` through its Ray queue;
    ``queue=None`` (other ranks, or no progress wanted) sends nothing."""

    def __init__(self, queue: Any, every_s: float = PROGRESS_EVERY_S):
        self.queue = queue
        self.every_s = every_s
        self.last = float("-inf")

    def line(self, text: str) -> None:
        """Send ``text`` now."""
        if self.queue is not None:
            try:
                self.queue.put_nowait(text)
            except Exception:  # noqa: BLE001 - a full or gone queue must never stop training
                pass

    def maybe_line(self, text: str, force: bool = False) -> None:
        """Send ``text`` if ``every_s`` seconds have passed since the last one sent this way (or ``force``)."""
        if self.queue is not None and (force or time.monotonic() - self.last >= self.every_s):
            self.last = time.monotonic()
            self.line(text)


class ProgressPump:
    """A Ray queue the workers write progress lines to, and a driver thread that hands each line
    to ``say`` while the ``with`` block runs (the queue actor takes no CPU)."""

    def __init__(self, say: Callable[[str], None]):
        from ray.util.queue import Queue

        self.say = say
        self.queue = Queue(maxsize=1000, actor_options={"num_cpus": 0})
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._pump, name="train-progress", daemon=True)

    def _pump(self) -> None:
        from ray.util.queue import Empty

        while True:
            try:
                self.say(self.queue.get(timeout=0.5))
            except Empty:
                if self.stop.is_set():
                    return
            except Exception:  # noqa: BLE001 - the queue actor is gone (Ray shutting down)
                return

    def __enter__(self) -> "ProgressPump":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.queue.shutdown()
