"""`semidff data check` as a user runs it: exit 0 with a summary, or exit 1 with one line per problem."""
import json
import subprocess
import sys

from semidff.data.custom_format import write_custom_dataset
from semidff.data.records import FrameAnnotation, LabeledDataset, LabeledVideo, ObjectAnnotation


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, timeout=120)


def test_clean_file_prints_counts_and_exits_0(tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"")  # existence is checked; decoding only with --probe
    video = LabeledVideo(
        video_id="v", source=str(tmp_path / "v.mp4"), width=64, height=48, num_frames=2, fps=25.0,
        frames=[FrameAnnotation(0, [ObjectAnnotation(0, 1, (1, 2, 10, 20))]), FrameAnnotation(1, [ObjectAnnotation(0, 2, (3, 4, 5, 6))])],
    )
    path = write_custom_dataset(LabeledDataset(["cat", "dog"], [video]), tmp_path / "dataset.json")
    result = run_cli("data", "check", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok: 1 videos, 2 annotations, 2 classes\n"


def test_bad_file_lists_every_problem_and_exits_1(tmp_path):
    document = {
        "format": "semidff-video/1",
        "categories": [{"id": 1, "name": "cat"}],
        "videos": [{"id": "v", "file": "missing.mp4", "width": 64, "height": 48, "num_frames": 2}],
        "annotations": [{"video_id": "v", "frame_index": 2, "category_id": 5, "bbox": [0, 0, 10, 10]}],
    }
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(document))
    result = run_cli("data", "check", str(path))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == ["videos[0].file", "annotations[0].category_id", "annotations[0].frame_index"]
    assert "3 problem(s)" in result.stderr and "Traceback" not in result.stderr

    result = run_cli("data", "check", "--no-files", str(path))
    assert result.returncode == 1 and len(result.stdout.splitlines()) == 2
