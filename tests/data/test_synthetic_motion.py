"""The VID-like synthetic corpus and its true motion: warping by the stored motion reproduces later
frames, the feature-grid flow is the pixel flow at cell centers, the motion-bucket shares are near
ImageNet VID's, objects are several feature cells wide, labels and sidecars round-trip, determinism."""
import math

import numpy as np
import pytest
import torch

from semidff.data.synthetic_motion import (  # imports PyAV; decord must come after it (see tests/video_fixtures.py)
    MOTION_BUCKET_TARGET,
    generate_motion_dataset,
    motion_bucket_shares,
    motion_scene,
    scene_dataset,
    speed_for_motion_iou,
    mean_shift_iou,
)

import decord  # noqa: E402  (after PyAV)

from semidff.data.custom_format import load_custom_dataset
from semidff.data.true_motion import (
    BACKGROUND,
    TrueMotionError,
    load_true_motion,
    motion_path_for,
    true_backward_flow,
    true_feature_flow,
)
from semidff.ops.warp import warp_features
from semidff.training.flow_diagnostics import flow_error_sums, flow_metrics

WIDTH, HEIGHT = 256, 160  # the demo's frame size (jobs/configs/tiny.yaml keeps it: short side 160)


def _warp_error(scene, t: int, k: int):
    """|frame k warped by the true flow (brightness drift undone) - frame t| on the pixels where the
    content is visible in both and all four bilinear taps in frame k lie on the same layer (a tap
    across a layer edge mixes two surfaces), with the share of such pixels, and the same for zero flow."""
    frame_t, _, _ = scene.render(t)
    frame_k, owner_k, _ = scene.render(k)
    true = true_backward_flow(scene.motion, t, k)
    image = torch.from_numpy(frame_k).permute(2, 0, 1)[None].double()
    flow = torch.from_numpy(true.flow).permute(2, 0, 1)[None].double()
    warped = warp_features(image, flow)[0].permute(1, 2, 0).numpy()
    zero = frame_k.astype(np.float64)
    gain = np.ones((HEIGHT, WIDTH))
    for layer in range(scene.motion.num_layers):
        gain[true.layer == layer] = scene.motion.layer_gain[layer, t] / scene.motion.layer_gain[layer, k]
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    x, y = xs + true.flow[..., 0], ys + true.flow[..., 1]
    same_layer = np.ones((HEIGHT, WIDTH), dtype=bool)
    for dx in (0, 1):
        for dy in (0, 1):
            col = np.clip(np.floor(x).astype(int) + dx, 0, WIDTH - 1)
            row = np.clip(np.floor(y).astype(int) + dy, 0, HEIGHT - 1)
            same_layer &= owner_k[row, col] == true.layer
    unclipped = (frame_t.min(axis=-1) > 0) & (frame_t.max(axis=-1) < 255)  # the gain is undone only below saturation
    valid = true.visible & same_layer & unclipped
    error = np.abs(warped * gain[..., None] - frame_t)[valid]
    return error, valid.mean(), np.abs(zero - frame_t)[valid]


@pytest.mark.parametrize("video, t, k", [(0, 10, 0), (1, 29, 20), (2, 59, 50), (3, 40, 39), (5, 19, 10)])
def test_warping_frame_k_by_the_true_motion_reproduces_frame_t_where_nothing_is_occluded(video, t, k):
    # Tolerance (8-bit levels, on the rendered frames before encoding): mean <= 1, 99th percentile <= 8.
    # What is left is the textures' bilinear resampling, done once when drawing frame k and again when warping it.
    scene = motion_scene(3, video, num_frames=60, width=WIDTH, height=HEIGHT)
    error, share, zero_flow_error = _warp_error(scene, t, k)
    assert share > 0.7  # most of the frame is visible in both frames
    assert error.mean() <= 1.0
    assert np.percentile(error, 99) <= 8.0
    assert zero_flow_error.mean() > 3 * error.mean() + 1  # the frames did change: copying frame k is far worse


def test_flow_follows_the_warp_convention_and_the_object_mask_marks_annotated_objects():
    scene = motion_scene(0, 0, num_frames=30, width=WIDTH, height=HEIGHT)
    frame, owner, objects = scene.render(12)
    true = true_backward_flow(scene.motion, 12, 12)
    assert np.abs(true.flow).max() < 1e-9 and true.visible.all()  # a frame to itself: zero flow everywhere
    assert np.array_equal(true.layer, owner)
    tracked = [layer for layer, track in enumerate(scene.motion.layer_track) if track >= 0]
    assert np.array_equal(true.object_mask, np.isin(owner, tracked))
    # the content at (x, y) of frame t sits at (x + u, y + v) of frame k: an object's visible pixels land on it
    flow = true_backward_flow(scene.motion, 12, 4)
    for obj in objects:
        on = (flow.layer == obj.track_id) & flow.visible
        ys, xs = np.nonzero(on)
        landed = scene.render(4)[1][np.rint(ys + flow.flow[ys, xs, 1]).astype(int), np.rint(xs + flow.flow[ys, xs, 0]).astype(int)]
        assert (landed == obj.track_id).mean() > 0.98


