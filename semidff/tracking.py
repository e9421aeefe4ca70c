"""MLflow for every stage: one run per stage, its inputs logged by digest, its outputs traceable.

    with stage_run(cfg, "cache", output_dir=out) as run:
        log_input_dataset("manifest", source=manifest_dir, digest=digest, context="videos")
        ...
        record_output(out, run.info.run_id, stage="cache", tracking_uri=tracking_uri_for(cfg, out))

Embedded default: with no ``mlflow.tracking_uri`` in the config, runs go to
``sqlite:///<output dir>/mlflow.db``. A local SQLite store keeps its artifacts beside the database,
in ``mlartifacts/`` (:func:`artifact_location_for`), not in ``./mlruns`` of whatever folder the
command ran in (MLflow's own default). A stage marks its output folder with the run that produced
it (:data:`OUTPUT_RUN_FILE`), and the next stage that reads that folder tags its own run with the
producer's run id (``semidff.input.<name>.run_id``); ``semidff lineage`` follows these tags back.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional

from semidff.atomic import write_text_atomically
from semidff.config import Config

OUTPUT_RUN_FILE = "_semidff_run.json"
ARTIFACTS_DIR = "mlartifacts"
STAGE_TAG = "semidff.stage"
OUTPUT_TAG = "semidff.output"
INPUT_TAG_PREFIX = "semidff.input."


def tracking_uri_for(cfg: Config, output_dir: str | Path) -> str:
    """The configured tracking URI, or a SQLite file in the output folder."""
    if cfg.mlflow.tracking_uri:
        return cfg.mlflow.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    path = Path(output_dir).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'mlflow.db'}"


def artifact_location_for(tracking_uri: str) -> Optional[str]:
    """Where a new experiment in this store keeps its run artifacts: for a local SQLite file
    (``sqlite:///<folder>/<name>.db``, relative paths from the current folder) the file URI of
    ``<folder>/mlartifacts``; None for any other store (a tracking server decides for itself)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]
    if not database or database == ":memory:":
        return None
    return (Path(database).expanduser().resolve().parent / ARTIFACTS_DIR).as_uri()


