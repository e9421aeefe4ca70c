"""The typed dataset records: their invariants and array helpers."""
import numpy as np
import pytest

from semidff.data.records import FrameAnnotation, LabeledDataset, LabeledVideo, ObjectAnnotation


def test_object_box_is_stored_as_plain_floats():
    obj = ObjectAnnotation(track_id=3, label=2, box=np.array([1, 2, 3, 4], dtype=np.int64))
    assert obj.box == (1.0, 2.0, 3.0, 4.0) and all(type(v) is float for v in obj.box)
    assert ObjectAnnotation(0, 1, (5, 5, 5, 5)).box == (5.0, 5.0, 5.0, 5.0)  # one pixel: x1 == x2


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(label=1, box=(10, 0, 9, 5)), "x2 >= x1"),
        (dict(label=1, box=(0, 0, 1)), "4 finite numbers"),
        (dict(label=1, box=(0, 0, float("nan"), 1)), "4 finite numbers"),
        (dict(label=0, box=(0, 0, 1, 1)), "background"),
    ],
)
def test_object_rejects_impossible_values(kwargs, words):
    with pytest.raises(ValueError, match=words):
        ObjectAnnotation(track_id=0, **kwargs)


def test_frame_arrays_follow_object_order():
    frame = FrameAnnotation(7, [ObjectAnnotation(4, 2, (0, 1, 2, 3)), ObjectAnnotation(-1, 1, (10, 11, 12, 13), occluded=True)])
    np.testing.assert_array_equal(frame.boxes(), [[0, 1, 2, 3], [10, 11, 12, 13]])
    assert frame.boxes().dtype == np.float32
    np.testing.assert_array_equal(frame.labels(), [2, 1])
    np.testing.assert_array_equal(frame.track_ids(), [4, -1])
    empty = FrameAnnotation(8, [])
    assert empty.boxes().shape == (0, 4) and empty.labels().shape == (0,)


def _video():
    return LabeledVideo(
        video_id="v", source="/data/v.mp4", width=64, height=48, num_frames=30, fps=25.0,
        frames=[
            FrameAnnotation(0, [ObjectAnnotation(1, 1, (0, 0, 9, 9)), ObjectAnnotation(-1, 2, (5, 5, 6, 6))]),
            FrameAnnotation(10, []),
            FrameAnnotation(20, [ObjectAnnotation(1, 1, (2, 0, 11, 9))]),
        ],
    )


def test_video_finds_annotated_frames_only():
    video = _video()
    assert video.frame(10).objects == [] and video.frame(20).objects[0].box == (2, 0, 11, 9)
    assert video.frame(5) is None and video.frame(29) is None and video.frame(-1) is None
    assert video.num_objects() == 3


def test_video_tracks_skip_unknown_track_ids():
    assert _video().tracks() == {1: {0: (0.0, 0.0, 9.0, 9.0), 20: (2.0, 0.0, 11.0, 9.0)}}


def test_dataset_counts_and_names():
    dataset = LabeledDataset(class_names=["car", "dog"], videos=[_video(), _video()])
    assert dataset.num_classes() == 2 and dataset.num_objects() == 6
    assert dataset.class_name(1) == "car" and dataset.class_name(2) == "dog"
    with pytest.raises(ValueError, match="outside 1..2"):
        dataset.class_name(0)
