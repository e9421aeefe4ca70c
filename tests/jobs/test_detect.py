"""`semidff detect`: a real video in, an annotated real video out, key and propagated frames marked."""
from tests.video_fixtures import write_video  # PyAV before decord

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from jobs.detect import run
from semidff.checkpoint import save_model_checkpoint
from jobs.cli import app
from semidff.config import load_config
from semidff.models.build import build_propagator, build_rfcn
from semidff.video.decode import open_video
from semidff.visualize import KEY_COLOR, PROPAGATED_COLOR


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    cfg = load_config("jobs/configs/tiny.yaml")
    torch.manual_seed(0)
    rfcn = build_rfcn(cfg.model)
    teacher = folder / "teacher.pt"
    save_model_checkpoint(teacher, "teacher", cfg, {"rfcn": rfcn.state_dict()}, {"class_names": ["car", "dog", "cat"]})
    flow = folder / "flow.pt"
    save_model_checkpoint(flow, "flow", cfg, {"rfcn": rfcn.state_dict(), "propagator": build_propagator(cfg.model).state_dict()})
    return teacher, flow


def _border_color(frame: np.ndarray) -> np.ndarray:
    return frame[frame.shape[0] // 2, 0].astype(int)  # middle of the left border


def test_flow_mode_writes_every_frame_with_key_frames_marked(tmp_path, checkpoints):
    teacher, flow = checkpoints
    video = write_video(tmp_path / "in.mp4", num_frames=7, width=96, height=64)
    summary = run(str(video), str(teacher), str(tmp_path / "out.mp4"), str(flow), key_interval=3, device="cpu")
    assert (summary.frames, summary.key_frames, summary.mode) == (7, 3, "flow")
    assert summary.detector_fps > 0
    with open_video(str(summary.output)) as opened:
        frames = list(opened.iter_frames())
    assert len(frames) == 7 and frames[0].shape == (64, 96, 3)
    for index, frame in enumerate(frames):  # frames 0, 3, 6 are key frames (green border), others orange
        expected = KEY_COLOR if index % 3 == 0 else PROPAGATED_COLOR
        assert np.abs(_border_color(frame) - np.array(expected)).max() < 40, index


def test_cli_refuses_flow_mode_without_a_flow_checkpoint(tmp_path, checkpoints):
    teacher, _ = checkpoints
    video = write_video(tmp_path / "in.mp4", num_frames=3, width=64, height=48)
    result = CliRunner().invoke(app, ["detect", str(video), "--teacher", str(teacher), "--out", str(tmp_path / "o.mp4"), "--mode", "flow"])
    assert result.exit_code == 2
    assert "mode=flow needs --flow" in result.output
    oracle = CliRunner().invoke(app, ["detect", str(video), "--teacher", str(teacher), "--out", str(tmp_path / "o.mp4"), "--mode", "oracle"])
    assert oracle.exit_code == 2 and "runs only in `semidff evaluate`" in oracle.output  # it needs a generated video's true motion


def test_cli_frame_mode_and_a_wrong_checkpoint_kind(tmp_path, checkpoints):
    teacher, flow = checkpoints
    video = write_video(tmp_path / "in.mp4", num_frames=3, width=64, height=48)
    ok = CliRunner().invoke(app, ["detect", str(video), "--teacher", str(teacher), "--out", str(tmp_path / "o.mp4"), "--device", "cpu"])
    assert ok.exit_code == 0, ok.output
    assert "3 frames (3 key frames), mode=frame" in ok.output
    wrong = CliRunner().invoke(app, ["detect", str(video), "--teacher", str(flow), "--out", str(tmp_path / "p.mp4")])
    assert wrong.exit_code == 2 and "holds a 'flow' model, expected a 'teacher' model" in wrong.output


def test_cli_refuses_an_output_name_h264_cannot_go_in_before_running_the_detector(tmp_path, checkpoints):
    teacher, _ = checkpoints
    video = write_video(tmp_path / "in.mp4", num_frames=3, width=64, height=48)
    result = CliRunner().invoke(app, ["detect", str(video), "--teacher", str(teacher), "--out", str(tmp_path / "o.webm")])
    assert result.exit_code == 2
    assert "o.webm: the annotated video is H.264, which needs a .mp4, .mkv, .avi, .mov file name" in result.output
    assert not list(tmp_path.glob("*o.webm*"))


# ---------------------------------------------------------------------------------------------
# Real-world files: damage, missing timestamps, frames that do not decode, rotation


def _predictions(summary) -> list[dict]:
    import json

    return [json.loads(line) for line in summary.predictions.read_text().splitlines()]


def test_a_damaged_middle_loses_only_its_frames_marked_in_the_video_and_the_predictions(tmp_path, checkpoints):
    """Frames 25-26 overwritten (keyframes every 10): 25-29 are lost, decoding goes on at 30; the
    output keeps all 50 frames, the lost ones grey, and reports the range as the cache stage does."""
    from tests.video_fixtures import damage_packets
    from semidff.inference import LOST_COLOR

    teacher, flow = checkpoints
    source = write_video(tmp_path / "clean.mp4", 50, 64, 48, gop=10)
    video = damage_packets(source, [25, 26], tmp_path / "damaged.mp4")
    summary = run(str(video), str(teacher), str(tmp_path / "out.mp4"), str(flow), key_interval=4, device="cpu")
    assert (summary.frames, summary.lost_frames) == (50, 5)
    (message,) = summary.damage
    assert message.startswith(f"{video}: frames 25-29 did not decode (")
    assert message.endswith("the file is damaged there (decoding went on from the codec keyframe at frame 30), fetch it again")
    assert "frames 25-29 did not decode" in summary.format()
    records = _predictions(summary)
    assert [r["frame"] for r in records] == list(range(50))
    assert [r["frame"] for r in records if r["kind"] == "lost"] == [25, 26, 27, 28, 29]
    assert all(r["detections"] == [] for r in records if r["kind"] == "lost")
    keys = [r["frame"] for r in records if r["kind"] == "key"]
    assert keys == [0, 4, 8, 12, 16, 20, 24, 30, 34, 38, 42, 46]  # a fresh key frame after the damage
    assert records[1]["time_s"] == 0.04
    with open_video(str(summary.output)) as opened:
        frames = list(opened.iter_frames())
    assert len(frames) == 50
    for index in (25, 29):
        assert np.abs(frames[index][24, 32].astype(int) - np.array(LOST_COLOR)).max() < 12  # grey placeholder
    assert np.abs(_border_color(frames[30]) - np.array(KEY_COLOR)).max() < 40


def test_mpeg4_avi_without_timestamps_is_written_at_its_declared_rate(tmp_path, checkpoints):
    import av

    teacher, _ = checkpoints
    video = write_video(tmp_path / "divx.avi", 45, 64, 48, codec="mpeg4", gop=12, bframes=True, fps=15)
    summary = run(str(video), str(teacher), str(tmp_path / "out.mp4"), device="cpu")
    assert (summary.frames, summary.fps, summary.lost_frames) == (45, 15.0, 0)
    with av.open(str(summary.output)) as container:
        stream = container.streams.video[0]
        assert (stream.frames, float(stream.average_rate)) == (45, 15.0)
        assert float(stream.duration * stream.time_base) == pytest.approx(3.0)  # the source's 3 s, not 45 / 25


def test_a_last_frame_that_does_not_decode_is_not_written(tmp_path, checkpoints):
    from tests.video_fixtures import break_last_packet

    teacher, _ = checkpoints
    video = break_last_packet(write_video(tmp_path / "a.mp4", 12, 64, 48, faststart=True), tmp_path / "broken.mp4")
    summary = run(str(video), str(teacher), str(tmp_path / "out.mp4"), device="cpu")  # decord would repeat frame 10 for it
    assert (summary.frames, summary.lost_frames) == (11, 0)
    assert len(_predictions(summary)) == 11


def test_a_rotated_video_is_detected_as_shown(tmp_path, checkpoints):
    teacher, _ = checkpoints
    video = write_video(tmp_path / "phone.mp4", 3, 320, 240, rotation=90)
    summary = run(str(video), str(teacher), str(tmp_path / "out.mp4"), device="cpu")
    with open_video(str(summary.output)) as opened:
        assert next(opened.iter_frames()).shape == (320, 240, 3)


def test_a_registered_model_is_detected_with_and_brings_its_teacher(tmp_path, checkpoints, monkeypatch):
    import mlflow

    from semidff.mlflow_model import log_detector_model
    from semidff.tracking import register_model_version, use_experiment

    teacher, flow = checkpoints
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    use_experiment("detect", uri)
    with mlflow.start_run() as active:
        info = log_detector_model(teacher, flow)
        register_model_version("semidff-flow", info.model_uri, active.info.run_id, {"semidff.flow.sha256": "x"}, "semidff.flow.sha256",
                               "test", aliases=("two-step",))
    video = write_video(tmp_path / "in.mp4", num_frames=4, width=64, height=48)
    result = CliRunner().invoke(app, ["detect", str(video), "--flow", "models:/semidff-flow@two-step", "-o", str(tmp_path / "o.mp4"),
                                      "--key-interval", "2"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o.mp4").is_file() and "flow" in result.output
    both = CliRunner().invoke(app, ["detect", str(video), "--flow", "models:/semidff-flow/1", "--teacher", str(teacher), "-o", str(tmp_path / "p.mp4")])
    assert both.exit_code == 2 and "brings its own teacher" in both.output
    neither = CliRunner().invoke(app, ["detect", str(video), "-o", str(tmp_path / "q.mp4")])
    assert neither.exit_code == 2 and "--teacher TEACHER.pt is needed" in neither.output
