"""Ray Tune sweeps of the stage-2 training over one teacher cache (key interval, loss weights, lr ...).

    semidff tune --cache runs/cache --teacher runs/teacher/teacher.pt -o runs/sweep -c sweep.yaml
    python -m jobs.tune --cache runs/cache --teacher T.pt -o runs/sweep -c sweep.yaml key=value ...   # the same command
    semidff tune ... (the same command again)       # resumes an interrupted sweep where it stopped

The search space is ``tune.search_space`` (grammar: :mod:`semidff.sweep_space`), validated with
every trial configuration it can produce before Ray starts: each must be a valid config, and the
cache must hold the offsets its key interval trains on (``semidff.training.flow_inputs.check_inputs``). A
swept ``video.key_interval`` sets both the training offsets (d in [1, ΔT-1] / [0, ΔT-1]) and the
interval of the per-epoch validation (``val/mAP`` with ``evaluation.data.path``).

Each trial is one stage-2 run (:func:`jobs.train_flow.run`, single- or multi-worker by
``training.num_workers``) started from a Tune function trainable, which acts as the Ray Train
driver and holds only ``tune.cpus_per_trial`` CPUs itself. Tune sees one result per
epoch (``TuneReportCallback``, behind ``pipelines.tune_sweep.EpochResults``) and ASHA
(``tune.scheduler``, ``pipelines.tune_sweep.SweepASHA``) stops the weak trials at ``grace_period x reduction_factor^k`` epochs, never at
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

The Ray side of the sweep (scheduler, result files, clean-up of what stopped trials leave,
progress) is ``pipelines/tune_sweep.py``.
"""
from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from jobs.cli_common import CONFIG_OPTION, OVERRIDES_ARGUMENT, echo_progress, exit_on, resolve_config, run_module
from pipelines.tune_sweep import (
    RESULTS_FILE,
    TIME_ATTR,
    EpochResults,
    SweepASHA,
    SweepError,
    SweepProgress,
    collect_trials,
    param_space,
    plan_concurrency,
    read_epoch_results,
    reconcile_child_runs,
    remove_placement_groups_left_after_sweep,
)
from semidff.atomic import write_text_atomically
from semidff.cache.info import CacheError
from semidff.checkpoint import ModelCheckpointError
from semidff.config import Config, ConfigError
from semidff.sweep_inputs import check_metric, config_digest, config_value, trial_checker
from semidff.sweep_report import KEY_INTERVAL, TrialRecord, log_sweep_report, pick_best
from semidff.sweep_space import SearchSpace, apply_values, max_over_corners, parse_search_space

__all__ = ["SweepError", "SweepResult", "param_space", "plan_concurrency", "read_epoch_results", "run", "TIME_ATTR"]

STAGE = "tune"
SWEEP_NAME = "sweep"
TUNE_DIR = "tune"
TRIALS_DIR = "trials"
STATE_FILE = "sweep.json"
Progress = Callable[[str], None]


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


def _read_state(output: Path) -> Optional[dict[str, Any]]:
    """The sweep record (parent run, config digest) of an earlier sweep in ``output``, if any."""
    path = output / TUNE_DIR / STATE_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


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


def _register_best(cfg: Config, best: TrialRecord, teacher_sha256: str) -> Optional[str]:
    """Register the best trial's flow.pt (logged by its run) under ``mlflow.registered_model``."""
    import mlflow

    from jobs.train_flow import register_flow_model  # the stage-2 recipe's own registration

    if not (cfg.mlflow.registered_model and best.run_id and best.flow_checkpoint):
        return None
    tags = mlflow.get_run(best.run_id).data.tags
    sha256, model_uri = tags.get("semidff.flow.sha256"), tags.get("semidff.flow.model_uri")
    if not (sha256 and model_uri):
        return None
    return register_flow_model(cfg.mlflow.registered_model, model_uri, best.run_id, sha256, teacher_sha256, cfg.training.schedule)


# ---------------------------------------------------------------------------------------------
# The stage


@dataclass
class SweepPlan:
    """A sweep's checked inputs: everything :func:`_run_sweep` needs besides the config."""

    space: SearchSpace
    max_t: int
    quasi_points: list[dict[str, Any]]
    teacher: Any
    cache_dir: str
    teacher_checkpoint: str
    output: Path
    restoring: bool
    digest: str
    tracking_uri: str
    trial_base: Config
    max_epochs: Callable[[dict], int]


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
    experiment = output / TUNE_DIR / SWEEP_NAME
    state = _read_state(output)
    digest = config_digest(cfg)
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

    write_text_atomically(output / "config.yaml", cfg.to_yaml())
    plan = SweepPlan(space, max_t, quasi_points, teacher, cache_dir, teacher_checkpoint, output, restoring, digest, tracking_uri,
                     trial_base, max_epochs)
    return _run_sweep(cfg, plan, say, started)


