"""The Ray Tune side of a stage-2 sweep: the scheduler, the per-epoch results, the trials' records,
the progress lines and the clean-up Tune needs here (``jobs/tune.py`` is the recipe that uses them).

    scheduler = SweepASHA(max_epochs, trials_dir, time_attr=TIME_ATTR, max_t=12, grace_period=1, reduction_factor=2)
    callbacks = [SweepProgress(space, quasi_points, metric, "ASHA", max_epochs, print)]
    trainer_callbacks = [EpochResults(trial_dir / RESULTS_FILE, trial_id)]      # inside a trial
    records = collect_trials(tuner.fit(), space, setup, metric, max_epochs)

Which Ray mechanism keeps what: Tune's experiment state (``tune/sweep/``) restores the trials of a
cut sweep; each trial's Ray Train run resumes from its own checkpoints; :class:`EpochResults`
writes every epoch result to the trial's folder before Tune sees it, and :class:`SweepASHA`
replays those into its rungs on restore (Tune saves no scheduler state).

Ray Train's placement groups outlive a trial that Tune stops (ray#54305): without the Ray
dashboard's State API their cleaner cannot run and the freed CPUs never come back, so the sweep
removes the placement groups of this job whose creating actor is dead
(:func:`remove_leaked_placement_groups`, a private Ray API: failures are reported, never fatal).
"""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any, Callable, Optional

from ray.train import UserCallback
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler

from semidff.config import Config
from semidff.sweep_report import ERROR, FINISHED, STOPPED_EARLY, TrialRecord
from semidff.sweep_space import QUASI_POINT_KEY, SearchSpace
from semidff.tracking import recorded_run_id

RESULTS_FILE = "epoch_results.jsonl"  # in each trial's folder
FLOW_FILE = "flow.pt"  # what a finished trial's stage-2 run writes in its folder
TIME_ATTR = "epoch"  # epochs done, as the stage-2 run reports it: survives a resume (Tune's own training_iteration restarts at 1)
Progress = Callable[[str], None]


class SweepError(ValueError):
    """A sweep cannot start or continue; the message names the input and the fix."""


# ---------------------------------------------------------------------------------------------
# Sizing


def plan_concurrency(cfg: Config, cluster_cpus: float, say: Progress, local: bool = True) -> int:
    """Trials to run at once: ``tune.max_concurrent_trials``, on a local Ray lowered to what it
    holds while keeping 1 CPU for Ray Data's readers (ray-facts §0 #4/#5); SweepError when not even
    one trial fits. A cluster may scale up (GPU workers from zero): there it is only a note."""
    tcfg, training = cfg.tune, cfg.training
    per_trial = tcfg.cpus_per_trial + training.num_workers * training.cpus_per_worker
    fits = math.floor((cluster_cpus - 1.0) / per_trial + 1e-9)
    if not local:
        if fits < tcfg.max_concurrent_trials:
            say(f"tune: the cluster has {cluster_cpus:g} CPUs now, room for {max(fits, 0)} trial(s) of {per_trial:g} CPUs beside 1 for "
                f"the readers; the other trials wait for the autoscaler (tune.max_concurrent_trials={tcfg.max_concurrent_trials})")
        return tcfg.max_concurrent_trials
    if fits < 1:
        raise SweepError(
            f"a trial needs {per_trial:g} CPUs (tune.cpus_per_trial={tcfg.cpus_per_trial:g} + training.num_workers="
            f"{training.num_workers} x training.cpus_per_worker={training.cpus_per_worker:g}) plus 1 CPU for the data readers, "
            f"but the Ray cluster has {cluster_cpus:g}; lower training.cpus_per_worker (fractions work) or add CPUs (ray.num_cpus)"
        )
    if fits < tcfg.max_concurrent_trials:
        say(f"tune: {cluster_cpus:g} CPUs hold {fits} trial(s) of {per_trial:g} CPUs at once plus 1 CPU for the readers; "
            f"running {fits} at a time instead of tune.max_concurrent_trials={tcfg.max_concurrent_trials}")
        return fits
    return tcfg.max_concurrent_trials


