"""Detector runs over labeled video (semidff/evaluation/run.py) on real encoded synthetic videos with a
tiny random R-FCN: which runs are planned, copy/flow predictions against frame mode exactly, boxes
in original pixels, frame folders against encoded files, sparse labels, ImageNet VID layout, errors.
Datasets are read with the shared reader of config data sections (semidff.data.labeled)."""
from tests.video_fixtures import write_video  # noqa: F401  (PyAV before decord, see tests/video_fixtures.py)

import math

import numpy as np
import pytest
import torch
from PIL import Image

from semidff.config import TeacherDataConfig, load_config
from semidff.data.custom_format import write_custom_dataset
from semidff.data.records import FrameAnnotation, LabeledDataset, LabeledVideo, ObjectAnnotation
from semidff.data.synthetic import generate_synthetic_dataset
from semidff.evaluation.run import (
    EvaluationError,
    RunSpec,
    evaluate_runs,
    frame_id,
    ground_truths_for,
    plan_runs,
    video_frames,
)
from semidff.models.build import build_propagator, build_rfcn
from semidff.data.labeled import load_labeled_dataset

WIDTH, HEIGHT, FRAMES = 128, 96, 8


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_dataset(folder, num_videos=2, num_frames=FRAMES, width=WIDTH, height=HEIGHT, num_classes=3)
    return folder / "dataset.json"


@pytest.fixture(scope="module")
def networks():
    cfg = load_config("jobs/configs/tiny.yaml")
    torch.manual_seed(0)
    rfcn = build_rfcn(cfg.model).eval()
    propagator = build_propagator(cfg.model).eval()
    return cfg, rfcn, propagator


def _custom(path) -> LabeledDataset:
    return load_labeled_dataset(TeacherDataConfig(format="custom", path=str(path)), key="evaluation.data")


def _evaluate(dataset, runs, networks, **kwargs):
    cfg, rfcn, propagator = networks
    return evaluate_runs(dataset, runs, rfcn, rfcn, propagator, short_side=cfg.preprocess.short_side,
                         max_long_side=cfg.preprocess.max_long_side, **kwargs)


# --- planning and ground truth ----------------------------------------------------------------


def test_frame_mode_runs_once_and_other_modes_once_per_sorted_interval():
    runs = plan_runs(["copy", "frame", "flow", "copy"], [10, 1, 5, 10])
    assert runs == [RunSpec("copy", 1), RunSpec("copy", 5), RunSpec("copy", 10), RunSpec("frame", 1),
                    RunSpec("flow", 1), RunSpec("flow", 5), RunSpec("flow", 10)]
    assert runs[-1].name == "flow/dt10"
    with pytest.raises(EvaluationError, match="unknown mode.*'optical'"):
        plan_runs(["frame", "optical"], [1])
    with pytest.raises(EvaluationError, match="integers >= 1"):
        plan_runs(["copy"], [0, 5])


def test_ground_truth_has_one_record_per_annotated_frame_and_motion_iou_from_tracks():
    still = ObjectAnnotation(track_id=0, label=1, box=(0, 0, 9, 9))
    moving = [ObjectAnnotation(track_id=1, label=2, box=(x, 0, x + 9, 9)) for x in (0, 5)]
    video = LabeledVideo("v/1", "unused.mp4", 64, 48, 30, 25.0, frames=[
        FrameAnnotation(0, [still, moving[0], ObjectAnnotation(-1, 1, (20, 20, 29, 29))]),
        FrameAnnotation(1, [still, moving[1]]),
        FrameAnnotation(2, []),
        FrameAnnotation(25, [ObjectAnnotation(track_id=2, label=1, box=(0, 0, 9, 9))]),
    ])
    truths = ground_truths_for(LabeledDataset(["a", "b"], [video]))
    assert [t.frame_id for t in truths] == ["v/1/0", "v/1/1", "v/1/2", "v/1/25"]
    assert frame_id("v/1", 25) == "v/1/25"
    # the still object overlaps itself fully (1.0); the moving one is shifted 5 of 10 px: 50/150 = 1/3;
    # an object without a track id or alone in its ±10 window has no motion estimate (NaN)
    np.testing.assert_allclose(truths[0].motion_iou[:2], [1.0, 1 / 3])
    assert math.isnan(truths[0].motion_iou[2]) and math.isnan(truths[3].motion_iou[0])
    assert truths[2].boxes.shape == (0, 4)
    np.testing.assert_array_equal(truths[0].labels, [1, 2, 1])


