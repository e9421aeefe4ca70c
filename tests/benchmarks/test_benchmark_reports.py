"""The reports BENCHMARKS.md quotes, from hand-made records (no run): cache, train, teacher."""
import json

from semidff.benchmarks.cache import CacheBenchmark, PrecisionResult, bytes_per_part, format_report as cache_report
from semidff.benchmarks.teacher import TeacherBenchmarkReport, format_report as teacher_report
from semidff.benchmarks.train import RayTrainRate, TrainBenchmarkReport, format_report as train_report


def test_cache_bytes_are_grouped_by_part_and_the_report_gives_medians_and_every_run():
    per_column = {"key_jpeg": 10.0, "current_jpegs": 20.0, "key_features": 100.0, "current_feature_scales": 4.0, "rois": 7.0, "clip_id": 3.0}
    assert bytes_per_part(per_column) == {"frames": 30.0, "features": 104.0, "soft targets": 7.0, "ids and indices": 3.0}
    precisions = {
        p: PrecisionResult(p, [1.0, 3.0, 2.0], [4.0, 5.0, 6.0], [2.0, 2.5, 3.0], [0.1, 0.3, 0.2], bytes_per_clip=144.0, bytes_by_part=bytes_per_part(per_column))
        for p in ("fp32", "int8")
    }
    precisions["int8"].int8_max_error_over_bound = 0.5
    bench = CacheBenchmark("cpu", 1, 10, 10, (160, 256), (64, 10, 16), 1, "fp32", bare_clips_per_s=[8.0, 10.0, 12.0], precisions=precisions)
    report = cache_report(bench)
    assert "| actor pool, end to end (with start-up: 2.5 s to the first file) | 2.00 | 1.00, 3.00, 2.00 |" in report
    assert "| bare torch loop, same model, frames, threads and batch, 1 process | 10.00 | 8.00, 10.00, 12.00 |" in report
    assert "**Pipeline / bare loop: 0.50 in steady state, 0.20 end to end.**" in report
    assert "adds 20.0 % to the forward time (runs: 10.00%, 30.00%, 20.00%)" in report and "0.500 (<= 1 holds the bound)" in report
    assert json.loads(bench.to_json())["precisions"]["int8"]["int8_max_error_over_bound"] == 0.5


def test_train_report_gives_each_loop_and_its_ratio_to_the_bare_loop():
    ray = RayTrainRate(1, 1.0, 20, 40.0, [10.0, 40.0], [30.0], [0.25], 1.5, 12.0)
    report = TrainBenchmarkReport("cpu", 1, 2, 30, (160, 256), 80.0, [70.0, 75.0], ray=[ray], load_average=(1.0, 2.0, 3.0))
    text = train_report(report)
    assert "| bare torch, one process | 1 | 80.00 | 1.00 | (in memory) | 70.00, 75.00 (per pass) | (in memory) |" in text
    assert "| Ray Train (DDP, 1 CPU each) | 1 | 40.00 | 0.50 | 1.5 ms | 30.00 | 25 % |" in text
    assert json.loads(report.to_json())["ratios"] == {"1": 0.5}


def test_teacher_report_gives_both_maps_in_percent():
    report = TeacherBenchmarkReport(
        train_minutes=1.5, evaluate_minutes=0.25, generate_minutes=0.1, epochs=2, steps=10, train_frames=120, train_videos=2, val_videos=1,
        frames_per_video=60, final_losses={"cls": 1.25}, frame_map=0.5, copy_map=0.25, frame_fps=3.0, copy_fps=12.0, key_interval=10,
        workers="1 x 1 CPU, batch 2 per worker", machine="x86_64", teacher_checkpoint="teacher.pt", evaluation_table="",
    )
    text = teacher_report(report)
    assert "2 epochs, 10 steps in 1.5 min" in text and "mAP@0.5: frame 50.0, copy at ΔT=10 25.0" in text