def param_space(space: SearchSpace, num_samples: int) -> tuple[dict[str, Any], int]:
    """(Tune param_space, Tune num_samples). Quasi-random entries become one grid over the index
    of their ``num_samples`` points (each point once), so Tune then samples once per grid cell."""
    from ray import tune

    params: dict[str, Any] = {}
    for d in space.dimensions:
        if d.kind == "grid":
            params[d.key] = tune.grid_search(list(d.values))
        elif d.kind == "choice":
            params[d.key] = tune.choice(list(d.values))
        elif d.kind == "uniform":
            params[d.key] = tune.uniform(*d.values)
        elif d.kind == "loguniform":
            params[d.key] = tune.loguniform(*d.values)
        elif d.kind == "randint":
            params[d.key] = tune.randint(d.values[0], d.values[1] + 1)  # Tune's upper end is exclusive
    if space.quasi_dimensions:
        params[QUASI_POINT_KEY] = tune.grid_search(list(range(num_samples)))
        return params, 1
    return params, num_samples


# ---------------------------------------------------------------------------------------------
# Per-epoch results (in the trials)


class EpochResults(UserCallback):
    """A trial's Ray Train callback: append each epoch-end result to the trial's results file,
    then hand it to Tune (``TuneReportCallback``). The file is written before Tune can see the
    result, so a sweep cut in between still knows it when resumed (Tune itself would not: the
    result dies with the trial actor, and a resumed trial goes on from its checkpoint)."""

    def __init__(self, path: Path, trial_id: str):
        from ray.tune.integration.ray_train import TuneReportCallback

        self.path, self.trial_id = path, trial_id
        self.to_tune = TuneReportCallback()  # made here, in the Tune session; it runs on the Train controller

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if metrics:
            values = {k: v for k, v in metrics[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if values != self._last_values():  # a resumed run that had finished reports its last epoch again
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a") as stream:
                    stream.write(json.dumps({"trial_id": self.trial_id, "reported_at": time.time(), **values}) + "\n")
        self.to_tune.after_report(run_context, metrics, checkpoint)

    def _last_values(self) -> Optional[dict[str, Any]]:
        try:
            last = json.loads(self.path.read_text().splitlines()[-1])
        except (OSError, IndexError, json.JSONDecodeError):
            return None
        return {k: v for k, v in last.items() if k not in ("trial_id", "reported_at")}


def read_epoch_results(trials_dir: str | Path) -> list[dict[str, Any]]:
    """Every trial's epoch results (:class:`EpochResults`), in the order they were reported; a
    line cut by a kill is skipped."""
    records = []
    for path in Path(trials_dir).glob(f"*/{RESULTS_FILE}"):
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "trial_id" in record and isinstance(record.get(TIME_ATTR), (int, float)):
                records.append(record)
    return sorted(records, key=lambda record: record.get("reported_at", 0.0))


def read_trial_history(trials_dir: str | Path, metric: str) -> dict[str, dict[int, float]]:
    """{trial id: {epoch: metric}}; an epoch reported again (a trial resumed from a mid-epoch
    checkpoint) keeps its last value."""
    history: dict[str, dict[int, float]] = {}
    for record in read_epoch_results(trials_dir):
        value = record.get(metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            history.setdefault(str(record["trial_id"]), {})[int(record[TIME_ATTR])] = float(value)
    return history


# ---------------------------------------------------------------------------------------------
# The scheduler


class SweepASHA(ASHAScheduler):
    """ASHA (asynchronous successive halving) with two changes for semidff sweeps.

    * It never stops a trial at its last epoch: the trial then ends by itself, after train_flow
      has written flow.pt, logged it and closed its MLflow run (a stop would kill it first). The
      result still counts in ASHA's rungs.
    * A restored sweep gets its rungs back: Tune does not save scheduler state, so without this
      a resumed sweep would judge the next trials against empty rungs. On its first event the
      scheduler replays the trials' epoch results (:class:`EpochResults`) in the order they were
      reported, as ASHA would have seen them, and stops at its next result a trial that ASHA
      would have stopped at a result it never saw (one in flight when the sweep was cut).

    budget_of: a trial's Tune config -> its number of epochs (swept epoch counts differ per trial).
    trials_dir: the sweep's ``trials/`` folder.
    """

    def __init__(self, budget_of: Callable[[dict], int], trials_dir: str, **asha: Any):
        super().__init__(**asha)
        self._budget_of = budget_of
        self._trials_dir = trials_dir
        self._replayed = False
        self._stop_when_seen: set[str] = set()

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)
        if not self._replayed:
            self._replayed = True
            self.replay(read_epoch_results(self._trials_dir))

    def replay(self, records: list[dict[str, Any]]) -> list[str]:
        """Feed earlier epoch results (in report order) through ASHA's rungs; returns the ids of
        the trials ASHA stops on them, which are then stopped at their next result."""
        from types import SimpleNamespace

        stopped = []
        bracket = self._brackets[0]  # one bracket (the default); ASHA's own _Bracket bookkeeping
        for record in records:
            value = record.get(self._metric)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            trial = SimpleNamespace(trial_id=str(record["trial_id"]))
            if bracket.on_result(trial, record[self._time_attr], self._metric_op * value) == self.STOP:
                stopped.append(trial.trial_id)
        self._stop_when_seen.update(stopped)
        return stopped

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if result.get(TIME_ATTR, 0) >= self._budget_of(trial.config):
            return self.CONTINUE
        if trial.trial_id in self._stop_when_seen:
            return self.STOP
        return action


# ---------------------------------------------------------------------------------------------
# Driver-side clean-up and progress


def _actor_placement_groups() -> list[tuple[bytes, bool]]:
    """(id, creator dead) of this job's live placement groups that an actor created (Tune's own
    trial groups are the driver's). Reads the GCS table directly, so it works without the dashboard."""
    import ray
    from ray._private.state import state as global_state
    from ray.core.generated import gcs_pb2

    job_id = ray.get_runtime_context().get_job_id()
    found = []
    for raw in global_state._connect_and_get_accessor().get_placement_group_table():
        entry = gcs_pb2.PlacementGroupTableData.FromString(raw)
        created_by_actor = any(byte != 0xFF for byte in entry.creator_actor_id)  # the nil id: made by the driver
        if (entry.state != gcs_pb2.PlacementGroupTableData.REMOVED and not entry.is_detached and created_by_actor
                and entry.creator_job_id.hex() == job_id):
            found.append((entry.placement_group_id, entry.creator_actor_dead))
    return found


def remove_leaked_placement_groups() -> int:
    """Remove this job's placement groups whose creating actor is dead (a Ray Train controller
    killed with its trial, ray#54305): they would hold their CPUs until the job ends, and the next
    trials would starve. Returns how many were removed."""
    import ray
    from ray.util.placement_group import PlacementGroup

    removed = 0
    for group_id, creator_dead in _actor_placement_groups():
        if creator_dead:
            ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(group_id)))
            removed += 1
    return removed


