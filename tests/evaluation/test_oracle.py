"""oracle mode: the teacher's key-frame features warped by the true motion. On a clip of pure
whole-cell translation it detects exactly what frame mode detects; without true motion the
evaluation stops with the fix; the job runs it end to end."""
from tests.video_fixtures import write_video  # noqa: F401  (PyAV before decord, see tests/video_fixtures.py)

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from semidff.config import TeacherDataConfig
from semidff.data.custom_format import write_custom_dataset
from semidff.data.labeled import load_labeled_dataset
from semidff.data.records import FrameAnnotation, LabeledDataset, LabeledVideo
from semidff.data.synthetic_motion import MotionScene
from semidff.data.true_motion import TrueMotion, motion_path_for
from semidff.evaluation.run import EvaluationError, RunSpec, evaluate_runs, plan_runs, true_motions_for
from semidff.models.rfcn import RFCN
from semidff.models.video_detector import VideoDetector
from semidff.preprocess import normalize_frames

WIDTH, HEIGHT, FRAMES, CELL = 128, 96, 5, 16


BACKGROUND_RGB = 118.0
SHIFTS = [(0, 0), (16, 0), (32, 16), (48, 32), (64, 32)]
"""How far the whole picture has moved in frame t (pixels, whole cells): the camera pans, the
squares stand still in the world."""


class Patchify(nn.Module):
    """Features of each 16x16 block from that block alone (a 16x16 stride-16 conv without bias, on
    the image minus the background's color): exactly shift-equivariant by whole cells, which the
    ResNet is not (zero padding, receptive fields wider than the frame), and exactly 0 on the
    background, which is what warping reads outside the key frame (where the panned-in strip was)."""

    out_channels = 64

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, self.out_channels, kernel_size=CELL, stride=CELL, bias=False)
        background = normalize_frames(np.full((1, 1, 1, 3), BACKGROUND_RGB, dtype=np.uint8))  # as preprocessing computes it
        self.register_buffer("background", background)

    def forward(self, images):
        return torch.relu(self.conv((images - self.background) / 64.0))


def _translation_scene() -> MotionScene:
    """Two cell-aligned textured 32x32 squares on a uniform background, the whole picture panned by
    whole cells (:data:`SHIFTS`): every 16x16 block is all square or all background, nothing
    leaves the frame, and only background enters it."""
    rng = np.random.default_rng(0)
    corners = [(0, 0), (16, 32)]  # top-left pixel of each square in frame 0
    affines = np.zeros((2, FRAMES, 2, 3))
    for layer, (x, y) in enumerate(corners):
        for t, (dx, dy) in enumerate(SHIFTS):
            affines[layer, t] = [[1, 0, x + dx + 15.5], [0, 1, y + dy + 15.5]]  # local (0, 0) is the sprite's center
    center = np.array([(WIDTH - 1) / 2, (HEIGHT - 1) / 2])
    motion = TrueMotion(WIDTH, HEIGHT, camera_center=center + 200 - np.array(SHIFTS, dtype=float),
                        camera_zoom=np.ones(FRAMES), layer_affine=affines, masks=[np.ones((32, 32), bool)] * 2,
                        layer_track=[0, 1], layer_gain=np.ones((2, FRAMES)))
    textures = [rng.uniform(0, 255, size=(32, 32, 3)) for _ in range(2)]
    background = np.full((HEIGHT + 400, WIDTH + 400, 3), BACKGROUND_RGB)
    return MotionScene(motion, background=background, textures=textures, labels=[1, 2], buckets=["", ""])


@pytest.fixture(scope="module")
def translation_clip(tmp_path_factory):
    """The clip as a folder of PNG frames (lossless: decoded frames are the drawn ones) with its sidecar."""
    root = tmp_path_factory.mktemp("oracle")
    folder = root / "clip"
    folder.mkdir()
    scene = _translation_scene()
    frames = []
    for t in range(FRAMES):
        frame, _, objects = scene.render(t)
        Image.fromarray(frame).save(folder / f"{t:06d}.png")
        frames.append(FrameAnnotation(t, objects))
    scene.motion.save(motion_path_for(str(folder)))
    dataset = LabeledDataset(["a", "b", "c"], [LabeledVideo("clip", str(folder), WIDTH, HEIGHT, FRAMES, 25.0, frames)])
    write_custom_dataset(dataset, root / "dataset.json")
    return root


