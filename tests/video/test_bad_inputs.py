"""The bad-input corpus (tests/bad_input_corpus.py), file by file: the manifest row each gives and
the clips of the default plan, judged against a plain PyAV decode of the file; and the fixes they
stand for: timestamps that are missing, headers that declare frames the file does not hold, a last
frame that does not decode, rotation for both decoders, unreadable files, terminal escapes."""
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from tests.bad_input_corpus import PLAN, H, W, cases, write_corpus  # PyAV before decord
from tests.video_fixtures import avi_keep_frames, break_last_packet, decodable_frames, pattern_frame, write_video

import decord
from semidff.rows import MANIFEST_SCHEMA, ClipFailure, ClipFrames, ManifestRow, clean_text
from semidff.video.clip_plan import plan_video
from semidff.video.decode import LostFrames, decode_clips, open_video
from semidff.video.probe import REASON_NO_PERMISSION, probe_video

CASES = cases()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return {case.name: case for case in write_corpus(tmp_path_factory.mktemp("corpus"))}


@pytest.mark.parametrize("name", [case.name for case in CASES])
def test_each_file_gives_its_row_and_clips_and_no_good_clip_is_lost(corpus, name):
    case = corpus[name]
    row = probe_video(str(case.path))
    assert (row.status, row.reason) == (case.status, case.reason), row.error or row.note
    for key, value in case.fields.items():
        assert getattr(row, key) == pytest.approx(value), key
    assert row.note.startswith(case.note) if case.note else row.note == "", row.note
    assert case.error_has in row.error
    assert "\x1b" not in row.error + row.note
    if not row.ok:
        assert row.num_frames is None and row.error.startswith(str(case.path))
        return
    plan = plan_video(row, **PLAN)
    assert len(plan.clips) == case.clips
    results = list(decode_clips(row.uri, plan.clips, short_side=48, max_long_side=64, num_frames=row.num_frames))
    assert sorted(r.clip_id for r in results) == sorted(c.clip_id for c in plan.clips)
    ok = [r for r in results if isinstance(r, ClipFrames)]
    failed = [r for r in results if isinstance(r, ClipFailure)]
    assert (len(ok), dict(Counter(r.reason for r in failed))) == (case.clips_ok, case.clips_failed)
    good = decodable_frames(case.path)
    assert all(set(r.clip.frame_indices) <= good for r in ok)  # no frame that does not decode, no repeat of another
    assert all(not set(r.clip.frame_indices) <= good for r in failed)  # no good clip lost
    assert all(max(c.frame_indices) < row.num_frames for c in plan.clips)


def test_mpeg4_avi_with_b_frames_gets_the_declared_rate_and_every_clip(corpus):
    """decord reports "no timestamp" (about -3.7e17 s) for some frames: the rate used to come out
    0 with a 3.7e17 s duration, and the default plan gave no clip."""
    path = corpus["mpeg4 bframes.avi"].path
    stamps = np.asarray(decord.VideoReader(str(path), num_threads=1).get_frame_timestamp(list(range(50))))
    assert (stamps < -1e10).any()
    row = probe_video(str(path))
    assert (row.fps, row.duration_s, row.variable_frame_rate, row.fps_source) == (25.0, 2.0, False, "container")
    assert "frames have no timestamp" in row.note
    assert [c.key_index for c in plan_video(row, **PLAN).clips] == [0, 25]


def test_decord_reads_a_file_without_timestamps_forward_and_gets_the_right_frames(corpus):
    """decord seeks by timestamp: on this file a seek to frame 20 returned frame 10. Both decoders
    give the planned frames."""
    path = corpus["mpeg4 bframes.avi"].path
    row = probe_video(str(path))
    clips = plan_video(row, key_frames_per_second=5.0, currents_per_key=2, offset_range=(1, 6)).clips
    for decoder in ("pyav", "decord"):
        results = list(decode_clips(str(path), clips, short_side=H, max_long_side=W, decoder=decoder, num_frames=50))
        for result in results:
            assert isinstance(result, ClipFrames), result
            indices = [result.clip.key_index, *result.clip.current_indices]
            for index, frame in zip(indices, [result.key_frame, *result.current_frames]):
                errors = [np.abs(frame.astype(int) - pattern_frame(i, W, H)).mean() for i in range(50)]
                assert int(np.argmin(errors)) == index, (decoder, index)



def test_a_header_that_declares_more_frames_gives_the_true_length_and_the_streams_rate(tmp_path):
    source = write_video(tmp_path / "full.avi", 60, W, H, codec="mpeg4", gop=12, fps=15)
    short = avi_keep_frames(source, 10, tmp_path / "short.avi")
    row = probe_video(str(short))
    assert row.ok and (row.num_frames, row.declared_frames, row.truncated) == (10, 60, True)
    assert (row.fps, row.fps_source, row.duration_s) == (15.0, "container", 0.667)
    assert "the container declares 60 frames but only the first 10 decode" in row.note