def _run_sweep(cfg: Config, plan: SweepPlan, say: Progress, started: float) -> SweepResult:
    """The part of :func:`run` that holds Ray and the sweep's MLflow run (inputs checked)."""
    import ray
    from mlflow import MlflowClient
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from pipelines.ray_session import is_local, ray_session
    from semidff.cache.files import cache_digest
    from semidff.tracking import log_input_dataset, producer_run_id, record_output, resumable_stage_run

    tcfg = cfg.tune
    space, quasi_points, max_epochs, output = plan.space, plan.quasi_points, plan.max_epochs, plan.output
    teacher, cache_dir, tracking_uri, restoring = plan.teacher, plan.cache_dir, plan.tracking_uri, plan.restoring
    storage = output / TUNE_DIR
    experiment = storage / SWEEP_NAME
    num_trials = space.num_trials(tcfg.num_samples)
    scheduler_name = "ASHA" if tcfg.scheduler.kind == "asha" else "FIFO"
    tags = {"semidff.tune.search_space": space.describe()[:5000], "semidff.tune.trials": str(num_trials)}
    with ray_session(cfg.ray.num_cpus, cfg.ray.address):
        concurrency = plan_concurrency(cfg, ray.cluster_resources().get("CPU", 0.0), say, local=is_local(cfg.ray.address))
        with resumable_stage_run(cfg, STAGE, output, storage, can_resume=restoring, run_name=f"tune-{output.name}",
                                 tags=tags) as (parent, resumed):
            parent_run_id = parent.info.run_id
            if not resumed:
                log_input_dataset("teacher_cache", cache_dir, cache_digest(cache_dir), context="training",
                                  producer_run_id=producer_run_id(Path(cache_dir) / "cache_info.json"))
                log_input_dataset("teacher", teacher.path, teacher.sha256, context="model", producer_run_id=producer_run_id(teacher.path))
            write_text_atomically(storage / STATE_FILE, json.dumps(
                {"parent_run_id": parent_run_id, "tracking_uri": tracking_uri, "config_digest": plan.digest}, indent=2))
            setup = {
                "base_config": plan.trial_base.model_dump(mode="json"),
                "cache_dir": str(cache_dir),
                "teacher_checkpoint": str(Path(plan.teacher_checkpoint).expanduser().resolve()),
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
                    scheduler = SweepASHA(max_epochs, str(output / TRIALS_DIR), time_attr=TIME_ATTR, max_t=plan.max_t,
                                          grace_period=min(tcfg.scheduler.grace_period, plan.max_t),
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

            reconcile_child_runs(MlflowClient(tracking_uri), parent_run_id, parent.info.experiment_id, trials)
            best = pick_best(trials, tcfg.mode)
            version = _register_best(cfg, best, teacher.sha256) if best else None
            defaults = {key: config_value(cfg, key) for key in [*space.keys, KEY_INTERVAL]}
            summary, files = log_sweep_report(trials, space, defaults, tcfg.metric, tcfg.mode, output, best,
                                              cfg.mlflow.registered_model if version else None, version)
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
        files=files,
        resumed=restoring, wall_s=wall_s,
    )


# ---------------------------------------------------------------------------------------------
# Command line


def tune_command(
    overrides: Optional[list[str]] = OVERRIDES_ARGUMENT,
    cache: str = typer.Option(..., "--cache", help="teacher cache folder (semidff cache): every trial trains on it"),
    teacher: Path = typer.Option(..., "--teacher", help="the teacher checkpoint the cache was built with"),
    output: Path = typer.Option(..., "--output", "-o", help="sweep folder: trials/, tune/, trials.md/.csv, plots/, best.json (rerun to resume)"),
    config: Optional[Path] = CONFIG_OPTION,
    no_resume: bool = typer.Option(False, "--no-resume", help="refuse to continue a sweep already in the output folder"),
) -> None:
    """Sweep tune.search_space (key interval, loss weights, lr, ...) with Ray Tune and ASHA; resumes an interrupted sweep."""
    cfg = resolve_config(config, overrides)
    with exit_on(ConfigError, ModelCheckpointError, CacheError, SweepError):
        result = run(cfg, cache, str(teacher), str(output), resume=not no_resume, progress=echo_progress)
    typer.echo(result.files["trials_md"].read_text(), nl=False)
    if result.best is None:
        typer.echo(f"no trial reported {result.metric}; see {output / 'trials.md'} and each trial's error")
        raise typer.Exit(1)
    typer.echo(f"best: {result.best.trial_id} {result.best.values} {result.metric} {result.best.metric} -> "
               f"{result.best_flow_checkpoint or result.best.checkpoint_path} (MLflow run {result.best.run_id})")


if __name__ == "__main__":  # pragma: no cover
    run_module(tune_command)
