"""ImageNet VID / DET readers on a tiny ILSVRC2015 tree written into tmp_path: exact labels, boxes,
track ids and frame indices, and errors that name the file."""
import re
from collections import Counter
from pathlib import Path

import pytest

from semidff.data.imagenet_vid import (
    VID_CLASS_NAMES,
    VID_CLASSES,
    VID_SYNSET_TO_LABEL,
    load_imagenet_det,
    load_imagenet_vid,
    parse_vid_xml,
    read_vid_train_samples,
    read_vid_val_first_ids,
)
from semidff.data.records import ObjectAnnotation

AIRPLANE, DOG, ZEBRA, UNKNOWN = "n02691156", "n02084071", "n02391049", "n99999999"
VAL_0, VAL_1 = "val/ILSVRC2015_val_00000000", "val/ILSVRC2015_val_00000001"
TRAIN_0, TRAIN_1 = "train/ILSVRC2015_VID_train_0000/ILSVRC2015_train_00000000", "train/ILSVRC2015_VID_train_0001/ILSVRC2015_train_00000001"
DET_0, DET_1 = "train/ILSVRC2014_train_0000/ILSVRC2014_train_00000001", "train/ILSVRC2013_train/n02084071/n02084071_7"


def obj(synset, box, trackid=None, occluded=None):
    """An <object> element; box = (xmin, ymin, xmax, ymax) as written in the XML."""
    parts = [f"<name>{synset}</name>"]
    if trackid is not None:
        parts.insert(0, f"<trackid>{trackid}</trackid>")
    xmin, ymin, xmax, ymax = box
    parts.append(f"<bndbox><xmax>{xmax}</xmax><xmin>{xmin}</xmin><ymax>{ymax}</ymax><ymin>{ymin}</ymin></bndbox>")
    if occluded is not None:
        parts.append(f"<occluded>{occluded}</occluded><generated>0</generated>")
    return "<object>" + "".join(parts) + "</object>"


def xml(width, height, *objects):
    return f"<annotation><folder>x</folder><filename>x</filename><size><width>{width}</width><height>{height}</height></size>{''.join(objects)}</annotation>"


# snippet -> one XML per frame
VID_FRAMES = {
    VAL_0: [
        xml(640, 480, obj(AIRPLANE, (10, 20, 100, 200), trackid=0, occluded=0), obj(DOG, (-3, 5, 700, 479), trackid=1, occluded=1)),
        xml(640, 480),
        xml(640, 480, obj(AIRPLANE, (12, 22, 102, 202), trackid=0, occluded=0), obj(UNKNOWN, (1, 1, 5, 5), trackid=2, occluded=0)),
    ],
    VAL_1: [xml(320, 240, obj(ZEBRA, (0, 0, 319, 239), trackid=3, occluded=0))] * 3,
    TRAIN_0: [xml(500, 375, obj(DOG, (1, 2, 3, 4), trackid=0, occluded=0))] * 3,
    TRAIN_1: [xml(500, 375)] * 3,
}
DET_IMAGES = {
    DET_0: xml(400, 300, obj(ZEBRA, (5, 6, 50, 60)), obj(UNKNOWN, (1, 1, 2, 2))),
    DET_1: xml(200, 100, obj(DOG, (0, 0, 250, 99))),
}


@pytest.fixture
def ilsvrc(tmp_path: Path) -> Path:
    """tmp_path/ILSVRC2015 with 2 val and 2 train snippets of 3 frames, 2 DET images and the lists.
    Images are empty placeholders: the readers never open them."""
    base = tmp_path / "ILSVRC2015"
    for snippet, frames in VID_FRAMES.items():
        (base / "Data/VID" / snippet).mkdir(parents=True)
        (base / "Annotations/VID" / snippet).mkdir(parents=True)
        for index, text in enumerate(frames):
            (base / "Data/VID" / snippet / f"{index:06d}.JPEG").touch()
            (base / "Annotations/VID" / snippet / f"{index:06d}.xml").write_text(text)
    for image, text in DET_IMAGES.items():
        (base / "Data/DET" / image).parent.mkdir(parents=True, exist_ok=True)
        (base / "Annotations/DET" / image).parent.mkdir(parents=True, exist_ok=True)
        (base / "Data/DET" / f"{image}.JPEG").touch()
        (base / "Annotations/DET" / f"{image}.xml").write_text(text)
    (base / "ImageSets").mkdir()
    (base / "ImageSets/VID_val_videos.txt").write_text(f"{VAL_0} 1 0 3\n{VAL_1} 4 0 3\n")
    (base / "ImageSets/VID_train_15frames.txt").write_text(f"{TRAIN_0} 1 0 3\n{TRAIN_0} 1 2 3\n{TRAIN_1} 1 1 3\n")
    (base / "ImageSets/DET_train_30classes.txt").write_text(f"{DET_0} 1\n{DET_1} 2\n")
    return base


