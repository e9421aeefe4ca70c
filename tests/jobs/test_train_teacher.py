"""`semidff train-teacher` end to end: Ray Train on 2 CPU workers (a real local Ray with fractional
CPUs), real synthetic H.264 videos, a real MLflow SQLite store; rerunning resumes; bad inputs stop
before Ray with exit 2."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import ray
import torch
import yaml
from mlflow.tracking import MlflowClient

from jobs.train_teacher import run
from semidff.checkpoint import build_teacher, file_sha256, load_model_checkpoint
from semidff.config import Config, ConfigError, load_config
from semidff.data.synthetic import generate_synthetic_dataset
from semidff.models.build import build_rfcn
from semidff.tracking import producing_run
from semidff.data.labeled import LabeledDataError

TINY = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "tiny.yaml"
STEPS_PER_EPOCH = 6  # 24 frames, 2 workers x 2 images


@pytest.fixture(scope="module")
def dataset_json(tmp_path_factory):
    """2 synthetic videos of 12 frames at 128x96: 24 annotated frames, 3 classes."""
    folder = tmp_path_factory.mktemp("teacher_data")
    generate_synthetic_dataset(folder, num_videos=2, num_frames=12, width=128, height=96, num_classes=3, seed=0)
    return folder / "dataset.json"


def _cfg(dataset_json: Path, *overrides: str) -> Config:
    return load_config(TINY, [
        f"teacher_training.data.path={dataset_json}",
        "teacher_training.num_workers=2",
        "teacher_training.cpus_per_worker=0.5",
        "teacher_training.batch_size=2",
        "teacher_training.base_lr=0.005",
        "teacher_training.warmup_steps=2",
        "teacher_training.checkpoint_every_steps=4",
        "teacher_training.epochs=1",
        *overrides,
    ])


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _metric_steps(client: MlflowClient, run_id: str, key: str = "train/total") -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


@pytest.mark.slow
def test_two_workers_train_one_epoch_then_a_rerun_resumes(local_ray, dataset_json, tmp_path):
    out = tmp_path / "teacher"
    cfg = _cfg(dataset_json)
    lines: list[str] = []
    first = run(cfg, out, progress=lines.append)

    # teacher.pt: a loadable teacher with trained weights and the run's facts
    assert first.epochs == 1 and first.steps == STEPS_PER_EPOCH and first.num_samples == 24
    checkpoint = load_model_checkpoint(out / "teacher.pt", expected_kind="teacher")
    assert checkpoint.sha256 == first.sha256 and checkpoint.config == cfg
    assert checkpoint.meta["epochs"] == 1 and checkpoint.meta["steps"] == STEPS_PER_EPOCH
    assert checkpoint.meta["dataset_digest"] == first.dataset_digest == file_sha256(dataset_json)
    assert checkpoint.meta["class_names"] == ["striped_disc", "checkered_square", "noisy_triangle"]
    assert set(checkpoint.meta["final_losses"]) == {"total", "rpn_cls", "rpn_box", "rfcn_cls", "rfcn_box"}
    teacher = build_teacher(checkpoint)
    torch.manual_seed(cfg.seed)
    initial = build_rfcn(cfg.model).state_dict()
    trained = teacher.state_dict()
    assert not torch.equal(initial["ps_roi_head.rfcn_cls.weight"], trained["ps_roi_head.rfcn_cls.weight"])
    assert Config.model_validate(yaml.safe_load((out / "config.yaml").read_text())) == cfg
    assert producing_run(out)["run_id"] == first.run_id
    assert any("epoch 1/1 batch 6/6" in line and "images/s" in line for line in lines), lines

    # MLflow: the stage run with params, per-step metrics from rank 0, the dataset as an input
    client = MlflowClient(first.tracking_uri)
    logged = client.get_run(first.run_id)
    assert logged.info.status == "FINISHED"
    assert logged.data.params["teacher_training.epochs"] == "1"
    assert logged.data.tags["semidff.stage"] == "train-teacher"
    assert _metric_steps(client, first.run_id) == list(range(1, STEPS_PER_EPOCH + 1))
    lr = [m.value for m in sorted(client.get_metric_history(first.run_id, "train/lr"), key=lambda m: m.step)]
    assert lr[:3] == pytest.approx([0.01, 0.02, 0.02])  # 0.005 x 2 workers x 2 images, warm-up over 2 steps
    assert all(m.value > 0 for m in client.get_metric_history(first.run_id, "train/images_per_s"))
    assert logged.data.metrics["final/total"] == pytest.approx(first.final_losses["total"])
    inputs = logged.inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == ["labeled_frames"]
    assert inputs[0].dataset.digest == first.dataset_digest[:36]

    # the same command with more epochs continues from the saved epoch; no step is logged twice
    second = run(_cfg(dataset_json, "teacher_training.epochs=2"), out)
    assert second.epochs == 2 and second.steps == 2 * STEPS_PER_EPOCH and second.run_id != first.run_id
    assert _metric_steps(client, second.run_id) == list(range(STEPS_PER_EPOCH + 1, 2 * STEPS_PER_EPOCH + 1))
    assert _metric_steps(client, first.run_id) == list(range(1, STEPS_PER_EPOCH + 1))
    tags = client.get_run(second.run_id).data.tags
    assert tags["semidff.train_teacher.resumed_at_step"] == str(STEPS_PER_EPOCH)
    assert tags["semidff.train_teacher.resumed_from_run"] == first.run_id
    assert load_model_checkpoint(out / "teacher.pt").meta["epochs"] == 2

    # a rerun with another architecture would resume incompatible weights: refused before Ray work
    with pytest.raises(ConfigError, match=r"(?s)another model.*model.feature_channels"):
        run(_cfg(dataset_json, "teacher_training.epochs=3", "model.feature_channels=32"), out)


def test_unusable_data_stops_before_ray(dataset_json, tmp_path):
    with pytest.raises(LabeledDataError, match="teacher_training.data.path is not set"):
        run(load_config(TINY), tmp_path / "a")
    with pytest.raises(LabeledDataError, match="no such file"):
        run(load_config(TINY, [f"teacher_training.data.path={tmp_path / 'none.json'}"]), tmp_path / "b")
    with pytest.raises(ConfigError, match=r"model.num_classes=5 but the dataset .* has 3 classes"):
        run(_cfg(dataset_json, "model.num_classes=5"), tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c" / "ray_results").exists()


def test_cli_reports_a_missing_dataset_with_exit_code_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "train-teacher", "-o", str(tmp_path / "t"), "-c", str(TINY)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "teacher_training.data.path is not set" in result.stderr and "Traceback" not in result.stderr
