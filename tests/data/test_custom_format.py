"""The semidff-video/1 format: write → load round trip, path resolution, and a validator that
finds every planted problem at its location."""
import json

import pytest

from semidff.data.custom_format import (
    CustomFormatError,
    Problem,
    load_custom_dataset,
    validate_custom_dataset,
    write_custom_dataset,
)
from semidff.data.records import FrameAnnotation, LabeledDataset, LabeledVideo, ObjectAnnotation


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _dataset(tmp_path):
    inside = _touch(tmp_path / "ds" / "videos" / "a.mp4")
    outside = _touch(tmp_path / "elsewhere" / "b.mkv")
    every_frame = LabeledVideo(
        video_id="a", source=str(inside), width=64, height=48, num_frames=3, fps=25.0,
        frames=[
            FrameAnnotation(0, [ObjectAnnotation(0, 2, (10.5, 20.25, 30.5, 40.75)), ObjectAnnotation(-1, 1, (0, 0, 63, 47), occluded=True)]),
            FrameAnnotation(1, []),
            FrameAnnotation(2, [ObjectAnnotation(0, 2, (11, 21, 31, 41))]),
        ],
    )
    sparse = LabeledVideo(
        video_id="b", source=str(outside), width=32, height=32, num_frames=100, fps=None,
        frames=[FrameAnnotation(0, []), FrameAnnotation(50, [ObjectAnnotation(3, 1, (4, 4, 4, 4))])],
    )
    remote = LabeledVideo(
        video_id="c", source="s3://bucket/c.mp4", width=32, height=32, num_frames=5, fps=29.97,
        frames=[FrameAnnotation(i, []) for i in range(5)],
    )
    return LabeledDataset(class_names=["cat", "dog"], videos=[every_frame, sparse, remote])


def test_write_then_load_gives_the_same_dataset(tmp_path):
    dataset = _dataset(tmp_path)
    path = write_custom_dataset(dataset, tmp_path / "ds" / "dataset.json")
    assert validate_custom_dataset(path) == []
    assert load_custom_dataset(path) == dataset

    document = json.loads(path.read_text())
    assert document["format"] == "semidff-video/1"
    assert document["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    files = [v["file"] for v in document["videos"]]
    assert files == ["videos/a.mp4", str(tmp_path / "elsewhere" / "b.mkv"), "s3://bucket/c.mp4"]
    assert "annotated_frames" not in document["videos"][0] and document["videos"][1]["annotated_frames"] == [0, 50]
    first = document["annotations"][0]
    assert first["bbox"] == [10.5, 20.25, 21, 21.5]  # COCO [x, y, w, h]: w = x2 - x1 + 1
    assert first["category_id"] == 2 and first["track_id"] == 0 and "occluded" not in first
    assert document["annotations"][1]["occluded"] is True
    assert not list((tmp_path / "ds").glob(".*.tmp"))  # the temp file was renamed


def _write(path, document):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1))
    return path


def _document(**video):
    return {
        "format": "semidff-video/1",
        "categories": [{"id": 10, "name": "dog"}, {"id": 3, "name": "cat"}],
        "videos": [{"id": 7, "file": "clips/v.mp4", "width": 40, "height": 30, "num_frames": 4, **video}],
        "annotations": [
            {"video_id": "7", "frame_index": 1, "category_id": 10, "bbox": [0, 0, 40, 30]},
            {"video_id": 7, "frame_index": 1, "category_id": 3, "bbox": [2.5, 3, 1, 1], "track_id": 5},
        ],
    }


def test_relative_files_resolve_against_the_json_folder_and_ids_map_to_labels(tmp_path, monkeypatch):
    video = _touch(tmp_path / "data" / "clips" / "v.mp4")
    path = _write(tmp_path / "data" / "labels.json", _document())
    monkeypatch.chdir(tmp_path)  # not the JSON's folder
    dataset = load_custom_dataset("data/labels.json")
    assert dataset.class_names == ["cat", "dog"]  # sorted by category id: 3 → label 1, 10 → label 2
    (loaded,) = dataset.videos
    assert loaded.video_id == "7" and loaded.source == str(video) and loaded.fps is None
    assert [f.frame_index for f in loaded.frames] == [0, 1, 2, 3]  # no annotated_frames: all of them
    assert loaded.frame(1).objects == [
        ObjectAnnotation(-1, 2, (0.0, 0.0, 39.0, 29.0)),  # the whole 40 x 30 frame
        ObjectAnnotation(5, 1, (2.5, 3.0, 2.5, 3.0)),
    ]
    assert validate_custom_dataset(path) == []


def test_a_folder_of_frame_images_is_listed_in_name_order(tmp_path):
    for name in ("000002.JPG", "000000.jpg", "000001.png", "notes.txt", ".hidden.jpg"):
        _touch(tmp_path / "clips" / "v.mp4" / name)  # a folder that happens to be named like a file
    path = _write(tmp_path / "labels.json", _document(num_frames=3))
    (video,) = load_custom_dataset(path).videos
    assert [p.rsplit("/", 1)[1] for p in video.frame_paths] == ["000000.jpg", "000001.png", "000002.JPG"]

    _write(path, _document(num_frames=4))
    (problem,) = validate_custom_dataset(path)
    assert problem.location == "videos[0].file" and "holds 3 frame images" in problem.message and "num_frames is 4" in problem.message


