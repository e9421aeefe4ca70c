"""Ray Tune sweeps of the stage-2 training over one teacher cache (key interval, loss weights, lr ...).

    semidff tune --cache runs/cache --teacher runs/teacher/teacher.pt -o runs/sweep -c sweep.yaml
    python -m jobs.tune --cache runs/cache --teacher T.pt -o runs/sweep -c sweep.yaml key=value ...
    semidff tune ... (the same command again)       # resumes an interrupted sweep where it stopped

The search space is ``tune.search_space`` (grammar: :mod:`semidff.sweep_space`), validated with
every trial configuration it can produce before Ray starts: each must be a valid config, and the
cache must hold the offsets its key interval trains on (``jobs.train_flow.check_inputs``). A
swept ``video.key_interval`` sets both the training offsets (d in [1, ΔT-1] / [0, ΔT-1]) and the
interval of the per-epoch validation (``val/mAP`` with ``evaluation.data.path``).

Each trial is one stage-2 run (:func:`jobs.train_flow.run`, single- or multi-worker by
``training.num_workers``) started from a Tune function trainable, which acts as the Ray Train
driver (ray-facts §3) and holds only ``tune.cpus_per_trial`` CPUs itself. Tune sees one result per
epoch (``TuneReportCallback``, behind :class:`EpochResults`) and ASHA (``tune.scheduler``, see
:class:`SweepASHA`) stops the weak trials at ``grace_period x reduction_factor^k`` epochs, never at
their last. ``tune.max_concurrent_trials`` bounds the trials in flight (on a local Ray lowered, with
a note, when it cannot hold that many Train runs and still leave a CPU to Ray Data's readers).

What lands in the output folder:

* ``trials/<trial id>/``: each trial's train_flow output (``flow.pt`` when it finished, Ray Train
  checkpoints, config.yaml);
* ``tune/sweep/``: Tune's experiment state (what a rerun restores); ``tune/sweep.json``: the
  sweep's MLflow run and config digest, so a rerun continues the same run;
* ``trials/<trial id>/epoch_results.jsonl``: every epoch result of the trial, appended by its Ray
  Train run as it reports, before Tune sees it (a result in flight when a sweep is cut is not
  lost, and Tune rewrites a resumed trial's own result files);
* ``trials.md``, ``trials.csv``: every trial's values, status, epochs and metric;
  ``plots/``: the metric against ΔT, against every other swept number, and learning curves;
  ``best.json``: the best trial's values, metric, MLflow run, Ray checkpoint and ``flow.pt``.

MLflow: one parent run per sweep (stage ``tune``: the config, the cache and teacher as input
datasets, the tables and plots, the best trial) and one child run per trial (train_flow's run,
nested with ``mlflow.parentRunId``). A trial stopped early ends KILLED with tag
``semidff.tune.status``. The best finished trial's flow.pt is registered as a version of
``mlflow.registered_model`` (trials themselves do not register). ``semidff lineage`` follows it all
back to the manifest and the teacher checkpoint.

Ray Train's placement groups outlive a trial that Tune stops (ray#54305, ray-facts §0 #6): without
the Ray dashboard's State API their cleaner cannot run and the freed CPUs never come back, so the
sweep removes the placement groups of this job whose creating actor is dead.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ray.train import UserCallback
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler

from semidff.config import Config, ConfigError, load_config
from semidff.sweep_report import (
    ERROR,
    FINISHED,
    KEY_INTERVAL,
    STOPPED_EARLY,
    TrialRecord,
    compute_summary,
    pick_best,
    plot_sweep,
    write_trial_tables,
)
from semidff.sweep_space import QUASI_POINT_KEY, SearchSpace, apply_values, max_over_corners, parse_search_space

STAGE = "tune"
SWEEP_NAME = "sweep"
TUNE_DIR = "tune"
TRIALS_DIR = "trials"
STATE_FILE = "sweep.json"
RESULTS_FILE = "epoch_results.jsonl"  # in each trial's folder
BEST_FILE = "best.json"
PLOTS_DIR = "plots"
TIME_ATTR = "epoch"  # epochs done, as train_flow reports it: survives a resume (Tune's own training_iteration restarts at 1)
Progress = Callable[[str], None]


class SweepError(ValueError):
    """A sweep cannot start or continue; the message names the input and the fix."""


@dataclass
class SweepResult:
    """What a sweep produced.

    trials: every trial (values, status, epochs, metric, MLflow run, checkpoints); best: the best
    finished trial (``semidff.sweep_report.pick_best``); best_flow_checkpoint: its flow.pt.
    summary: trial counts, epochs run vs the full budget and the share early stopping saved.
    wall_s: this call's wall time (a resumed sweep counts only the resumed part).
    """

    output_dir: Path
    metric: str
    mode: str
    trials: list[TrialRecord]
    best: Optional[TrialRecord]
    best_flow_checkpoint: Optional[Path]
    parent_run_id: str
    tracking_uri: str
    model_version: Optional[str]
    summary: dict[str, float]
    files: dict[str, Path]
    resumed: bool
    wall_s: float

    @property
    def trials_per_hour(self) -> float:
        return len(self.trials) / (self.wall_s / 3600) if self.wall_s > 0 else float("nan")


# ---------------------------------------------------------------------------------------------
# Checks before any cluster time


def known_metrics(cfg: Config) -> dict[str, str]:
    """{metric name: what reports it} for the metrics a trial reports each epoch."""
    from semidff.training.flow_step import LOSS_TERMS

    metrics = {f"train/{term}": "train_flow (mean over the epoch)" for term in LOSS_TERMS}
    metrics["train/pairs_per_s_per_worker"] = "train_flow"
    metrics["val/regression_error_vs_copy"] = "train_flow's validation (training.validation_fraction > 0)"
    metrics["val/mAP"] = "train_flow's validation mAP at ΔT (evaluation.data.path set)"
    return metrics


def check_metric(cfg: Config) -> None:
    """The sweep's metric must be one a trial reports with this config."""
    metric, known = cfg.tune.metric, known_metrics(cfg)
    if metric not in known:
        raise ConfigError(f"tune.metric={metric!r} is not reported by a trial; use one of: {', '.join(sorted(known))}")
    if metric == "val/regression_error_vs_copy" and cfg.training.validation_fraction <= 0:
        raise ConfigError(f"tune.metric={metric} needs held-out videos: set training.validation_fraction > 0 (e.g. 0.1)")
    if metric == "val/mAP" and not cfg.evaluation.data.path:
        raise ConfigError("tune.metric=val/mAP needs labeled validation videos: set evaluation.data.path (and evaluation.data.format)")
    if metric == "val/mAP" and cfg.tune.mode != "max":
        raise ConfigError("tune.metric=val/mAP is better when higher: set tune.mode=max")


