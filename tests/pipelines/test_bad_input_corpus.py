"""The whole bad-input corpus (tests/bad_input_corpus.py) through `semidff manifest` and `semidff
cache` on a local Ray, with a tiny random teacher: every file is one manifest row with its status
and reason, and no good clip is lost: every planned clip whose frames decode (judged by a plain
PyAV decode of the file, tests/video_fixtures.decodable_frames) is in the cache with status ok,
every other planned clip is a failure row with its reason and a message naming the file."""
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.bad_input_corpus import PLAN, write_corpus  # PyAV before decord
from tests.teacher_checkpoints import save_random_teacher
from tests.video_fixtures import decodable_frames

import ray
from pipelines.manifest import build_manifest, read_manifest_rows
from pipelines.teacher_cache import build_teacher_cache
from semidff.cache import list_cache_files
from semidff.config import load_config
from semidff.video.clip_plan import plan_video

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "jobs" / "configs" / "tiny.yaml"
SMALL = ["preprocess.short_side=48", "preprocess.max_long_side=64", "cache.clips_per_file=8", "cache.batch_size=4", "ray.num_cpus=2"]


@pytest.fixture(scope="module")
def local_ray():
    if ray.is_initialized():
        yield
        return
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_the_whole_corpus_gives_its_rows_and_loses_no_good_clip(tmp_path, local_ray):
    cases = write_corpus(tmp_path / "videos")
    manifest = build_manifest([str(tmp_path / "videos")], str(tmp_path / "manifest"))
    rows = {Path(row.uri).name: row for row in read_manifest_rows(str(tmp_path / "manifest")).values()}
    assert sorted(rows) == sorted(case.name for case in cases) and manifest.total == len(cases)
    for case in cases:
        row = rows[case.name]
        assert (row.status, row.reason) == (case.status, case.reason), (case.name, row.error or row.note)
        assert "\x1b" not in row.error + row.note

    cfg = load_config(TINY, SMALL)
    assert {name: getattr(cfg.clips, name) for name in PLAN} == {**PLAN, "offset_range": tuple(PLAN["offset_range"])}
    save_random_teacher(tmp_path / "teacher.pt", cfg)
    summary = build_teacher_cache(cfg, str(tmp_path / "manifest"), str(tmp_path / "teacher.pt"), str(tmp_path / "cache"))
    stored = [
        row
        for path in list_cache_files(str(tmp_path / "cache"))
        for row in pq.read_table(path, columns=["clip_id", "uri", "status", "reason", "error"]).to_pylist()
    ]
    by_id = {row["clip_id"]: row for row in stored}
    assert len(by_id) == len(stored)  # every clip once

    planned, lost, failed_ok = 0, [], []
    for case in cases:
        row = rows[case.name]
        if not row.ok:
            assert not [r for r in stored if r["uri"] == row.uri]  # an unusable file has no clip, its row says why
            continue
        good = decodable_frames(case.path)
        for clip in plan_video(row, **PLAN).clips:
            planned += 1
            cached = by_id.pop(clip.clip_id)
            if set(clip.frame_indices) <= good:
                if cached["status"] != "ok":
                    lost.append((case.name, clip.clip_id, cached["reason"], cached["error"]))
            else:
                if cached["status"] == "ok":
                    failed_ok.append((case.name, clip.clip_id))
                assert cached["reason"] and cached["error"].startswith(row.uri), cached
    assert lost == [] and failed_ok == []
    assert by_id == {}  # nothing in the cache that was not planned
    assert planned == sum(case.clips for case in cases) == summary.planned
    assert summary.written_ok == sum(case.clips_ok for case in cases)
    assert dict(summary.failures) == {"decode failed": 1}