def test_frames_past_the_last_one_that_decodes_are_never_read(tmp_path):
    """30 listed, 29 decode: decord hands back frame 28 again for frame 29. No clip or full read
    gets frame 29, whichever decoder reads."""
    path = break_last_packet(write_video(tmp_path / "a.mp4", 30, W, H, gop=10, faststart=True), tmp_path / "broken.mp4")
    row = probe_video(str(path))
    assert (row.num_frames, row.declared_frames) == (29, 30)
    assert max(i for c in plan_video(row, key_frames_per_video=29, offset_range=(0, 9)).clips for i in c.frame_indices) == 28
    for decoder in ("auto", "pyav", "decord"):
        with open_video(str(path), decoder=decoder, num_frames=row.num_frames) as video:
            assert video.readable_frames == 29
            items = list(video.read_frames(range(30)))
        frames = [item for item in items if not isinstance(item, LostFrames)]
        if decoder != "decord":
            assert [index for index, _ in frames] == list(range(29)), decoder
        else:  # decord's decoder thread reads ahead: on a loaded machine the broken packet's error can cost frames before it
            assert all(item.last <= 28 for item in items if isinstance(item, LostFrames))
        assert all(index <= 28 for index, _ in frames)
        assert not any(np.array_equal(a[1], b[1]) for a, b in zip(frames, frames[1:]))  # nothing repeated
    with open_video(str(path), num_frames=29) as video:
        assert video.decoder == "pyav"  # PyAV lists 30, and exactly the 30th does not decode


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
@pytest.mark.parametrize("decoder", ["pyav", "decord", "auto"])
def test_rotation_is_applied_once_for_every_decoder(tmp_path, suffix, decoder):
    """The display matrix says 90°: decord turns MP4 frames and not Matroska ones, PyAV turns none;
    every decoder gives the frames as shown, at the manifest's size."""
    path = write_video(tmp_path / f"rotated{suffix}", 6, 320, 240, rotation=90)
    row = probe_video(str(path))
    assert (row.width, row.height) == (240, 320)
    with open_video(str(path), decoder=decoder, num_frames=row.num_frames) as video:
        assert video.rotation == 90
        frames = list(video.iter_frames())
    for index, frame in enumerate(frames):
        assert frame.shape == (320, 240, 3)
        assert np.abs(frame.astype(int) - np.rot90(pattern_frame(index, 320, 240))).mean() < 6
    clips = plan_video(row, key_frames_per_video=2, offset_range=(1, 3)).clips
    results = list(decode_clips(str(path), clips, short_side=60, max_long_side=80, decoder=decoder, num_frames=row.num_frames))
    assert all(isinstance(r, ClipFrames) and r.key_frame.shape == (80, 60, 3) for r in results)


def test_an_unreadable_file_says_so(tmp_path, monkeypatch):
    path = write_video(tmp_path / "locked.mp4", 5, W, H)
    real_open = open

    def denied(name, *args, **kwargs):
        if str(name) == str(path):
            raise PermissionError(13, "Permission denied", str(name))
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr("semidff.video.probe.open", denied, raising=False)
    row = probe_video(str(path))
    assert (row.status, row.reason) == ("error", REASON_NO_PERMISSION)
    assert row.error == f"{path}: this user may not read the file (Permission denied); fix its permissions (e.g. chmod a+r) and rerun with --retry-failed"


def test_terminal_escapes_never_reach_a_stored_text():
    coloured = "\x1b[36mray::_probe_task()\x1b[39m (pid=12, ip=1.2.3.4)\x1b[0m \x1b]8;;http://x\x07link\x1b]8;;\x07 done"
    assert clean_text(coloured) == "ray::_probe_task() (pid=12, ip=1.2.3.4) link done"
    row = ManifestRow.failed("0" * 16, "/v/a.mp4", "probe crashed", f"/v/a.mp4: failed ({coloured})")
    assert "\x1b" not in row.error and "ray::_probe_task()" in row.error
    spec = plan_video(dict(video_id="v", uri="/v/a.mp4", num_frames=5, fps=25.0), key_frames_per_video=1).clips[0]
    assert ClipFailure(spec, "decode failed", coloured).error == clean_text(coloured)


def test_a_manifest_written_before_the_new_columns_still_reads():
    old = pa.schema([f for f in MANIFEST_SCHEMA if f.name not in ("declared_frames", "fps_source", "note")])
    table = pa.Table.from_pylist([dict(video_id="a" * 16, uri="/v/a.mp4", size_bytes=1, num_frames=4, fps=25.0, width=8, height=8,
                                        duration_s=0.16, variable_frame_rate=False, status="ok", reason="", error="")], schema=old)
    (row,) = ManifestRow.from_arrow(table)
    assert (row.num_frames, row.declared_frames, row.fps_source, row.note, row.truncated) == (4, None, "", "", False)


def test_damage_is_one_range_with_one_message_for_clips_and_full_reads(corpus):
    """The same LostFrames for the clip stage and for a full read (what `semidff detect` uses)."""
    path = corpus["damaged middle.mp4"].path
    with open_video(str(path), num_frames=50) as video:
        items = list(video.read_frames(range(50)))
    lost = [item for item in items if isinstance(item, LostFrames)]
    assert len(lost) == 1 and (lost[0].first, lost[0].last, lost[0].resumed_at) == (25, 29, 30)
    assert [index for index, _ in (i for i in items if not isinstance(i, LostFrames))] == [*range(25), *range(30, 50)]
    assert lost[0].message.startswith(f"{path}: frames 25-29 did not decode (")
    assert lost[0].message.endswith("the file is damaged there (decoding went on from the codec keyframe at frame 30), fetch it again")
    row = probe_video(str(path))
    (failed,) = [r for r in decode_clips(str(path), plan_video(row, **PLAN).clips, short_side=H, max_long_side=W) if isinstance(r, ClipFailure)]
    assert failed.error.startswith(f"{path}: frames 25-29 did not decode (") and failed.error.endswith(lost[0].message[-80:])
