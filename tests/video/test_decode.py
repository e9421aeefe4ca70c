"""Clip decoding on real encoded videos: the exact planned frames, resized in uint8, keyframes from
the container's index, and damaged or unreadable files as failures instead of exceptions."""
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest

from tests.video_fixtures import break_last_packet, encoder_available, pattern_frame, write_video  # PyAV before decord

from semidff.preprocess import resized_shape
from semidff.video.clip_plan import ClipSpec, frames_decoded_for, plan_clips
from semidff.video.decode import (
    REASON_DECODE_FAILED,
    REASON_FRAME_OUT_OF_RANGE,
    ClipFailure,
    ClipFrames,
    VideoOpenError,
    codec_keyframe_indices,
    decode_clips,
    open_video,
    resize_frames,
)
from semidff.video.probe import REASON_CANNOT_OPEN, REASON_MISSING

HAS_VP9 = encoder_available("libvpx-vp9")  # now, before decord's bundled libvpx is loaded

W, H = 64, 48


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("decode")
    paths = {
        "gop10": write_video(root / "gop10.mp4", 100, W, H, gop=10),
        "bframes": write_video(root / "bframes.mp4", 40, W, H, gop=10, bframes=True),
        "odd": write_video(root / "odd_97x61.mp4", 6, 97, 61),
        "short": write_video(root / "short.mp4", 40, W, H, gop=10),
    }
    paths["damaged"] = break_last_packet(paths["short"], root / "damaged.mp4")
    (root / "text.mp4").write_text("not a video\n" * 30)
    paths["text"] = root / "text.mp4"
    return paths


def info(path: Path, num_frames: int, fps: float = 25.0) -> dict:
    return dict(video_id=path.stem, uri=str(path), num_frames=num_frames, fps=fps)


def frame_index(frame: np.ndarray, num_frames: int) -> int:
    """The pattern frame a decoded native-size frame is closest to (codec blur allowed)."""
    errors = [np.abs(frame.astype(np.int16) - pattern_frame(i, W, H)).mean() for i in range(num_frames)]
    assert min(errors) < 6, f"the frame matches no pattern frame (mean error {min(errors):.1f})"
    return int(np.argmin(errors))


def native(clips, path):
    """Decode at the native 64x48 size (the resize rule gives scale 1)."""
    return list(decode_clips(str(path), clips, short_side=H, max_long_side=W))


def test_keyframes_come_from_the_container_index(videos):
    assert codec_keyframe_indices(str(videos["gop10"])) == list(range(0, 100, 10))
    assert codec_keyframe_indices(str(videos["bframes"])) == [0, 10, 20, 30]  # display order, B-frames reordered


def test_decoded_clips_hold_exactly_the_planned_frames(videos):
    clips = plan_clips(info(videos["gop10"], 100), currents_per_key=3, key_frames_per_second=2, seed=1)
    results = native(clips, videos["gop10"])
    assert sorted(r.clip_id for r in results) == sorted(c.clip_id for c in clips)
    for result in results:
        assert isinstance(result, ClipFrames) and result.scale == 1.0
        assert result.key_frame.shape == (H, W, 3) and result.key_frame.dtype == np.uint8
        assert result.current_frames.shape == (3, H, W, 3) and result.current_frames.dtype == np.uint8
        assert frame_index(result.key_frame, 100) == result.clip.key_index
        assert [frame_index(f, 100) for f in result.current_frames] == list(result.clip.current_indices)


def test_b_frames_repeats_and_small_chunks_decode_the_same_frames(videos):
    path = videos["bframes"]
    clips = plan_clips(info(path, 40), currents_per_key=4, offset_range=(0, 2), key_frames_per_video=5, seed=2)
    assert any(len(set(c.current_indices)) < 4 for c in clips)  # 3 offsets for 4 currents: repeats
    one_read = native(clips, path)
    two_frame_reads = list(decode_clips(str(path), clips, short_side=H, max_long_side=W, chunk_frames=2))
    for a, b in zip(one_read, two_frame_reads):
        assert a.clip_id == b.clip_id and np.array_equal(a.current_frames, b.current_frames)
        assert [frame_index(f, 40) for f in a.current_frames] == list(a.clip.current_indices)