def trial_checker(cache_dir: str, teacher_checkpoint: str) -> Callable[[Config], None]:
    """A check of one trial's config against the cache and teacher (train_flow's own input
    checks: schedule, key interval vs. the cache's offsets, teacher architecture), run once per
    distinct training-relevant setting."""
    from jobs.train_flow import check_inputs

    checked: set[str] = set()

    def check(trial_cfg: Config) -> None:
        relevant = trial_cfg.model_dump(mode="json")
        key = json.dumps({k: relevant[k] for k in ("model", "preprocess", "video", "training")}, sort_keys=True)
        if key not in checked:
            check_inputs(trial_cfg, cache_dir, teacher_checkpoint, None)
            checked.add(key)

    return check


def _config_digest(cfg: Config) -> str:
    """The sweep's identity on resume: everything but where it runs and logs."""
    settings = cfg.model_dump(mode="json")
    settings.pop("ray", None)
    settings["mlflow"].pop("tracking_uri", None)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()


def _read_state(output: Path) -> Optional[dict[str, Any]]:
    path = output / TUNE_DIR / STATE_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=2, default=str))
    os.replace(temporary, path)


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


# ---------------------------------------------------------------------------------------------
# The trial (runs in a Tune trial actor)


def run_trial(config: dict[str, Any], *, setup: dict[str, Any]) -> None:
    """One trial: the base config with the trial's values, trained by ``jobs.train_flow.run`` as
    a Ray Train driver; its epoch-end reports reach Tune through :class:`EpochResults`. The
    trial's folder and run name come from its trial id, so a restored trial resumes its own run."""
    from ray import tune

    from jobs.train_flow import run as train_flow

    trial_id = tune.get_context().get_trial_id()
    space: SearchSpace = setup["space"]
    values = space.values_of(config, setup["quasi_points"])
    cfg = apply_values(Config.model_validate(setup["base_config"]), values, f"trial {trial_id}")
    trial_dir = Path(setup["trials_dir"]) / trial_id
    train_flow(
        cfg,
        setup["cache_dir"],
        setup["teacher_checkpoint"],
        str(trial_dir),
        run_name=f"trial-{trial_id}",
        parent_run_id=setup["parent_run_id"],
        callbacks=[EpochResults(trial_dir / RESULTS_FILE, trial_id)],
    )


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
# Driver-side Tune callbacks


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


