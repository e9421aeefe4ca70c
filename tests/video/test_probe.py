"""probe_video on real encoded files: each codec and container, odd sizes, short and variable
frame rate videos, and every kind of broken file, each with its exact recorded outcome."""
import hashlib
import os
import shutil

import numpy as np
import pyarrow.fs as pafs
import pytest

from tests.video_fixtures import (  # PyAV before decord, see video_fixtures
    break_last_packet,
    encoder_available,
    pattern_frame,
    truncate_file,
    write_audio_only,
    write_video,
)

import decord
from semidff.video.probe import (
    REASON_CANNOT_OPEN,
    REASON_EMPTY,
    REASON_MISSING,
    REASON_NO_VIDEO,
    REASON_READ_ERROR,
    REASON_TRUNCATED,
    declared_size,
    normalize_uri,
    probe_video,
    video_id_for,
)

HAS_VP9 = encoder_available("libvpx-vp9")
needs_vp9 = pytest.mark.skipif(not HAS_VP9, reason="this PyAV build has no libvpx-vp9 encoder")
VFR_TIMES = [0.0, 0.04, 0.08, 0.3, 0.34, 0.9, 0.94, 0.98, 1.5, 1.52]  # 10 frames, the last one lasts 0.04 s


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Every file the tests probe, written once: 25 fps, 30 frames, GOP 10 unless named otherwise."""
    root = tmp_path_factory.mktemp("videos")
    write_video(root / "h264.mp4", 30, 96, 64, gop=10)
    write_video(root / "h264_bframes.mp4", 30, 96, 64, gop=10, bframes=True)
    write_video(root / "h264.mkv", 30, 96, 64, gop=10)
    write_video(root / "mpeg4.avi", 30, 96, 64, codec="mpeg4", gop=10)
    write_video(root / "odd_h264.mp4", 12, 97, 61)
    write_video(root / "odd_mpeg4.avi", 12, 97, 61, codec="mpeg4")
    write_video(root / "one_frame.mp4", 1, 64, 48)
    write_video(root / "three_frames.mp4", 3, 64, 48)
    write_video(root / "vfr.mp4", len(VFR_TIMES), 64, 48, timestamps_s=VFR_TIMES)
    write_video(root / "vfr.mkv", len(VFR_TIMES), 64, 48, timestamps_s=VFR_TIMES)
    write_video(root / "faststart.mp4", 30, 96, 64, gop=10, faststart=True)
    write_video(root / "h264.ts", 30, 96, 64, gop=10)
    write_video(root / "live.mkv", 30, 96, 64, gop=10, live=True)
    if HAS_VP9:
        write_video(root / "vp9.webm", 30, 64, 48, codec="libvpx-vp9", gop=10)
        write_video(root / "odd_vp9.webm", 12, 97, 61, codec="libvpx-vp9")
    write_audio_only(root / "audio_only.mp4")
    write_audio_only(root / "audio_only.m4a")
    (root / "zero.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("these are notes, not a video\n" * 20)
    return root


def _decodes_as(path, index: int, width: int, height: int) -> bool:
    """decord decodes frame ``index`` of ``path`` and it shows pattern frame ``index``."""
    frame = decord.VideoReader(str(path), num_threads=1).get_batch([index]).asnumpy()[0].astype(int)
    return float(np.abs(frame - pattern_frame(index, width, height)).mean()) < 12  # mpeg4 at this size: ~9


@pytest.mark.parametrize(
    "name, width, height",
    [
        ("h264.mp4", 96, 64),
        ("h264_bframes.mp4", 96, 64),
        ("h264.mkv", 96, 64),
        ("mpeg4.avi", 96, 64),
        ("h264.ts", 96, 64),
        pytest.param("vp9.webm", 64, 48, marks=needs_vp9),
    ],
)
def test_valid_codecs_and_containers(videos, name, width, height):
    path = videos / name
    info = probe_video(str(path))
    assert (info.status, info.reason, info.error) == ("ok", "", "")
    assert (info.num_frames, info.fps, info.width, info.height, info.duration_s) == (30, 25.0, width, height, 1.2)
    assert info.variable_frame_rate is False
    assert info.size_bytes == path.stat().st_size
    assert info.uri == str(path) and info.video_id == video_id_for(str(path))


@pytest.mark.parametrize("name", ["odd_h264.mp4", "odd_mpeg4.avi", pytest.param("odd_vp9.webm", marks=needs_vp9)])
def test_odd_frame_sizes_are_kept_exactly(videos, name):
    info = probe_video(str(videos / name))
    assert info.ok and (info.width, info.height, info.num_frames) == (97, 61, 12)


@pytest.mark.parametrize("name, frames", [("one_frame.mp4", 1), ("three_frames.mp4", 3)])
def test_videos_shorter_than_any_offset_range_are_recorded_with_their_true_length(videos, name, frames):
    # the clip planner, not the probe, decides that 3 frames cannot hold a pair d frames apart
    info = probe_video(str(videos / name))
    assert info.ok and info.num_frames == frames
    assert info.duration_s == pytest.approx(frames * 0.04) and info.fps == 25.0
    assert _decodes_as(videos / name, frames - 1, 64, 48)


@pytest.mark.parametrize("name", ["vfr.mp4", "vfr.mkv"])
def test_variable_frame_rate_gives_the_mean_rate_and_a_flag(videos, name):
    info = probe_video(str(videos / name))
    assert info.ok and info.num_frames == 10 and info.variable_frame_rate is True
    assert info.duration_s == pytest.approx(1.56)  # 1.52 + the last frame's 0.04
    assert info.fps == pytest.approx(10 / 1.56, abs=1e-3)  # decord's own avg fps says 25 for the MKV


def test_zero_byte_file(videos):
    info = probe_video(str(videos / "zero.mp4"))
    assert (info.status, info.reason, info.size_bytes, info.num_frames) == ("error", REASON_EMPTY, 0, None)
    assert "zero.mp4: zero-byte file" in info.error and "fetch it again" in info.error


def test_text_file_named_mp4(videos):
    info = probe_video(str(videos / "text.mp4"))
    assert (info.status, info.reason) == ("error", REASON_CANNOT_OPEN)
    assert "text.mp4" in info.error and info.size_bytes == (videos / "text.mp4").stat().st_size


@pytest.mark.parametrize("name", ["audio_only.mp4", "audio_only.m4a"])
def test_audio_only_file(videos, name):
    info = probe_video(str(videos / name))
    assert (info.status, info.reason) == ("error", REASON_NO_VIDEO)
    assert f"{name}: no video stream (audio only?)" in info.error


def test_live_matroska_without_duration_cannot_be_opened_by_decord(videos):
    info = probe_video(str(videos / "live.mkv"))
    assert (info.status, info.reason) == ("error", REASON_CANNOT_OPEN)
    assert "declares no duration" in info.error and "remux" in info.error


def test_mp4_cut_before_its_index_is_truncated(videos, tmp_path):
    cut = truncate_file(videos / "h264.mp4", 0.5, tmp_path / "cut.mp4")  # moov is written last
    info = probe_video(str(cut))
    assert (info.status, info.reason, info.size_bytes) == ("error", REASON_TRUNCATED, cut.stat().st_size)
    assert f"{cut}: the file has {cut.stat().st_size} bytes but its container says" in info.error
    assert "fetch it again" in info.error


def test_faststart_mp4_cut_inside_its_last_packet_is_truncated_every_time(videos, tmp_path):
    # decord itself lists all 30 frames from the index; its decoder thread can then raise the
    # damaged packet's error on any read, so the outcome must not depend on decord
    data = (videos / "faststart.mp4").read_bytes()
    cut = tmp_path / "cut_tail.mp4"
    cut.write_bytes(data[:-20])
    assert len(decord.VideoReader(str(cut))) == 30
    outcomes = {(info.status, info.reason) for info in (probe_video(str(cut)) for _ in range(5))}
    assert outcomes == {("error", REASON_TRUNCATED)}


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.8, 0.95, 0.99])
@pytest.mark.parametrize(
    "name, codec, faststart",
    [("moov_last.mp4", "libx264", False), ("moov_first.mp4", "libx264", True), ("v.avi", "mpeg4", False), ("v.mkv", "libx264", False)]
    + ([("v.webm", "libvpx-vp9", False)] if HAS_VP9 else []),
)
def test_any_cut_of_any_container_is_truncated(tmp_path, name, codec, faststart, fraction):
    """decord alone would report fewer frames (MKV, WebM, AVI; the last possibly a damaged partial
    packet), fail to open, or promise frames it cannot decode (MP4), depending on where the cut is."""
    source = write_video(tmp_path / name, 40, 64, 48, codec=codec, gop=8, faststart=faststart)
    assert declared_size(str(source)) == source.stat().st_size
    cut = truncate_file(source, fraction, tmp_path / f"cut_{name}")
    info = probe_video(str(cut))
    assert (info.status, info.reason, info.num_frames) == ("error", REASON_TRUNCATED, None)


def test_last_frame_that_does_not_decode_is_not_counted_every_time(videos, tmp_path):
    """Every size field right, but the last packet is broken: decord still lists 30 frames (and
    would hand back frame 28 again for it). The row counts the 29 that decode and says so."""
    broken = break_last_packet(videos / "faststart.mp4", tmp_path / "broken.mp4")
    assert declared_size(str(broken)) == broken.stat().st_size and len(decord.VideoReader(str(broken))) == 30
    infos = [probe_video(str(broken)) for _ in range(5)]
    assert {(i.status, i.reason, i.num_frames, i.declared_frames, i.truncated) for i in infos} == {("ok", "", 29, 30, True)}
    assert infos[0].note.startswith("truncated: the container declares 30 frames but only the first 29 decode")
    assert (infos[0].fps, infos[0].fps_source, infos[0].duration_s) == (25.0, "container", 1.16)


def test_declared_size_is_unknown_without_size_fields(videos):
    for name in ("text.mp4", "zero.mp4", "h264.ts", "live.mkv"):
        assert declared_size(str(videos / name)) is None, name


def test_missing_file_and_directory(videos, tmp_path):
    missing = probe_video(str(tmp_path / "gone.mp4"))
    assert (missing.status, missing.reason, missing.size_bytes) == ("error", REASON_MISSING, None)
    assert "No such file" in missing.error
    directory = probe_video(str(tmp_path))
    assert directory.reason == REASON_MISSING and "not a regular file" in directory.error


def test_unknown_uri_scheme_is_a_row_not_an_exception():
    info = probe_video("nosuch://bucket/clip.mp4")
    assert (info.status, info.reason, info.uri) == ("error", REASON_READ_ERROR, "nosuch://bucket/clip.mp4")


def test_video_id_is_a_fixed_function_of_the_normalised_uri(tmp_path, monkeypatch):
    assert video_id_for("/data/videos/a.mp4") == hashlib.sha1(b"/data/videos/a.mp4").hexdigest()[:16] == "3fd2ed33dc63b37a"
    assert video_id_for("file:///data/videos/a%20b.mp4") == video_id_for("/data/videos/a b.mp4")
    assert video_id_for("/data/videos/../videos/./a.mp4") == video_id_for("/data/videos/a.mp4")
    assert video_id_for("S3://bucket/raw/a.mp4") == video_id_for("s3://bucket/raw/a.mp4")
    monkeypatch.chdir(tmp_path)
    assert normalize_uri("clips/a.mp4") == os.path.join(str(tmp_path), "clips", "a.mp4")


def test_file_uri_and_path_give_the_same_row(videos):
    by_path = probe_video(str(videos / "h264.mp4"))
    by_uri = probe_video(f"file://{videos / 'h264.mp4'}")
    assert by_uri == by_path


def test_probe_through_a_pyarrow_filesystem(videos, tmp_path):
    """The object-store path (stream to a temporary file, then decord), on a non-local pyarrow filesystem."""
    shutil.copy(videos / "h264.mp4", tmp_path / "clip.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    filesystem = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    info = probe_video("bucket://clip.mp4", filesystem=filesystem)
    assert info.ok and (info.num_frames, info.width, info.height) == (30, 96, 64)
    assert info.uri == "bucket://clip.mp4" and info.size_bytes == (tmp_path / "clip.mp4").stat().st_size
    assert probe_video("empty.mp4", filesystem=filesystem).reason == REASON_EMPTY
    assert probe_video("gone.mp4", filesystem=filesystem).reason == REASON_MISSING
