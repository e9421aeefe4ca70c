"""The clip stage on a local Ray: every planned clip of the good videos comes out once with the
right frames; a file damaged or removed after the manifest was built becomes failure rows and the
run finishes."""
import inspect
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tests.video_fixtures import break_last_packet, pattern_frame, write_video  # PyAV before decord

import ray
from pipelines import clips as clips_module
from pipelines.clips import (
    CLIP_SCHEMA,
    FAILURE_SCHEMA,
    PLAN_KEYS,
    REASON_TOO_SHORT,
    WHOLE_VIDEO,
    clip_dataset,
    clip_dataset_arguments,
    clip_dataset_from_config,
    clip_frames_from_row,
    report_clip_plan,
    summarize_clips,
    write_clip_failures,
)
from pipelines.manifest import build_manifest, read_manifest_rows
from jobs.cli import app
from semidff.config import load_config
from semidff.video.clip_plan import plan_clips
from semidff.video.decode import REASON_DECODE_FAILED, codec_keyframe_indices, resize_frames
from semidff.video.probe import REASON_MISSING, probe_video

TINY = Path(__file__).resolve().parents[2] / "jobs/configs/tiny.yaml"

PLAN = dict(key_frames_per_second=2.5, currents_per_key=2, offset_range=(8, 9), seed=5)  # keys every 10 frames at 25 fps
SIZE = dict(short_side=48, max_long_side=64)  # 64x48 videos stay as they are


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, local_ray) -> Path:
    """A manifest of 5 usable videos; then one is damaged and one removed, as if after probing."""
    root = tmp_path_factory.mktemp("clips")
    videos = root / "videos"
    videos.mkdir()
    write_video(videos / "a.mp4", 40, 64, 48, gop=10)
    write_video(videos / "b.mkv", 25, 64, 48, gop=10)
    write_video(videos / "c_97x61.mp4", 12, 97, 61)
    write_video(videos / "damaged.mp4", 40, 64, 48, gop=10)
    write_video(videos / "removed.mp4", 20, 64, 48)
    output = root / "manifest"
    summary = build_manifest([str(videos)], str(output))
    assert summary.ok == 5
    break_last_packet(videos / "damaged.mp4", root / "broken.mp4")
    shutil.move(root / "broken.mp4", videos / "damaged.mp4")
    (videos / "removed.mp4").unlink()
    return output


@pytest.fixture(scope="module")
def rows(manifest) -> list[dict]:
    return clip_dataset(str(manifest), **PLAN, **SIZE, block_bytes=64 << 10).take_all()


def by_name(rows: list[dict]) -> dict[str, list[dict]]:
    named: dict[str, list[dict]] = {}
    for row in rows:
        named.setdefault(Path(row["uri"]).name, []).append(row)
    return named


def test_every_planned_clip_of_the_good_videos_comes_out_once(manifest, rows):
    videos = {Path(r["uri"]).name: r for r in read_manifest_rows(str(manifest)).values()}
    named = by_name(rows)
    for name in ("a.mp4", "b.mkv", "c_97x61.mp4"):
        expected = [c.clip_id for c in plan_clips(videos[name], **PLAN)]
        assert sorted(r["clip_id"] for r in named[name]) == sorted(expected) and expected
        assert all(r["status"] == "ok" and r["error"] == "" for r in named[name])
    assert len(named["a.mp4"]) == 4 and len(named["b.mkv"]) == 2 and len(named["c_97x61.mp4"]) == 1
    assert set(named) == {"a.mp4", "b.mkv", "c_97x61.mp4", "damaged.mp4", "removed.mp4"}
    assert len({r["clip_id"] for r in rows}) == len(rows)


def test_rows_carry_the_planned_frames_resized(rows):
    named = by_name(rows)
    for row in named["a.mp4"]:
        clip = clip_frames_from_row(row)
        assert clip.key_frame.shape == (48, 64, 3) and clip.current_frames.shape == (2, 48, 64, 3)
        assert list(clip.clip.current_indices) == [row["key_index"] + d for d in row["offsets"]]
        for index, frame in [(clip.clip.key_index, clip.key_frame), *zip(clip.clip.current_indices, clip.current_frames)]:
            assert np.abs(frame.astype(int) - pattern_frame(index, 64, 48)).mean() < 6
        assert row["frames_decoded"] >= 1
    (odd,) = named["c_97x61.mp4"]
    assert (odd["height"], odd["width"]) == (40, 64) and odd["scale"] == pytest.approx(64 / 97)
    expected, _ = resize_frames(pattern_frame(0, 97, 61)[None], **SIZE)
    assert np.abs(clip_frames_from_row(odd).key_frame.astype(int) - expected[0]).mean() < 6