def _trial_run_id(trial_dir: Path, trial_id: str) -> Optional[str]:
    """The MLflow run train_flow started for a trial (recorded next to its Ray Train run)."""
    from jobs.train_flow import MLFLOW_RUN_FILE

    record = trial_dir / "ray_results" / f"trial-{trial_id}" / MLFLOW_RUN_FILE
    try:
        return json.loads(record.read_text()).get("run_id")
    except (OSError, json.JSONDecodeError):
        return None


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
    from jobs.train_flow import FLOW_FILE

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
            run_id=_trial_run_id(trial_dir, trial_id),
            output_dir=str(trial_dir),
            checkpoint_path=last.get("checkpoint_path"),
            flow_checkpoint=str(flow) if status == FINISHED and flow.is_file() else None,
            error=str(result.error)[-2000:] if result.error is not None else "",
        ))
    return sorted(records, key=lambda r: r.trial_id)


def _config_value(cfg: Config, key: str) -> Any:
    """The value of a dotted key in ``cfg``."""
    node: Any = cfg.model_dump(mode="json")
    for part in key.split("."):
        node = node[part]
    return node


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


def _register_best(cfg: Config, best: TrialRecord, teacher_sha256: str) -> Optional[str]:
    """Register the best trial's flow.pt (logged by its run) under ``mlflow.registered_model``."""
    import mlflow

    from jobs.train_flow import register_flow_model

    if not (cfg.mlflow.registered_model and best.run_id and best.flow_checkpoint):
        return None
    sha256 = mlflow.get_run(best.run_id).data.tags.get("semidff.flow.sha256")
    if not sha256:
        return None
    with mlflow.start_run(run_id=best.run_id, nested=True):
        return register_flow_model(cfg.mlflow.registered_model, best.run_id, "flow_checkpoint", sha256, teacher_sha256)


# ---------------------------------------------------------------------------------------------
# The stage


