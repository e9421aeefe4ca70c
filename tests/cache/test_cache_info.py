"""The cache's self-description and the checks a consumer makes against it."""
import dataclasses
import json

import pyarrow.parquet as pq
import pytest

from semidff.cache.info import (
    INFO_FILE,
    PARQUET_METADATA_KEY,
    SCHEMA_VERSION,
    CacheExpectation,
    CacheFileError,
    CacheInfo,
    CacheMismatchError,
    read_cache_info,
    write_cache_info,
)
from tests.cache.synthetic_cache import TEACHER_SHA, cache_info, teacher_clip, tiny_config, write_cache


def test_record_describes_teacher_format_preprocessing_and_sampling(tmp_path):
    info = cache_info("int8", offset_range=(1, 9))
    assert info.teacher_sha256 == TEACHER_SHA and info.schema_version == SCHEMA_VERSION
    assert (info.feature_channels, info.num_anchors, info.num_classes) == (64, 9, 3)
    assert info.feature_precision == "int8" and info.soft_target_precision == "fp16"
    assert info.preprocess == {"short_side": 160, "max_long_side": 288} and info.offset_range == (1, 9)
    assert info.clips["currents_per_key"] == 1 and "num_cpus" not in info.clips  # sampling only
    assert info.code_version.startswith("0.") and info.created
    write_cache_info(info, str(tmp_path))
    assert read_cache_info(str(tmp_path)) == info
    # ... and every Parquet file carries the same record.
    path = write_cache(tmp_path / "c", info, [teacher_clip("v", 0, [2])])[0]
    assert CacheInfo.from_dict(json.loads(pq.read_schema(path).metadata[PARQUET_METADATA_KEY]), path) == info


def test_sampling_keys_are_the_clip_stage_plan_keys():
    from pipelines.clips import PLAN_KEYS
    from semidff.cache.info import CLIP_SAMPLING_KEYS

    assert set(CLIP_SAMPLING_KEYS) == set(PLAN_KEYS)


def test_expectation_for_training_passes_on_a_matching_cache():
    cfg = tiny_config()
    CacheExpectation.for_training(cfg, TEACHER_SHA, (1, 9)).check(cache_info(), "cache")
    CacheExpectation().check(cache_info(), "cache")  # nothing expected, nothing checked


@pytest.mark.parametrize(
    "change, field, cache_value, expected_value",
    [
        (dict(teacher_sha256="cd" * 32), "teacher_sha256", "'" + "ab" * 32 + "'", "'" + "cd" * 32 + "'"),
        (dict(short_side=600), "preprocess.short_side", "160", "600"),
        (dict(max_long_side=1000), "preprocess.max_long_side", "288", "1000"),
        (dict(schema_version=SCHEMA_VERSION + 1), "schema_version", str(SCHEMA_VERSION), str(SCHEMA_VERSION + 1)),
    ],
)
def test_each_mismatch_is_named_with_both_values(change, field, cache_value, expected_value):
    expected = dataclasses.replace(CacheExpectation.for_training(tiny_config(), TEACHER_SHA, (1, 9)), **change)
    with pytest.raises(CacheMismatchError) as error:
        expected.check(cache_info(), "runs/cache")
    message = str(error.value)
    assert f"{field}: the cache has {cache_value}, expected {expected_value}" in message
    assert message.startswith("runs/cache: the teacher cache does not match") and "semidff cache" in message


def test_offsets_outside_the_sampled_range_are_a_mismatch():
    expected = CacheExpectation.for_training(tiny_config(), TEACHER_SHA, (1, 19))
    with pytest.raises(CacheMismatchError, match=r"clips.offset_range: the cache has offsets \[0, 9\], expected to cover \[1, 19\]"):
        expected.check(cache_info(), "c")


def test_content_differences_ignore_run_fields():
    info = cache_info()
    rerun = dataclasses.replace(info, created="later", code_version="9.9", teacher_path="elsewhere.pt", compression_level=9)
    assert info.differences(rerun) == []
    assert [name for name, _, _ in info.differences(dataclasses.replace(info, jpeg_quality=50))] == ["jpeg_quality"]


def test_missing_or_damaged_records_name_the_file(tmp_path):
    with pytest.raises(CacheFileError, match=f"no {INFO_FILE} there, so it is not a teacher cache"):
        read_cache_info(str(tmp_path))
    (tmp_path / INFO_FILE).write_text("{not json")
    with pytest.raises(CacheFileError, match=f"{INFO_FILE}: not valid JSON"):
        read_cache_info(str(tmp_path))
    (tmp_path / INFO_FILE).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CacheFileError, match="not a semidff teacher cache record"):
        read_cache_info(str(tmp_path))
    data = cache_info().to_dict()
    del data["teacher_sha256"]
    (tmp_path / INFO_FILE).write_text(json.dumps(data))
    with pytest.raises(CacheFileError, match="lacks teacher_sha256"):
        read_cache_info(str(tmp_path))