def test_frames_are_resized_by_the_dff_rule_in_uint8(videos):
    path = videos["odd"]
    (clip,) = plan_clips(info(path, 6), currents_per_key=2)
    (result,) = decode_clips(str(path), [clip])  # defaults: short side 600, long side <= 1000
    height, width, scale = resized_shape(61, 97)
    assert (height, width) == (600, 954)
    assert result.key_frame.shape == (height, width, 3) and result.current_frames.shape == (2, height, width, 3)
    assert result.key_frame.dtype == np.uint8 and result.scale == pytest.approx(scale)
    (small,) = decode_clips(str(path), [clip], short_side=30, max_long_side=40)
    assert small.key_frame.shape == (25, 40, 3)  # 30 / 61 * 97 = 47.7 > 40: the long side decides
    expected, _ = resize_frames(pattern_frame(0, 97, 61)[None], 30, 40)
    assert np.abs(small.key_frame.astype(int) - expected[0]).mean() < 6


def test_keys_aligned_to_codec_keyframes_decode_fewer_frames(videos):
    path = str(videos["gop10"])
    with open_video(path) as video:  # one open: keyframes, then the clips
        keyframes = video.keyframe_indices()
        plain = plan_clips(info(videos["gop10"], 100), codec_keyframes=keyframes, currents_per_key=2)
        aligned = plan_clips(info(videos["gop10"], 100), codec_keyframes=keyframes, currents_per_key=2, align_to_codec_keyframes=True)
        results = list(video.decode_clips(aligned, short_side=H, max_long_side=W))
    assert [c.key_index for c in plain] == [0, 25, 50, 75]
    assert [c.key_index for c in aligned] == [0, 20, 50, 70]
    assert sum(c.frames_decoded for c in aligned) < sum(c.frames_decoded for c in plain)
    assert sum(c.frames_decoded for c in aligned) == frames_decoded_for([i for c in aligned for i in c.frame_indices], keyframes)
    assert [frame_index(r.key_frame, 100) for r in results] == [0, 20, 50, 70]


def test_a_damaged_frame_fails_the_clips_from_there_on(videos):
    """Clips yielded before the failing read are good; that clip and every later one fail."""
    path = videos["damaged"]  # 40 frames, the last one cannot be decoded
    clips = plan_clips(info(path, 40), key_frames_per_second=2.5, currents_per_key=9)  # keys 0, 10, 20, 30, all offsets
    assert clips[-1].current_indices[-1] == 39
    results = native(clips, path)
    assert sorted(r.clip_id for r in results) == sorted(c.clip_id for c in clips)
    outcomes = [isinstance(r, ClipFrames) for r in results]
    assert outcomes == sorted(outcomes, reverse=True)  # the failures are a suffix in yield order
    failed = [r for r in results if isinstance(r, ClipFailure)]
    assert clips[-1].clip_id in {r.clip_id for r in failed}
    assert all(r.reason == REASON_DECODE_FAILED and str(path) in r.error and "did not decode" in r.error for r in failed)
    for result in results:
        if isinstance(result, ClipFrames):
            assert [frame_index(f, 40) for f in result.current_frames] == list(result.clip.current_indices)


def test_indices_past_the_end_fail_only_their_clip(videos):
    path = videos["short"]
    good = ClipSpec("short:0", "short", str(path), 0, (1,), (1,))
    stale = ClipSpec("short:38", "short", str(path), 38, (45,), (7,))  # planned for a longer file
    by_id = {r.clip_id: r for r in native([stale, good], path)}
    assert isinstance(by_id["short:0"], ClipFrames)
    assert by_id["short:38"].reason == REASON_FRAME_OUT_OF_RANGE and "rebuild the manifest" in by_id["short:38"].error


