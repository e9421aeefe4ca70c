"""Follow a model back to its data: which videos, which teacher, which cache, which config.

    semidff lineage 3f2a9c...                      # an MLflow run id
    semidff lineage models:/semidff-flow/3         # a registered model version (or name/3, name@alias, name)
    semidff lineage runs/flow                      # an output folder (its _semidff_run.json names the run)

Every stage logs its inputs with :func:`semidff.tracking.log_input_dataset`: the input's source,
its digest, and the run that produced it (tag ``semidff.input.<name>.run_id``). Starting from one
run, :func:`trace_lineage` fetches each producing run in turn (a graph walk, each run once) until
it reaches inputs no run produced: the manifest and the videos, the labeled data, a teacher
checkpoint from elsewhere. A Tune trial also shows its sweep (the MLflow parent run); a sweep
lists its trials.

Stores: with the embedded default every stage writes to ``sqlite:///<its output>/mlflow.db``, so
a chain spans several stores. A producer is looked up in the store its output folder names
(``_semidff_run.json`` next to the input), else in the store of the run that consumed it. With
one tracking server (``mlflow.tracking_uri: http://...``) everything is in one place.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from semidff.tracking import INPUT_TAG_PREFIX, OUTPUT_RUN_FILE, OUTPUT_TAG, STAGE_TAG, producing_run

PARENT_TAG = "mlflow.parentRunId"
CONTEXT_TAG = "mlflow.data.context"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class LineageError(ValueError):
    """A run, model or folder cannot be resolved; the message says what was tried and what to do."""


@dataclass
class InputRecord:
    """One input of a run: what it logged, and the run that produced it when one is known.

    producer_note: why no producer is shown ("" when one is): none recorded, or not found.
    """

    name: str
    source: str
    digest: str
    context: str
    producer_run_id: Optional[str] = None
    producer: Optional["RunRecord"] = None
    producer_note: str = ""


@dataclass
class RunRecord:
    """One stage run in the chain.

    stage: the ``semidff.stage`` tag (train, cache, train-teacher, evaluate, tune, ...).
    parent: the sweep of a Tune trial; trials: the child runs of a sweep (run_id, name, status).
    """

    run_id: str
    name: str
    stage: str
    status: str
    tracking_uri: str
    experiment: str
    output: str
    tags: dict[str, str]
    inputs: list[InputRecord] = field(default_factory=list)
    parent: Optional["RunRecord"] = None
    trials: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass
class Lineage:
    """The chain from ``root`` (the asked-for run) back to its first inputs.

    target: what the user asked for, resolved: how it became a run id (a model version, a folder).
    """

    target: str
    resolved: str
    root: RunRecord

    def runs(self) -> list[RunRecord]:
        """Every run in the chain once, root first, then producers depth-first (sweep parents too)."""
        seen: dict[str, RunRecord] = {}

        def visit(record: Optional[RunRecord]) -> None:
            if record is None or record.run_id in seen:
                return
            seen[record.run_id] = record
            visit(record.parent)
            for item in record.inputs:
                visit(item.producer)

        visit(self.root)
        return list(seen.values())

    def leaf_inputs(self) -> list[InputRecord]:
        """Inputs no run in the chain produced (the data the chain starts from), each once."""
        leaves: dict[tuple[str, str], InputRecord] = {}
        for record in self.runs():
            for item in record.inputs:
                if item.producer is None:
                    leaves.setdefault((item.name, item.digest), item)
        return list(leaves.values())


# ---------------------------------------------------------------------------------------------
# Resolving what the user named


def _client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def default_tracking_uri() -> Optional[str]:
    return os.environ.get("MLFLOW_TRACKING_URI") or None


def _model_run_id(target: str, tracking_uri: str) -> tuple[str, str]:
    """(run id, description) of ``models:/name/version``, ``models:/name@alias``, ``name/version``,
    ``name`` (its latest version) or ``models:/m-<logged model id>``."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    spec = target.removeprefix("models:/").strip("/")
    try:
        if spec.startswith("m-") and "/" not in spec and "@" not in spec:
            model = client.get_logged_model(spec)
            return model.source_run_id, f"logged model {spec}"
        if "@" in spec:
            name, alias = spec.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        elif "/" in spec:
            name, number = spec.rsplit("/", 1)
            if number == "latest":
                version = _latest_version(client, name)
            else:
                version = client.get_model_version(name, number)
        else:
            version = _latest_version(client, spec)
    except MlflowException as exc:
        raise LineageError(f"{target}: no such registered model or version in {tracking_uri} ({exc.message})") from None
    if not version.run_id:
        raise LineageError(f"{target}: model version {version.name}/{version.version} records no run (registered from outside a run)")
    return version.run_id, f"registered model {version.name} version {version.version}"


def _latest_version(client, name: str):
    from mlflow.exceptions import MlflowException

    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        raise MlflowException(f"registered model {name!r} has no versions")
    return max(versions, key=lambda v: int(v.version))


