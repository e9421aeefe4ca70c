"""The decode benchmark's parts that need no Ray: the generated videos, the lower-bound cost model,
the report and its JSON round trip (`semidff benchmark decode --report`)."""
import pytest

from tests.video_fixtures import write_video  # noqa: F401  PyAV before decord

from semidff.benchmarks.decode import (
    BOUNDS, DecodeBenchmarkResult, GopResult, MemoryResult, MethodTiming, PlanStats, ensure_videos, format_report, load_result,
    lower_bound, parse_ints,
)
from semidff.video.decode import codec_keyframe_indices
from semidff.video.probe import probe_video

SIZE = dict(seconds=2.0, fps=10, width=64, height=48)  # 20 frames per file


def test_generated_videos_are_cached_and_reused(tmp_path):
    (first,) = ensure_videos(tmp_path, count=1, gop=5, **SIZE)
    stamp = first.stat().st_mtime_ns
    info = probe_video(str(first))
    assert (info.num_frames, info.width, info.height, info.fps) == (20, 64, 48, 10.0)
    assert codec_keyframe_indices(str(first)) == [0, 5, 10, 15]  # exactly every GOP frames: scenecut is off
    again = ensure_videos(tmp_path, count=2, gop=5, **SIZE)
    assert again[0] == first and first.stat().st_mtime_ns == stamp and again[1].exists()
    assert parse_ints("250, 30") == [250, 30] and parse_ints("") == []
    with pytest.raises(ValueError, match="comma-separated integers"):
        parse_ints("250;30")


def _gop(with_ffmpeg: bool) -> GopResult:
    plain, aligned = PlanStats(clips=4, frames_kept=8, frames_forced=40, keyframes_forced=4), PlanStats(4, 8, 12, 4)
    methods = [
        MethodTiming("ours", [2.0, 1.0, 3.0], [1.5, 1.0, 2.0], clips=4, frames_decoded=40, frames_delivered=8),
        MethodTiming("ours, decord", [4.0], [3.0], 4, 40, 8),
        MethodTiming("ours, keys on keyframes", [0.5], [0.4], 4, 12, 8),
        MethodTiming("read_videos", [5.0], [4.0], 4, 200, 200),
    ] + ([MethodTiming("ffmpeg", [2.5], [2.0], 4, 200, 200)] if with_ffmpeg else [])
    single = {"pyav": [0.2, 0.3], "decord": [0.4]} | ({"ffmpeg": [0.5]} if with_ffmpeg else {})
    return GopResult(
        gop=50, files=2, frames=200, keyframes=4, keyframe_ms=4.0, other_frame_ms=1.0, rgb_ms=0.5, resize_ms=1.5,
        plans={"as planned": plain, "on keyframes": aligned}, methods=methods, ffmpeg_missing=not with_ffmpeg,
        single_file_cpu_s=single, single_file_plan=PlanStats(2, 4, 20, 2), single_file_frames=100, single_file_keyframes=2,
    )


def test_lower_bounds_scale_ffmpeg_by_the_frames_the_plan_forces():
    gop = _gop(with_ffmpeg=True)
    plan = gop.plans["as planned"]
    assert lower_bound(10.0, "c", plan, 200, 4, gop) == pytest.approx(10.0 * 40 / 200)
    # 4 keyframes of 4 ms + 36 other frames of 1 ms, of 4 x 4 + 196 x 1 ms for every frame
    assert lower_bound(10.0, "weighted", plan, 200, 4, gop) == pytest.approx(10.0 * 52 / 212)
    assert lower_bound(10.0, "weighted+rgb", plan, 200, 4, gop, parallel=2) == pytest.approx(10.0 * 52 / 212 + 8 * 2.0 / 1000 / 2)
    assert gop.lower_bound_s("as planned", num_cpus=2) == pytest.approx(2.5 * 40 / 200)  # ffmpeg's median wall time
    assert gop.lower_bound_s("on keyframes", "weighted", cpu=True) == pytest.approx(2.0 * (4 * 4 + 8) / 212)
    assert _gop(with_ffmpeg=False).lower_bound_s("as planned") is None
    assert gop.method("ours").seconds == 2.0 and gop.method("ours").cpu_seconds == 1.5  # medians of the runs


@pytest.mark.parametrize("with_ffmpeg", [True, False])
def test_the_report_survives_the_json_round_trip(tmp_path, with_ffmpeg):
    result = DecodeBenchmarkResult(
        machine="cpu, 2 cores", num_cpus=2, command="semidff benchmark decode", video="2 files", plan="1 key/s", repeats=3,
        load_average=[0.5, 1.25], gops=[_gop(with_ffmpeg)], memory=[MemoryResult(videos=2, clips=4, peak_mb_runs=[300.0, 310.0, 305.0], idle_mb_runs=[200.0, 200.0, 210.0])],
    )
    report = format_report(result)
    assert "| ours | 2.00 | 2.00, 1.00, 3.00 | 1.50 |" in report and "| 2 | 4 | 305 | 300, 310, 305 | 100 |" in report
    assert all((f"| as planned | {label} |" in report) == with_ffmpeg for label in BOUNDS.values())
    assert ("skipped: ffmpeg not found on PATH" in report) != with_ffmpeg
    (tmp_path / "result.json").write_text(result.to_json())
    again = load_result(tmp_path / "result.json")
    assert again == result and format_report(again) == report