def test_files_on_other_filesystems_are_read_through_pyarrow(videos):
    """The object-store path (stream to a temporary file, then decode it), on a non-local pyarrow filesystem."""
    filesystem = pafs.SubTreeFileSystem(str(videos["gop10"].parent), pafs.LocalFileSystem())
    clips = plan_clips(dict(video_id="remote", uri="bucket://gop10.mp4", num_frames=100, fps=25.0), key_frames_per_video=2)
    results = list(decode_clips("bucket://gop10.mp4", clips, short_side=H, max_long_side=W, filesystem=filesystem))
    assert [frame_index(r.key_frame, 100) for r in results] == [0, 50]
    (gone,) = decode_clips("bucket://gone.mp4", clips[:1], filesystem=filesystem)
    assert gone.reason == REASON_MISSING and "bucket://gone.mp4" in gone.error


@pytest.mark.parametrize("name, reason", [("text", REASON_CANNOT_OPEN), ("missing", REASON_MISSING)])
def test_a_file_that_cannot_be_opened_fails_every_clip(videos, name, reason):
    path = videos.get(name, videos["gop10"].parent / "missing.mp4")
    clips = plan_clips(info(path, 40), key_frames_per_video=3)
    results = list(decode_clips(str(path), clips))
    assert [r.clip_id for r in results] == [c.clip_id for c in clips]
    assert all(isinstance(r, ClipFailure) and r.reason == reason and str(path) in r.error for r in results)


# ---------------------------------------------------------------------------------------------
# The PyAV path against decord, the reference


@pytest.fixture(scope="module")
def formats(tmp_path_factory, videos) -> dict[str, Path]:
    """One file per container/codec case the manifest accepts, written with PyAV (before decord loads)."""
    root = tmp_path_factory.mktemp("formats")
    paths = {
        "bframes.mp4": videos["bframes"],
        "mpeg4.avi": write_video(root / "mpeg4.avi", 30, W, H, codec="mpeg4", gop=10),
        "h264.mkv": write_video(root / "h264.mkv", 30, W, H, gop=10, bframes=True),
        "h264.ts": write_video(root / "h264.ts", 30, W, H, gop=10),
        "vfr.mp4": write_video(root / "vfr.mp4", 6, W, H, timestamps_s=[0, 0.04, 0.3, 0.34, 1.0, 1.04]),
        "odd_97x61.mp4": videos["odd"],
    }
    if HAS_VP9:
        paths["vp9.webm"] = write_video(root / "vp9.webm", 30, W, H, codec="libvpx-vp9", gop=10)
    return paths


@pytest.mark.parametrize("name", ["bframes.mp4", "mpeg4.avi", "h264.mkv", "h264.ts", "vfr.mp4", "odd_97x61.mp4", "vp9.webm"])
def test_pyav_decodes_the_same_frames_as_decord(formats, name):
    """Frame-exact: the same indices, keyframes and pixels (the same FFmpeg decoders and RGB conversion)."""
    if name not in formats:
        pytest.skip("no VP9 encoder here")
    path = str(formats[name])
    decoded = {}
    for decoder in ("pyav", "decord"):
        with open_video(path, decoder=decoder) as video:
            assert video.decoder == decoder
            clips = plan_clips(
                info(formats[name], video.num_frames), key_frames_per_second=5, currents_per_key=3, offset_range=(0, 4),
                codec_keyframes=video.keyframe_indices(),
            )
            results = list(video.decode_clips(clips, short_side=H, max_long_side=200, chunk_frames=3))
            decoded[decoder] = (video.num_frames, video.keyframe_indices(), results, np.stack(list(video.iter_frames())))
    (frames_a, keys_a, clips_a, all_a), (frames_b, keys_b, clips_b, all_b) = decoded["pyav"], decoded["decord"]
    assert (frames_a, keys_a) == (frames_b, keys_b) and len(all_a) == frames_a
    assert np.array_equal(all_a, all_b)
    assert [r.clip_id for r in clips_a] == [r.clip_id for r in clips_b] and clips_a
    for a, b in zip(clips_a, clips_b):
        assert isinstance(a, ClipFrames) and np.array_equal(a.key_frame, b.key_frame) and np.array_equal(a.current_frames, b.current_frames)


