"""The typed rows between the stages (semidff.rows): each type's fields are its schema's columns,
and rows go to Arrow (and Parquet) and back unchanged; the clip row decodes to its frames."""
import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semidff.cache.format import BlobLayout, cache_table, failed_clip_row, key_features_of, pack_clip_row
from semidff.rows import (
    CACHE_SCHEMA,
    CLIP_ID_FIELDS,
    CLIP_SCHEMA,
    MANIFEST_SCHEMA,
    PREPARED_SCHEMA,
    CacheRow,
    ClipFailure,
    ClipFrames,
    ClipIds,
    ClipRow,
    ManifestRow,
    PreparedClipRow,
)
from semidff.video.clip_plan import WHOLE_VIDEO, ClipSpec
from tests.cache.synthetic_cache import cache_info, teacher_clip


def through_parquet(table: pa.Table, path) -> pa.Table:
    pq.write_table(table, path)
    return pq.read_table(path)


@pytest.mark.parametrize("row_type", [ManifestRow, ClipRow, PreparedClipRow, CacheRow])
def test_fields_are_the_schema_columns_in_order(row_type):
    assert [f.name for f in dataclasses.fields(row_type)] == list(row_type.__dataclass_fields__) == row_type.SCHEMA.names
    assert row_type.to_arrow([]).schema.equals(row_type.SCHEMA)


def test_schemas_of_the_seams():
    assert PREPARED_SCHEMA.names == CLIP_SCHEMA.names + ["key_jpeg", "current_jpegs"]
    assert list(CLIP_ID_FIELDS) == CLIP_SCHEMA.names[:6] == CACHE_SCHEMA.names[:6]


# ---------------------------------------------------------------------------------------------
# ManifestRow


MANIFEST_ROWS = [
    ManifestRow("0123456789abcdef", "/videos/a.mp4", 12345, 40, 25.0, 64, 48, 1.6, False, "ok"),
    ManifestRow.failed("fedcba9876543210", "/videos/gone.mp4", "missing file", "/videos/gone.mp4: cannot read the file"),
]


def test_manifest_rows_round_trip_through_parquet(tmp_path):
    table = ManifestRow.to_arrow(MANIFEST_ROWS)
    assert table.schema.equals(MANIFEST_SCHEMA)
    back = ManifestRow.from_arrow(through_parquet(table, tmp_path / "manifest.parquet"))
    assert back == MANIFEST_ROWS
    assert back[1].num_frames is None and not back[1].ok and back[0].ok
    assert back[0]["uri"] == "/videos/a.mp4" and back[0].to_row() == back[0].to_dict() == dataclasses.asdict(back[0])
    with pytest.raises(KeyError):
        back[0]["no such column"]


def test_manifest_reading_casts_types_ignores_extra_columns_and_names_a_missing_one():
    table = ManifestRow.to_arrow(MANIFEST_ROWS)
    table = table.set_column(table.schema.get_field_index("num_frames"), "num_frames", table.column("num_frames").cast(pa.int32()))
    table = table.append_column("extra", pa.array(["x", "y"]))
    assert ManifestRow.from_arrow(table) == MANIFEST_ROWS
    with pytest.raises(KeyError):
        ManifestRow.from_arrow(table.drop_columns(["fps"]))


def test_manifest_row_from_a_dict_with_defaults():
    row = ManifestRow.from_dict(dict(MANIFEST_ROWS[0].to_dict(), reason=None) | {"other": 1})
    assert row.reason is None and row.video_id == MANIFEST_ROWS[0].video_id
    minimal = {k: v for k, v in MANIFEST_ROWS[0].to_dict().items() if k not in ("reason", "error")}
    assert ManifestRow.from_dict(minimal) == MANIFEST_ROWS[0]


# ---------------------------------------------------------------------------------------------
# ClipRow, PreparedClipRow


def decoded_clip() -> ClipFrames:
    rng = np.random.default_rng(0)
    spec = ClipSpec("v1:10", "v1", "/videos/v1.mp4", 10, (12, 15), (2, 5), 7)
    return ClipFrames(spec, rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), rng.integers(0, 256, (2, 6, 8, 3), dtype=np.uint8), 0.5)


