"""Cache rows through a real Parquet file and back, for every precision: what goes in comes out
(exactly, or within the precision's bound), RoIs always exactly, offset 0 stored once."""
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from semidff.cache.format import (
    CACHE_SCHEMA,
    BlobLayout,
    current_features_of,
    decode_blob,
    failed_clip_row,
    image_targets_of,
    key_features_of,
    pack_clip_row,
    soft_targets_of,
)
from semidff.cache.info import CacheFileError
from semidff.cache.jpeg import decode_jpeg
from semidff.cache.quantize import int8_error_bound
from tests.cache.synthetic_cache import cache_info, teacher_clip, write_cache

SOFT = ("rpn_cls_logits", "rpn_deltas", "cls_logits", "box_deltas")


def read_rows(paths):
    return [row for path in paths for row in pq.read_table(path).to_pylist()]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_round_trip_of_every_precision(tmp_path, precision):
    info = cache_info(precision)
    clips = [teacher_clip("v0", 10, [2, 5], num_rois=[6, 3], seed=1), teacher_clip("v1", 0, [0, 4], size=(80, 112), seed=2)]
    rows = read_rows(write_cache(tmp_path, info, clips))
    layout = BlobLayout.of(info)
    assert [r["clip_id"] for r in rows] == ["v0:10", "v1:0"]
    for clip, row in zip(clips, rows):
        assert row["status"] == "ok" and row["current_indices"] == clip.ids["current_indices"] and row["offsets"] == clip.ids["offsets"]
        assert (row["height"], row["width"]) == (clip.height, clip.width)
        np.testing.assert_array_equal(decode_jpeg(row["key_jpeg"]), decode_jpeg(clip.key_jpeg))
        key = clip.key_features if clip.key_features is not None else clip.current_targets[0].features
        pairs = [(key_features_of(row, layout), key)] + [(current_features_of(row, j, layout), t.features) for j, t in enumerate(clip.current_targets)]
        for stored, original in pairs:
            original = original.numpy()
            assert stored.dtype == np.float32 and stored.shape == original.shape
            if precision == "fp32":
                np.testing.assert_array_equal(stored, original)
            elif precision == "fp16":
                np.testing.assert_allclose(stored, original, rtol=2.0**-11, atol=2.0**-24)
            else:
                bound = int8_error_bound(np.abs(original).reshape(64, -1).max(axis=1) / 127)
                assert (np.abs(stored - original) <= bound[:, None, None] + 1e-7).all()
        for j, targets in enumerate(clip.current_targets):
            stored = soft_targets_of(row, j, layout)
            np.testing.assert_array_equal(stored["rois"], targets.rois.numpy())  # fp32 always: x.25 above 600 px kept
            for name in SOFT:
                original = getattr(targets, name).numpy()
                assert stored[name].dtype == np.float32 and stored[name].shape == original.shape
                if precision == "fp32":
                    np.testing.assert_array_equal(stored[name], original)
                else:  # fp16 soft targets in fp16 and int8 caches
                    np.testing.assert_allclose(stored[name], original, rtol=2.0**-11, atol=2.0**-24)
            as_targets = image_targets_of(row, j, layout)
            assert isinstance(as_targets.features, torch.Tensor) and as_targets.rois.shape == (targets.rois.shape[0], 4)


def test_offset_zero_stores_the_key_once(tmp_path):
    info = cache_info("fp32")
    clip = teacher_clip("v0", 3, [0, 6], seed=4)
    row = read_rows(write_cache(tmp_path, info, [clip]))[0]
    assert row["key_from_current"] == 0 and row["key_features"] == b""
    np.testing.assert_array_equal(key_features_of(row, BlobLayout.of(info)), clip.current_targets[0].features.numpy())


def test_failed_rows_and_damaged_blobs(tmp_path):
    info = cache_info("int8")
    rows = read_rows(write_cache(tmp_path, info, [], failed=[("v9:-1", "v9", "missing file")]))
    assert rows[0]["status"] == "error" and rows[0]["reason"] == "missing file" and rows[0]["current_jpegs"] == []
    assert set(rows[0]) == set(CACHE_SCHEMA.names)
    with pytest.raises(CacheFileError, match="clip x key_features: 10 bytes, expected 12 for shape"):
        decode_blob(b"0" * 10, np.float32, (3,), "clip x key_features")
    assert failed_clip_row(dict(clip_id="a:1", video_id="a", key_index=1, current_indices=[2], offsets=[1]), "decode failed", "m")["offsets"] == [1]


def test_non_finite_outputs_are_refused():
    info = cache_info("fp16")
    clip = teacher_clip("v0", 0, [3])
    clip.current_targets[0].cls_logits[0, 0] = float("inf")
    with pytest.raises(ValueError, match="cls_logits holds non-finite"):
        pack_clip_row(clip, info)
    clip = teacher_clip("v0", 0, [3])
    clip.current_targets[0].features[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        pack_clip_row(clip, info)
