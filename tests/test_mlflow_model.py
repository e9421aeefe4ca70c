"""A registered semidff detector loads with plain mlflow.pyfunc and detects what semidff's own detector does."""
import mlflow
import numpy as np
import pytest
import torch

from semidff.checkpoint import file_sha256, save_model_checkpoint
from semidff.config import load_config
from semidff.inference import load_detector
from semidff.mlflow_model import DETECTION_COLUMNS, detector_files, log_detector_model
from semidff.models.build import build_propagator, build_rfcn
from semidff.tracking import register_model_version, use_experiment

TINY = "jobs/configs/tiny.yaml"


@pytest.fixture()
def checkpoints(tmp_path):
    cfg = load_config(TINY, ["video.key_interval=3"])
    torch.manual_seed(0)
    rfcn = build_rfcn(cfg.model)
    teacher = save_model_checkpoint(tmp_path / "teacher.pt", "teacher", cfg, {"rfcn": rfcn.state_dict()}, meta={"class_names": ["a", "b", "c"]})
    assert teacher
    flow_sd = {"rfcn": rfcn.state_dict(), "propagator": build_propagator(cfg.model).state_dict()}
    save_model_checkpoint(tmp_path / "flow.pt", "flow", cfg, flow_sd, meta={"key_interval": 3})
    return tmp_path / "teacher.pt", tmp_path / "flow.pt"


def test_a_registered_detector_loads_with_pyfunc_and_matches_semidffs_detector(tmp_path, checkpoints, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    teacher, flow = checkpoints
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    use_experiment("models", uri)
    with mlflow.start_run() as run:
        info = log_detector_model(teacher, flow)
        tags = {"semidff.flow.sha256": file_sha256(flow)}
        version = register_model_version("semidff-flow", info.model_uri, run.info.run_id, tags, "semidff.flow.sha256", "test", aliases=("two-step",))
        again = register_model_version("semidff-flow", info.model_uri, run.info.run_id, tags, "semidff.flow.sha256", "test")
    assert version == again == "1"  # the same file is registered once

    frames = np.random.default_rng(0).integers(0, 256, (7, 80, 120, 3), dtype=np.uint8)
    model = mlflow.pyfunc.load_model("models:/semidff-flow@two-step")
    table = model.predict(frames)
    assert list(table.columns) == list(DETECTION_COLUMNS)
    own = load_detector(str(teacher), str(flow), mode="flow", key_interval=3)
    with torch.inference_mode():
        results, _ = own.detector.run(list(frames), own.short_side, own.max_long_side)
    assert len(table) == sum(len(r.detections.scores) for r in results) > 0
    first = results[4].detections  # a propagated frame (key frames every 3)
    rows = table[table.frame == 4]
    assert not rows.is_key.any() and np.allclose(rows[["x1", "y1", "x2", "y2"]].to_numpy(), first.boxes.numpy(), atol=1e-4)
    assert set(rows.class_name) <= {"a", "b", "c"}
    copied = mlflow.pyfunc.load_model("models:/semidff-flow/1").predict(frames, params={"mode": "copy", "key_interval": 2})
    assert set(copied[copied.is_key].frame) == {0, 2, 4, 6}

    teacher_file, flow_file = detector_files("models:/semidff-flow/1")
    assert file_sha256(teacher_file) == file_sha256(teacher) and file_sha256(flow_file) == file_sha256(flow)
    with pytest.raises(mlflow.exceptions.MlflowException, match="uint8"):  # the model's signature, enforced by MLflow
        model.predict(frames.astype(np.float32))
