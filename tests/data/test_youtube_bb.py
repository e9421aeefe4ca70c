"""YouTube-BB detection CSV reader and loader: the xmin, xmax, ymin, ymax column order, segments
keyed by (youtube_id, class_id, object_id), timestamps to frame indices, and errors that name the
line and column."""
import re
from collections import Counter
from pathlib import Path

import pytest

from semidff.data.imagenet_vid import VID_CLASS_NAMES
from semidff.data.records import FrameAnnotation, ObjectAnnotation
from semidff.data.youtube_bb import (
    YTBB_CLASS_NAMES,
    YTBB_CLASSES,
    YTBB_LABELS,
    YtbbRow,
    load_youtube_bb,
    read_ytbb_detection_csv,
    timestamp_to_frame_index,
    ytbb_segments,
)

# Two segments in one YouTube video (airplane objects 0 and 1, rows out of time order), a boat, a
# person (no VID class) and a 'none' row.
CSV = """\
AAAAAAAAAAA,5000,13,airplane,0,present,0.1,0.5,0.2,0.9
AAAAAAAAAAA,7000,13,airplane,0,present,0.0,1.0,0.0,1.0
AAAAAAAAAAA,6000,13,airplane,0,absent,-1.0,-1.0,-1.0,-1.0
AAAAAAAAAAA,5000,13,airplane,1,present,0.25,0.75,0.25,0.75
BBBBBBBBBBB,0,3,boat,0,present,0.5,0.5,0.5,0.5
C-_CCCCCCCC,1000,0,person,2,present,0.0,0.5,0.0,0.5
DDDDDDDDDDD,1000,22,none,0,absent,-1.0,-1.0,-1.0,-1.0
"""
SEG_A0, SEG_A1, SEG_B, SEG_C = "AAAAAAAAAAA+13+0", "AAAAAAAAAAA+13+1", "BBBBBBBBBBB+3+0", "C-_CCCCCCCC+0+2"


@pytest.fixture
def csv_path(tmp_path: Path) -> Path:
    path = tmp_path / "yt_bb_detection_validation.csv"
    path.write_text(CSV)
    return path


def make_videos(folder: Path, names) -> Path:
    """Empty placeholder files: the tests' probe never opens them."""
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / f"{name}.mp4").touch()
    return folder


def fixed_probe(fps, num_frames=100, width=640, height=480):
    return lambda path: (width, height, num_frames, fps)


def test_class_table():
    assert YTBB_CLASSES[0] == "person" and YTBB_CLASSES[22] == "none" and YTBB_CLASSES[23] == "car"
    assert len(YTBB_CLASS_NAMES) == 23 and "none" not in YTBB_CLASS_NAMES
    assert YTBB_LABELS[0] == 1 and YTBB_LABELS[21] == 22 and YTBB_LABELS[23] == 23
    assert all(YTBB_CLASS_NAMES[label - 1] == YTBB_CLASSES[class_id] for class_id, label in YTBB_LABELS.items())


def test_csv_rows_keep_the_xmin_xmax_ymin_ymax_order(csv_path):
    rows = read_ytbb_detection_csv(csv_path)
    assert len(rows) == 7
    assert rows[0] == YtbbRow("AAAAAAAAAAA", 5000, 13, "airplane", 0, True, 0.1, 0.5, 0.2, 0.9, line=1)
    assert rows[2].present is False and rows[5].youtube_id == "C-_CCCCCCCC"


def test_segments_are_keyed_by_the_triple_and_sorted_by_time(csv_path):
    segments = ytbb_segments(read_ytbb_detection_csv(csv_path))
    assert list(segments) == [("AAAAAAAAAAA", 13, 0), ("AAAAAAAAAAA", 13, 1), ("BBBBBBBBBBB", 3, 0), ("C-_CCCCCCCC", 0, 2), ("DDDDDDDDDDD", 22, 0)]
    assert [row.timestamp_ms for row in segments[("AAAAAAAAAAA", 13, 0)]] == [5000, 6000, 7000]
    assert [row.timestamp_ms for row in segments[("AAAAAAAAAAA", 13, 1)]] == [5000]


