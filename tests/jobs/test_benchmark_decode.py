"""`semidff benchmark decode` on tiny generated videos: every method decodes what it should and the
report's counts are the plan's (no timing is asserted)."""
import math
import shutil

import pytest

from tests.video_fixtures import write_video  # noqa: F401  PyAV before decord

import ray
from jobs.benchmark_decode import run
from semidff.benchmarks.decode import format_report, load_result
from semidff.config import load_config
from semidff.video.clip_plan import plan_clips
from semidff.video.decode import codec_keyframe_indices
from semidff.video.probe import probe_video

SIZE = dict(seconds=2.0, fps=10, width=64, height=48)  # 20 frames per file


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow  # ~25 s here: 3 methods x 2 GOPs, then 2 memory runs, each a Ray Data execution
def test_the_benchmark_reports_the_plans_counts_for_every_method(tmp_path, local_ray):
    cfg = load_config(None, ["preprocess.short_side=48", "preprocess.max_long_side=64"])  # plan: 1 key/s, 1 current, d in [0, 9]
    result = run(cfg, videos=2, **SIZE, gops=(10, 4), repeats=1, memory_counts=(1, 3), memory_size=(64, 48), memory_seconds=2.0, cache_dir=tmp_path)

    has_ffmpeg = shutil.which("ffmpeg") is not None
    assert [g.gop for g in result.gops] == [10, 4] and result.num_cpus == 2
    for gop in result.gops:
        files = sorted((tmp_path / f"h264_64x48_10fps_2s_gop{gop.gop}").glob("*.mp4"))
        assert len(files) == gop.files == 2 and gop.frames == 40 and gop.keyframes == 2 * math.ceil(20 / gop.gop)
        for aligned, name in ((False, "as planned"), (True, "on keyframes")):
            plans = [
                plan_clips(
                    probe_video(str(path)).to_row(), key_frames_per_second=1.0, offset_range=(0, 9),
                    codec_keyframes=codec_keyframe_indices(str(path)), align_to_codec_keyframes=aligned,
                )
                for path in files
            ]
            stats = gop.plans[name]
            assert (stats.clips, stats.frames_forced) == (sum(map(len, plans)), sum(c.frames_decoded for clips in plans for c in clips))
            assert stats.frames_kept == sum(len({i for c in clips for i in c.frame_indices}) for clips in plans)  # clips may share frames
        plain = gop.plans["as planned"]
        names = [m.name for m in gop.methods]
        tail = ["read_videos", "ffmpeg"] if has_ffmpeg else ["read_videos"]  # ffmpeg is optional: its baselines are skipped without it
        assert names[:2] == ["ours", "ours, decord"] and names[-len(tail):] == tail
        assert ("ours, keys on keyframes" in names) == (gop.plans["on keyframes"] != plain)
        for method in gop.methods:
            assert len(method.runs_s) == 1 and method.seconds > 0 and method.clips > 0
            if method.name.startswith("ours"):
                expected = gop.plans["on keyframes" if "keyframes" in method.name else "as planned"]
                assert (method.clips, method.frames_decoded, method.frames_delivered) == (expected.clips, expected.frames_forced, 2 * expected.clips)
            else:
                assert (method.clips, method.frames_decoded, method.frames_delivered) == (plain.clips, 40, 40)
        assert (gop.lower_bound_s("as planned") is None) == (not has_ffmpeg)
        if has_ffmpeg:
            assert gop.lower_bound_s("as planned") == pytest.approx(gop.method("ffmpeg").seconds * plain.frames_forced / 40)
    assert [(m.videos, m.clips) for m in result.memory] == [(1, 2), (3, 6)]
    assert all(len(m.peak_mb_runs) == 1 and m.peak_mb > 100 and m.above_idle_mb >= 0 for m in result.memory)  # a Ray is > 100 MB

    report = format_report(result)
    assert "#### GOP 10: 2 files, 40 frames" in report and "| ours, decord |" in report and "| read_videos |" in report
    assert ("| ffmpeg |" in report) and (("skipped: ffmpeg not found" in report) != has_ffmpeg)
    assert "| 3 | 6 |" in report  # the memory table
    (tmp_path / "result.json").write_text(result.to_json())
    assert format_report(load_result(tmp_path / "result.json")) == report