def test_the_validator_reports_every_planted_problem_at_its_location(tmp_path):
    _touch(tmp_path / "v.mp4")
    document = {
        "format": "semidff-video/0",
        "extra": 1,
        "categories": [{"id": 1, "name": "cat"}, {"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}, {"id": 0, "name": "bg"}],
        "videos": [
            {"id": "a", "file": "v.mp4", "width": 100, "height": 50, "num_frames": 10, "fps": 25, "annotated_frames": [0, 5, 5, 10]},
            {"id": "b", "file": "missing.mp4", "width": 100, "height": 50, "num_frames": 10},
            {"id": "a", "file": "v.mp4", "width": 100, "height": 50, "num_frames": 10},
            {"id": "d", "file": "v.mp4", "width": "100", "height": 50, "fsp": 25},
        ],
        "annotations": [
            {"video_id": "a", "frame_index": 0, "category_id": 1, "bbox": [0, 0, 10, 10], "track_id": 1},  # clean
            {"video_id": "a", "frame_index": 0, "category_id": 1, "bbox": [5, 5, 10, 10], "track_id": 1},
            {"video_id": "a", "frame_index": 10, "category_id": 9, "bbox": [95, -1, 10, 0.5]},
            {"video_id": "a", "frame_index": 3, "category_id": 2, "bbox": [0, 0, 1, 51]},
            {"video_id": "nope", "frame_index": 0, "category_id": 2, "bbox": [0, 0, 1, 1]},
            {"video_id": 4.5, "frame_index": 0, "category_id": 2, "bbox": [0, 0, 1, 1]},
            {"video_id": "a", "frame_index": "0", "category_id": 2, "bbox": [0, 0, 1], "ocluded": True},
            {"video_id": "b", "category_id": 2, "bbox": [0, 0, 1, 1], "occluded": 1},
            [1, 2],
            {"video_id": "d", "frame_index": 0, "category_id": 2, "bbox": [0, 0, 1, 1]},  # its video is broken: no cascade
        ],
    }
    path = _write(tmp_path / "bad.json", document)
    problems = validate_custom_dataset(path)
    expected = [
        ("extra", "unknown key"),
        ("format", "'semidff-video/0'"),
        ("categories[1].id", "duplicate id 1 (also categories[0])"),
        ("categories[2].name", "duplicate name 'cat' (also categories[0])"),
        ("categories[3].id", "greater than or equal to 1"),
        ("videos[0].annotated_frames[2]", "listed twice"),
        ("videos[0].annotated_frames[3]", "frame 10 >= num_frames 10"),
        ("videos[1].file", "missing.mp4 does not exist"),
        ("videos[2].id", 'duplicate id "a" (also videos[0])'),
        ("videos[3].width", "valid integer"),
        ("videos[3].num_frames", "required key is missing"),
        ("videos[3].fsp", "did you mean 'fps'?"),
        ("annotations[1].track_id", "track 1 already appears in frame 0 (annotations[0])"),
        ("annotations[2].category_id", "unknown category 9 (categories: 1, 2)"),
        ("annotations[2].frame_index", "frame 10 >= num_frames 10"),
        ("annotations[2].bbox", "w and h must be >= 1"),
        ("annotations[2].bbox", "x and y must be >= 0"),
        ("annotations[2].bbox", "right edge, x + w = 105 > width 100"),
        ("annotations[3].frame_index", "frame 3 is not in annotated_frames"),
        ("annotations[3].bbox", "bottom edge, y + h = 51 > height 50"),
        ("annotations[4].video_id", 'unknown video "nope"'),
        ("annotations[5].video_id", "should be a string or an integer, got 4.5"),
        ("annotations[6].frame_index", "valid integer"),
        ("annotations[6].bbox", "at least 4 items"),
        ("annotations[6].ocluded", "did you mean 'occluded'?"),
        ("annotations[7].frame_index", "required key is missing"),
        ("annotations[7].occluded", "valid boolean"),
        ("annotations[8]", "should be an object"),
    ]
    assert [p.location for p in problems] == [location for location, _ in expected], "\n".join(map(str, problems))
    for problem, (_, words) in zip(problems, expected):
        assert words in problem.message, str(problem)

    with pytest.raises(CustomFormatError) as raised:
        load_custom_dataset(path)
    assert raised.value.problems == problems
    assert "28 problem(s)" in str(raised.value) and "and 8 more" in str(raised.value)


def test_json_syntax_errors_name_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "format": "semidff-video/1",\n  "categories": [{"id": 1 "name": "cat"}]\n}\n')
    assert validate_custom_dataset(path) == [Problem("line 3, column 27", "invalid JSON: Expecting ',' delimiter")]


def test_missing_file_and_wrong_top_level_shape(tmp_path):
    assert validate_custom_dataset(tmp_path / "nope.json") == [Problem(str(tmp_path / "nope.json"), "file does not exist")]
    path = _write(tmp_path / "list.json", [1, 2])
    (problem,) = validate_custom_dataset(path)
    assert problem.location == "<top level>" and "should be an object" in problem.message
    path = _write(tmp_path / "empty.json", {"format": "semidff-video/1", "categories": [], "videos": "x"})
    assert [p.location for p in validate_custom_dataset(path)] == ["categories", "videos", "annotations"]


def test_files_are_checked_only_when_asked(tmp_path):
    path = _write(tmp_path / "labels.json", _document())  # clips/v.mp4 does not exist
    assert [p.location for p in validate_custom_dataset(path)] == ["videos[0].file"]
    assert validate_custom_dataset(path, check_files=False) == []
    assert load_custom_dataset(path, check_files=False).videos[0].source == str(tmp_path / "clips" / "v.mp4")