def remove_placement_groups_left_after_sweep(timeout_s: float = 15.0) -> int:
    """After ``fit()``: the controllers of the last stopped trials die shortly after their trial,
    so keep removing leaked groups until no actor-made group of this job is left (or timeout)."""
    removed, deadline = 0, time.monotonic() + timeout_s
    while True:
        removed += remove_leaked_placement_groups()
        if not _actor_placement_groups() or time.monotonic() > deadline:
            return removed
        time.sleep(0.5)


class SweepProgress(Callback):
    """Driver-side Tune callback: a progress line per trial event, and every few seconds the
    removal of placement groups left by stopped trials (:func:`remove_leaked_placement_groups`)."""

    def __init__(self, space: SearchSpace, quasi_points: list[dict[str, Any]], metric: str, scheduler: str,
                 max_epochs: Callable[[dict], int], say: Progress):
        self.space, self.quasi_points, self.metric, self.scheduler = space, quasi_points, metric, scheduler
        self.max_epochs, self.say = max_epochs, say
        self.last_cleanup = 0.0
        self.removed_placement_groups = 0

    def _values(self, trial: Any) -> str:
        values = self.space.values_of(trial.config, self.quasi_points)
        return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.say(f"tune: trial {trial.trial_id} started ({self._values(trial)})")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        value = result.get(self.metric)
        shown = f"{value:.4f}" if isinstance(value, (int, float)) else "-"
        self.say(f"tune: trial {trial.trial_id} epoch {result.get(TIME_ATTR)}/{self.max_epochs(trial.config)} {self.metric} {shown}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        done, budget = (trial.last_result or {}).get(TIME_ATTR, 0), self.max_epochs(trial.config)
        state = "finished" if done >= budget else f"stopped early by {self.scheduler}"
        finished = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
        self.say(f"tune: trial {trial.trial_id} {state} after {done}/{budget} epochs ({finished}/{len(trials)} trials done)")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.say(f"tune: trial {trial.trial_id} FAILED ({self._values(trial)}); its error is in {trial.path}")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if now - self.last_cleanup > 5.0:
            self.last_cleanup = now
            self._cleanup()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        try:
            removed = remove_leaked_placement_groups()
        except Exception as exc:  # noqa: BLE001 - a private Ray API; the sweep must not die of its cleaner
            self.say(f"tune: could not check for leaked placement groups ({type(exc).__name__}: {exc})")
            self.last_cleanup = float("inf")
            return
        if removed:
            self.removed_placement_groups += removed
            self.say(f"tune: removed {removed} placement group(s) left by stopped trials (ray#54305)")


# ---------------------------------------------------------------------------------------------
# After the sweep


def _trial_id_of(result: Any) -> Optional[str]:
    """A Tune result's trial id: in every reported result, else in its folder name
    (``run_trial_<experiment>_<index>_...``) for a trial that failed before reporting."""
    trial_id = (result.metrics or {}).get("trial_id")
    if trial_id:
        return str(trial_id)
    match = re.search(r"_([0-9a-f]{5}_[0-9]{5})(?:_|$)", Path(str(result.path)).name)
    return match.group(1) if match else None


def collect_trials(results: Any, space: SearchSpace, setup: dict[str, Any], metric: str,
                   max_epochs: Callable[[dict], int]) -> list[TrialRecord]:
    """A TrialRecord per Tune result: values, status, epochs, metric history (from the trials'
    epoch results, so the epochs from before a resume count too), MLflow run and checkpoints."""
    histories = read_trial_history(setup["trials_dir"], metric)
    records = []
    for result in results:
        trial_id = _trial_id_of(result) or Path(str(result.path)).name
        last = result.metrics or {}
        history = histories.get(trial_id, {})
        epochs = int(last.get(TIME_ATTR) or max(history, default=0))
        budget = max_epochs(result.config)
        if result.error is not None:
            status = ERROR
        else:
            status = FINISHED if epochs >= budget else STOPPED_EARLY
        trial_dir = Path(setup["trials_dir"]) / trial_id
        flow = trial_dir / FLOW_FILE
        value = last.get(metric)
        records.append(TrialRecord(
            trial_id=trial_id,
            values=space.values_of(result.config, setup["quasi_points"]),
            status=status,
            epochs=epochs,
            max_epochs=budget,
            metric=float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None,
            history=sorted(history.items()),
            run_id=recorded_run_id(trial_dir / "ray_results" / f"trial-{trial_id}"),
            output_dir=str(trial_dir),
            checkpoint_path=last.get("checkpoint_path"),
            flow_checkpoint=str(flow) if status == FINISHED and flow.is_file() else None,
            error=str(result.error)[-2000:] if result.error is not None else "",
        ))
    return sorted(records, key=lambda r: r.trial_id)


def reconcile_child_runs(client: Any, parent_run_id: str, experiment_id: str, records: list[TrialRecord]) -> None:
    """Tag each trial's MLflow run with its trial id, values and status, and set the status MLflow
    cannot know: a trial Tune stopped was killed mid-run (KILLED, whatever its process's exit
    left), a failed one FAILED; any other child run of the sweep is an attempt a restored trial
    superseded (cut before its first checkpoint, it started a new run): KILLED and tagged so."""
    kept = {r.run_id for r in records if r.run_id}
    for record in records:
        if not record.run_id:
            continue
        client.set_tag(record.run_id, "semidff.tune.trial_id", record.trial_id)
        client.set_tag(record.run_id, "semidff.tune.values", json.dumps(record.values))
        client.set_tag(record.run_id, "semidff.tune.status", record.status)
        if record.status == STOPPED_EARLY:
            client.set_terminated(record.run_id, "KILLED")
        elif record.status == ERROR and client.get_run(record.run_id).info.status == "RUNNING":
            client.set_terminated(record.run_id, "FAILED")
    children = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=5000)
    for child in children:
        if child.info.run_id not in kept:
            client.set_tag(child.info.run_id, "semidff.tune.status", "superseded by a resumed attempt")
            if child.info.status != "KILLED":
                client.set_terminated(child.info.run_id, "KILLED")
