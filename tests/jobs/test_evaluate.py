"""`semidff evaluate` end to end: real encoded synthetic videos, tiny random checkpoints written with
save_model_checkpoint, a real MLflow SQLite store in tmp_path; every bad input stops with exit 2."""
from tests.video_fixtures import write_video  # noqa: F401  (PyAV before decord, see tests/video_fixtures.py)

import json
import subprocess
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from jobs.cli import app
from jobs.evaluate import run
from semidff.checkpoint import ModelCheckpointError, file_sha256, save_model_checkpoint
from semidff.config import ConfigError, load_config
from semidff.data.synthetic import generate_synthetic_dataset
from semidff.data.synthetic_motion import generate_motion_dataset
from semidff.evaluation.run import EvaluationError
from semidff.models.build import build_propagator, build_rfcn
from semidff.data.labeled import LabeledDataError
from semidff.tracking import OUTPUT_RUN_FILE, record_output

TINY = "jobs/configs/tiny.yaml"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A 2-video synthetic dataset, a teacher checkpoint whose folder names its producing run, and
    a flow checkpoint whose student R-FCN is the teacher's."""
    folder = tmp_path_factory.mktemp("evaluate")
    generate_synthetic_dataset(folder / "data", num_videos=2, num_frames=8, width=128, height=96, num_classes=3)
    cfg = load_config(TINY)
    torch.manual_seed(0)
    rfcn = build_rfcn(cfg.model)
    teacher = folder / "teacher" / "teacher.pt"
    teacher_sha = save_model_checkpoint(teacher, "teacher", cfg, {"rfcn": rfcn.state_dict()})
    record_output(teacher.parent, "teacher-run-0123", "train-teacher", "sqlite:///elsewhere.db")
    flow = folder / "flow" / "flow.pt"
    save_model_checkpoint(flow, "flow", cfg, {"rfcn": rfcn.state_dict(), "propagator": build_propagator(cfg.model).state_dict()},
                          meta={"teacher_sha256": teacher_sha})
    return folder, folder / "data" / "dataset.json", teacher, flow


def _cfg(dataset, *overrides):
    return load_config(TINY, [f"evaluation.data.path={dataset}", *overrides])


@pytest.fixture(scope="module")
def evaluated(inputs):
    folder, dataset, teacher, flow = inputs
    lines = []
    report = run(_cfg(dataset), str(teacher), str(flow), str(folder / "out"), modes=["frame", "copy", "flow"],
                 key_intervals=[4, 1], progress=lines.append)
    return report, lines


def test_every_mode_and_interval_is_reported_and_written(evaluated, inputs):
    report, lines = evaluated
    out = report.output_dir
    assert [r.run.name for r in report.results] == ["frame/dt1", "copy/dt1", "copy/dt4", "flow/dt1", "flow/dt4"]
    assert report.result("copy", 4).timing.key_frames == 2 * 2  # frames 0 and 4 of each 8-frame video
    # copy at ΔT = 1 is frame mode: the prediction files are identical byte for byte
    assert (out / "predictions/copy_dt1.json").read_bytes() == (out / "predictions/frame_dt1.json").read_bytes()
    records = json.loads((out / "predictions/flow_dt4.json").read_text())
    assert {r["video_id"] for r in records} == {"synthetic_000", "synthetic_001"}
    assert all(r["category_id"] in (1, 2, 3) and r["bbox"][2] >= 0 for r in records)
    assert (out / "evaluation.png").read_bytes()[:4] == b"\x89PNG"
    assert "| flow | 4 |" in (out / "evaluation.md").read_text() and "| flow | 4 |" in report.table
    assert [r["key_interval"] for r in json.loads((out / "results.json").read_text())["runs"]] == [1, 1, 4, 1, 4]
    written = load_config(out / "config.yaml")
    assert written.evaluation.modes == ["frame", "copy", "flow"] and written.evaluation.key_intervals == [1, 4]
    assert written.model == load_config(TINY).model
    assert written.evaluation.data.split == "val"  # a partly given data section keeps evaluation's split
    assert json.loads((out / OUTPUT_RUN_FILE).read_text())["run_id"] == report.run_id
    assert "[flow/dt4] video 2/2 synthetic_001: 8 frames, 8 annotated" in "\n".join(lines)


def test_mlflow_run_holds_metrics_artifacts_inputs_and_checkpoint_tags(evaluated, inputs):
    report, _ = evaluated
    _, dataset, teacher, flow = inputs
    client = MlflowClient(report.tracking_uri)
    mlflow_run = client.get_run(report.run_id)
    assert mlflow_run.info.status == "FINISHED"
    metrics, tags = mlflow_run.data.metrics, mlflow_run.data.tags
    for result in report.results:
        assert metrics[f"mAP/{result.run.name}"] == pytest.approx(result.map)
        assert metrics[f"fps/{result.run.name}"] == pytest.approx(result.fps)
    assert "fps_end_to_end/flow/dt4" in metrics and "mAP_fast/copy/dt4" in metrics
    assert {f"AP/frame/dt1/{name}" for name in ("striped_disc", "checkered_square", "noisy_triangle")} <= set(metrics)
    history = client.get_metric_history(report.run_id, "mAP/copy")
    assert sorted(m.step for m in history) == [1, 4]
    artifacts = {a.path for a in client.list_artifacts(report.run_id)}
    assert {"evaluation.md", "evaluation.png", "results.json", "config.yaml", "predictions"} <= artifacts
    assert len(client.list_artifacts(report.run_id, "predictions")) == 5
    inputs_by_name = {i.dataset.name: i for i in mlflow_run.inputs.dataset_inputs}
    assert inputs_by_name["evaluation_data"].dataset.digest == file_sha256(dataset)[:36]
    assert tags["semidff.input.evaluation_data.digest"] == file_sha256(dataset)
    assert tags["semidff.input.teacher.digest"] == file_sha256(teacher)
    assert tags["semidff.input.flow.digest"] == file_sha256(flow)
    assert tags["semidff.input.teacher.run_id"] == "teacher-run-0123"  # from the teacher folder's marker
    assert "semidff.input.flow.run_id" not in tags  # the flow folder names no run
    assert tags["semidff.stage"] == "evaluate" and tags["semidff.evaluation.runs"].startswith("frame/dt1,copy/dt1")


