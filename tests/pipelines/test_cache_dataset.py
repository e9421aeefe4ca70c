"""The cache reader on a local Ray: one row per (key, current) pair in the offset range, the split by
video, projection, values equal to what was stored, and damaged files or mismatches named."""
import numpy as np
import pytest

import ray
from pipelines.cache_dataset import PAIR_COLUMNS, pair_dataset
from semidff.cache import CacheExpectation, CacheFileError, CacheMismatchError, is_validation_video
from semidff.cache.jpeg import decode_jpeg
from semidff.cache.split import video_hash_fraction
from tests.cache.synthetic_cache import TEACHER_SHA, cache_info, teacher_clip, tiny_config, write_cache

CLIPS = [
    teacher_clip("v0", 0, [0, 3], num_rois=[6, 3], seed=1),
    teacher_clip("v0", 10, [2, 7], num_rois=[4, 8], seed=2),
    teacher_clip("v0", 20, [5, 9], num_rois=[2, 5], seed=3),
    teacher_clip("v1", 0, [1, 4], size=(80, 112), seed=4),
    teacher_clip("v2", 5, [0, 9], seed=5),
]
BY_ID = {clip.ids["clip_id"]: clip for clip in CLIPS}
pytestmark = pytest.mark.slow  # a local Ray and several datasets: ~20-40 s on 2 cores


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def cache(tmp_path_factory, local_ray):
    directory = tmp_path_factory.mktemp("reader") / "cache"
    paths = write_cache(directory, cache_info("fp16"), CLIPS, failed=[("v3:-1", "v3", "missing file")], clips_per_file=2)
    return str(directory), paths


def expected_pairs(low, high, videos=None):
    return sorted(
        (clip.ids["clip_id"], cur, d)
        for clip in CLIPS
        for cur, d in zip(clip.ids["current_indices"], clip.ids["offsets"])
        if low <= d <= high and (videos is None or clip.ids["video_id"] in videos)
    )


def test_one_row_per_pair_in_the_offset_range_with_the_stored_values(cache):
    directory, _ = cache
    rows = pair_dataset(directory, offset_range=(1, 5), expected=CacheExpectation.for_training(tiny_config(), TEACHER_SHA, (1, 5))).take_all()
    assert sorted((r["clip_id"], r["cur_index"], r["offset"]) for r in rows) == expected_pairs(1, 5)
    assert all(set(row) == set(PAIR_COLUMNS) for row in rows)
    for row in rows:
        clip = BY_ID[row["clip_id"]]
        j = clip.ids["current_indices"].index(row["cur_index"])
        targets = clip.current_targets[j]
        assert row["video_id"] == clip.ids["video_id"] and row["key_index"] == clip.ids["key_index"]
        assert row["offset"] == row["cur_index"] - row["key_index"]
        assert row["key_frame"].dtype == np.uint8 and row["key_frame"].shape == (clip.height, clip.width, 3)
        np.testing.assert_array_equal(row["key_frame"], decode_jpeg(clip.key_jpeg))
        np.testing.assert_array_equal(row["cur_frame"], decode_jpeg(clip.current_jpegs[j]))
        key = clip.key_features if clip.key_features is not None else clip.current_targets[clip.ids["offsets"].index(0)].features
        close = dict(rtol=2.0**-11, atol=2.0**-24)  # fp16 cache
        np.testing.assert_allclose(row["key_features"], key.numpy(), **close)
        np.testing.assert_allclose(row["cur_features"], targets.features.numpy(), **close)
        for name in ("rpn_cls_logits", "rpn_deltas", "cls_logits", "box_deltas"):
            assert row[name].dtype == np.float32
            np.testing.assert_allclose(row[name], getattr(targets, name).numpy(), **close)
        np.testing.assert_array_equal(row["rois"], targets.rois.numpy())
    assert {row["rois"].shape[0] for row in rows} == {3, 4, 2, 6}  # R varies between rows
    # Offset 0 pairs a key with itself: the same features on both sides.
    zero = [r for r in pair_dataset(directory, offset_range=(0, 0)).take_all()]
    assert sorted(r["clip_id"] for r in zero) == ["v0:0", "v2:5"]
    for row in zero:
        np.testing.assert_array_equal(row["key_features"], row["cur_features"])
        np.testing.assert_array_equal(row["key_frame"], row["cur_frame"])