def resolve_target(target: str, tracking_uri: Optional[str] = None) -> tuple[str, str, str]:
    """(run id, tracking URI, description) of a run id, ``runs:/<id>/...``, a registered model
    (``models:/...`` or ``name/version``), or an output folder / a file in one.

    tracking_uri: the store to look in; default: the folder's recorded store, else $MLFLOW_TRACKING_URI.
    """
    path = Path(target).expanduser()
    if path.exists():
        folder = path if path.is_dir() else path.parent
        produced = producing_run(folder)
        if not produced:
            raise LineageError(
                f"{target}: {folder / OUTPUT_RUN_FILE} is missing or unreadable, so no run is recorded for this folder "
                "(semidff stages write it when they finish); pass the run id instead"
            )
        uri = tracking_uri or produced.get("tracking_uri") or default_tracking_uri()
        if not uri:
            raise LineageError(f"{target}: the folder names no tracking store; pass --tracking-uri")
        return produced["run_id"], uri, f"output folder {folder} ({produced.get('stage', '?')} run)"
    uri = tracking_uri or default_tracking_uri()
    if target.startswith("runs:/"):
        run_id = target.removeprefix("runs:/").split("/", 1)[0]
        if not uri:
            raise LineageError(f"{target}: which tracking store? pass --tracking-uri (or set MLFLOW_TRACKING_URI)")
        return run_id, uri, f"run {run_id}"
    if _RUN_ID.match(target):
        if not uri:
            raise LineageError(
                f"{target}: which tracking store? pass --tracking-uri (e.g. sqlite:///runs/flow/mlflow.db or http://host:5000), "
                "set MLFLOW_TRACKING_URI, or give the output folder instead of the run id"
            )
        return target, uri, f"run {target}"
    if not uri:
        raise LineageError(
            f"{target}: not a run id, not an existing folder, and no tracking store to look up a model in; "
            "pass --tracking-uri (or set MLFLOW_TRACKING_URI)"
        )
    run_id, description = _model_run_id(target, uri)
    return run_id, uri, description


# ---------------------------------------------------------------------------------------------
# Walking the chain


def run_inputs(run: Any) -> list[InputRecord]:
    """The inputs a run logged: the ``semidff.input.<name>.*`` tags (full digest, producer), and
    MLflow dataset inputs that have no such tags (e.g. logged by other code)."""
    tags = run.data.tags
    by_name: dict[str, dict[str, str]] = {}
    for key, value in tags.items():
        if key.startswith(INPUT_TAG_PREFIX):
            name, _, attribute = key[len(INPUT_TAG_PREFIX):].rpartition(".")
            if name:
                by_name.setdefault(name, {})[attribute] = value
    contexts: dict[str, str] = {}
    extra: list[InputRecord] = []
    for dataset_input in getattr(run.inputs, "dataset_inputs", None) or []:
        dataset = dataset_input.dataset
        context = next((t.value for t in dataset_input.tags if t.key == CONTEXT_TAG), "")
        contexts[dataset.name] = context
        if dataset.name not in by_name:
            try:
                source = json.loads(dataset.source).get("uri", dataset.source)
            except (ValueError, AttributeError):
                source = dataset.source
            extra.append(InputRecord(dataset.name, str(source), dataset.digest, context))
    records = [
        InputRecord(name, values.get("source", ""), values.get("digest", ""), contexts.get(name, ""), values.get("run_id") or None)
        for name, values in by_name.items()
    ]
    return records + extra


def _producer_store(item: InputRecord, consumer_uri: str) -> tuple[Optional[str], str, str]:
    """(producer run id, its tracking URI, how it was found) for one input."""
    source = item.source
    folder_record = None
    if source and "://" not in source:
        path = Path(source)
        for folder in (path, path.parent) if path.suffix else (path,):
            folder_record = producing_run(folder)
            if folder_record:
                break
    if item.producer_run_id:
        if folder_record and folder_record.get("run_id") == item.producer_run_id and folder_record.get("tracking_uri"):
            return item.producer_run_id, folder_record["tracking_uri"], "tag"
        return item.producer_run_id, consumer_uri, "tag"
    if folder_record and folder_record.get("run_id"):
        return folder_record["run_id"], folder_record.get("tracking_uri") or consumer_uri, "folder"
    return None, consumer_uri, ""