def test_the_30_classes_in_dff_order():
    assert len(VID_CLASSES) == 30 and len(set(VID_SYNSET_TO_LABEL)) == 30
    assert VID_CLASSES[0] == ("airplane", "n02691156")
    assert VID_CLASSES[9] == ("domestic_cat", "n02121808")
    assert VID_CLASSES[29] == ("zebra", "n02391049")
    assert VID_SYNSET_TO_LABEL[DOG] == 9 and VID_CLASS_NAMES[8] == "dog"


def test_val_snippets_frames_boxes_and_skipped_objects(ilsvrc):
    skipped = Counter()
    dataset = load_imagenet_vid(ilsvrc, split="val", skipped=skipped)
    assert dataset.class_names == VID_CLASS_NAMES
    assert [v.video_id for v in dataset.videos] == ["VID/" + VAL_0, "VID/" + VAL_1]
    video = dataset.videos[0]
    assert (video.width, video.height, video.num_frames, video.fps) == (640, 480, 3, None)
    assert video.source == str(ilsvrc / "Data/VID" / VAL_0)
    assert video.frame_paths == [str(ilsvrc / "Data/VID" / VAL_0 / f"00000{i}.JPEG") for i in range(3)]
    assert [f.frame_index for f in video.frames] == [0, 1, 2]
    assert video.frames[0].objects == [
        ObjectAnnotation(track_id=0, label=1, box=(10.0, 20.0, 100.0, 200.0), occluded=False),
        ObjectAnnotation(track_id=1, label=9, box=(0.0, 5.0, 639.0, 479.0), occluded=True),  # clipped to [0, W-1]
    ]
    assert video.frames[1].objects == []  # annotated, empty
    assert video.frames[2].objects == [ObjectAnnotation(track_id=0, label=1, box=(12.0, 22.0, 102.0, 202.0))]
    assert skipped == Counter({f"unknown synset {UNKNOWN}": 1})
    zebra = dataset.videos[1]
    assert (zebra.width, zebra.height) == (320, 240)
    assert [f.objects for f in zebra.frames] == [[ObjectAnnotation(3, 30, (0.0, 0.0, 319.0, 239.0))]] * 3
    assert read_vid_val_first_ids(ilsvrc) == {"VID/" + VAL_0: 1, "VID/" + VAL_1: 4}


def test_root_may_be_the_parent_and_max_videos_cuts_the_list(ilsvrc):
    dataset = load_imagenet_vid(ilsvrc.parent, split="val", max_videos=1)
    assert [v.video_id for v in dataset.videos] == ["VID/" + VAL_0]


def test_train_keeps_every_frame_and_the_15_frame_samples_are_0_based(ilsvrc):
    dataset = load_imagenet_vid(ilsvrc, split="train")
    assert [v.video_id for v in dataset.videos] == ["VID/" + TRAIN_0, "VID/" + TRAIN_1]  # TRAIN_0 listed twice, loaded once
    assert [f.frame_index for f in dataset.videos[0].frames] == [0, 1, 2]
    assert dataset.videos[0].frames[2].objects == [ObjectAnnotation(0, 9, (1.0, 2.0, 3.0, 4.0))]
    assert dataset.videos[1].num_objects() == 0 and len(dataset.videos[1].frames) == 3
    # the list's third column is the file number: "1 0 3" is 000000, not frame -1
    assert read_vid_train_samples(ilsvrc) == [("VID/" + TRAIN_0, 0), ("VID/" + TRAIN_0, 2), ("VID/" + TRAIN_1, 1)]


