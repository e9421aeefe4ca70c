"""The synthetic labeled videos: real decodable files, exact boxes, determinism, and real motion."""
import json

import numpy as np
import pytest
import torch

from semidff.data.synthetic import (  # imports PyAV; decord must come after it (see tests/video_fixtures.py)
    CLASS_NAMES,
    DATASET_FILE,
    Sprite,
    SyntheticScene,
    generate_synthetic_dataset,
    synthetic_scene,
)

import decord  # noqa: E402  (after PyAV)

from semidff.data.custom_format import load_custom_dataset, validate_custom_dataset
from semidff.ops.boxes import box_iou

NUM_VIDEOS, NUM_FRAMES, WIDTH, HEIGHT, SEED = 3, 30, 256, 160, 0


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    dataset = generate_synthetic_dataset(folder, num_videos=NUM_VIDEOS, num_frames=NUM_FRAMES, width=WIDTH, height=HEIGHT, seed=SEED)
    return folder, dataset


def _decode(path) -> np.ndarray:
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def test_files_decode_to_the_declared_frames_and_match_the_json(generated):
    folder, dataset = generated
    assert dataset.class_names == list(CLASS_NAMES[:3])
    assert {o.label for v in dataset.videos for f in v.frames for o in f.objects} == {1, 2, 3}  # every class appears
    for video in dataset.videos:
        assert _decode(video.source).shape == (NUM_FRAMES, HEIGHT, WIDTH, 3)
        assert [f.frame_index for f in video.frames] == list(range(NUM_FRAMES))  # every frame annotated
    assert validate_custom_dataset(folder / DATASET_FILE, probe=True) == []  # declared size and frame count = decoded
    assert load_custom_dataset(folder / DATASET_FILE) == dataset
    assert json.loads((folder / DATASET_FILE).read_text())["videos"][0]["file"] == "videos/synthetic_000.mp4"


def test_boxes_match_the_decoded_pixels(generated):
    _, dataset = generated
    checked = 0
    for index, video in enumerate(dataset.videos):
        scene = synthetic_scene(SEED, index, NUM_FRAMES, WIDTH, HEIGHT, num_classes=3)
        decoded = _decode(video.source).astype(np.int16)
        for t in range(0, NUM_FRAMES, 3):
            frame = video.frame(t)
            # frame t of the file is the frame drawn at t, not a neighbour
            errors = [np.abs(decoded[t] - scene.render(u)[0]).mean() for u in (t - 1, t, t + 1) if 0 <= u < NUM_FRAMES]
            assert min(errors) == np.abs(decoded[t] - scene.render(t)[0]).mean()
            assert frame.objects == scene.render(t)[1]
            # pixels that differ from the background alone: the objects, blurred by the codec
            moved = np.abs(decoded[t] - scene.background_frame(t)).sum(axis=-1) > 60
            covered = np.zeros_like(moved)
            for x1, y1, x2, y2 in frame.boxes().astype(int):
                covered[max(y1 - 2, 0) : y2 + 3, max(x1 - 2, 0) : x2 + 3] = True
            assert moved[~covered].mean() < 1e-3  # nothing drawn outside the boxes
            for obj in frame.objects:
                others = [o.box for o in frame.objects if o is not obj]
                if any(_near(obj.box, box, 4) for box in others):
                    continue  # the pixels of a neighbour would blur the extent
                x1, y1, x2, y2 = map(int, obj.box)
                top, left = max(y1 - 3, 0), max(x1 - 3, 0)
                window = moved[top : y2 + 4, left : x2 + 4]
                rows, cols = np.flatnonzero(window.any(axis=1)), np.flatnonzero(window.any(axis=0))
                seen = (left + cols[0], top + rows[0], left + cols[-1], top + rows[-1])
                # 3 px: chroma is stored at half resolution, and x264 rings around the noisy texture
                assert np.abs(np.subtract(seen, obj.box)).max() <= 3, (video.video_id, t, obj, seen)
                checked += 1
    assert checked >= 20


def _near(a, b, margin):
    return not (a[2] + margin < b[0] or b[2] + margin < a[0] or a[3] + margin < b[1] or b[3] + margin < a[1])


