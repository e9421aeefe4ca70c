"""Config data sections → a labeled dataset (semidff/data/labeled.py): errors that name the key and
the fix, a real synthetic set read back, and the digests stage 1 and the evaluation log."""
from __future__ import annotations

import dataclasses
import hashlib

import pytest

from semidff.config import TeacherDataConfig
from semidff.data.labeled import LabeledDataError, annotations_digest, dataset_digest, load_labeled_dataset
from semidff.data.records import FrameAnnotation, LabeledDataset, LabeledVideo, ObjectAnnotation
from semidff.data.synthetic import generate_synthetic_dataset


def _dataset(x1: float = 4.0) -> LabeledDataset:
    objects = [ObjectAnnotation(track_id=0, label=1, box=(x1, 5.0, 20.0, 30.0))]
    video = LabeledVideo("v0", "/videos/v0.mp4", width=64, height=48, num_frames=10, fps=25.0,
                         frames=[FrameAnnotation(0, objects), FrameAnnotation(5, [])])
    return LabeledDataset(["cat", "dog"], [video])


def test_load_labeled_dataset_names_the_key_and_the_fix(tmp_path):
    with pytest.raises(LabeledDataError, match=r"teacher_training.data.path is not set"):
        load_labeled_dataset(TeacherDataConfig(format="custom"))
    with pytest.raises(LabeledDataError, match=r"evaluation.data.path=.*missing.json: no such file"):
        load_labeled_dataset(TeacherDataConfig(path=str(tmp_path / "missing.json")), key="evaluation.data")
    with pytest.raises(LabeledDataError, match=r"video_dir is not set"):
        load_labeled_dataset(TeacherDataConfig(format="youtube_bb", path=str(tmp_path)))
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(LabeledDataError, match=r"(?s)teacher_training.data \(custom at .*broken.json\).*invalid JSON"):
        load_labeled_dataset(TeacherDataConfig(path=str(broken)))

    written = generate_synthetic_dataset(tmp_path / "synthetic", num_videos=1, num_frames=4, width=64, height=48, seed=0)
    path = tmp_path / "synthetic" / "dataset.json"
    loaded = load_labeled_dataset(TeacherDataConfig(path=str(path)))
    assert loaded.class_names == written.class_names and [v.video_id for v in loaded.videos] == [v.video_id for v in written.videos]
    # A custom file's digest is its bytes' SHA-256; the annotations digest does not depend on the file.
    data = TeacherDataConfig(path=str(path))
    assert dataset_digest(data, loaded) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert annotations_digest(loaded) == annotations_digest(written)


def test_annotations_digest_changes_with_any_box_label_or_frame():
    reference = annotations_digest(_dataset())
    assert annotations_digest(_dataset()) == reference and len(reference) == 64
    assert annotations_digest(_dataset(x1=4.5)) != reference
    renamed = _dataset()
    renamed.class_names = ["cat", "wolf"]
    assert annotations_digest(renamed) != reference
    fewer = _dataset()
    fewer.videos[0] = dataclasses.replace(fewer.videos[0], frames=fewer.videos[0].frames[:1])
    assert annotations_digest(fewer) != reference
    # ImageNet VID (one XML per frame) has no single file: its digest is the annotations digest.
    assert dataset_digest(TeacherDataConfig(format="imagenet_vid", path="/data/ILSVRC2015"), _dataset()) == reference
