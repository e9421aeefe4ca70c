"""`semidff cache inspect`: counts, bytes per clip, failures, and damaged files reported by name."""
import json
import os

from typer.testing import CliRunner

from semidff.cache.files import inspect_cache, list_cache_files, written_clip_ids
from semidff.cache.info import CacheFileError
from jobs.cli import app
from tests.cache.synthetic_cache import cache_info, teacher_clip, write_cache

import pytest


@pytest.fixture()
def cache(tmp_path):
    clips = [teacher_clip("v0", k, [1, 4], seed=k) for k in (0, 10, 20)] + [teacher_clip("v1", 0, [0, 2], seed=9)]
    failed = [("v2:-1", "v2", "missing file"), ("v1:30", "v1", "decode failed"), ("v1:40", "v1", "decode failed")]
    paths = write_cache(tmp_path / "cache", cache_info("int8"), clips, failed)
    (tmp_path / "cache" / "_tmp-0123456789ab-part-x.parquet").write_bytes(b"half a file")  # a killed writer's leftover
    return tmp_path / "cache", paths


def test_inspect_counts_and_sizes(cache):
    directory, paths = cache
    report = inspect_cache(str(directory))
    assert report.healthy and report.files == len(paths) == 3
    assert (report.clips_ok, report.clips_failed, report.pairs, report.videos) == (4, 3, 8, 3)
    assert dict(report.offsets) == {1: 3, 4: 3, 0: 1, 2: 1}
    assert dict(report.failures) == {"decode failed": 2, "missing file": 1}
    per_clip = report.bytes_per_clip()
    assert per_clip["current_features"] > per_clip["key_features"] > 0 and per_clip["current_jpegs"] > 0
    on_disk = sum(os.path.getsize(p) for p in paths)
    assert report.total_bytes == on_disk and sum(report.column_bytes.values()) < on_disk  # columns + footers
    assert len(report.temporary_files) == 1
    assert written_clip_ids(str(directory)) == {"v0:0", "v0:10", "v0:20", "v1:0", "v2:-1", "v1:30", "v1:40"}
    text = report.format()
    assert "4 clips ok, 3 failed, 8 (key, current) pairs, 3 videos" in text and "features int8 (C=64)" in text
    assert "      2  decode failed  (e.g. v1: decode failed)" in text


def test_a_truncated_file_is_reported_by_name_not_skipped(cache):
    directory, paths = cache
    data = open(paths[1], "rb").read()
    with open(paths[1], "wb") as handle:
        handle.write(data[: len(data) // 2])
    report = inspect_cache(str(directory))
    assert not report.healthy and len(report.corrupt_files) == 1
    assert report.corrupt_files[0].startswith(f"{paths[1]}: corrupt or truncated Parquet file")
    assert "delete it and rerun semidff cache" in report.corrupt_files[0]
    assert report.clips_ok == 3 and report.clips_failed == 1  # the other two files still count
    with pytest.raises(CacheFileError, match=paths[1]):
        written_clip_ids(str(directory))  # a rerun stops on it too


def test_cli_inspect(cache):
    directory, paths = cache
    result = CliRunner().invoke(app, ["cache", "inspect", str(directory)])
    assert result.exit_code == 0, result.output
    assert "teacher cache: " + str(directory) in result.output and "bytes per ok clip" in result.output
    result = CliRunner().invoke(app, ["cache", "inspect", str(directory), "--json"])
    assert json.loads(result.output)["clips_ok"] == 4
    os.truncate(paths[0], 100)
    result = CliRunner().invoke(app, ["cache", "inspect", str(directory)])
    assert result.exit_code == 1 and f"CORRUPT: {paths[0]}" in result.output
    assert list_cache_files(str(directory)) == sorted(paths)


def test_cli_build_routes_to_the_build_command_and_explains_bad_input(tmp_path):
    result = CliRunner().invoke(app, ["cache", "-c", "jobs/configs/tiny.yaml", str(tmp_path / "nothing"), "--teacher", "t.pt", "-o", str(tmp_path / "c")])
    assert result.exit_code == 2 and "no manifest.parquet there; build it first" in result.output