def run(
    cfg: Config,
    cache_dir: str,
    teacher_checkpoint: str,
    output_dir: str,
    resume: bool = True,
    progress: Optional[Progress] = None,
) -> SweepResult:
    """Run (or resume) the sweep of ``cfg.tune`` over the cache; see the module docstring.

    resume: continue the sweep in ``output_dir`` when there is one (False: refuse to touch it).
    Raises SearchSpaceError / ConfigError / CacheError / ModelCheckpointError / SweepError before
    Ray starts when an input is unusable.
    """
    from ray import tune

    from semidff.checkpoint import load_model_checkpoint
    from semidff.training.flow_step import epoch_plan
    from semidff.tracking import tracking_uri_for

    say = progress or (lambda line: None)
    started = time.perf_counter()
    tcfg = cfg.tune
    output = Path(output_dir).expanduser().resolve()
    if cfg.training.teacher_source != "cache":
        raise ConfigError("a sweep trains every trial on one teacher cache: set training.teacher_source=cache and pass --cache DIR")
    check_metric(cfg)
    space = parse_search_space(cfg, check=trial_checker(cache_dir, teacher_checkpoint))
    max_t = max_over_corners(space, cfg, lambda c: len(epoch_plan(c.training)))
    quasi_points = space.quasi_points(tcfg.num_samples, cfg.seed)
    teacher = load_model_checkpoint(teacher_checkpoint, expected_kind="teacher")
    storage = output / TUNE_DIR
    experiment = storage / SWEEP_NAME
    state = _read_state(output)
    digest = _config_digest(cfg)
    restoring = tune.Tuner.can_restore(str(experiment))
    if restoring and not resume:
        raise SweepError(f"{output} already holds a sweep; rerun without --no-resume to continue it, or use another -o folder")
    if restoring and state and state.get("config_digest") != digest:
        raise SweepError(
            f"{output} holds a sweep started with another config (see {output / 'config.yaml'}); a sweep resumes only with its "
            "own config. Use that config again, or another -o folder for a new sweep."
        )
    tracking_uri = tracking_uri_for(cfg, output)
    trial_base = cfg.model_copy(deep=True)
    trial_base.mlflow.tracking_uri = tracking_uri  # trials nest under the sweep's run, so they log to its store
    trial_base.mlflow.registered_model = None  # only the sweep's best trial is registered
    num_trials = space.num_trials(tcfg.num_samples)
    scheduler_name = "ASHA" if tcfg.scheduler.kind == "asha" else "FIFO"
    say(f"tune: {num_trials} trial(s) over {space.describe()}; {tcfg.metric} ({tcfg.mode}); {scheduler_name} up to {max_t} "
        f"epochs per trial; cache {cache_dir}; teacher {teacher.sha256[:12]}" + ("; resuming" if restoring else ""))

    def max_epochs(trial_config: dict) -> int:
        return len(epoch_plan(apply_values(cfg, space.values_of(trial_config, quasi_points)).training))

    output.mkdir(parents=True, exist_ok=True)
    (output / "config.yaml").write_text(cfg.to_yaml())
    user_uri = os.environ.get("MLFLOW_TRACKING_URI")  # mlflow.set_tracking_uri exports it; put it back at the end
    try:
        return _run_sweep(cfg, space, max_t, quasi_points, teacher, cache_dir, teacher_checkpoint, output, restoring, state, digest,
                          tracking_uri, trial_base, max_epochs, say, started)
    finally:
        if user_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = user_uri


