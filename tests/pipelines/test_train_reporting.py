"""pipelines/train_reporting.py without Ray: the step metric log on a real MLflow SQLite store
(every (metric, step) logged once after a restore, however the cut run left it), rank 0's
progress lines, and atomic small files. report_checkpoint and ProgressPump run in the Ray Train
jobs' tests (tests/jobs/test_train_flow.py kills a worker mid-fit)."""
from __future__ import annotations

import queue

from mlflow import MlflowClient
from mlflow.entities import Metric

from pipelines.train_reporting import ProgressReporter, StepMetricLog
from semidff.atomic import write_text_atomically


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_restore_logs_each_metric_step_once_after_a_cut(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("reporting", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id

    log = StepMetricLog(uri, run_id)
    for step in (1, 2):
        log.add(step, {"train/total": step / 10, "train/lr": 0.5})
    checkpointed = log.rows()  # what the first checkpoint holds
    log.flush()
    assert log.rows() == []
    for step in (3, 4):
        log.add(step, {"train/total": step / 10, "train/lr": 0.5})
    second_checkpoint = log.rows()
    # The cut: the flush of steps 3-4 got only step 3's train/total through before the worker died.
    client.log_batch(run_id, metrics=[Metric("train/total", 0.3, second_checkpoint[0][2], 3)])

    restarted = StepMetricLog(uri, run_id)
    restarted.restore(second_checkpoint, written_for_run_id=run_id)
    restarted.restore(checkpointed, written_for_run_id=run_id)  # an older checkpoint: all of it logged already
    assert restarted.rows() == []
    assert _history(client, run_id, "train/total") == [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4)]
    assert _history(client, run_id, "train/lr") == [(s, 0.5) for s in (1, 2, 3, 4)]

    # Rows a checkpoint held for another MLflow run (a rerun that opens a new run) are not logged here.
    other = client.create_run(experiment).info.run_id
    fresh = StepMetricLog(uri, other)
    fresh.restore(second_checkpoint, written_for_run_id=run_id)
    assert fresh.rows() == [] and _history(client, other, "train/total") == []


def test_progress_lines_from_rank_zero_are_throttled_and_never_raise(tmp_path):
    lines: queue.Queue = queue.Queue(maxsize=2)
    reporter = ProgressReporter(lines, every_s=3600)
    reporter.maybe_line("step 1")  # the first one goes out
    reporter.maybe_line("step 2")  # within every_s: dropped
    reporter.maybe_line("epoch 1 done", force=True)
    reporter.line("one too many")  # the queue is full: dropped, training goes on
    assert [lines.get_nowait() for _ in range(lines.qsize())] == ["step 1", "epoch 1 done"]
    ProgressReporter(None).line("other ranks send nothing")

    target = tmp_path / "run" / "config.yaml"
    write_text_atomically(target, "a: 1\n")
    write_text_atomically(target, "a: 2\n")
    assert target.read_text() == "a: 2\n" and [p.name for p in target.parent.iterdir()] == ["config.yaml"]