def test_auto_uses_pyav_only_when_its_frame_count_is_the_plans(videos):
    path = str(videos["gop10"])
    with open_video(path) as video:
        assert video.decoder == "pyav"
    with open_video(path, num_frames=100) as video:
        assert video.decoder == "pyav"
    with open_video(path, num_frames=99) as video:  # the manifest counted otherwise: decord's indices rule
        assert video.decoder == "decord" and video.num_frames == 100
    with pytest.raises(VideoOpenError, match="PyAV cannot decode it frame-exactly"):
        with open_video(path, decoder="pyav", num_frames=99):
            pass
    with pytest.raises(ValueError, match="decoder='ffmpeg'"):
        with open_video(path, decoder="ffmpeg"):
            pass


def test_a_damaged_frame_fails_the_same_clips_with_pyav_alone_and_after_the_fallback(videos):
    """PyAV stops at the broken packet; "auto" lets decord try from there, and decord fails too."""
    path = videos["damaged"]
    clips = plan_clips(info(path, 40), key_frames_per_second=2.5, currents_per_key=9)
    outcomes = {}
    for decoder in ("pyav", "auto"):
        results = list(decode_clips(str(path), clips, short_side=H, max_long_side=W, decoder=decoder))
        outcomes[decoder] = {r.clip_id: isinstance(r, ClipFrames) for r in results}
        failed = [r for r in results if isinstance(r, ClipFailure)]
        assert failed and all(r.reason == REASON_DECODE_FAILED and "did not decode" in r.error for r in failed)
    assert outcomes["pyav"][clips[0].clip_id] and not outcomes["pyav"][clips[-1].clip_id]
    assert sum(outcomes["auto"].values()) <= sum(outcomes["pyav"].values())  # decord may fail earlier (it decodes ahead)
    with open_video(str(path), decoder="pyav") as video:
        with pytest.raises(VideoOpenError, match="did not decode"):
            list(video.iter_frames())


def break_packet_of_frame(path: Path, frame: int, output: Path) -> Path:
    """Copy an H.264 MP4 with the NAL length of frame ``frame``'s packet set to an impossible value:
    a file damaged in the middle, every size field right (the probe cannot see it)."""
    import av

    with av.open(str(path)) as container:
        packets = sorted((packet.pts, packet.pos) for packet in container.demux(video=0) if packet.size)
    data = bytearray(path.read_bytes())
    position = packets[frame][1]
    data[position : position + 4] = b"\x7f\xff\xff\xff"
    output.write_bytes(bytes(data))
    return output


@pytest.mark.parametrize("decoder", ["decord", "pyav", "auto"])
def test_a_frame_damaged_mid_file_fails_only_the_clips_up_to_the_next_keyframe(videos, tmp_path, decoder):
    """Frame 25 of 40 is broken (keyframes every 10). The clips before it come out with their
    frames with every decoder (decord used to fail its whole read chunk, the good clips 0 and 10
    with it); the clip at 20 needs frame 25 and fails; decoding starts again at keyframe 30, so the
    clip at 30 keeps its frames, exactly."""
    path = break_packet_of_frame(videos["short"], 25, tmp_path / "damaged_mid.mp4")
    assert codec_keyframe_indices(str(path)) == [0, 10, 20, 30]
    clips = plan_clips(info(path, 40), key_frames_per_second=2.5, offset_range=(5, 5))  # keys 0, 10, 20, 30 + 5
    results = list(decode_clips(str(path), clips, short_side=H, max_long_side=W, decoder=decoder))
    outcomes = [(r.clip.key_index, isinstance(r, ClipFrames)) for r in results]
    if decoder == "decord":  # its decoding thread works ahead: now and then frame 25's error surfaces on an earlier read
        assert sorted(outcomes)[2:] == [(20, False), (30, True)], outcomes
        results = sorted(results, key=lambda r: r.clip.key_index)
    else:
        assert outcomes == [(0, True), (10, True), (20, False), (30, True)]
    for result in [r for r in results if isinstance(r, ClipFrames)]:
        assert frame_index(result.key_frame, 40) == result.clip.key_index
        assert [frame_index(f, 40) for f in result.current_frames] == list(result.clip.current_indices)
    failed = results[2]
    assert failed.reason == REASON_DECODE_FAILED
    assert failed.error.startswith(f"{path}: frames {25 if decoder != 'decord' else ''}") and "-29 did not decode (" in failed.error
    assert failed.error.endswith("the file is damaged there (decoding went on from the codec keyframe at frame 30), fetch it again")
