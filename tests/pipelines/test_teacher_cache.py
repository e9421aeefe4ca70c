"""The teacher cache writer: the actor's outputs equal a plain torch forward on the same decoded JPEG
frames; failed clips (a video gone, a teacher producing NaN) are rows with their reason; the real
job on a local Ray writes every planned clip once, logs to MLflow, and a run killed after its first
file resumes to a complete cache with every clip exactly once."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.video_fixtures import pattern_frame, write_video  # PyAV before decord
from tests.killed_runs import isolated_ray_env, wait_for_processes_gone
from tests.teacher_checkpoints import save_random_teacher as save_teacher

import ray
from pipelines.clips import CLIP_SCHEMA, clip_row
from pipelines.teacher_cache import TeacherCacheActor, prepare_clips
from semidff.cache import BlobLayout, CacheInfo, decode_jpeg, key_features_of, list_cache_files, read_cache_info, soft_targets_of, current_features_of
from semidff.cache.files import inspect_cache, temporary_files
from semidff.checkpoint import build_teacher, load_model_checkpoint
from semidff.config import load_config
from semidff.preprocess import normalize_frames
from semidff.video.clip_plan import ClipSpec, plan_clips
from semidff.video.decode import ClipFailure, ClipFrames

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "jobs" / "configs" / "tiny.yaml"
BASE = [
    "preprocess.short_side=64", "preprocess.max_long_side=96", "clips.key_frames_per_video=3", "clips.currents_per_key=2",
    "clips.offset_range=[0,6]", "cache.clips_per_file=2", "cache.batch_size=2", "cache.feature_precision=fp32",
]


def assert_equals_plain_forward(row: dict, teacher, layout: BlobLayout, rtol: float = 1e-4) -> None:
    """The stored outputs of one ok row against the teacher run alone on each decoded JPEG frame."""

    def close(stored, reference, name):
        reference = reference.detach().numpy()
        scale = max(float(np.abs(reference).max()), 1e-6)
        assert np.abs(stored - reference).max() <= rtol * scale, f"{row['clip_id']} {name}"

    with torch.no_grad():
        key = teacher.extract_features(normalize_frames(decode_jpeg(row["key_jpeg"])[None]))[0]
        close(key_features_of(row, layout), key, "key features")
        for j, data in enumerate(row["current_jpegs"]):
            output = teacher(normalize_frames(decode_jpeg(data)[None]))
            close(current_features_of(row, j, layout), output.features[0], "features")
            stored = soft_targets_of(row, j, layout)
            for name in ("rpn_cls_logits", "rpn_deltas"):
                close(stored[name], getattr(output, name)[0], name)
            assert stored["rois"].shape[0] == output.rois.shape[0]
            close(stored["rois"], output.rois[:, 1:], "rois")
            close(stored["cls_logits"], output.cls_logits, "cls_logits")
            close(stored["box_deltas"], output.box_deltas, "box_deltas")


# ---------------------------------------------------------------------------------------------
# The actor alone (no Ray): batching, grouping, failures


def clip_rows() -> pa.Table:
    """Clip-stage rows: two frame sizes, an offset-0 clip, a repeated current frame, a failed clip."""

    def ok(video, key, offsets, size):
        frames = np.stack([pattern_frame(key + d, size[1], size[0]) for d in offsets])
        spec = ClipSpec(f"{video}:{key}", video, f"/v/{video}.mp4", key, tuple(key + d for d in offsets), tuple(offsets))
        return clip_row(ClipFrames(spec, pattern_frame(key, size[1], size[0]), frames, 0.5))

    failed = ClipFailure(ClipSpec("v3:7", "v3", "/v/v3.mp4", 7, (9,), (2,)), "decode failed", "/v/v3.mp4: frame 9 did not decode")
    rows = [ok("v1", 0, (0, 4), (64, 96)), ok("v1", 10, (3, 3), (64, 96)), ok("v2", 5, (1, 2), (48, 80)), clip_row(failed), ok("v2", 20, (6, 1), (48, 80))]
    return pa.Table.from_pylist(rows, schema=CLIP_SCHEMA)


@pytest.mark.parametrize("poison", [False, True])
def test_actor_outputs_equal_a_plain_forward_and_failures_are_rows(tmp_path, poison):
    cfg = load_config(TINY, BASE)
    save_teacher(tmp_path / "teacher.pt", cfg, poison=poison)
    checkpoint = load_model_checkpoint(tmp_path / "teacher.pt", "teacher")
    info = CacheInfo.create(cfg, checkpoint)
    prepared = prepare_clips(clip_rows(), done=None, jpeg_quality=90)
    actor = TeacherCacheActor(
        checkpoint=(tmp_path / "teacher.pt").read_bytes(), info_json=info.to_json(), cache_dir=str(tmp_path / "cache"), batch_size=2, use_gpu=False, num_threads=1
    )
    written = actor(prepared).to_pylist()
    files = list_cache_files(str(tmp_path / "cache"))
    assert len(files) == 1 and {r["file"] for r in written} == set(files)
    rows = pq.read_table(files[0]).to_pylist()
    assert [r["clip_id"] for r in rows] == ["v1:0", "v1:10", "v2:5", "v3:7", "v2:20"]
    failed = rows[3]
    assert failed["status"] == "error" and failed["reason"] == "decode failed" and "frame 9" in failed["error"]
    if poison:
        for row in rows[:3] + rows[4:]:
            assert row["status"] == "error" and row["reason"] == "non-finite teacher output"
            assert row["error"].startswith(f"clip {row['clip_id']}: cls_logits holds non-finite values")
        return
    teacher = build_teacher(checkpoint)
    layout = BlobLayout.of(info)
    for row in rows[:3] + rows[4:]:
        assert row["status"] == "ok"
        assert_equals_plain_forward(row, teacher, layout)
    assert rows[0]["key_from_current"] == 0 and rows[0]["key_features"] == b""  # offset 0: computed and stored once
    assert rows[1]["current_jpegs"][0] == rows[1]["current_jpegs"][1]  # a repeated frame: one JPEG, one forward
    # The teacher saw the decoded JPEG, not the decoded video frame.
    raw = pattern_frame(5, 80, 48)
    assert not np.array_equal(decode_jpeg(rows[2]["key_jpeg"]), raw) and np.abs(decode_jpeg(rows[2]["key_jpeg"]).astype(int) - raw).mean() < 4


def test_prepare_skips_clips_already_written(local_ray_small):
    done = ray.put(frozenset({"v1:10", "v3:7"}))
    prepared = prepare_clips(clip_rows(), done=done, jpeg_quality=90)
    assert prepared.column("clip_id").to_pylist() == ["v1:0", "v2:5", "v2:20"]


@pytest.fixture(scope="module")
def local_ray_small():
    if ray.is_initialized():
        yield
        return
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


# ---------------------------------------------------------------------------------------------
# The job on a local Ray


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, local_ray_small):
    """Two synthetic videos and one removed after probing (a clip-stage failure), a manifest, a teacher."""
    from pipelines.manifest import build_manifest, read_manifest_rows
    from semidff.data.synthetic import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("teacher_cache")
    generate_synthetic_dataset(root / "data", num_videos=2, num_frames=30, width=96, height=64, seed=2)
    write_video(root / "data" / "videos" / "gone.mp4", 20, 64, 48)
    build_manifest([str(root / "data" / "videos")], str(root / "manifest"))
    (root / "data" / "videos" / "gone.mp4").unlink()
    cfg = load_config(TINY, BASE)
    sha = save_teacher(root / "teacher.pt", cfg)
    videos = read_manifest_rows(str(root / "manifest")).values()
    planned = {c.clip_id for v in videos if not v["uri"].endswith("gone.mp4") for c in plan_clips(v, key_frames_per_video=3, currents_per_key=2, offset_range=(0, 6))}
    gone = next(f"{v['video_id']}:-1" for v in videos if v["uri"].endswith("gone.mp4"))
    yield dict(root=root, cfg=cfg, sha=sha, manifest=str(root / "manifest"), teacher=str(root / "teacher.pt"), planned=planned, gone=gone)


def cache_ids(cache_dir: str) -> list[str]:
    return [clip for path in list_cache_files(cache_dir) for clip in pq.read_table(path, columns=["clip_id"]).column("clip_id").to_pylist()]


@pytest.mark.slow
def test_job_writes_every_clip_once_logs_to_mlflow_and_a_rerun_skips(workspace):
    from jobs.cache import run

    cfg, cache_dir = workspace["cfg"], str(workspace["root"] / "cache")
    lines: list[str] = []
    summary = run(cfg, workspace["manifest"], workspace["teacher"], cache_dir, progress=lines.append)
    assert summary.planned == 9 and len(workspace["planned"]) == 6  # 3 per video; the gone video becomes one failed row
    assert (summary.written_ok, summary.written_failed, summary.pairs_written, summary.skipped) == (6, 1, 12, 0)
    assert dict(summary.failures) == {"missing file": 1} and "gone.mp4" in summary.examples["missing file"]
    assert lines[0].startswith("cache: 9 clips planned from 3 videos, 0 already in") and "9 to compute from 3 videos" in lines[0]
    assert lines[-1].startswith("  done: 7 clips written (1 failed)")
    ids = cache_ids(cache_dir)
    assert sorted(ids) == sorted(workspace["planned"] | {workspace["gone"]})  # every clip, once

    info = read_cache_info(cache_dir)
    assert info.teacher_sha256 == workspace["sha"] and info.feature_precision == "fp32" and info.preprocess["short_side"] == 64
    teacher = build_teacher(load_model_checkpoint(workspace["teacher"], "teacher"))
    rows = [row for path in list_cache_files(cache_dir) for row in pq.read_table(path).to_pylist() if row["status"] == "ok"]
    for row in rows:
        assert_equals_plain_forward(row, teacher, BlobLayout.of(info))
    assert inspect_cache(cache_dir).healthy

    import mlflow

    marker = json.loads((Path(cache_dir) / "_semidff_run.json").read_text())
    client = mlflow.MlflowClient(marker["tracking_uri"])
    mlflow_run = client.get_run(marker["run_id"])
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.data.tags["semidff.stage"] == "cache"
    assert mlflow_run.data.tags["semidff.input.teacher.digest"] == workspace["sha"]
    assert {d.dataset.name for d in mlflow_run.inputs.dataset_inputs} == {"manifest", "teacher"}
    assert mlflow_run.data.metrics["clips_ok"] == 6 and mlflow_run.data.params["cache.feature_precision"] == "fp32"

    again = run(cfg, workspace["manifest"], workspace["teacher"], cache_dir, progress=lines.append)
    assert (again.written, again.skipped, again.clips_in_cache) == (0, 7, 7)
    assert lines[-1] == "  nothing to compute: every planned clip is in the cache"  # nothing decoded either
    assert sorted(cache_ids(cache_dir)) == sorted(ids)

    other = load_config(TINY, BASE + ["cache.jpeg_quality=50"])
    from semidff.cache import CacheMismatchError

    with pytest.raises(CacheMismatchError, match="jpeg_quality: the cache has 90, this run 50"):
        run(other, workspace["manifest"], workspace["teacher"], cache_dir, progress=lines.append)


@pytest.mark.slow
def test_a_killed_run_resumes_to_every_clip_exactly_once(workspace):
    from jobs.cache import run

    root = workspace["root"]
    cache_dir = root / "killed_cache"
    # Larger frames and one clip per file: the run writes its files one by one over a few seconds.
    overrides = BASE + ["preprocess.short_side=160", "preprocess.max_long_side=240", "cache.clips_per_file=1", "clips.key_frames_per_video=5", "ray.num_cpus=2"]
    command = [sys.executable, "-m", "jobs.cache", workspace["manifest"], "--teacher", workspace["teacher"], "-o", str(cache_dir), "-c", str(TINY), *overrides]
    env, ray_marker = isolated_ray_env()
    with open(root / "killed.log", "wb") as log:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and process.poll() is None and not (cache_dir.is_dir() and list_cache_files(str(cache_dir))):
                time.sleep(0.005)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)  # the job's driver and the local Ray it started
            process.wait(timeout=60)
    wait_for_processes_gone(ray_marker)  # an actor of the killed run may still commit a file until then
    at_kill = cache_ids(str(cache_dir))
    assert process.returncode == -signal.SIGKILL, (root / "killed.log").read_text()[-3000:]
    cfg = load_config(TINY, overrides)
    total = sum(len(plan_clips(v, **{k: getattr(cfg.clips, k) for k in ("key_frames_per_video", "currents_per_key", "offset_range")}))
                for v in __import__("pipelines.manifest", fromlist=["x"]).read_manifest_rows(workspace["manifest"]).values()
                if not v["uri"].endswith("gone.mp4")) + 1
    print(f"killed after {len(at_kill)} of {total} clips")
    assert 0 < len(at_kill) < total, f"killed after {len(at_kill)} of {total} clips"
    (cache_dir / "_tmp-deadbeef0000-part-00000000000000000001-aaaaaaaa.parquet").write_bytes(b"PAR1 half-written")  # as a kill mid-write leaves

    summary = run(cfg, workspace["manifest"], workspace["teacher"], str(cache_dir), progress=lambda line: None)
    ids = cache_ids(str(cache_dir))
    assert len(ids) == len(set(ids)) == total  # complete, and no clip twice
    assert set(at_kill) <= set(ids) and summary.skipped == len(at_kill) and summary.written == total - len(at_kill)
    assert temporary_files(str(cache_dir)) == [] and inspect_cache(str(cache_dir)).healthy


def test_a_video_too_short_for_any_clip_is_work_once_then_done(tmp_path, local_ray_small):
    """Planning: the video is one row of work (the clip stage's "too short" row, tested in
    tests/pipelines/test_clips.py) until that row is in the cache; then a rerun skips it."""
    from pipelines.manifest import build_manifest, read_manifest_rows
    from pipelines.teacher_cache import plan_cache_work

    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / "long.mp4", 30, 64, 48)
    write_video(tmp_path / "videos" / "short.mp4", 2, 64, 48)  # offsets d >= 2: no clip fits
    build_manifest([str(tmp_path / "videos")], str(tmp_path / "manifest"))
    cfg = load_config(TINY, BASE + ["clips.offset_range=[2,6]"])
    rows = {Path(row["uri"]).name: row for row in read_manifest_rows(str(tmp_path / "manifest")).values()}
    short_row = f"{rows['short.mp4']['video_id']}:-1"
    long_clips = [c.clip_id for c in plan_clips(rows["long.mp4"], key_frames_per_video=3, currents_per_key=2, offset_range=(2, 6))]
    work = plan_cache_work(str(tmp_path / "manifest"), cfg, done=set())
    assert [Path(v["uri"]).name for v in work.videos] == ["long.mp4", "short.mp4"] and work.planned == len(long_clips) + 1
    work = plan_cache_work(str(tmp_path / "manifest"), cfg, done={short_row, *long_clips})
    assert work.videos == [] and work.missing == 0