def test_clip_rows_round_trip_and_decode_to_their_frames(tmp_path):
    frames = decoded_clip()
    failed = ClipFailure(ClipSpec("v1:20", "v1", "/videos/v1.mp4", 20, (29,), (9,)), "decode failed", "/videos/v1.mp4: frame 29 did not decode")
    rows = [ClipRow.from_result(frames), ClipRow.from_result(failed), ClipRow.whole_video("v2", "/videos/v2.mp4", "too short", "2 frames")]
    table = ClipRow.to_arrow(rows)
    assert table.schema.equals(CLIP_SCHEMA)
    back = ClipRow.from_arrow(through_parquet(table, tmp_path / "clips.parquet"))
    assert back == rows

    ok, bad, whole = back
    assert (ok.height, ok.width, ok.scale, ok.frames_decoded, ok.status) == (6, 8, 0.5, 7, "ok")
    decoded = ok.frames()
    assert decoded.clip == frames.clip  # ids, indices, offsets and frames_decoded
    np.testing.assert_array_equal(decoded.key_frame, frames.key_frame)
    np.testing.assert_array_equal(decoded.current_frames, frames.current_frames)
    assert decoded.current_frames.shape == (2, 6, 8, 3) and decoded.key_frame.dtype == np.uint8
    assert not decoded.key_frame.flags.writeable  # a view of the row's bytes, not a copy
    assert ok.ids == ClipIds("v1:10", "v1", "/videos/v1.mp4", 10, [12, 15], [2, 5])

    assert (bad.status, bad.reason, bad.key_frame, bad.height, bad.frames_decoded) == ("error", "decode failed", b"", 0, 0)
    with pytest.raises(ValueError, match="clip v1:20 has status 'error' \\(decode failed\\): it has no frames"):
        bad.frames()
    assert (whole.clip_id, whole.key_index, whole.current_indices, whole.reason) == (f"v2:{WHOLE_VIDEO}", WHOLE_VIDEO, [], "too short")


def test_a_clip_row_reads_from_the_dicts_ray_gives():
    row = ClipRow.from_result(decoded_clip())
    as_ray_gives = dict(row.to_dict(), current_indices=np.array([12, 15]), offsets=np.array([2, 5]), key_jpeg=b"", current_jpegs=[])
    again = ClipRow.from_dict(as_ray_gives)  # extra columns (a prepared row's) are ignored
    assert type(again) is ClipRow and again.frames().clip == row.frames().clip
    assert again["clip_id"] == "v1:10"


def test_prepared_rows_round_trip_and_read_as_clip_rows():
    row = ClipRow.from_result(decoded_clip())
    prepared = PreparedClipRow(**row.to_dict(), key_jpeg=b"\xff\xd8key", current_jpegs=[b"\xff\xd8a", b"\xff\xd8b"])
    table = PreparedClipRow.to_arrow([prepared])
    assert table.schema.equals(PREPARED_SCHEMA)
    assert PreparedClipRow.from_arrow(table) == [prepared]
    assert ClipRow.from_arrow(table) == [row]
    assert prepared.ids == row.ids


# ---------------------------------------------------------------------------------------------
# CacheRow


def test_cache_rows_round_trip_through_a_cache_file(tmp_path):
    info = cache_info("int8")
    rows = [pack_clip_row(teacher_clip("v0", 10, [2, 5], num_rois=[6, 3], seed=1), info), pack_clip_row(teacher_clip("v1", 0, [0, 4], seed=2), info)]
    rows.append(CacheRow.failed(ClipIds("v2:3", "v2", "/videos/v2.mp4", 3, [5], [2]), "decode failed", "/videos/v2.mp4: frame 5"))
    table = cache_table(rows, info)
    assert table.schema.remove_metadata().equals(CACHE_SCHEMA) and table.schema.metadata
    back = CacheRow.from_arrow(through_parquet(table, tmp_path / "part-0.parquet"))
    assert back == rows and all(isinstance(row, CacheRow) for row in back)
    assert back[1].key_from_current == 0 and back[1].key_features == b""
    failed = back[2]
    assert (failed.status, failed.height, failed.key_from_current, failed.current_jpegs, failed.key_jpeg, failed.num_rois) == ("error", 0, -1, [], b"", [])
    assert failed.ids == ClipIds("v2:3", "v2", "/videos/v2.mp4", 3, [5], [2])
    # the readers take a CacheRow as they take the dict pyarrow gives
    layout = BlobLayout.of(info)
    np.testing.assert_array_equal(key_features_of(back[0], layout), key_features_of(through_parquet(table, tmp_path / "p.parquet").to_pylist()[0], layout))


def test_failed_rows_from_a_row_dict_keep_what_it_holds():
    row = failed_clip_row(dict(clip_id="a:1", video_id="a", key_index=1, current_indices=(2,), offsets=(1,), status="ok"), "teacher failed", "m")
    assert isinstance(row, CacheRow) and (row.uri, row.current_indices, row.status, row.reason) == (None, [2], "error", "teacher failed")
    assert CacheRow.to_arrow([row]).column("uri").null_count == 1
    assert ClipIds.of(dict(clip_id="b:-1", video_id="b")) == ClipIds("b:-1", "b", None, None, [], [])
