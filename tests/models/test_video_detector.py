"""VideoDetector: key-frame schedule, copy/flow semantics, timing."""
from pathlib import Path

import numpy as np
import pytest
import torch

from semidff.config import load_config
from semidff.models.build import build_propagator, build_rfcn, build_video_detector
from semidff.models.video_detector import VideoDetector
from semidff.preprocess import resized_shape

TINY = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def cfg():
    return load_config(TINY, ["model.rfcn.test_score_threshold=0.0"])


@pytest.fixture(scope="module")
def networks(cfg):
    torch.manual_seed(0)
    return build_rfcn(cfg.model).eval(), build_propagator(cfg.model).eval()


def moving_frames(num_frames, height=90, width=120, seed=0):
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, size=(height + num_frames, width + 4 * num_frames, 3), dtype=np.uint8)
    return [texture[i : i + height, 4 * i : 4 * i + width].copy() for i in range(num_frames)]


def run(detector, frames, cfg):
    return detector.run(frames, cfg.preprocess.short_side, cfg.preprocess.max_long_side)


def same_detections(a, b):
    return torch.equal(a.labels, b.labels) and torch.allclose(a.boxes, b.boxes) and torch.allclose(a.scores, b.scores)


@pytest.mark.parametrize("mode, expected_keys", [("frame", [0, 1, 2, 3, 4, 5, 6]), ("copy", [0, 3, 6]), ("flow", [0, 3, 6])])
def test_key_frame_schedule(networks, cfg, mode, expected_keys):
    detector = VideoDetector(*networks, key_interval=3, mode=mode)
    results, timing = run(detector, moving_frames(7), cfg)
    assert [r.frame_index for r in results] == list(range(7))
    assert [r.frame_index for r in results if r.is_key] == expected_keys
    assert timing.frames == 7 and timing.key_frames == len(expected_keys)
    assert len(timing.key_compute_seconds) + len(timing.other_compute_seconds) == 7
    assert timing.compute_seconds > 0 and timing.compute_fps > 0 and timing.end_to_end_fps <= timing.compute_fps


def test_rerun_restarts_the_schedule(networks, cfg):
    detector = VideoDetector(*networks, key_interval=4, mode="flow")
    first, _ = run(detector, moving_frames(3), cfg)
    second, _ = run(detector, moving_frames(3, seed=1), cfg)
    assert [r.is_key for r in first] == [r.is_key for r in second] == [True, False, False]


def test_copy_mode_reuses_key_detections(networks, cfg):
    detector = VideoDetector(*networks, key_interval=5, mode="copy")
    results, _ = run(detector, moving_frames(5), cfg)
    assert len(results[0].detections.scores) > 0
    for result in results[1:]:
        assert result.detections is results[0].detections


def test_frame_mode_detections_are_in_original_pixels(networks, cfg):
    frames = moving_frames(1)
    detector = VideoDetector(*networks, key_interval=1, mode="frame")
    (result,), _ = run(detector, frames, cfg)
    boxes = result.detections.boxes
    assert len(boxes) > 0
    # DFF clips to the network input, then divides by the resize scale (dff-facts §2.6)
    net_h, net_w, scale = resized_shape(*frames[0].shape[:2], cfg.preprocess.short_side, cfg.preprocess.max_long_side)
    assert scale != 1.0
    assert boxes[:, 0].min() >= 0 and boxes[:, 2].max() <= (net_w - 1) / scale + 1e-4
    assert boxes[:, 1].min() >= 0 and boxes[:, 3].max() <= (net_h - 1) / scale + 1e-4
    assert boxes[:, 2].max() > net_w / 2 / scale  # boxes are in frame pixels, not network pixels


def test_flow_with_identity_propagation_equals_frame_mode(networks, cfg):
    """Static video + zero flow + unit scale: warped key features are the frame's own features."""
    rfcn, flownet = networks
    identity = build_propagator(cfg.model).eval()
    torch.nn.init.zeros_(identity.predict_flow.weight)
    torch.nn.init.zeros_(identity.predict_flow.bias)
    static = moving_frames(1) * 4
    flow_results, _ = run(VideoDetector(rfcn, identity, key_interval=4, mode="flow"), static, cfg)
    frame_results, _ = run(VideoDetector(rfcn, None, key_interval=4, mode="frame"), static, cfg)
    assert [r.is_key for r in flow_results] == [True, False, False, False]
    for flow_result, frame_result in zip(flow_results, frame_results):
        assert same_detections(flow_result.detections, frame_result.detections)


def test_flow_mode_propagates_instead_of_copying(networks, cfg):
    detector = VideoDetector(*networks, key_interval=3, mode="flow")
    results, _ = run(detector, moving_frames(3), cfg)
    assert not same_detections(results[0].detections, results[1].detections)


def test_build_video_detector_uses_config(networks, cfg):
    detector = build_video_detector(cfg, *networks)
    assert detector.key_interval == cfg.video.key_interval and detector.mode == cfg.video.mode


def test_invalid_arguments_are_explained(networks):
    rfcn, flownet = networks
    with pytest.raises(ValueError, match="needs a propagator"):
        VideoDetector(rfcn, None, mode="flow")
    with pytest.raises(ValueError, match="expected one of frame, copy, flow"):
        VideoDetector(rfcn, flownet, mode="fast")
    with pytest.raises(ValueError, match="key_interval=0"):
        VideoDetector(rfcn, flownet, key_interval=0)
    with pytest.raises(ValueError, match=r"one frame \(1, 3, H, W\)"):
        VideoDetector(rfcn, flownet).detect_frame(torch.zeros(2, 3, 32, 32))


def test_a_size_change_starts_a_new_key_interval(networks, cfg):
    detector = VideoDetector(*networks, key_interval=3, mode="flow")
    small, large = moving_frames(2, 90, 120), moving_frames(5, 100, 140)
    results, _ = run(detector, small + large, cfg)
    # frame 2 changes size: a key frame, and the next key comes 3 frames after it
    assert [r.is_key for r in results] == [True, False, True, False, False, True, False]