def test_load_segments_boxes_absent_frames_and_labels(csv_path, tmp_path):
    videos = make_videos(tmp_path / "clips", [SEG_A0, SEG_A1, SEG_B, SEG_C])
    skipped = Counter()
    dataset = load_youtube_bb(csv_path, videos, probe=fixed_probe(30.0), skipped=skipped)
    assert dataset.class_names == YTBB_CLASS_NAMES
    assert [v.video_id for v in dataset.videos] == [SEG_A0, SEG_A1, SEG_B, SEG_C]
    a0 = dataset.videos[0]
    assert (a0.source, a0.width, a0.height, a0.num_frames, a0.fps, a0.frame_paths) == (str(videos / f"{SEG_A0}.mp4"), 640, 480, 100, 30.0, None)
    airplane = YTBB_LABELS[13]
    assert a0.frames == [
        # x from xmin=0.1, xmax=0.5 of 640; y from ymin=0.2, ymax=0.9 of 480. Read as (x1, y1, x2, y2)
        # the same numbers would give (64, 240, 127, 431).
        FrameAnnotation(0, [ObjectAnnotation(0, airplane, (64.0, 96.0, 319.0, 431.0))]),
        FrameAnnotation(30, []),  # absent
        FrameAnnotation(60, [ObjectAnnotation(0, airplane, (0.0, 0.0, 639.0, 479.0))]),
    ]
    assert dataset.videos[1].frames == [FrameAnnotation(0, [ObjectAnnotation(1, airplane, (160.0, 120.0, 479.0, 359.0))])]
    # a zero-width box keeps one pixel
    assert dataset.videos[2].frames == [FrameAnnotation(0, [ObjectAnnotation(0, YTBB_LABELS[3], (320.0, 240.0, 320.0, 240.0))])]
    assert dataset.videos[3].frames[0].objects[0].label == 1  # person
    assert skipped == Counter({"segment of class none": 1})


@pytest.mark.parametrize("fps, clip_indices, full_indices", [(30.0, [0, 30, 60], [150, 180, 210]), (25.0, [0, 25, 50], [125, 150, 175])])
def test_timestamps_to_frames_for_clips_and_full_videos(csv_path, tmp_path, fps, clip_indices, full_indices):
    clips = make_videos(tmp_path / "clips", [SEG_A0])
    dataset = load_youtube_bb(csv_path, clips, probe=fixed_probe(fps, num_frames=300), max_videos=1)
    assert [f.frame_index for f in dataset.videos[0].frames] == clip_indices
    full = make_videos(tmp_path / "full", ["AAAAAAAAAAA"])
    dataset = load_youtube_bb(csv_path, full, video_files="full", probe=fixed_probe(fps, num_frames=300), max_videos=2)
    assert [v.video_id for v in dataset.videos] == [SEG_A0, SEG_A1]
    assert {v.source for v in dataset.videos} == {str(full / "AAAAAAAAAAA.mp4")}
    assert [f.frame_index for f in dataset.videos[0].frames] == full_indices
    assert [f.frame_index for f in dataset.videos[1].frames] == [full_indices[0]]


def test_timestamp_rounding():
    assert timestamp_to_frame_index(1000, 30.0) == 30
    assert timestamp_to_frame_index(1016, 30.0) == 30  # 30.48
    assert timestamp_to_frame_index(1050, 30.0) == 32  # 31.5, halves up
    assert timestamp_to_frame_index(6000, 29.97, start_ms=5000) == 30
    assert timestamp_to_frame_index(7000, 25.0, start_ms=5000) == 50


def test_annotations_at_and_after_the_clip_end(csv_path, tmp_path):
    clips = make_videos(tmp_path / "clips", [SEG_A0])
    skipped = Counter()
    # 60 frames: 7000 ms maps to frame 60, one past the end (a clip cut at its last annotation)
    dataset = load_youtube_bb(csv_path, clips, probe=fixed_probe(30.0, num_frames=60), max_videos=1, skipped=skipped)
    assert [f.frame_index for f in dataset.videos[0].frames] == [0, 30, 59]
    dataset = load_youtube_bb(csv_path, clips, probe=fixed_probe(30.0, num_frames=40), max_videos=1, skipped=skipped)
    assert [f.frame_index for f in dataset.videos[0].frames] == [0, 30]
    assert skipped == Counter({"annotation after the end of the video": 1})


def test_vid_class_space(csv_path, tmp_path):
    videos = make_videos(tmp_path / "clips", [SEG_A0, SEG_A1, SEG_B, SEG_C])
    skipped = Counter()
    dataset = load_youtube_bb(csv_path, videos, probe=fixed_probe(30.0), classes="vid", skipped=skipped)
    assert dataset.class_names == VID_CLASS_NAMES
    assert [v.video_id for v in dataset.videos] == [SEG_A0, SEG_A1, SEG_B]  # person has no VID class
    assert dataset.videos[0].frames[0].objects[0].label == 1  # airplane
    assert dataset.videos[2].frames[0].objects[0].label == VID_CLASS_NAMES.index("watercraft") + 1  # boat
    assert skipped == Counter({"segment of class none": 1, "segment of a class outside the VID classes": 1})