def use_experiment(name: str, tracking_uri: str) -> Any:
    """Make ``name`` the active experiment of ``tracking_uri`` (already MLflow's tracking URI),
    creating it with :func:`artifact_location_for` when the store does not hold it yet. An
    experiment that exists keeps the artifact location it was created with."""
    import mlflow
    from mlflow.exceptions import MlflowException

    location = artifact_location_for(tracking_uri)
    if location and mlflow.get_experiment_by_name(name) is None:
        try:
            mlflow.create_experiment(name, artifact_location=location)
        except MlflowException as exc:  # another process created it in between
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    return mlflow.set_experiment(name)


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested config dict -> {"model.backbone.depth": "101", ...} (MLflow params are strings)."""
    if isinstance(data, dict):
        out: dict[str, str] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    value = json.dumps(data) if isinstance(data, (list, tuple)) else str(data)
    return {prefix.rstrip("."): value[:6000]}


@contextlib.contextmanager
def stage_run(
    cfg: Config,
    stage: str,
    output_dir: str | Path,
    run_name: Optional[str] = None,
    parent_run_id: Optional[str] = None,
    tags: Optional[dict[str, str]] = None,
    log_params: bool = True,
) -> Iterator[Any]:
    """Start an MLflow run for one stage: config as params and as ``config.yaml``, stage tags.

    parent_run_id: nest this run under another (a Tune sweep's parent run).
    Yields the active ``mlflow.ActiveRun``; the run ends FAILED if the block raises.
    """
    import mlflow

    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; put the caller's value back after the
    # run, or every later stage in this process would take this stage's store as its default.
    user_uri = os.environ.get("MLFLOW_TRACKING_URI")
    tracking_uri = tracking_uri_for(cfg, output_dir)
    mlflow.set_tracking_uri(tracking_uri)
    try:
        experiment = use_experiment(cfg.mlflow.experiment, tracking_uri)
        all_tags = {STAGE_TAG: stage, OUTPUT_TAG: str(output_dir)} | dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        end_orphaned_runs(experiment.experiment_id, stage, str(output_dir))
        with mlflow.start_run(run_name=run_name or stage, tags=all_tags) as run:
            if log_params:
                params = flatten(cfg.model_dump(mode="json"))
                items = list(params.items())
                for start in range(0, len(items), 100):  # MLflow caps a batch at 100 params
                    mlflow.log_params(dict(items[start : start + 100]))
            mlflow.log_text(cfg.to_yaml(), "config.yaml")
            yield run
    finally:
        _restore_tracking_env(user_uri)


def _restore_tracking_env(user_uri: Optional[str]) -> None:
    """Put back the caller's $MLFLOW_TRACKING_URI (``mlflow.set_tracking_uri`` exports its own)."""
    if user_uri is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = user_uri


RUN_RECORD_FILE = "semidff_mlflow_run.json"  # beside a resumable run's state: the MLflow run a rerun reopens


@contextlib.contextmanager
def resumable_stage_run(
    cfg: Config,
    stage: str,
    output_dir: str | Path,
    record_dir: str | Path,
    can_resume: bool,
    run_name: Optional[str] = None,
    parent_run_id: Optional[str] = None,
    tags: Optional[dict[str, str]] = None,
) -> Iterator[tuple[Any, bool]]:
    """A stage run that a rerun of a cut job reopens, so its metric curves continue.

    record_dir: the folder of the job's own resumable state (a Ray Train run, a Tune experiment);
    :data:`RUN_RECORD_FILE` there names the MLflow run. can_resume: whether that state will
    really be resumed (e.g. it holds a committed checkpoint); if not, a recorded run still RUNNING
    is marked KILLED and a new run starts. Yields (active run, resumed).
    """
    import mlflow
    from mlflow import MlflowClient

    record = Path(record_dir) / RUN_RECORD_FILE
    tracking_uri = tracking_uri_for(cfg, output_dir)
    earlier = None
    if record.is_file():
        try:
            earlier = json.loads(record.read_text()).get("run_id")
        except (OSError, json.JSONDecodeError):
            earlier = None
    if earlier:
        client = MlflowClient(tracking_uri)
        try:
            status = client.get_run(earlier).info.status
        except Exception:  # noqa: BLE001 - another store, or the run was deleted: start a new one
            earlier = None
        else:
            if not can_resume:
                if status == "RUNNING":
                    client.set_terminated(earlier, "KILLED")
                earlier = None
    if earlier:
        user_uri = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(tracking_uri)
        try:
            use_experiment(cfg.mlflow.experiment, tracking_uri)
            with mlflow.start_run(run_id=earlier) as active:
                yield active, True
        finally:
            _restore_tracking_env(user_uri)
        return
    with stage_run(cfg, stage, output_dir, run_name=run_name, parent_run_id=parent_run_id, tags=tags) as active:
        write_text_atomically(record, json.dumps({"run_id": active.info.run_id, "tracking_uri": tracking_uri}))
        yield active, False


def recorded_run_id(record_dir: str | Path) -> Optional[str]:
    """The MLflow run id :func:`resumable_stage_run` recorded in ``record_dir``, or None."""
    try:
        return json.loads((Path(record_dir) / RUN_RECORD_FILE).read_text()).get("run_id")
    except (OSError, json.JSONDecodeError):
        return None


def register_model_version(name: Optional[str], model_uri: str, run_id: str, tags: dict[str, str], identity_tag: str,
                           description: str, aliases: tuple[str, ...] = ()) -> Optional[str]:
    """Register the MLflow model at ``model_uri`` (``models:/m-...``, as ``log_model`` returns it)
    as a version of the registered model ``name`` (created when missing), with ``tags`` and
    ``aliases`` (each then points at this version); None when ``name`` is None. A version of
    this run whose ``identity_tag`` equals ``tags[identity_tag]`` (the file's checksum) is reused,
    so a rerun that ends with the same file registers nothing new."""
    if not name:
        return None
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        client.create_registered_model(name, description="semidff video detectors: mlflow.pyfunc.load_model(...).predict(frames), or semidff detect --flow models:/NAME/VERSION")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    number = next((str(version.version) for version in client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
                   if version.tags.get(identity_tag) == tags[identity_tag]), None)
    if number is None:
        model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
        number = str(client.create_model_version(name, source=model_uri, run_id=run_id, tags=tags, description=description,
                                                 model_id=model_id).version)
    for alias in aliases:
        client.set_registered_model_alias(name, alias, number)
    return number


def end_orphaned_runs(experiment_id: str, stage: str, output_dir: str) -> list[str]:
    """Mark KILLED the runs of ``stage`` on ``output_dir`` in the experiment that are still
    RUNNING: a stage's run on an output folder ends when its process ends, so one left RUNNING when
    the same stage starts on the same folder again belongs to a killed job. Returns their ids."""
    from mlflow import MlflowClient

    client = MlflowClient()
    quoted = output_dir.replace("'", "\\'")
    orphans = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{STAGE_TAG}` = '{stage}' and tags.`{OUTPUT_TAG}` = '{quoted}' and attributes.status = 'RUNNING'",
        max_results=1000,
    )
    for run in orphans:
        client.set_tag(run.info.run_id, "semidff.ended_by", "a later run of this stage on the same output (this one's process had died)")
        client.set_terminated(run.info.run_id, "KILLED")
    return [run.info.run_id for run in orphans]


def log_input_dataset(
    name: str,
    source: str | Path,
    digest: str,
    context: str,
    producer_run_id: Optional[str] = None,
    schema: Optional[dict[str, str]] = None,
) -> None:
    """Log a stage input (a folder or file on disk or object storage) as an MLflow dataset by digest.

    producer_run_id: the run that wrote this input; recorded as tag ``semidff.input.<name>.run_id``.
    """
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import ColSpec, Schema

    from mlflow.data.dataset_source_registry import resolve_dataset_source

    source = str(source)
    location = source if "://" in source and not source.startswith("file://") else str(Path(source.removeprefix("file://")).resolve())
    with warnings.catch_warnings():  # MLflow registers the local source twice and warns about it
        warnings.simplefilter("ignore", UserWarning)
        dataset_source = resolve_dataset_source(location)  # local path, s3://, gs://, http(s):// ...
    mlflow_schema = Schema([ColSpec(dtype, column) for column, dtype in schema.items()]) if schema else None
    dataset = MetaDataset(source=dataset_source, name=name, digest=digest[:36], schema=mlflow_schema)
    mlflow.log_input(dataset, context=context)
    mlflow.set_tag(f"{INPUT_TAG_PREFIX}{name}.digest", digest)
    mlflow.set_tag(f"{INPUT_TAG_PREFIX}{name}.source", source)
    if producer_run_id:
        mlflow.set_tag(f"{INPUT_TAG_PREFIX}{name}.run_id", producer_run_id)


def record_output(output_dir: str | Path, run_id: str, stage: str, tracking_uri: str) -> None:
    """Mark an output folder with the run that produced it (read back by :func:`producing_run`)."""
    write_text_atomically(Path(output_dir) / OUTPUT_RUN_FILE, json.dumps({"run_id": run_id, "stage": stage, "tracking_uri": tracking_uri}, indent=2))


def producing_run(input_dir: str | Path) -> Optional[dict[str, str]]:
    """{"run_id", "stage", "tracking_uri"} of the run that wrote a folder, or None if unknown."""
    path = Path(input_dir) / OUTPUT_RUN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def producer_run_id(path: str | Path) -> Optional[str]:
    """The id of the MLflow run that wrote ``path`` (a folder, or a file in a folder) when that
    folder says so (:func:`record_output`), else None: what ``log_input_dataset`` records as an
    input's producer."""
    path = Path(path)
    produced = producing_run(path if path.is_dir() else path.parent)
    return produced.get("run_id") if produced else None
