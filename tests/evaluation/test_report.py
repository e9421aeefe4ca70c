"""Evaluation outputs (semidff/evaluation/report.py): COCO-style prediction files with exact values,
a perfect detector scoring 100 % through the file round trip, tables, recovery of the copy → frame
gap (and of the oracle's), metric names and the plot."""
import dataclasses
import json
import math

import numpy as np
import pytest
from PIL import Image

from semidff.data.records import FrameAnnotation, LabeledDataset, LabeledVideo, ObjectAnnotation
from semidff.evaluation.report import (
    EvaluationReport,
    format_per_class_table,
    format_report,
    format_recovery_table,
    format_summary_table,
    metrics_for,
    plot_map_and_fps,
    read_coco_predictions,
    recoveries,
    write_coco_predictions,
    write_outputs,
)
from semidff.evaluation.run import ModeResult, RunSpec, ground_truths_for
from semidff.evaluation.vid_map import FramePrediction, evaluate_vid
from semidff.models.video_detector import VideoTiming


def _dataset() -> LabeledDataset:
    """Two videos, classes "car" and "dog/cat" (a name MLflow metrics cannot hold as is)."""
    def frames(offset):
        return [FrameAnnotation(t, [ObjectAnnotation(0, 1, (10 + offset + t, 20, 39 + offset + t, 59)),
                                    ObjectAnnotation(1, 2, (60, 5, 99, 44))]) for t in range(4)]
    videos = [LabeledVideo("VID/val/a", "a.mp4", 128, 96, 4, 25.0, frames(0)),
              LabeledVideo("b", "b.mp4", 128, 96, 4, 25.0, frames(7) + [FrameAnnotation(4, [])])]
    videos[1].num_frames = 5
    return LabeledDataset(["car", "dog/cat"], videos)


def _oracle(dataset: LabeledDataset) -> list[FramePrediction]:
    """The ground truth itself as detections with score 1 (a test-only perfect detector)."""
    return [FramePrediction(t.frame_id, t.boxes, np.ones(len(t.boxes)), t.labels) for t in ground_truths_for(dataset)]