def test_feature_grid_flow_is_the_pixel_flow_at_cell_centers_in_cells_and_feeds_the_flow_diagnostics():
    scene = motion_scene(0, 1, num_frames=30, width=WIDTH, height=HEIGHT)
    pixels = true_backward_flow(scene.motion, 20, 10)
    cells = true_feature_flow(scene.motion, 20, 10)
    assert cells.flow.shape == (10, 16, 2) and cells.object_mask.shape == (10, 16)
    # cell (i, j) is the pixels 16 i .. 16 i + 15; its center 16 j + 7.5 lies between pixels: the flow
    # there is the pixel flow's (the motion is smooth within a layer), its layer that of a pixel beside it
    inside = np.zeros((10, 16), dtype=bool)
    for i in range(10):
        for j in range(16):
            block = pixels.layer[16 * i + 7 : 16 * i + 9, 16 * j + 7 : 16 * j + 9]
            if (block == block[0, 0]).all():
                inside[i, j] = True
                expected = pixels.flow[16 * i + 7 : 16 * i + 9, 16 * j + 7 : 16 * j + 9].mean(axis=(0, 1)) / 16
                assert np.allclose(cells.flow[i, j], expected, atol=1e-3)
                assert cells.object_mask[i, j] == pixels.object_mask[16 * i + 7, 16 * j + 7]
    assert inside.mean() > 0.8
    flow, mask = cells.as_tensors()
    assert flow.shape == (1, 2, 10, 16) and mask.shape == (1, 10, 16) and mask.dtype == torch.bool
    metrics = flow_metrics(flow_error_sums(flow, flow, mask))
    assert metrics["flow/epe_object"] == 0 and metrics["flow/epe_zero_object"] > 0.1  # the objects move
    # a resized network input: the same motion in its pixels (half size: half the cells' flow)
    half = true_feature_flow(scene.motion, 20, 10, height=HEIGHT // 2, width=WIDTH // 2)
    assert half.flow.shape == (5, 8, 2)


def test_motion_bucket_shares_of_a_corpus_are_near_imagenet_vid():
    # 40 videos, ~4000 boxes of ~80 objects: the shares of one corpus scatter by a few points around the target
    shares = motion_bucket_shares(scene_dataset(seed=0, num_videos=40, width=WIDTH, height=HEIGHT))
    for bucket, target in MOTION_BUCKET_TARGET.items():
        assert abs(shares[bucket] - target) < 0.05, (bucket, shares)


def test_a_steady_translation_has_the_motion_iou_its_speed_was_chosen_for():
    for target in (0.95, 0.8, 0.5):
        speed = speed_for_motion_iou(target, 64, 48, heading=0.3)
        velocity = (speed * math.cos(0.3), speed * math.sin(0.3))
        assert mean_shift_iou(64, 48, velocity) == pytest.approx(target, abs=1e-6)


def test_objects_are_several_feature_cells_wide():
    dataset = scene_dataset(seed=0, num_videos=6, num_frames=20, width=WIDTH, height=HEIGHT)
    sides = np.array([max(o.box[2] - o.box[0] + 1, o.box[3] - o.box[1] + 1) for v in dataset.videos for f in v.frames
                      for o in f.objects if not o.occluded and 0 < o.box[0] and o.box[2] < WIDTH - 1 and 0 < o.box[1] and o.box[3] < HEIGHT - 1])
    assert len(sides) > 50
    assert np.median(sides) / 16 >= 3.5  # the old corpus: about 2.4 cells
    assert sides.min() / 16 >= 2.0


def test_same_seed_same_scene_other_seed_other_scene():
    a, b, c = motion_scene(5, 2, 12), motion_scene(5, 2, 12), motion_scene(6, 2, 12)
    assert np.array_equal(a.render(7)[0], b.render(7)[0])
    assert not np.array_equal(a.render(7)[0], c.render(7)[0])


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("motion")
    return folder, generate_motion_dataset(folder, num_videos=2, num_frames=12, width=WIDTH, height=HEIGHT, seed=4)


def test_labels_and_true_motion_round_trip_through_the_files(generated):
    folder, dataset = generated
    assert load_custom_dataset(folder / "dataset.json") == dataset
    assert dataset.num_objects() > 0 and all(len(v.frames) == 12 for v in dataset.videos)
    for index, video in enumerate(dataset.videos):
        scene = motion_scene(4, index, 12, WIDTH, HEIGHT)
        path = motion_path_for(video.source)
        assert path.endswith(f"videos/motion_{index:03d}.motion.npz")
        motion = load_true_motion(path)
        for name in ("camera_center", "camera_zoom", "layer_affine", "layer_track", "layer_gain"):
            assert np.array_equal(getattr(motion, name), getattr(scene.motion, name)), name
        assert all(np.array_equal(m, n) for m, n in zip(motion.masks, scene.motion.masks))
        assert [f.objects for f in video.frames] == [scene.render(t)[2] for t in range(12)]
        reader = decord.VideoReader(video.source, ctx=decord.cpu(0), num_threads=1)
        decoded = reader.get_batch([6]).asnumpy()[0].astype(np.int16)
        assert np.abs(decoded - scene.render(6)[0]).mean() < 4  # H.264 at crf 18 keeps the drawn frame


def test_sidecar_names_and_errors(tmp_path):
    assert motion_path_for("/data/v/a.mp4") == "/data/v/a.motion.npz"
    assert motion_path_for("file:///data/v/a.webm") == "/data/v/a.motion.npz"
    assert motion_path_for("/data/frames/clip_1/") == "/data/frames/clip_1.motion.npz"
    with pytest.raises(TrueMotionError, match="no true-motion file"):
        load_true_motion(tmp_path / "none.motion.npz")
    (tmp_path / "bad.motion.npz").write_bytes(b"not a zip")
    with pytest.raises(TrueMotionError, match="bad.motion.npz: not a readable"):
        load_true_motion(tmp_path / "bad.motion.npz")
    assert BACKGROUND == -1