# --- runs on real videos ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def frame_copy_flow(synthetic, networks):
    runs = [RunSpec("frame", 1), RunSpec("copy", 1), RunSpec("copy", 3), RunSpec("flow", 1)]
    return {r.run.name: r for r in _evaluate(_custom(synthetic), runs, networks)}


def _by_frame(result):
    return {p.frame_id: p for p in result.predictions}


def test_copy_at_interval_1_and_flow_at_interval_1_equal_frame_mode_exactly(frame_copy_flow):
    frame = _by_frame(frame_copy_flow["frame/dt1"])
    assert len(frame) == 2 * FRAMES
    assert sum(len(p.scores) for p in frame.values()) > 0  # random weights still detect something
    for name in ("copy/dt1", "flow/dt1"):
        other = _by_frame(frame_copy_flow[name])
        assert other.keys() == frame.keys()
        for key, prediction in frame.items():
            np.testing.assert_array_equal(other[key].boxes, prediction.boxes)
            np.testing.assert_array_equal(other[key].scores, prediction.scores)
            np.testing.assert_array_equal(other[key].labels, prediction.labels)
        assert frame_copy_flow[name].map == frame_copy_flow["frame/dt1"].map


def test_copy_mode_repeats_the_key_frame_detections_of_frame_mode(frame_copy_flow):
    frame, copy = _by_frame(frame_copy_flow["frame/dt1"]), _by_frame(frame_copy_flow["copy/dt3"])
    for video in ("synthetic_000", "synthetic_001"):
        for index in range(FRAMES):
            key = frame[frame_id(video, 3 * (index // 3))]  # key frames 0, 3, 6
            np.testing.assert_array_equal(copy[frame_id(video, index)].boxes, key.boxes)
            np.testing.assert_array_equal(copy[frame_id(video, index)].scores, key.scores)
    timing = frame_copy_flow["copy/dt3"].timing
    assert (timing.frames, timing.key_frames) == (2 * FRAMES, 2 * 3)
    assert frame_copy_flow["frame/dt1"].timing.key_frames == 2 * FRAMES
    assert frame_copy_flow["copy/dt3"].fps > 0 and frame_copy_flow["copy/dt3"].end_to_end_fps > 0


def test_boxes_are_in_original_frame_pixels(frame_copy_flow, networks):
    # tiny.yaml resizes the 128x96 frames to 213x160 for the network (scale 5/3); boxes must come
    # back to 128x96. The R-FCN clips to the network input before dividing by the scale (DFF), so
    # x2 can reach (213 - 1) / (5/3) = 127.2, not 212.
    boxes = np.concatenate([p.boxes for p in frame_copy_flow["frame/dt1"].predictions])
    assert boxes[:, [0, 2]].max() <= 212 * 3 / 5 + 1e-3 and boxes[:, [1, 3]].max() <= 159 * 3 / 5 + 1e-3
    assert boxes[:, 2].max() > 0.75 * WIDTH  # not squeezed into a smaller frame either
    result = frame_copy_flow["frame/dt1"].result
    assert result.num_frames == 2 * FRAMES and set(result.bucket_map) == {"slow", "medium", "fast"}


def test_a_frame_folder_gives_the_same_predictions_as_the_encoded_video(synthetic, networks, tmp_path, frame_copy_flow):
    dataset = _custom(synthetic)
    video = dataset.videos[0]
    folder = tmp_path / "frames"
    folder.mkdir()
    for index, frame in enumerate(video_frames(video, FRAMES)):  # the decoded pixels, stored losslessly
        Image.fromarray(frame).save(folder / f"{index:04d}.png")
    as_folder = LabeledVideo(video.video_id, str(folder), WIDTH, HEIGHT, FRAMES, None, video.frames)
    write_custom_dataset(LabeledDataset(dataset.class_names, [as_folder]), tmp_path / "folder.json")
    reloaded = _custom(tmp_path / "folder.json")
    assert reloaded.videos[0].frame_paths is not None
    (result,) = _evaluate(reloaded, [RunSpec("frame", 1)], networks)
    expected = _by_frame(frame_copy_flow["frame/dt1"])
    for prediction in result.predictions:
        # equal up to float rounding: a full test run may give the networks another thread count
        np.testing.assert_allclose(prediction.boxes, expected[prediction.frame_id].boxes, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(prediction.scores, expected[prediction.frame_id].scores, rtol=1e-4, atol=1e-6)


def test_sparse_labels_score_only_annotated_frames_and_decoding_stops_at_the_last(synthetic, networks):
    dataset = _custom(synthetic)
    video = dataset.videos[0]
    sparse = LabeledVideo(video.video_id, video.source, WIDTH, HEIGHT, FRAMES, video.fps, [video.frames[1], video.frames[4]])
    (result,) = _evaluate(LabeledDataset(dataset.class_names, [sparse]), [RunSpec("copy", 2)], networks,
                          relaxed_small_objects=False)
    assert [p.frame_id for p in result.predictions] == ["synthetic_000/1", "synthetic_000/4"]
    assert (result.timing.frames, result.timing.key_frames) == (5, 3)  # frames 0-4, keys 0, 2, 4
    assert result.result.num_frames == 2 and result.result.relaxed_small_objects is False


def test_imagenet_vid_layout_is_evaluated_with_its_30_classes(synthetic, tmp_path):
    # one val snippet of 3 JPEG frames taken from the synthetic video, boxes in the VID XML format
    dataset = _custom(synthetic)
    base = tmp_path / "ILSVRC2015"
    snippet = "val/ILSVRC2015_val_00000000"
    (base / "Data/VID" / snippet).mkdir(parents=True)
    (base / "Annotations/VID" / snippet).mkdir(parents=True)
    (base / "ImageSets").mkdir()
    (base / "ImageSets/VID_val_videos.txt").write_text(f"{snippet} 1 0 3\n")
    for index, frame in enumerate(video_frames(dataset.videos[0], 3)):
        Image.fromarray(frame).save(base / "Data/VID" / snippet / f"{index:06d}.JPEG", quality=95)
        objects = "".join(
            f"<object><trackid>{o.track_id}</trackid><name>n02691156</name><bndbox><xmin>{int(o.box[0])}</xmin>"
            f"<ymin>{int(o.box[1])}</ymin><xmax>{int(o.box[2])}</xmax><ymax>{int(o.box[3])}</ymax></bndbox>"
            "<occluded>0</occluded></object>"
            for o in dataset.videos[0].frames[index].objects
        )
        (base / "Annotations/VID" / snippet / f"{index:06d}.xml").write_text(
            f"<annotation><size><width>{WIDTH}</width><height>{HEIGHT}</height></size>{objects}</annotation>"
        )
    vid = load_labeled_dataset(TeacherDataConfig(format="imagenet_vid", path=str(tmp_path), split="val"), 30, "evaluation.data")
    cfg = load_config("jobs/configs/tiny.yaml", ["model.num_classes=30"])
    torch.manual_seed(0)
    rfcn = build_rfcn(cfg.model).eval()
    (result,) = evaluate_runs(vid, [RunSpec("frame", 1)], rfcn, short_side=96, max_long_side=128)
    assert len(result.result.class_names) == 30 and result.result.num_frames == 3
    assert result.result.num_gt["airplane"] == sum(len(f.objects) for f in dataset.videos[0].frames[:3])
    assert [p.frame_id for p in result.predictions] == [f"VID/{snippet}/{i}" for i in range(3)]


# --- errors -----------------------------------------------------------------------------------


def test_wrong_declared_size_class_count_and_missing_flow_model_are_refused(synthetic, networks):
    cfg, rfcn, propagator = networks
    dataset = _custom(synthetic)
    video = dataset.videos[0]
    wrong = LabeledVideo(video.video_id, video.source, WIDTH * 2, HEIGHT * 2, FRAMES, video.fps, video.frames[:1])
    with pytest.raises(EvaluationError, match=r"synthetic_000: frame 0 .* is 128x96 but the annotations say 256x192"):
        _evaluate(LabeledDataset(dataset.class_names, [wrong]), [RunSpec("frame", 1)], networks)
    with pytest.raises(EvaluationError, match="predicts 3 classes but the dataset has 2"):
        evaluate_runs(LabeledDataset(["a", "b"], [video]), [RunSpec("frame", 1)], rfcn)
    with pytest.raises(EvaluationError, match="flow mode needs"):
        evaluate_runs(dataset, [RunSpec("flow", 5)], rfcn)
    short = LabeledVideo(video.video_id, video.source, WIDTH, HEIGHT, 20, video.fps, [FrameAnnotation(15, [])])
    with pytest.raises(EvaluationError, match=f"has {FRAMES} frames, but frame 15 is annotated"):
        _evaluate(LabeledDataset(dataset.class_names, [short]), [RunSpec("frame", 1)], networks)