def test_damaged_and_removed_videos_become_failure_rows(rows):
    named = by_name(rows)
    damaged = {r["key_index"]: r for r in named["damaged.mp4"]}
    assert sorted(damaged) == [0, 10, 20, 30]
    last = damaged[30]  # its current frames 38/39 include the broken last frame
    assert last["status"] == "error" and last["reason"] == REASON_DECODE_FAILED and "damaged.mp4" in last["error"]
    assert last["key_frame"] == b"" and last["height"] == 0
    (removed,) = named["removed.mp4"]
    assert removed["key_index"] == WHOLE_VIDEO and removed["status"] == "error" and removed["reason"] == REASON_MISSING


def test_summary_counts_outcomes_and_failures_are_written(manifest, tmp_path):
    progress = []
    summary = summarize_clips(clip_dataset(str(manifest), **PLAN, **SIZE), progress=progress.append)
    assert summary.ok + summary.failed == summary.clips == 4 + 2 + 1 + 4 + 1
    assert summary.videos_failed == 1 and len(summary.video_ids) == 5
    assert summary.failures[REASON_MISSING] == 1 and summary.failures[REASON_DECODE_FAILED] >= 1
    assert progress and "failed, by reason" in progress[-1]
    path = write_clip_failures(summary, str(tmp_path / "out" / "failures.parquet"))
    table = pq.read_table(path)
    assert table.schema.equals(FAILURE_SCHEMA) and table.num_rows == summary.failed


def test_the_schema_is_the_declared_one_and_bad_arguments_fail_before_any_task(manifest, local_ray):
    dataset = clip_dataset(str(manifest), **PLAN, **SIZE)
    assert dataset.schema().base_schema.equals(CLIP_SCHEMA)
    assert dataset.context.target_max_block_size == 16 << 20  # small blocks, on this dataset only
    assert ray.data.DataContext.get_current().target_max_block_size != 16 << 20
    with pytest.raises(ValueError, match="lo must be <= hi"):
        clip_dataset(str(manifest), offset_range=(9, 1))


# ---------------------------------------------------------------------------------------------
# From the config, and the plan report (`semidff clips`)

CONFIG_OVERRIDES = [
    "clips.key_frames_per_second=2.5", "clips.currents_per_key=2", "clips.offset_range=[8,9]", "clips.seed=5",
    "preprocess.short_side=48", "preprocess.max_long_side=64",
]


def test_the_config_gives_every_clip_dataset_argument(manifest, rows):
    cfg = load_config(TINY, CONFIG_OVERRIDES + ["clips.decoder=decord", "clips.chunk_frames=3", "clips.max_concurrent_tasks=1"])
    assert clip_dataset_arguments(cfg) == dict(
        **PLAN, align_to_codec_keyframes=False, key_frames_per_video=None, **SIZE, chunk_frames=3, videos_per_task=None,
        num_cpus=1.0, max_concurrent_tasks=1, block_bytes=16 << 20, decoder="decord",
    )
    assert set(clip_dataset_arguments(cfg)) == set(inspect.signature(clip_dataset).parameters) - {"videos"}
    from_config = {r["clip_id"]: r for r in clip_dataset_from_config(str(manifest), cfg).take_all()}
    assert set(from_config) == {r["clip_id"] for r in rows}
    for row in rows:  # decord here, PyAV in the `rows` fixture: the same pixels
        if row["status"] == "ok" and Path(row["uri"]).name != "damaged.mp4":
            assert from_config[row["clip_id"]]["key_frame"] == row["key_frame"]
            assert from_config[row["clip_id"]]["current_frames"] == row["current_frames"]