def test_det_images_are_one_frame_videos(ilsvrc):
    skipped = Counter()
    dataset = load_imagenet_det(ilsvrc, skipped=skipped)
    assert [v.video_id for v in dataset.videos] == ["DET/" + DET_0, "DET/" + DET_1]
    first, second = dataset.videos
    path = str(ilsvrc / "Data/DET" / f"{DET_0}.JPEG")
    assert (first.source, first.frame_paths, first.num_frames, first.width, first.height) == (path, [path], 1, 400, 300)
    assert first.frames[0].frame_index == 0
    assert first.frames[0].objects == [ObjectAnnotation(-1, 30, (5.0, 6.0, 50.0, 60.0))]  # no trackid in DET
    assert second.frames[0].objects == [ObjectAnnotation(-1, 9, (0.0, 0.0, 199.0, 99.0))]
    assert skipped == Counter({f"unknown synset {UNKNOWN}": 1})


def test_boxes_with_no_area_inside_the_image_are_skipped(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(xml(100, 50, obj(DOG, (120, 0, 130, 10)), obj(DOG, (30, 10, 20, 40)), obj(DOG, (99, 49, 99, 49))))
    parsed = parse_vid_xml(path)
    assert parsed.objects == [ObjectAnnotation(-1, 9, (99.0, 49.0, 99.0, 49.0))]  # a one-pixel box stays
    assert parsed.skipped == Counter({"box outside image": 1, "inverted box": 1})


def test_missing_root_list_and_annotation_name_the_file(ilsvrc, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*Data/, Annotations/ and ImageSets/"):
        load_imagenet_vid(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="VID_val_frames.txt: image set list missing"):
        load_imagenet_vid(ilsvrc, image_set="VID_val_frames")
    missing = ilsvrc / "Annotations/VID" / VAL_1 / "000002.xml"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{missing}: annotation file missing")):
        load_imagenet_vid(ilsvrc)
    (ilsvrc / "ImageSets").rename(ilsvrc / "Lists")
    with pytest.raises(FileNotFoundError, match="no ImageSets/ inside"):
        load_imagenet_vid(ilsvrc)


@pytest.mark.parametrize(
    "text, message",
    [
        ("<annotation><size><width>6", "not well-formed XML"),
        (xml(640, 480).replace("<height>480</height>", ""), "element size/height is missing"),
        (xml("wide", 480), "element size/width: expected an integer, got 'wide'"),
        (xml(640, 480, obj(DOG, (1, 2, "x", 4), trackid=0)), r"element object\[1\]/bndbox/xmax: expected a number, got 'x'"),
        (xml(640, 480, obj(DOG, (1, 2, 3, 4), trackid="a")), r"element object\[1\]/trackid: expected an integer"),
        (xml(640, 480, obj(DOG, (1, 2, 3, 4), trackid=0, occluded=2)), r"element object\[1\]/occluded: expected 0 or 1"),
    ],
)
def test_malformed_xml_names_the_file_and_element(ilsvrc, text, message):
    bad = ilsvrc / "Annotations/VID" / VAL_0 / "000001.xml"
    bad.write_text(text)
    with pytest.raises(ValueError, match=re.escape(str(bad)) + f": .*{message}"):
        load_imagenet_vid(ilsvrc)


def test_malformed_list_row_names_the_line(ilsvrc):
    listing = ilsvrc / "ImageSets/VID_val_videos.txt"
    listing.write_text(f"{VAL_0} 1 0 3\n{VAL_1} 4 zero 3\n")
    with pytest.raises(ValueError, match=re.escape(f"{listing}: line 2, column 3: expected an integer, got 'zero'")):
        load_imagenet_vid(ilsvrc)
    listing.write_text(f"{TRAIN_0} 1 0 3\n")
    with pytest.raises(ValueError, match="line 1: column 1 .* is not in split 'val'"):
        load_imagenet_vid(ilsvrc)