@pytest.fixture(scope="module")
def patch_rfcn():
    torch.manual_seed(0)
    return RFCN(Patchify(), num_classes=3, anchor_scales=(2.0, 4.0, 8.0), post_nms_top_n=64, max_detections=100).eval()


def _load(root) -> LabeledDataset:
    return load_labeled_dataset(TeacherDataConfig(format="custom", path=str(root / "dataset.json")), key="evaluation.data")


def test_oracle_on_whole_cell_translation_detects_what_frame_mode_detects(translation_clip, patch_rfcn):
    dataset = _load(translation_clip)
    runs = [RunSpec("frame", 1), RunSpec("copy", FRAMES), RunSpec("oracle", FRAMES)]
    frame, copy, oracle = evaluate_runs(dataset, runs, patch_rfcn, short_side=HEIGHT, max_long_side=WIDTH)
    for a, b in zip(frame.predictions, oracle.predictions):
        assert a.frame_id == b.frame_id and len(a.boxes) == len(b.boxes) > 0
        np.testing.assert_allclose(b.boxes, a.boxes, atol=1e-3)
        np.testing.assert_allclose(b.scores, a.scores, atol=1e-5)
        assert np.array_equal(a.labels, b.labels)
    assert oracle.map == pytest.approx(frame.map, abs=1e-9)
    # not a vacuous match: reusing the key frame's detections is wrong once the squares have moved
    assert all(a.boxes.shape != b.boxes.shape or not np.allclose(a.boxes, b.boxes)
               for a, b in zip(frame.predictions[1:], copy.predictions[1:]))


def test_oracle_key_frames_are_the_teachers_and_the_flow_is_asked_for_the_right_frames(patch_rfcn):
    scene = _translation_scene()
    asked = []

    def true_flow(t, k, image_hw, feature_hw):
        asked.append((t, k, image_hw, feature_hw))
        return torch.zeros(1, 2, *feature_hw)

    frames = [scene.render(t)[0] for t in range(FRAMES)]
    results, timing = VideoDetector(patch_rfcn, key_interval=2, mode="oracle").run(frames, HEIGHT, WIDTH, true_flow=true_flow)
    assert [r.is_key for r in results] == [True, False, True, False, True] and timing.key_frames == 3
    assert asked == [(1, 0, (HEIGHT, WIDTH), (6, 8)), (3, 2, (HEIGHT, WIDTH), (6, 8))]
    with pytest.raises(ValueError, match="true motion"):
        VideoDetector(patch_rfcn, key_interval=2, mode="oracle").run(frames, HEIGHT, WIDTH)


def test_oracle_without_true_motion_names_the_fix(tmp_path, translation_clip, patch_rfcn):
    assert plan_runs(["frame", "oracle"], [10, 5]) == [RunSpec("frame", 1), RunSpec("oracle", 5), RunSpec("oracle", 10)]
    dataset = _load(translation_clip)
    bare = LabeledDataset(dataset.class_names, [LabeledVideo("bare", str(tmp_path / "bare.mp4"), WIDTH, HEIGHT, FRAMES, 25.0,
                                                            dataset.videos[0].frames)])
    with pytest.raises(EvaluationError, match=r"bare.motion.npz.*generate_motion_dataset.*leave oracle out"):
        true_motions_for(bare)
    with pytest.raises(EvaluationError, match="1 of 1 videos have none"):
        evaluate_runs(bare, [RunSpec("oracle", 2)], patch_rfcn, short_side=HEIGHT, max_long_side=WIDTH)
    wrong = LabeledDataset(dataset.class_names, [LabeledVideo("clip", dataset.videos[0].source, WIDTH + 16, HEIGHT, FRAMES,
                                                             25.0, dataset.videos[0].frames)])
    with pytest.raises(EvaluationError, match="regenerate"):
        true_motions_for(wrong)