def test_bad_inputs_stop_before_any_compute_with_a_clear_error(inputs, tmp_path):
    _, dataset, teacher, flow = inputs
    out = str(tmp_path / "out")
    with pytest.raises(EvaluationError, match="mode 'flow' needs a flow checkpoint"):
        run(_cfg(dataset), str(teacher), None, out, modes=["frame", "flow"])
    with pytest.raises(ModelCheckpointError, match="holds a 'flow' model, expected a 'teacher' model"):
        run(_cfg(dataset), str(flow), None, out, modes=["frame"])
    with pytest.raises(ModelCheckpointError, match="does not exist"):
        run(_cfg(dataset), str(tmp_path / "missing.pt"), None, out)
    with pytest.raises(ConfigError, match=r"model.backbone.depth: checkpoint 18, config 101"):
        run(load_config(None, [f"evaluation.data.path={dataset}"]), str(teacher), None, out, modes=["frame"])
    with pytest.raises(LabeledDataError, match=r"evaluation.data.path=.*nowhere.json: no such file or folder"):
        run(_cfg(tmp_path / "nowhere.json"), str(teacher), None, out, modes=["frame"])
    with pytest.raises(EvaluationError, match="has 3 classes but the model predicts 5"):
        wrong = tmp_path / "teacher5.pt"
        cfg5 = load_config(TINY, ["model.num_classes=5"])
        save_model_checkpoint(wrong, "teacher", cfg5, {"rfcn": build_rfcn(cfg5.model).state_dict()})
        run(load_config(TINY, ["model.num_classes=5", f"evaluation.data.path={dataset}"]), str(wrong), None, out, modes=["copy"])
    assert not (tmp_path / "out").exists()  # nothing written, no MLflow run started


def test_cli_prints_the_table_and_exits_2_on_bad_input(inputs, tmp_path):
    _, dataset, teacher, flow = inputs
    common = ["-c", TINY, f"evaluation.data.path={dataset}"]
    ok = CliRunner().invoke(app, ["evaluate", "--teacher", str(teacher), "-o", str(tmp_path / "cli"), *common,
                                  "--modes", "frame,copy", "--key-intervals", "2", "--max-videos", "1"])
    assert ok.exit_code == 0, ok.output
    assert "| frame | every frame |" in ok.output and "| copy | 2 |" in ok.output
    assert "1 videos, 8 annotated frames" in ok.output
    assert sorted(p.name for p in (tmp_path / "cli/predictions").iterdir()) == ["copy_dt2.json", "frame_dt1.json"]
    cases = [
        (["--teacher", str(tmp_path / "none.pt")], "none.pt does not exist"),
        (["--teacher", str(flow)], "expected a 'teacher' model"),
        (["--teacher", str(teacher), "--modes", "flow"], "needs a flow checkpoint"),
        (["--teacher", str(teacher), "--key-intervals", "1,x"], "--key-intervals='1,x': expected a comma-separated list"),
        (["--teacher", str(teacher), "--modes", "frame", "evaluation.data.path=/no/such/data.json"], "evaluation.data.path=/no/such/data.json: no such file"),
        (["--teacher", str(teacher), "--modes", "frame,oracle"], "leave oracle out"),  # this corpus has no true motion
    ]
    for arguments, message in cases:
        result = CliRunner().invoke(app, ["evaluate", "-o", str(tmp_path / "bad"), *common, *arguments])
        assert result.exit_code == 2, (arguments, result.output)
        assert message in result.output, (arguments, result.output)


def test_oracle_mode_on_a_corpus_with_true_motion_reports_its_recovery(inputs, tmp_path):
    _, _, teacher, _ = inputs
    generate_motion_dataset(tmp_path / "motion", num_videos=2, num_frames=8, width=128, height=96, num_classes=3)
    result = CliRunner().invoke(app, ["evaluate", "--teacher", str(teacher), "-o", str(tmp_path / "out"), "-c", TINY,
                                      f"evaluation.data.path={tmp_path / 'motion' / 'dataset.json'}",
                                      "--modes", "frame,copy,oracle", "--key-intervals", "4"])
    assert result.exit_code == 0, result.output
    assert "| oracle | 4 |" in result.output and "## Recovery" in result.output
    recovery = json.loads((tmp_path / "out" / "results.json").read_text())["recovery"]
    assert [(r["mode"], r["key_interval"]) for r in recovery] == [("oracle", 4)]
    assert load_config(tmp_path / "out" / "config.yaml").evaluation.modes == ["frame", "copy", "oracle"]


def test_python_m_entry_point_exits_2_with_the_message(inputs, tmp_path):
    _, dataset, teacher, _ = inputs
    stopped = subprocess.run(
        [sys.executable, "-m", "jobs.evaluate", "-c", TINY, f"evaluation.data.path={dataset}", "--teacher", str(teacher),
         "-o", str(tmp_path / "o"), "--modes", "flow"], capture_output=True, text=True, timeout=300,
    )
    assert stopped.returncode == 2
    assert "needs a flow checkpoint" in stopped.stderr