def _run_sweep(cfg: Config, space: SearchSpace, max_t: int, quasi_points: list[dict[str, Any]], teacher: Any, cache_dir: str,
               teacher_checkpoint: str, output: Path, restoring: bool, state: Optional[dict[str, Any]], digest: str,
               tracking_uri: str, trial_base: Config, max_epochs: Callable[[dict], int], say: Progress, started: float) -> SweepResult:
    """The part of :func:`run` that holds Ray and the sweep's MLflow run (inputs checked)."""
    import mlflow
    import ray
    from mlflow import MlflowClient
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from jobs.train_flow import cache_digest
    from pipelines.ray_session import ray_session
    from semidff.tracking import log_input_dataset, producer_run_id, record_output, stage_run

    tcfg = cfg.tune
    storage = output / TUNE_DIR
    experiment = storage / SWEEP_NAME
    num_trials = space.num_trials(tcfg.num_samples)
    scheduler_name = "ASHA" if tcfg.scheduler.kind == "asha" else "FIFO"
    with ray_session(cfg.ray.num_cpus, cfg.ray.address):
        local = not (cfg.ray.address or os.environ.get("RAY_ADDRESS"))
        concurrency = plan_concurrency(cfg, ray.cluster_resources().get("CPU", 0.0), say, local=local)
        mlflow.set_tracking_uri(tracking_uri)
        earlier_run = state.get("parent_run_id") if (restoring and state) else None
        if earlier_run:
            try:
                MlflowClient(tracking_uri).get_run(earlier_run)
            except Exception:  # noqa: BLE001 - another store, or deleted: a new parent run
                earlier_run = None
        if earlier_run:
            mlflow.set_experiment(cfg.mlflow.experiment)
            parent_context = mlflow.start_run(run_id=earlier_run)
        else:
            parent_context = stage_run(cfg, STAGE, output, run_name=f"tune-{output.name}",
                                       tags={"semidff.tune.search_space": space.describe()[:5000], "semidff.tune.trials": str(num_trials)})
        with parent_context as parent:
            parent_run_id = parent.info.run_id
            if not earlier_run:
                log_input_dataset("teacher_cache", cache_dir, cache_digest(cache_dir), context="training",
                                  producer_run_id=producer_run_id(Path(cache_dir) / "cache_info.json"))
                log_input_dataset("teacher", teacher.path, teacher.sha256, context="model", producer_run_id=producer_run_id(teacher.path))
            _write_json(storage / STATE_FILE, {"parent_run_id": parent_run_id, "tracking_uri": tracking_uri, "config_digest": digest})
            setup = {
                "base_config": trial_base.model_dump(mode="json"),
                "cache_dir": str(cache_dir),
                "teacher_checkpoint": str(Path(teacher_checkpoint).expanduser().resolve()),
                "trials_dir": str(output / TRIALS_DIR),
                "parent_run_id": parent_run_id,
                "space": space,
                "quasi_points": quasi_points,
            }
            trainable = tune.with_resources(functools.partial(run_trial, setup=setup), {"CPU": tcfg.cpus_per_trial})
            callbacks = [SweepProgress(space, quasi_points, tcfg.metric, scheduler_name, max_epochs, say)]
            if restoring:
                say(f"tune: restoring the interrupted sweep from {experiment}")
                tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=True)
                # Tuner.restore brings back the pickled run config; give it this process's callbacks
                # (Tune has no public way to pass them to a restored sweep).
                try:
                    tuner._local_tuner.get_run_config().callbacks = callbacks
                except AttributeError:
                    say("tune: could not attach this run's progress callbacks to the restored sweep; using the saved ones")
            else:
                params, samples = param_space(space, tcfg.num_samples)
                if tcfg.scheduler.kind == "asha":
                    scheduler = SweepASHA(max_epochs, str(output / TRIALS_DIR), time_attr=TIME_ATTR, max_t=max_t,
                                          grace_period=min(tcfg.scheduler.grace_period, max_t),
                                          reduction_factor=tcfg.scheduler.reduction_factor)
                else:
                    scheduler = FIFOScheduler()
                tuner = tune.Tuner(
                    trainable,
                    param_space=params,
                    tune_config=tune.TuneConfig(
                        metric=tcfg.metric, mode=tcfg.mode, num_samples=samples, scheduler=scheduler,
                        # the concurrency limit goes on the generator: Tune ignores max_concurrent_trials
                        # when a BasicVariantGenerator is passed (seeded here, so sampled values repeat)
                        search_alg=BasicVariantGenerator(random_state=cfg.seed, max_concurrent=concurrency),
                    ),
                    run_config=tune.RunConfig(name=SWEEP_NAME, storage_path=str(storage), verbose=0, callbacks=callbacks,
                                              failure_config=tune.FailureConfig(max_failures=0)),
                )
            results = tuner.fit()
            try:
                remove_placement_groups_left_after_sweep()
            except Exception as exc:  # noqa: BLE001 - a private Ray API; the results matter more
                say(f"tune: could not check for leaked placement groups ({type(exc).__name__}: {exc})")
            trials = collect_trials(results, space, setup, tcfg.metric, max_epochs)

            client = MlflowClient(tracking_uri)
            reconcile_child_runs(client, parent_run_id, parent.info.experiment_id, trials)
            best = pick_best(trials, tcfg.mode)
            summary = compute_summary(trials)
            markdown, table = write_trial_tables(trials, space.keys, tcfg.metric, output, best)
            defaults = {key: _config_value(cfg, key) for key in [*space.keys, KEY_INTERVAL]}
            plots = plot_sweep(trials, space, defaults, tcfg.metric, tcfg.mode, output / PLOTS_DIR)
            version = _register_best(cfg, best, teacher.sha256) if best else None
            best_record = {
                "trial_id": best.trial_id, "values": best.values, "metric": tcfg.metric, "value": best.metric,
                "status": best.status, "run_id": best.run_id, "checkpoint_path": best.checkpoint_path,
                "flow_checkpoint": best.flow_checkpoint, "registered_model": cfg.mlflow.registered_model if version else None,
                "model_version": version,
            } if best else {"trial_id": None}
            _write_json(output / BEST_FILE, best_record)
            for path in (markdown, table, output / BEST_FILE, *plots):
                mlflow.log_artifact(str(path), artifact_path=PLOTS_DIR if path.suffix == ".png" else None)
            mlflow.log_metrics({f"sweep/{k}": v for k, v in summary.items()})
            if best is not None:
                if best.metric is not None:
                    mlflow.log_metric(f"best/{tcfg.metric}", best.metric)
                mlflow.set_tags({"semidff.tune.best_trial": best.trial_id, "semidff.tune.best_run_id": best.run_id or "",
                                 "semidff.tune.best_values": json.dumps(best.values)})
                for key, value in best.values.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        mlflow.log_metric(f"best/{key}", float(value))
            record_output(output, parent_run_id, STAGE, tracking_uri)
    wall_s = time.perf_counter() - started
    saved = summary["compute_saved"]
    say(f"tune: {len(trials)} trials ({int(summary['trials_finished'])} finished, {int(summary['trials_stopped_early'])} stopped early, "
        f"{int(summary['trials_failed'])} failed) in {wall_s / 60:.1f} min; {int(summary['epochs_run'])}/{int(summary['epochs_full_budget'])} "
        f"epochs run ({100 * saved:.0f} % saved by early stopping)")
    if best is not None:
        say(f"tune: best trial {best.trial_id} {best.values}: {tcfg.metric} {best.metric}; "
            f"{best.flow_checkpoint or best.checkpoint_path} (MLflow run {best.run_id})")
    return SweepResult(
        output_dir=output, metric=tcfg.metric, mode=tcfg.mode, trials=trials, best=best,
        best_flow_checkpoint=Path(best.flow_checkpoint) if best and best.flow_checkpoint else None,
        parent_run_id=parent_run_id, tracking_uri=tracking_uri, model_version=version, summary=summary,
        files={"trials_md": markdown, "trials_csv": table, "best": output / BEST_FILE, **{p.stem: p for p in plots}},
        resumed=restoring, wall_s=wall_s,
    )


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m jobs.tune --cache DIR --teacher T.pt -o OUT [-c cfg.yaml] [key=value ...]``"""
    from semidff.cache.info import CacheError
    from semidff.checkpoint import ModelCheckpointError

    parser = argparse.ArgumentParser(prog="python -m jobs.tune", description=__doc__.split("\n")[0])
    parser.add_argument("-c", "--config", default=None, help="YAML config with a tune.search_space (omitted keys: embedded defaults)")
    parser.add_argument("--cache", required=True, help="teacher cache folder (semidff cache)")
    parser.add_argument("--teacher", required=True, help="teacher checkpoint the cache was built with")
    parser.add_argument("-o", "--output", required=True, help="sweep folder (rerun the same command to resume)")
    parser.add_argument("--no-resume", action="store_true", help="refuse to continue a sweep already in the output folder")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        result = run(cfg, args.cache, args.teacher, args.output, resume=not args.no_resume,
                     progress=lambda line: print(line, file=sys.stderr, flush=True))
    except (ConfigError, ModelCheckpointError, CacheError, SweepError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.files["trials_md"].read_text(), end="")
    print(f"best: {json.dumps(result.best.values) if result.best else '-'} -> {result.best_flow_checkpoint or '-'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
