"""Stage 1 data (semidff/training/teacher_data.py): flip and scale geometry, order and sharding,
the annotation table, and real decoding of synthetic H.264 videos and PNG frame folders."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from semidff.config import TeacherDataConfig
from semidff.data.labeled import load_labeled_dataset
from semidff.data.records import FrameAnnotation, LabeledDataset, LabeledVideo, ObjectAnnotation
from semidff.data.synthetic import generate_synthetic_dataset, synthetic_scene
from semidff.preprocess import PIXEL_MEANS_RGB
from semidff.training.teacher_data import (
    FrameReadError,
    batches_per_epoch,
    collate,
    epoch_flips,
    epoch_order,
    flip_horizontal,
    iterate_batches,
    labeled_frames,
    load_batch,
    read_frames,
    scale_boxes,
    shard_for_rank,
    training_images,
)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """2 real H.264 videos of 12 frames at 128x96 (every frame annotated)."""
    folder = tmp_path_factory.mktemp("synthetic")
    dataset = generate_synthetic_dataset(folder, num_videos=2, num_frames=12, width=128, height=96, seed=0)
    return folder, dataset


# --------------------------------------------------------------------------------------------
# geometry


def test_flip_uses_the_inclusive_pixel_convention():
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    boxes = np.array([[0, 1, 2, 3], [5, 0, 5, 0]], dtype=np.float32)
    flipped_image, flipped = flip_horizontal(image, boxes)
    # W = 6: x1' = 5 - x2, x2' = 5 - x1; y unchanged; a one-pixel box at x = 5 lands on x = 0
    np.testing.assert_array_equal(flipped, [[3, 1, 5, 3], [0, 0, 0, 0]])
    np.testing.assert_array_equal(flipped_image[:, 0], image[:, 5])
    np.testing.assert_array_equal(flipped_image[2, 4], image[2, 1])
    # the pixels a box covers are the mirrored pixels of the original box
    np.testing.assert_array_equal(flipped_image[1:4, 3:6], image[1:4, 0:3][:, ::-1])
    again_image, again = flip_horizontal(flipped_image, flipped)
    np.testing.assert_array_equal(again, boxes)
    np.testing.assert_array_equal(again_image, image)
    assert boxes[0, 0] == 0  # the input is not modified


def test_scale_boxes_multiplies_corners_and_clips_to_the_resized_frame():
    boxes = np.array([[10, 20, 30, 40], [0, 0, 127, 95]], dtype=np.float32)
    scaled = scale_boxes(boxes, 1.5, height=144, width=192)
    np.testing.assert_allclose(scaled, [[15, 30, 45, 60], [0, 0, 190.5, 142.5]])
    clipped = scale_boxes(np.array([[0, 0, 127, 95]], np.float32), 2.0, height=190, width=254)
    np.testing.assert_allclose(clipped, [[0, 0, 253, 189]])


# --------------------------------------------------------------------------------------------
# order, sharding, flips


def test_epoch_order_is_a_deterministic_permutation_that_changes_per_epoch():
    first = epoch_order(50, seed=3, epoch=0)
    np.testing.assert_array_equal(np.sort(first), np.arange(50))
    np.testing.assert_array_equal(first, epoch_order(50, seed=3, epoch=0))
    assert not np.array_equal(first, epoch_order(50, seed=3, epoch=1))
    assert not np.array_equal(first, epoch_order(50, seed=4, epoch=0))


def test_shards_are_disjoint_and_complete():
    order = epoch_order(12, seed=0, epoch=5)
    shards = [shard_for_rank(order, rank, 3) for rank in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]
    merged = np.concatenate(shards)
    assert len(set(merged.tolist())) == 12  # disjoint ...
    np.testing.assert_array_equal(np.sort(merged), np.arange(12))  # ... and complete


def test_uneven_shards_repeat_fewer_than_world_size_samples_so_every_rank_has_as_many():
    order = epoch_order(7, seed=0, epoch=0)
    shards = [shard_for_rank(order, rank, 2) for rank in range(2)]
    assert [len(s) for s in shards] == [4, 4]
    merged = np.concatenate(shards)
    np.testing.assert_array_equal(np.unique(merged), np.arange(7))
    assert len(merged) - len(np.unique(merged)) == 1  # one sample seen twice
    assert shards[1][-1] == order[0]  # the cyclic extension starts over at the first sample
    # fewer samples than ranks: every rank still gets one
    assert [shard_for_rank(np.array([4]), r, 3).tolist() for r in range(3)] == [[4], [4], [4]]
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        shard_for_rank(order, 2, 2)


def test_batches_per_epoch_counts_the_partial_last_batch():
    assert batches_per_epoch(12, world_size=3, batch_size=2) == 2
    assert batches_per_epoch(7, world_size=2, batch_size=3) == 2  # 4 samples per rank: 3 + 1
    assert batches_per_epoch(24, world_size=1, batch_size=1) == 24


def test_flips_are_about_half_and_deterministic():
    flips = epoch_flips(2000, seed=0, epoch=2)
    assert flips.dtype == bool and 900 < flips.sum() < 1100
    np.testing.assert_array_equal(flips, epoch_flips(2000, seed=0, epoch=2))
    assert not np.array_equal(flips, epoch_flips(2000, seed=0, epoch=3))


# --------------------------------------------------------------------------------------------
# annotation table


def test_labeled_frames_skips_frames_without_objects_and_keeps_boxes_per_sample():
    box_a, box_b = (1.0, 2.0, 10.0, 12.0), (5.0, 5.0, 8.0, 9.0)
    dataset = LabeledDataset(["a", "b"], [
        LabeledVideo("v0", "/data/v0.mp4", 64, 48, 5, 25.0, [
            FrameAnnotation(0, [ObjectAnnotation(0, 1, box_a), ObjectAnnotation(1, 2, box_b)]),
            FrameAnnotation(1, []),
            FrameAnnotation(3, [ObjectAnnotation(0, 2, box_b)]),
        ]),
        LabeledVideo("v1", "/data/v1", 64, 48, 2, None, [FrameAnnotation(1, [ObjectAnnotation(-1, 1, box_a)])],
                     frame_paths=["/data/v1/0.png", "/data/v1/1.png"]),
    ])
    frames = labeled_frames(dataset)
    assert len(frames) == 3 and frames.skipped_empty == 1
    assert frames.sample_video.tolist() == [0, 0, 1] and frames.sample_frame.tolist() == [0, 3, 1]
    assert frames.image_paths == [None, None, "/data/v1/1.png"]
    boxes, labels = frames.objects(0)
    np.testing.assert_array_equal(boxes, [box_a, box_b])
    assert labels.tolist() == [1, 2]
    boxes, labels = frames.objects(2)
    np.testing.assert_array_equal(boxes, [box_a])
    assert labels.tolist() == [1]


# --------------------------------------------------------------------------------------------
# reading real frames


def test_read_frames_decodes_the_planned_frames_of_a_real_video(synthetic):
    folder, dataset = synthetic
    frames = labeled_frames(dataset)
    samples = [5, 0, 17, 12]  # out of order, both videos
    decoded = read_frames(frames, samples, short_side=96, max_long_side=1000)
    for sample, (image, scale) in zip(samples, decoded):
        assert image.shape == (96, 128, 3) and scale == 1.0
        video, index = int(frames.sample_video[sample]), int(frames.sample_frame[sample])
        scene = synthetic_scene(0, video, 12, 128, 96)
        errors = [np.abs(image.astype(np.int16) - scene.render(t)[0].astype(np.int16)).mean() for t in range(12)]
        assert int(np.argmin(errors)) == index  # the frame that was drawn, not a neighbour


def test_training_images_scale_and_flip_boxes_with_the_image(synthetic):
    _, dataset = synthetic
    frames = labeled_frames(dataset)
    flips = np.zeros(len(frames), dtype=bool)
    flips[1] = True
    plain, flipped = training_images(frames, [0, 1], flips, short_side=48, max_long_side=1000)
    assert plain.image.shape == (48, 64, 3) and plain.scale == 0.5 and not plain.flipped
    np.testing.assert_allclose(plain.boxes, frames.objects(0)[0] * 0.5)
    assert flipped.flipped
    expected = frames.objects(1)[0] * 0.5
    np.testing.assert_allclose(flipped.boxes[:, 0], 63 - expected[:, 2])
    np.testing.assert_allclose(flipped.boxes[:, 2], 63 - expected[:, 0])
    np.testing.assert_allclose(flipped.boxes[:, 1::2], expected[:, 1::2])
    unflipped = training_images(frames, [1], None, short_side=48, max_long_side=1000)[0]
    np.testing.assert_array_equal(flipped.image, unflipped.image[:, ::-1])


def _png_folder_dataset(tmp_path, num_frames=3, width=40, height=30):
    """A custom dataset whose one video is a folder of PNG frames (lossless: exact pixels)."""
    folder = tmp_path / "frames"
    folder.mkdir()
    images = []
    for i in range(num_frames):
        image = np.zeros((height, width, 3), np.uint8)
        image[..., 0] = 10 * i
        image[5:15, 8 + i : 20 + i] = 200
        Image.fromarray(image).save(folder / f"{i:04d}.png")
        images.append(image)
    document = {
        "format": "semidff-video/1",
        "categories": [{"id": 1, "name": "block"}],
        "videos": [{"id": "f", "file": "frames", "width": width, "height": height, "num_frames": num_frames}],
        "annotations": [
            {"video_id": "f", "frame_index": i, "category_id": 1, "bbox": [8 + i, 5, 12, 10], "track_id": 0}
            for i in range(num_frames)
        ],
    }
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(document))
    return path, folder, images


def test_frame_folder_videos_are_read_with_exact_pixels(tmp_path):
    path, _, images = _png_folder_dataset(tmp_path)
    dataset = load_labeled_dataset(TeacherDataConfig(format="custom", path=str(path)))
    frames = labeled_frames(dataset)
    decoded = read_frames(frames, [2, 0], short_side=30, max_long_side=1000)
    np.testing.assert_array_equal(decoded[0][0], images[2])
    np.testing.assert_array_equal(decoded[1][0], images[0])
    np.testing.assert_array_equal(frames.objects(2)[0], [[10, 5, 21, 14]])  # COCO [x, y, w, h] -> inclusive corners


def test_an_unreadable_frame_is_replaced_by_a_spare_and_reported(tmp_path):
    path, folder, _ = _png_folder_dataset(tmp_path)
    frames = labeled_frames(load_labeled_dataset(TeacherDataConfig(format="custom", path=str(path))))
    (folder / "0001.png").write_bytes(b"not a png")
    batch = load_batch(frames, [0, 1], None, 30, 1000, spares=[2])
    assert batch.samples == [0, 2]
    assert len(batch.failures) == 1 and "0001.png" in batch.failures[0]
    with pytest.raises(FrameReadError, match="0001.png"):
        load_batch(frames, [1], None, 30, 1000, spares=[])


def test_collate_pads_to_the_largest_image_with_the_mean_pixel(synthetic):
    _, dataset = synthetic
    frames = labeled_frames(dataset)
    small, large = training_images(frames, [0, 1], None, short_side=48, max_long_side=1000)
    small.image = small.image[:40, :50]
    batch = collate([small, large])
    assert batch.images.shape == (2, 3, 48, 64) and batch.image_size == (48, 64)
    assert torch.all(batch.images[0, :, 40:, :] == 0) and torch.all(batch.images[0, :, :, 50:] == 0)
    expected = torch.from_numpy(large.image).permute(2, 0, 1).float() - torch.tensor(PIXEL_MEANS_RGB).view(3, 1, 1)
    torch.testing.assert_close(batch.images[1], expected)
    assert [b.shape[1] for b in batch.gt_boxes] == [4, 4] and batch.gt_labels[0].dtype == torch.int64


def test_iterate_batches_covers_the_shard_and_skips_finished_batches(synthetic):
    _, dataset = synthetic
    frames = labeled_frames(dataset)
    shard = shard_for_rank(epoch_order(len(frames), 0, 0), 0, 2)  # 12 of 24
    batches = list(iterate_batches(frames, shard, batch_size=5, short_side=48, max_long_side=1000))
    assert [len(b) for b in batches] == [5, 5, 2]
    assert sum((b.samples for b in batches), []) == shard.tolist()
    resumed = list(iterate_batches(frames, shard, batch_size=5, short_side=48, max_long_side=1000, start_batch=2))
    assert [b.samples for b in resumed] == [batches[2].samples]