def trace_lineage(target: str, tracking_uri: Optional[str] = None, max_runs: int = 200) -> Lineage:
    """Resolve ``target`` (see :func:`resolve_target`) and walk its inputs' producers back to the
    first inputs. Raises LineageError when the starting run cannot be found."""
    from mlflow.exceptions import MlflowException

    run_id, uri, description = resolve_target(target, tracking_uri)
    fetched: dict[tuple[str, str], RunRecord] = {}
    experiments: dict[tuple[str, str], str] = {}

    def experiment_name(store: str, experiment_id: str) -> str:
        if (store, experiment_id) not in experiments:
            try:
                experiments[(store, experiment_id)] = _client(store).get_experiment(experiment_id).name
            except MlflowException:
                experiments[(store, experiment_id)] = experiment_id
        return experiments[(store, experiment_id)]

    def fetch(run_id: str, store: str, with_parent: bool = True) -> RunRecord:
        key = (run_id, store)
        if key in fetched:
            return fetched[key]
        run = _client(store).get_run(run_id)  # MlflowException when missing
        tags = dict(run.data.tags)
        record = RunRecord(
            run_id=run.info.run_id,
            name=run.info.run_name or tags.get("mlflow.runName", ""),
            stage=tags.get(STAGE_TAG, "?"),
            status=run.info.status,
            tracking_uri=store,
            experiment=experiment_name(store, run.info.experiment_id),
            output=tags.get(OUTPUT_TAG, ""),
            tags=tags,
            inputs=run_inputs(run),
        )
        fetched[key] = record
        if len(fetched) > max_runs:
            raise LineageError(f"{target}: more than {max_runs} runs in the chain; is a producer tag pointing in a circle?")
        if with_parent and tags.get(PARENT_TAG):
            try:
                record.parent = fetch(tags[PARENT_TAG], store, with_parent=False)
            except MlflowException:
                pass
        if record.stage == "tune":
            children = _client(store).search_runs(
                [run.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{run.info.run_id}'", max_results=1000,
                order_by=["attributes.start_time ASC"],
            )
            record.trials = [(c.info.run_id, c.info.run_name or "", c.info.status) for c in children]
        for item in record.inputs:
            producer_id, producer_store, found_by = _producer_store(item, store)
            if not producer_id:
                item.producer_note = "no producing run recorded"
                continue
            item.producer_run_id = producer_id
            try:
                item.producer = fetch(producer_id, producer_store)
                if found_by == "folder":
                    item.producer_note = f"producer from {Path(item.source) / OUTPUT_RUN_FILE}"
            except MlflowException:
                item.producer_note = f"run {producer_id} not found in {producer_store}"
        return record

    try:
        root = fetch(run_id, uri)
    except MlflowException as exc:
        raise LineageError(f"{target}: run {run_id} not found in {uri} ({exc.message}); is --tracking-uri the right store?") from None
    return Lineage(target=target, resolved=description, root=root)


# ---------------------------------------------------------------------------------------------
# Printing


def _short(digest: str) -> str:
    return digest[:12] if digest else "-"


def format_lineage(lineage: Lineage) -> str:
    """The chain as an indented tree: each run with its stage, status and store, each input with
    its source and digest and, below it, the run that produced it (a run seen before is named,
    not repeated)."""
    lines = [f"lineage of {lineage.target} ({lineage.resolved})"]
    printed: set[tuple[str, str]] = set()
    root_uri = lineage.root.tracking_uri

    def run_line(record: RunRecord) -> str:
        store = "" if record.tracking_uri == root_uri else f"  [store {record.tracking_uri}]"
        return f"{record.stage} run {record.run_id}  {record.name!r}  {record.status}{store}"

    def emit(record: RunRecord, indent: str) -> None:
        key = (record.run_id, record.tracking_uri)
        lines.append(indent + run_line(record))
        if key in printed:
            lines.append(indent + "  (shown above)")
            return
        printed.add(key)
        if record.output:
            lines.append(f"{indent}  output: {record.output}")
        if record.parent is not None:
            parent = record.parent
            lines.append(f"{indent}  trial of sweep: {parent.stage} run {parent.run_id}  {parent.name!r}  {parent.status}")
        if record.trials:
            lines.append(f"{indent}  trials ({len(record.trials)}):")
            best = record.tags.get("semidff.tune.best_run_id")
            for run_id, name, status in record.trials:
                mark = "  <- best" if run_id == best else ""
                lines.append(f"{indent}    {run_id}  {name!r}  {status}{mark}")
        if not record.inputs:
            lines.append(f"{indent}  inputs: none logged")
        for item in record.inputs:
            context = f" ({item.context})" if item.context else ""
            lines.append(f"{indent}  input {item.name}{context}: {item.source}  digest {_short(item.digest)}")
            if item.producer is not None:
                note = f"  [{item.producer_note}]" if item.producer_note else ""
                lines.append(f"{indent}    produced by{note}:")
                emit(item.producer, indent + "      ")
            else:
                lines.append(f"{indent}    ({item.producer_note or 'no producing run recorded'})")

    emit(lineage.root, "")
    leaves = lineage.leaf_inputs()
    if leaves:
        lines.append("first inputs (produced by no run in this chain):")
        for item in leaves:
            lines.append(f"  {item.name}: {item.source}  digest {item.digest}")
    return "\n".join(lines)