def test_missing_and_unusable_videos(csv_path, tmp_path):
    videos = make_videos(tmp_path / "clips", [SEG_A0, SEG_B, SEG_C])  # SEG_A1 never downloaded
    with pytest.raises(FileNotFoundError, match=re.escape(f"{videos / SEG_A1}.mp4: video missing") + ".*<youtube_id>\\+<class_id>\\+<object_id>.mp4"):
        load_youtube_bb(csv_path, videos, probe=fixed_probe(30.0))
    skipped = Counter()
    dataset = load_youtube_bb(csv_path, videos, probe=fixed_probe(30.0), skip_unavailable=True, skipped=skipped)
    assert [v.video_id for v in dataset.videos] == [SEG_A0, SEG_B, SEG_C]
    assert skipped["segment whose video is unavailable"] == 1

    def broken_b(path):
        if SEG_B in path:
            raise ValueError(f"{path}: the container does not open")
        return (640, 480, 100, 30.0)

    (videos / f"{SEG_A1}.mp4").touch()
    with pytest.raises(ValueError, match="does not open"):
        load_youtube_bb(csv_path, videos, probe=broken_b)
    assert len(load_youtube_bb(csv_path, videos, probe=broken_b, skip_unavailable=True).videos) == 3


def test_default_probe_reads_a_real_clip(csv_path, tmp_path):
    from tests.video_fixtures import write_video

    clips = tmp_path / "clips"
    clips.mkdir()
    write_video(clips / f"{SEG_A0}.mp4", num_frames=51, width=64, height=48, fps=25)
    video = load_youtube_bb(csv_path, clips, max_videos=1).videos[0]
    assert (video.width, video.height, video.num_frames, video.fps) == (64, 48, 51, 25.0)
    assert [f.frame_index for f in video.frames] == [0, 25, 50]
    assert video.frames[0].objects[0].box == pytest.approx((6.4, 9.6, 31.0, 42.2))


@pytest.mark.parametrize(
    "line, message",
    [
        ("AAAAAAAAAAA,5000,13,airplane,0,present,0.1,0.5,0.2", "line 2: expected 10 columns"),
        ("AAAAAAAAAAA,5s,13,airplane,0,present,0.1,0.5,0.2,0.9", "line 2, column 2 (timestamp_ms): expected an integer, got '5s'"),
        ("AAAAAAAAAAA,5000,24,car,0,present,0.1,0.5,0.2,0.9", "line 2, column 3 (class_id): expected a YT-BB class id 0..23"),
        ("AAAAAAAAAAA,5000,13,car,0,present,0.1,0.5,0.2,0.9", "line 2, column 4 (class_name): expected 'airplane' for class id 13"),
        ("AAAAAAAAAAA,5000,13,airplane,-1,present,0.1,0.5,0.2,0.9", "line 2, column 5 (object_id): expected an integer >= 0"),
        ("AAAAAAAAAAA,5000,13,airplane,0,visible,0.1,0.5,0.2,0.9", "line 2, column 6 (object_presence): expected 'present' or 'absent'"),
        ("AAAAAAAAAAA,5000,13,airplane,0,present,1.5,0.5,0.2,0.9", "line 2, column 7 (xmin): expected a fraction in [0, 1]"),
        # an x1, y1, x2, y2 row read in YT-BB's order: xmax (0.2) < xmin (0.5)
        ("AAAAAAAAAAA,5000,13,airplane,0,present,0.5,0.2,0.7,0.9", "line 2, column 8 (xmax): expected xmax >= xmin = 0.5"),
        ("AAAAAAAAAAA,5000,13,airplane,0,present,0.1,0.5,0.9,0.2", "line 2, column 10 (ymax): expected ymax >= ymin = 0.9"),
        ("AAAAAAAAAAA,5000,13,airplane,0,present,0.1,half,0.2,0.9", "line 2, column 8 (xmax): expected a number, got 'half'"),
    ],
)
def test_malformed_lines_name_the_line_and_column(tmp_path, line, message):
    path = tmp_path / "bad.csv"
    path.write_text(CSV.splitlines()[0] + "\n" + line + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}: {message}")):
        read_ytbb_detection_csv(path)


def test_gzip_csv_and_missing_csv(tmp_path):
    import gzip

    path = tmp_path / "a.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write(CSV)
    assert len(read_ytbb_detection_csv(path)) == 7
    with pytest.raises(FileNotFoundError, match="nothing.csv: no such file"):
        read_ytbb_detection_csv(tmp_path / "nothing.csv")