def test_the_plan_report_counts_clips_and_forced_frames_both_ways(manifest, tmp_path, local_ray):
    cfg = load_config(TINY, CONFIG_OVERRIDES + ["clips.key_frames_per_second=1"])  # keys 25 frames apart, GOP 10
    short = write_video(tmp_path / "short.mp4", 6, 64, 48)  # 6 frames: nothing fits at offset >= 8
    manifest_rows = list(read_manifest_rows(str(manifest)).values())
    rows = manifest_rows + [probe_video(str(short)).to_row(), probe_video(str(tmp_path / "gone.mp4")).to_row()]
    report = report_clip_plan(rows, cfg, examples=3)

    plan = {name: getattr(cfg.clips, name) for name in PLAN_KEYS}
    expected = {False: [0, 0, 0], True: [0, 0, 0]}
    for row in manifest_rows + [rows[-2]]:
        if not Path(row["uri"]).exists():
            continue
        keyframes = codec_keyframe_indices(row["uri"])
        for aligned in (False, True):
            clips = plan_clips(row, codec_keyframes=keyframes, **dict(plan, align_to_codec_keyframes=aligned))
            expected[aligned][0] += len(clips)
            expected[aligned][1] += sum(c.frames_decoded for c in clips)
            expected[aligned][2] += len({i for c in clips for i in c.frame_indices})
    assert (report.manifest_videos, report.left_out, report.videos) == (7, 1, 5)  # removed.mp4: gone since probing
    assert report.unplanned == {REASON_MISSING: 1} and "removed.mp4" in report.unplanned_examples[REASON_MISSING]
    assert report.total_frames == 40 + 25 + 12 + 40 + 6
    for aligned, cost in ((False, report.as_planned), (True, report.on_keyframes)):
        assert [cost.clips, cost.frames_decoded, cost.frames_kept] == expected[aligned]
        assert cost.videos_without_clips == 1 and cost.examples_without_clips == [(str(short), 6)]
    assert report.on_keyframes.frames_decoded < report.as_planned.frames_decoded
    text = report.format()
    assert "5 videos, 123 frames (1 more manifest rows failed probing" in text and "videos without clips, keys as planned: 1" in text
    assert f"{str(short)} (6 frames)" in text and "could not be planned now" in text


def test_cli_clips_prints_the_report_and_exits_2_without_a_manifest(manifest, tmp_path, local_ray):
    result = CliRunner().invoke(app, ["clips", str(manifest), "-c", str(TINY), *CONFIG_OVERRIDES])
    assert result.exit_code == 0, result.output
    assert f"clip plan of {manifest}: 4 videos, 117 frames" in result.output and "  as planned *  " in result.output
    missing = CliRunner().invoke(app, ["clips", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no manifest.parquet there; build it first" in missing.output


def test_a_bare_manifest_parquet_path_is_the_manifest(manifest, monkeypatch):
    """`semidff clips manifest.parquet` from inside the output folder used to look for
    manifest.parquet/manifest.parquet and say 'no manifest.parquet there; build it first'."""
    monkeypatch.chdir(manifest)
    rows = list(read_manifest_rows(str(manifest)).values())
    for given in ("manifest.parquet", "./manifest.parquet", str(manifest / "manifest.parquet"), f"file://{manifest}/manifest.parquet"):
        assert clips_module._manifest_rows(given) == rows


def test_keys_on_codec_keyframes_through_the_stage(manifest, local_ray):
    """clips.align_to_codec_keyframes=true in the stage: every key of the GOP-10 files is a codec
    keyframe, the clips are those of the aligned plan and they decode."""
    plan = dict(PLAN, key_frames_per_second=1.0, align_to_codec_keyframes=True)  # keys 25 apart: 0, 20 on a GOP of 10
    rows = [r for r in clip_dataset(str(manifest), **plan, **SIZE).take_all() if Path(r["uri"]).name in ("a.mp4", "b.mkv")]
    videos = {Path(r["uri"]).name: r for r in read_manifest_rows(str(manifest)).values()}
    for name in ("a.mp4", "b.mkv"):
        keyframes = codec_keyframe_indices(videos[name]["uri"])
        expected = plan_clips(videos[name], codec_keyframes=keyframes, **plan)
        got = sorted((r["clip_id"], r["frames_decoded"], r["status"]) for r in rows if Path(r["uri"]).name == name)
        assert got == sorted((c.clip_id, c.frames_decoded, "ok") for c in expected) and expected
        assert all(c.key_index in keyframes for c in expected)


def test_a_video_too_short_for_any_clip_leaves_one_row_saying_so(tmp_path, local_ray):
    short = write_video(tmp_path / "short.mp4", 6, 64, 48)  # 6 frames: nothing fits at offset >= 8
    (row,) = clip_dataset([probe_video(str(short)).to_row()], **PLAN, **SIZE).take_all()
    assert row["key_index"] == WHOLE_VIDEO and row["status"] == "error" and row["reason"] == REASON_TOO_SHORT
    assert row["error"] == f"{short}: 6 frame(s), too few for a current frame at offset d >= 8 (clips.offset_range=[8, 9]), so it gives no clip; nothing is wrong with the file"