def test_projection_and_variable_shapes_in_numpy_batches(cache):
    directory, _ = cache
    dataset = pair_dataset(directory, offset_range=(0, 9), columns=["rois", "offset", "clip_id", "key_frame"])
    batches = list(dataset.iter_batches(batch_size=4, batch_format="numpy"))
    assert all(list(batch) == ["clip_id", "offset", "key_frame", "rois"] for batch in batches)  # PAIR_COLUMNS order
    assert sum(len(b["offset"]) for b in batches) == 10
    frames = [frame for batch in batches for frame in batch["key_frame"]]
    assert {frame.shape for frame in frames} == {(48, 64, 3), (80, 112, 3)}
    with pytest.raises(ValueError, match="unknown key_feature; choose from clip_id"):
        pair_dataset(directory, offset_range=(0, 9), columns=["key_feature"])


def test_split_by_video(cache):
    directory, _ = cache
    fractions = sorted(video_hash_fraction(v) for v in ("v0", "v1", "v2"))
    fraction = (fractions[0] + fractions[1]) / 2  # exactly one video held out
    held = {v for v in ("v0", "v1", "v2") if is_validation_video(v, fraction)}
    assert len(held) == 1
    val = pair_dataset(directory, offset_range=(0, 9), split="val", validation_fraction=fraction, columns=["clip_id", "cur_index", "offset"]).take_all()
    train = pair_dataset(directory, offset_range=(0, 9), split="train", validation_fraction=fraction, columns=["clip_id", "cur_index", "offset"]).take_all()
    assert sorted((r["clip_id"], r["cur_index"], r["offset"]) for r in val) == expected_pairs(0, 9, held)
    assert sorted((r["clip_id"], r["cur_index"], r["offset"]) for r in train) == expected_pairs(0, 9, {"v0", "v1", "v2"} - held)


def test_mismatches_and_bad_arguments_stop_before_reading(cache):
    directory, _ = cache
    with pytest.raises(CacheMismatchError, match="teacher_sha256: the cache has 'abab"):
        pair_dataset(directory, offset_range=(1, 9), expected=CacheExpectation.for_training(tiny_config(), "cd" * 32, (1, 9)))
    with pytest.raises(CacheMismatchError, match=r"expected to cover \[1, 12\]"):
        pair_dataset(directory, offset_range=(1, 12), expected=CacheExpectation(offset_range=(1, 12)))
    with pytest.raises(ValueError, match="0 <= lo <= hi"):
        pair_dataset(directory, offset_range=(5, 1))
    with pytest.raises(ValueError, match="selects no video"):
        pair_dataset(directory, offset_range=(0, 9), split="val")


def test_damaged_files_are_named(tmp_path, local_ray):
    directory = tmp_path / "cache"
    paths = write_cache(directory, cache_info("fp16"), CLIPS, clips_per_file=2)
    data = open(paths[0], "rb").read()
    # Damage inside the data pages (the footer still reads): found by the read task, which names the file.
    with open(paths[0], "r+b") as handle:
        handle.seek(len(data) // 3)
        handle.write(b"\x00" * 4000)
    with pytest.raises(Exception) as error:
        pair_dataset(str(directory), offset_range=(0, 9)).take_all()
    assert paths[0] in str(error.value) and "corrupt Parquet file" in str(error.value)
    # A truncated file (no footer): refused by name before any task runs.
    with open(paths[1], "wb") as handle:
        handle.write(data[:1000])
    with pytest.raises(CacheFileError, match=f"{paths[1]}: corrupt or truncated Parquet file"):
        pair_dataset(str(directory), offset_range=(0, 9))
