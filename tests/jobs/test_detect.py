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
