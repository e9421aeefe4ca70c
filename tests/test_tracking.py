"""semidff/tracking.py on a real MLflow SQLite store: a stage run started from any folder keeps its
artifacts beside the store (``<out>/mlartifacts``), never in ``./mlruns`` of the current folder;
an experiment that already exists keeps its artifact location."""
from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from semidff.config import load_config
from semidff.tracking import ARTIFACTS_DIR, artifact_location_for, stage_run, tracking_uri_for


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """An empty current folder, apart from the output, and no MLFLOW_TRACKING_URI from the caller."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return folder


def test_default_store_keeps_artifacts_beside_the_database_not_in_the_cwd(tmp_path, elsewhere):
    out = tmp_path / "out"
    cfg = load_config(None)
    assert cfg.mlflow.tracking_uri is None
    (tmp_path / "weights.bin").write_bytes(b"\x00\x01")
    with stage_run(cfg, "cache", out) as active:
        mlflow.log_artifact(str(tmp_path / "weights.bin"), artifact_path="model")
        run_id = active.info.run_id
        artifact_uri = mlflow.get_artifact_uri()

    assert list(elsewhere.iterdir()) == []  # no ./mlruns, nothing else either
    uri = tracking_uri_for(cfg, out)
    assert uri == f"sqlite:///{out.resolve() / 'mlflow.db'}"
    experiment = MlflowClient(uri).get_experiment_by_name(cfg.mlflow.experiment)
    assert experiment.artifact_location == (out.resolve() / ARTIFACTS_DIR).as_uri()
    assert artifact_uri == f"{experiment.artifact_location}/{run_id}/artifacts"
    stored = out / ARTIFACTS_DIR / run_id / "artifacts"
    assert (stored / "model" / "weights.bin").read_bytes() == b"\x00\x01"
    assert (stored / "config.yaml").read_text() == cfg.to_yaml()  # stage_run's own artifact
    assert sorted(a.path for a in MlflowClient(uri).list_artifacts(run_id)) == ["config.yaml", "model"]


def test_an_existing_experiment_keeps_its_location_and_explicit_sqlite_stores_get_theirs(tmp_path, elsewhere):
    store = tmp_path / "shared" / "mlflow.db"
    uri = f"sqlite:///{store}"
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.create_experiment("older", artifact_location=(tmp_path / "older_artifacts").as_uri())
    finally:
        mlflow.set_tracking_uri(None)
    older = load_config(None, [f"mlflow.tracking_uri={uri}", "mlflow.experiment=older"])
    newer = load_config(None, [f"mlflow.tracking_uri={uri}", "mlflow.experiment=newer"])
    with stage_run(older, "train", tmp_path / "out_a") as first:
        pass
    with stage_run(newer, "train", tmp_path / "out_b") as second:
        pass

    assert list(elsewhere.iterdir()) == []
    assert (tmp_path / "older_artifacts" / first.info.run_id / "artifacts" / "config.yaml").is_file()
    # A configured SQLite store: artifacts beside that database, not beside the stage's output.
    assert (tmp_path / "shared" / ARTIFACTS_DIR / second.info.run_id / "artifacts" / "config.yaml").is_file()
    assert not (tmp_path / "out_b" / ARTIFACTS_DIR).exists()


def test_artifact_location_only_for_local_sqlite_files(tmp_path, elsewhere):
    assert artifact_location_for(f"sqlite:///{tmp_path}/x/mlflow.db") == (tmp_path / "x" / ARTIFACTS_DIR).as_uri()
    assert artifact_location_for("sqlite:///runs/mlflow.db?timeout=10") == (elsewhere / "runs" / ARTIFACTS_DIR).as_uri()
    assert artifact_location_for("sqlite:///:memory:") is None
    assert artifact_location_for("http://127.0.0.1:5000") is None
    assert artifact_location_for("databricks") is None


def test_a_killed_runs_mlflow_run_is_ended_when_the_stage_runs_again_on_its_output(tmp_path, elsewhere):
    out, other = tmp_path / "out", tmp_path / "other"
    cfg = load_config(None)
    with stage_run(cfg, "cache", out) as first:
        pass
    client = MlflowClient(tracking_uri_for(cfg, out))
    # A run whose process was killed: it never ended (the same tags a stage run has).
    experiment_id = first.info.experiment_id
    killed = client.create_run(experiment_id, tags={"semidff.stage": "cache", "semidff.output": str(out)}).info.run_id
    elsewhere_run = client.create_run(experiment_id, tags={"semidff.stage": "cache", "semidff.output": str(other)}).info.run_id
    with stage_run(cfg, "cache", out) as second:
        assert client.get_run(second.info.run_id).info.status == "RUNNING"
    assert client.get_run(killed).info.status == "KILLED" and "later run" in client.get_run(killed).data.tags["semidff.ended_by"]
    assert client.get_run(first.info.run_id).info.status == "FINISHED" and client.get_run(second.info.run_id).info.status == "FINISHED"
    assert client.get_run(elsewhere_run).info.status == "RUNNING"  # another output's run is not this stage's business