def _mode_result(mode, key_interval, predictions, dataset, frames=9, seconds=0.5) -> ModeResult:
    result = evaluate_vid(predictions, ground_truths_for(dataset), 2, dataset.class_names)
    timing = VideoTiming(frames=frames, key_frames=frames // key_interval, compute_seconds=seconds, decode_seconds=0.25)
    return ModeResult(RunSpec(mode, key_interval), result, timing, len(dataset.videos), list(predictions))


def test_coco_file_has_xywh_with_the_plus_one_convention_and_reads_back_exactly(tmp_path):
    predictions = [
        FramePrediction("VID/val/a/3", [[10, 20, 29, 59], [0.25, 1.5, 0.25, 1.5]], [0.9, 0.123456789], [2, 1]),
        FramePrediction("b/0", np.zeros((0, 4)), [], []),
    ]
    path = write_coco_predictions(tmp_path / "p.json", predictions, category_ids=[5, 9])
    records = json.loads(path.read_text())
    assert records == [
        {"image_id": "VID/val/a/3", "video_id": "VID/val/a", "frame_index": 3, "category_id": 9,
         "bbox": [10.0, 20.0, 20.0, 40.0], "score": 0.9},  # 20 x 40 pixels: x 10..29, y 20..59
        {"image_id": "VID/val/a/3", "video_id": "VID/val/a", "frame_index": 3, "category_id": 5,
         "bbox": [0.25, 1.5, 1.0, 1.0], "score": 0.123457},  # a one-pixel box has w = h = 1
    ]
    (back,) = read_coco_predictions(path, category_ids=[5, 9])
    assert back.frame_id == "VID/val/a/3"
    np.testing.assert_array_equal(back.boxes, [[10, 20, 29, 59], [0.25, 1.5, 0.25, 1.5]])
    np.testing.assert_array_equal(back.labels, [2, 1])
    np.testing.assert_allclose(back.scores, [0.9, 0.123457])
    with pytest.raises(ValueError, match="category_id 9, not one of"):
        read_coco_predictions(path, category_ids=[1, 2])
    assert not list(tmp_path.glob(".*tmp"))  # written atomically, nothing left behind


def test_a_perfect_detector_scores_100_percent_through_the_files(tmp_path):
    dataset = _dataset()
    oracle = _mode_result("frame", 1, _oracle(dataset), dataset)
    files = write_outputs([oracle], tmp_path, category_ids=[1, 2], header=["dataset: two videos"])
    reread = read_coco_predictions(files["predictions/frame/dt1"], [1, 2])
    assert len(reread) == 8  # frames with detections; b/4 has none
    again = evaluate_vid(reread, ground_truths_for(dataset), 2, dataset.class_names)
    assert again.map == pytest.approx(1.0) and again.per_class_ap == {"car": 1.0, "dog/cat": 1.0}
    results = json.loads(files["results"].read_text())["runs"][0]
    assert results["map"] == 1.0 and results["per_class_ap"] == {"car": 1.0, "dog/cat": 1.0}
    assert results["num_gt"] == {"car": 8, "dog/cat": 8} and results["fps"] == 18.0  # 9 frames / 0.5 s
    assert results["bucket_map"]["fast"] is None  # no fast object (test below): undefined, null
    table = files["table"].read_text()
    assert "- dataset: two videos" in table
    assert "| frame | every frame | 100.0 |" in table
    assert "| dog/cat | 8 | 100.0 |" in table


def test_summary_table_rows_and_per_class_columns():
    dataset = _dataset()
    perfect = _mode_result("frame", 1, _oracle(dataset), dataset, frames=9, seconds=1.0)
    # copy at ΔT=4 hit only the cars: dog/cat AP 0, car AP 1 → mAP 50 %
    cars = [FramePrediction(p.frame_id, p.boxes[p.labels == 1], p.scores[p.labels == 1], p.labels[p.labels == 1])
            for p in _oracle(dataset)]
    copy = _mode_result("copy", 4, cars, dataset, frames=9, seconds=0.25)
    summary = format_summary_table([perfect, copy]).splitlines()
    assert summary[0].startswith("| mode | ΔT | mAP | slow | medium | fast | detector frames/s")
    assert summary[2].startswith("| frame | every frame | 100.0 |")
    assert summary[3].startswith("| copy | 4 | 50.0 |") and "| 36.00 | 18.00 | 9 | 2 |" in summary[3]
    per_class = format_per_class_table([perfect, copy]).splitlines()
    assert per_class[0] == "| class | GT | frame/dt1 | copy/dt4 |"
    assert per_class[2:] == ["| car | 8 | 100.0 | 100.0 |", "| dog/cat | 8 | 100.0 | 0.0 |",
                             "| **mAP** | 16 | **100.0** | **50.0** |"]
    assert "plain IoU 0.5" not in format_report([perfect])


def test_metric_names_and_undefined_values_left_out():
    dataset = _dataset()
    copy = _mode_result("copy", 10, _oracle(dataset), dataset, frames=9, seconds=0.5)
    metrics = metrics_for([copy])
    assert metrics["mAP/copy/dt10"] == 1.0 and metrics["fps/copy/dt10"] == 18.0
    assert metrics["fps_end_to_end/copy/dt10"] == pytest.approx(9 / 0.75)
    assert metrics["AP/copy/dt10/car"] == 1.0 and metrics["AP/copy/dt10/dog_cat"] == 1.0
    # the 30 px wide car moves 1 px per frame: IoU 29/31, 28/32, 27/33 at 1, 2, 3 frames, so its motion
    # IoU is (29/31 + 28/32 + 27/33) / 3 = 0.876 (medium) in frame 0 and 0.915 (slow) in frame 1; the
    # dog stands still (1.0, slow). No object is fast: that bucket's mAP is NaN and not logged.
    assert metrics["mAP_slow/copy/dt10"] == 1.0 and metrics["mAP_medium/copy/dt10"] == 1.0
    assert "mAP_fast/copy/dt10" not in metrics
    assert all(not math.isnan(v) for v in metrics.values())


def test_plot_is_a_png_with_both_panels(tmp_path):
    dataset = _dataset()
    results = [_mode_result("frame", 1, _oracle(dataset), dataset)]
    results += [_mode_result(mode, k, _oracle(dataset), dataset, seconds=0.5 / k) for mode in ("copy", "flow") for k in (1, 5, 10)]
    path = plot_map_and_fps(results, tmp_path / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (1000, 400)


def test_report_finds_a_result_by_mode_and_interval(tmp_path):
    dataset = _dataset()
    results = [_mode_result("frame", 1, _oracle(dataset), dataset), _mode_result("copy", 5, _oracle(dataset), dataset)]
    report = EvaluationReport(results, tmp_path, table="")
    assert report.result("frame", 10) is results[0] and report.result("copy", 5) is results[1]
    with pytest.raises(KeyError, match="have frame/dt1, copy/dt5"):
        report.result("flow", 5)


def _with_map(result: ModeResult, value: float) -> ModeResult:
    return dataclasses.replace(result, result=dataclasses.replace(result.result, map=value))


def test_recovery_of_the_copy_to_frame_gap_and_of_the_oracle_on_hand_made_results(tmp_path):
    dataset = _dataset()
    base = _mode_result("frame", 1, _oracle(dataset), dataset)
    runs = [_with_map(base, 0.80)]
    for mode, key_interval, value in [("copy", 5, 0.70), ("copy", 10, 0.60), ("oracle", 10, 0.76), ("oracle", 20, 0.5),
                                      ("flow", 5, 0.75), ("flow", 10, 0.70)]:
        runs.append(_with_map(dataclasses.replace(base, run=RunSpec(mode, key_interval)), value))
    rows = {(r.mode, r.key_interval): r for r in recoveries(runs)}
    assert set(rows) == {("oracle", 10), ("flow", 5), ("flow", 10)}  # ΔT 20 has no copy run
    assert rows["oracle", 10].gap == pytest.approx(0.16 / 0.20) and rows["oracle", 10].of_oracle == pytest.approx(1.0)
    assert rows["flow", 10].gap == pytest.approx(0.10 / 0.20) and rows["flow", 10].of_oracle == pytest.approx(0.10 / 0.16)
    assert rows["flow", 5].gap == pytest.approx(0.5) and math.isnan(rows["flow", 5].of_oracle)  # no oracle at ΔT 5
    table = format_recovery_table(runs).splitlines()
    assert table[0] == "| mode | ΔT | mAP | copy | frame | oracle | recovery of the copy → frame gap | share of oracle's recovery |"
    assert table[2:] == ["| oracle | 10 | 76.0 | 60.0 | 80.0 | 76.0 | 80.0 | 100.0 |",
                         "| flow | 5 | 75.0 | 70.0 | 80.0 | – | 50.0 | – |",
                         "| flow | 10 | 70.0 | 60.0 | 80.0 | 76.0 | 50.0 | 62.5 |"]
    assert "## Recovery" in format_report(runs) and "## Recovery" not in format_report(runs[:2] + runs[3:4])
    metrics = metrics_for(runs)
    assert metrics["recovery/flow/dt10"] == pytest.approx(0.5) and metrics["recovery_of_oracle/flow/dt10"] == pytest.approx(0.625)
    assert "recovery_of_oracle/flow/dt5" not in metrics
    # frame = copy (ΔT 1, nothing to recover): undefined, shown as "–", not logged
    same = [runs[0], _with_map(dataclasses.replace(base, run=RunSpec("copy", 1)), 0.80),
            _with_map(dataclasses.replace(base, run=RunSpec("flow", 1)), 0.80)]
    assert math.isnan(recoveries(same)[0].gap) and "recovery/flow/dt1" not in metrics_for(same)
    files = write_outputs(runs, tmp_path, [1, 2])
    recorded = json.loads(files["results"].read_text())["recovery"]
    assert recorded[2] == {"mode": "flow", "key_interval": 10, "map": 0.7, "frame_map": 0.8, "copy_map": 0.6,
                           "oracle_map": 0.76, "recovery": pytest.approx(0.5), "recovery_of_oracle": pytest.approx(0.625)}
    assert recorded[1]["recovery_of_oracle"] is None