def test_objects_really_move(generated):
    """What makes `copy` (reuse the key frame's boxes) worse than `frame`: boxes 10 frames apart overlap little."""
    _, dataset = generated
    ious = []
    for video in dataset.videos:
        for boxes in video.tracks().values():
            pairs = [(boxes[t], boxes[t + 10]) for t in boxes if t + 10 in boxes]
            a, b = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
            ious.extend(box_iou(a, b).diagonal().tolist())
    assert len(ious) >= 50
    assert np.mean(ious) < 0.6

    ratios = []
    for index in range(NUM_VIDEOS):
        scene = synthetic_scene(SEED, index, NUM_FRAMES, WIDTH, HEIGHT)
        world = scene.positions + scene.camera[None]  # (objects, frames, 2): motion without the pan
        speed = np.linalg.norm(world[:, 5:] - world[:, :-5], axis=-1) / 5  # px/frame over 5 frames
        assert (speed.max(axis=1) - speed.min(axis=1) > 0.5).all()  # every object speeds up or slows down ...
        ratios.extend(speed.max(axis=1) / np.maximum(speed.min(axis=1), 0.1))
        assert len(np.unique(scene.camera, axis=0)) > NUM_FRAMES // 3  # the camera pans
    assert np.mean(ratios) > 1.5  # ... and not by a little


def test_same_seed_same_video_other_seed_other_video(tmp_path):
    first = generate_synthetic_dataset(tmp_path / "a", num_videos=1, num_frames=4, width=64, height=48, seed=5)
    again = generate_synthetic_dataset(tmp_path / "b", num_videos=1, num_frames=4, width=64, height=48, seed=5)
    other = generate_synthetic_dataset(tmp_path / "c", num_videos=1, num_frames=4, width=64, height=48, seed=6)
    assert (tmp_path / "a" / DATASET_FILE).read_text() == (tmp_path / "b" / DATASET_FILE).read_text()
    assert np.array_equal(_decode(first.videos[0].source), _decode(again.videos[0].source))
    assert not np.array_equal(_decode(first.videos[0].source), _decode(other.videos[0].source))

    scene = synthetic_scene(5, 0, 4, 64, 48)
    assert np.array_equal(scene.render(3)[0], synthetic_scene(5, 0, 4, 64, 48).render(3)[0])
    assert not np.array_equal(scene.background, synthetic_scene(5, 1, 4, 64, 48).background)  # videos differ


def test_box_is_what_is_visible_clipped_and_uncovered():
    """Hand-placed square sprites: clipping at the edge, a later sprite hiding part of an earlier
    one, and a sliver too thin to annotate."""
    square = lambda label, side: Sprite(label, np.full((side, side, 3), 50 * label, np.uint8), np.ones((side, side), bool))  # noqa: E731
    positions = np.array([
        [[-3, 5]],   # 10 x 10 at x = -3: columns 0..6 visible
        [[4, 8]],    # 6 x 6 over the first one's lower right corner
        [[37, 20]],  # 10 x 10 at x = 37 in a 40 px wide frame: 3 columns visible, below MIN_VISIBLE_SIDE
    ])
    scene = SyntheticScene(
        background=np.zeros((30, 40, 3), np.uint8), camera=np.zeros((1, 2), np.int64),
        sprites=[square(1, 10), square(2, 6), square(3, 10)], positions=positions, width=40, height=30,
    )
    frame, objects = scene.render(0)
    assert [(o.track_id, o.label, o.box, o.occluded) for o in objects] == [
        (0, 1, (0.0, 5.0, 6.0, 14.0), True),  # x = 4..6 of rows 8..13 hidden, but rows 5..14 and x = 0..3 still show
        (1, 2, (4.0, 8.0, 9.0, 13.0), False),
    ]
    assert frame[5, 0].tolist() == [50] * 3 and frame[8, 4].tolist() == [100] * 3 and frame[20, 38].tolist() == [150] * 3


def test_odd_sizes_are_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="must be even.*use 256x160"):
        generate_synthetic_dataset(tmp_path, width=255, height=160)
