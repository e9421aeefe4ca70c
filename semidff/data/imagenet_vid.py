"""ImageNet VID (ILSVRC2015) snippets and DET still images as :class:`LabeledDataset` records.

Layout (dff-facts §4.1, DFF ``README.md``), under ``root`` = the ``ILSVRC2015`` folder (or its
parent)::

    Data/VID/{train,val}/<snippet>/%06d.JPEG         frames, numbered from 000000
    Annotations/VID/{train,val}/<snippet>/%06d.xml   one XML per frame, same number
    Data/DET/<image>.JPEG, Annotations/DET/<image>.xml
    ImageSets/VID_val_videos.txt        val/<snippet> <global id of its first frame, 1-based> 0 <length>
    ImageSets/VID_train_15frames.txt    train/<...>/<snippet> 1 <frame index> <length>
    ImageSets/DET_train_30classes.txt   train/<...>/<image> 1

Usage::

    from semidff.data.imagenet_vid import load_imagenet_vid, read_vid_train_samples
    val = load_imagenet_vid("/data/ILSVRC2015", split="val")
    train = load_imagenet_vid("/data/ILSVRC2015", split="train")      # every frame of each listed snippet
    samples = read_vid_train_samples("/data/ILSVRC2015")            # DFF's 15 frames per snippet

Conventions:

* A video id is the snippet's path under ``Data/`` without extension, e.g.
  ``VID/val/ILSVRC2015_val_00000000`` or ``DET/train/ILSVRC2014_train_0000/ILSVRC2014_train_00000663``.
* Frame indices are 0-based and equal the file number: frame 7 is ``000007.JPEG``/``000007.xml``.
  The frame index column of ``VID_train_15frames.txt`` is such a file number, as DFF uses it
  (a 300-frame snippet lists 10, 30, ..., 290); mmtracking's converter subtracts 1 instead.
* Labels are 1..30 in DFF's order (:data:`VID_CLASSES`); objects of other synsets are skipped and
  counted. Boxes are the XML's inclusive pixel corners clipped to [0, W-1] x [0, H-1], as DFF's
  ``load_vid_annotation`` does; a box with xmax < xmin (or ymax < ymin), or wholly outside the
  image, is skipped and counted.
* Every frame of a snippet has an XML, so every frame is a :class:`FrameAnnotation`, with
  ``objects=[]`` where nothing is annotated. Images are not opened or checked here.

Missing folders, lists or XML files raise ``FileNotFoundError`` naming the file and the layout
expected; a malformed list row or XML element raises ``ValueError`` naming the file and the row or
element.
"""
from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Union

from semidff.data.records import FrameAnnotation, LabeledDataset, LabeledVideo, ObjectAnnotation

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

VID_CLASSES: tuple[tuple[str, str], ...] = (
    ("airplane", "n02691156"),
    ("antelope", "n02419796"),
    ("bear", "n02131653"),
    ("bicycle", "n02834778"),
    ("bird", "n01503061"),
    ("bus", "n02924116"),
    ("car", "n02958343"),
    ("cattle", "n02402425"),
    ("dog", "n02084071"),
    ("domestic_cat", "n02121808"),
    ("elephant", "n02503517"),
    ("fox", "n02118333"),
    ("giant_panda", "n02510455"),
    ("hamster", "n02342885"),
    ("horse", "n02374451"),
    ("lion", "n02129165"),
    ("lizard", "n01674464"),
    ("monkey", "n02484322"),
    ("motorcycle", "n03790512"),
    ("rabbit", "n02324045"),
    ("red_panda", "n02509815"),
    ("sheep", "n02411705"),
    ("snake", "n01726692"),
    ("squirrel", "n02355227"),
    ("tiger", "n02129604"),
    ("train", "n04468005"),
    ("turtle", "n01662784"),
    ("watercraft", "n04530566"),
    ("whale", "n02062744"),
    ("zebra", "n02391049"),
)
"""The 30 VID classes as (name, WordNet synset), in DFF's order: label = position + 1 (dff-facts §4.3)."""

VID_CLASS_NAMES: list[str] = [name for name, _ in VID_CLASSES]
VID_SYNSET_TO_LABEL: dict[str, int] = {synset: label for label, (_, synset) in enumerate(VID_CLASSES, start=1)}

DEFAULT_IMAGE_SETS = {"val": "VID_val_videos", "train": "VID_train_15frames"}

_LAYOUT_HINT = "expected an ILSVRC2015 folder holding Data/, Annotations/ and ImageSets/ (dff-facts §4.1)"


# ---------------------------------------------------------------------------------------------
# One annotation file


@dataclass
class ParsedAnnotation:
    """What one VID or DET XML file says: the image size and the objects of the 30 classes."""

    width: int
    height: int
    objects: list[ObjectAnnotation]
    skipped: Counter  # reason -> count, for objects left out


def parse_vid_xml(path: PathLike) -> ParsedAnnotation:
    """Read one ILSVRC annotation XML (VID frame or DET image; DET has no ``trackid``).

    Fields (dff-facts §4.2): ``size/width``, ``size/height``; per ``object``: ``name`` (synset),
    ``bndbox/{xmin,ymin,xmax,ymax}`` (inclusive pixels), optional ``trackid`` (-1 when absent)
    and ``occluded`` (0/1, False when absent).
    """
    path = str(path)
    try:
        tree = ET.parse(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: annotation file missing; {_LAYOUT_HINT}") from None
    except ET.ParseError as exc:
        raise ValueError(f"{path}: not well-formed XML ({exc}); the file is damaged, extract it again") from None
    root = tree.getroot()
    width = _int_field(path, root, "size/width", minimum=1)
    height = _int_field(path, root, "size/height", minimum=1)
    objects: list[ObjectAnnotation] = []
    skipped: Counter = Counter()
    for number, obj in enumerate(root.findall("object"), start=1):
        where = f"object[{number}]"  # XPath numbering, 1-based
        synset = _text_field(path, obj, "name", where)
        label = VID_SYNSET_TO_LABEL.get(synset)
        if label is None:
            skipped[f"unknown synset {synset}"] += 1
            continue
        xmin, ymin, xmax, ymax = (_float_field(path, obj, f"bndbox/{key}", where) for key in ("xmin", "ymin", "xmax", "ymax"))
        if xmax < xmin or ymax < ymin:
            skipped["inverted box"] += 1
            continue
        # DFF clips to the image; the XML's corners are inclusive, so the last pixel is W-1 / H-1.
        x1, y1 = max(xmin, 0.0), max(ymin, 0.0)
        x2, y2 = min(xmax, width - 1.0), min(ymax, height - 1.0)
        if x2 < x1 or y2 < y1:
            skipped["box outside image"] += 1
            continue
        track_id = _int_field(path, obj, "trackid", where, default=-1)
        occluded = _int_field(path, obj, "occluded", where, default=0)
        if occluded not in (0, 1):
            raise ValueError(f"{path}: element {where}/occluded: expected 0 or 1, got {occluded}")
        objects.append(ObjectAnnotation(track_id=track_id, label=label, box=(x1, y1, x2, y2), occluded=bool(occluded)))
    return ParsedAnnotation(width=width, height=height, objects=objects, skipped=skipped)


def _text_field(path: str, parent: ET.Element, tag: str, where: str = "", default: Optional[str] = None) -> str:
    element = parent.find(tag)
    name = f"{where}/{tag}" if where else tag
    if element is None or element.text is None or not element.text.strip():
        if default is not None:
            return default
        raise ValueError(f"{path}: element {name} is missing or empty; every ILSVRC annotation has it (dff-facts §4.2)")
    return element.text.strip()


def _int_field(path: str, parent: ET.Element, tag: str, where: str = "", default: Optional[int] = None, minimum: Optional[int] = None) -> int:
    text = _text_field(path, parent, tag, where, default=None if default is None else str(default))
    name = f"{where}/{tag}" if where else tag
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{path}: element {name}: expected an integer, got {text!r}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{path}: element {name}: expected at least {minimum}, got {value}")
    return value


def _float_field(path: str, parent: ET.Element, tag: str, where: str) -> float:
    text = _text_field(path, parent, tag, where)
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{path}: element {where}/{tag}: expected a number, got {text!r}") from None


# ---------------------------------------------------------------------------------------------
# ImageSets lists


@dataclass(frozen=True)
class _ListRow:
    """One row of a VID ImageSets list, ``<split>/<snippet> <int> <int> <length>``. The middle
    columns depend on the list: ``VID_val_videos.txt`` has the 1-based global id of the snippet's
    first frame and 0; ``VID_train_15frames.txt`` has 1 and a 0-based frame index."""

    video_id: str  # "VID/" + the row's path, e.g. "VID/val/ILSVRC2015_val_00000000"
    column2: int
    column3: int
    num_frames: int
    line: int  # 1-based line number in the list, for messages


def _read_vid_list(path: PathLike, split: Optional[str] = None) -> list[_ListRow]:
    """Parse a 4-column VID list; with ``split``, every row's path must start with ``<split>/``."""
    path = str(path)
    rows: list[_ListRow] = []
    for line_number, line in enumerate(_read_lines(path), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 4:
            raise ValueError(f"{path}: line {line_number}: expected 4 columns '<split>/<snippet> <int> <int> <length>', got {len(fields)}: {line.strip()!r}")
        snippet = fields[0].strip("/")
        if split is not None and not snippet.startswith(f"{split}/"):
            raise ValueError(f"{path}: line {line_number}: column 1 {fields[0]!r} is not in split {split!r}; pick the list of that split")
        numbers = []
        for column in (2, 3, 4):
            try:
                numbers.append(int(fields[column - 1]))
            except ValueError:
                raise ValueError(f"{path}: line {line_number}, column {column}: expected an integer, got {fields[column - 1]!r}") from None
        if numbers[2] < 1:
            raise ValueError(f"{path}: line {line_number}, column 4: the snippet length must be positive, got {numbers[2]}")
        rows.append(_ListRow(f"VID/{snippet}", numbers[0], numbers[1], numbers[2], line_number))
    return rows


def read_vid_train_samples(root: PathLike, image_set: str = "VID_train_15frames") -> list[tuple[str, int]]:
    """DFF's training samples: (video_id, 0-based frame index) for each row of the list.

    The index is the list's third column used as a file number, as DFF does (frame 10 is
    ``000010.JPEG``); mmtracking subtracts 1, which shifts every sample by one frame.
    """
    list_path = _image_set_path(_dataset_root(root), image_set)
    samples = []
    for row in _read_vid_list(list_path, split="train"):
        if not 0 <= row.column3 < row.num_frames:
            raise ValueError(f"{list_path}: line {row.line}, column 3: frame index {row.column3} is outside the snippet's {row.num_frames} frames")
        samples.append((row.video_id, row.column3))
    return samples


def read_vid_val_first_ids(root: PathLike, image_set: str = "VID_val_videos") -> dict[str, int]:
    """video_id -> the 1-based global id of its first frame (frame i has id first + i), the ids
    DFF's detection files use (dff-facts §4.4)."""
    rows = _read_vid_list(_image_set_path(_dataset_root(root), image_set), split="val")
    return {row.video_id: row.column2 for row in rows}


# ---------------------------------------------------------------------------------------------
# Datasets


def load_imagenet_vid(
    root: PathLike,
    split: Literal["val", "train"] = "val",
    image_set: Optional[str] = None,
    max_videos: Optional[int] = None,
    skipped: Optional[Counter] = None,
) -> LabeledDataset:
    """Every frame of every snippet the list names, in list order.

    image_set: a list name in ``ImageSets/`` (without ``.txt``) or a path to a list file; default
    ``VID_val_videos`` for val and ``VID_train_15frames`` for train (its snippets, each once: the
    15 sampled frames are :func:`read_vid_train_samples`). Only the path and the length column
    are used here, so any 4-column VID list works.
    max_videos: keep the first N snippets of the list.
    Every frame's XML is parsed: the full train set (~1.1 M frames) takes minutes.
    skipped: a Counter to which left-out objects are added, by reason
    (``"unknown synset n..."``, ``"box outside image"``, ``"inverted box"``).
    """
    if split not in DEFAULT_IMAGE_SETS:
        raise ValueError(f"split must be one of {sorted(DEFAULT_IMAGE_SETS)}, got {split!r}")
    base = _dataset_root(root)
    list_path = _image_set_path(base, image_set or DEFAULT_IMAGE_SETS[split])
    lengths: dict[str, int] = {}
    for row in _read_vid_list(list_path, split=split):
        known = lengths.setdefault(row.video_id, row.num_frames)
        if known != row.num_frames:
            raise ValueError(f"{list_path}: line {row.line}: {row.video_id} has length {row.num_frames} here but {known} on an earlier line")
    video_ids = list(lengths)[:max_videos] if max_videos is not None else list(lengths)
    counts: Counter = Counter()
    videos = [_load_snippet(base, video_id, lengths[video_id], counts) for video_id in video_ids]
    _report(f"ImageNet VID {split}", counts, skipped)
    return LabeledDataset(class_names=list(VID_CLASS_NAMES), videos=videos)


def _load_snippet(base: Path, video_id: str, num_frames: int, counts: Counter) -> LabeledVideo:
    data_dir = base / "Data" / video_id
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: snippet folder missing; {_LAYOUT_HINT}, frames as Data/{video_id}/%06d.JPEG")
    frames = []
    size: Optional[tuple[int, int]] = None
    for index in range(num_frames):
        xml_path = base / "Annotations" / video_id / f"{index:06d}.xml"
        parsed = parse_vid_xml(xml_path)
        if size is None:
            size = (parsed.width, parsed.height)
        elif size != (parsed.width, parsed.height):
            raise ValueError(f"{xml_path}: element size: {parsed.width}x{parsed.height}, but frame 0 of the snippet is {size[0]}x{size[1]}")
        counts.update(parsed.skipped)
        frames.append(FrameAnnotation(frame_index=index, objects=parsed.objects))
    assert size is not None  # num_frames >= 1, checked by _read_vid_list
    return LabeledVideo(
        video_id=video_id,
        source=str(data_dir),
        width=size[0],
        height=size[1],
        num_frames=num_frames,
        fps=None,  # ILSVRC does not record the frame rate
        frames=frames,
        frame_paths=[str(data_dir / f"{index:06d}.JPEG") for index in range(num_frames)],
    )


def load_imagenet_det(
    root: PathLike,
    image_set: str = "DET_train_30classes",
    max_images: Optional[int] = None,
    skipped: Optional[Counter] = None,
) -> LabeledDataset:
    """DET still images of the 30 VID classes, each a one-frame :class:`LabeledVideo` whose
    ``source`` and only ``frame_paths`` entry is the image (``track_id`` is -1 throughout).

    image_set: a list name in ``ImageSets/`` or a path; rows ``train/<...>/<image> <int>``, of
    which only the path is used. Other arguments as in :func:`load_imagenet_vid`.
    """
    base = _dataset_root(root)
    list_path = _image_set_path(base, image_set)
    image_ids = []
    for line_number, line in enumerate(_read_lines(str(list_path)), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) > 2:
            raise ValueError(f"{list_path}: line {line_number}: expected '<split>/<...>/<image> [<int>]', got {len(fields)} columns: {line.strip()!r}")
        image_ids.append("DET/" + fields[0].strip("/"))
    if max_images is not None:
        image_ids = image_ids[:max_images]
    counts: Counter = Counter()
    videos = []
    for image_id in image_ids:
        parsed = parse_vid_xml(base / "Annotations" / f"{image_id}.xml")
        counts.update(parsed.skipped)
        image_path = str(base / "Data" / f"{image_id}.JPEG")
        videos.append(
            LabeledVideo(
                video_id=image_id,
                source=image_path,
                width=parsed.width,
                height=parsed.height,
                num_frames=1,
                fps=None,
                frames=[FrameAnnotation(frame_index=0, objects=parsed.objects)],
                frame_paths=[image_path],
            )
        )
    _report(f"ImageNet DET {image_set}", counts, skipped)
    return LabeledDataset(class_names=list(VID_CLASS_NAMES), videos=videos)


# ---------------------------------------------------------------------------------------------
# Paths


def _dataset_root(root: PathLike) -> Path:
    """The folder holding Data/, Annotations/ and ImageSets/: ``root`` itself or ``root/ILSVRC2015``."""
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: no such folder; {_LAYOUT_HINT}")
    if not (base / "Annotations").is_dir() and (base / "ILSVRC2015" / "Annotations").is_dir():
        base = base / "ILSVRC2015"
    missing = [name for name in ("Data", "Annotations", "ImageSets") if not (base / name).is_dir()]
    if missing:
        raise FileNotFoundError(f"{base}: no {', '.join(name + '/' for name in missing)} inside; {_LAYOUT_HINT}")
    return base


def _image_set_path(base: Path, image_set: str) -> Path:
    """A list given by name (``ImageSets/<name>.txt``, ``.txt`` optional) or by a path with a folder."""
    if "/" in image_set or os.sep in image_set:
        path = Path(image_set)
    else:
        path = base / "ImageSets" / (image_set if image_set.endswith(".txt") else f"{image_set}.txt")
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: image set list missing; expected ImageSets/<name>.txt in the ILSVRC2015 folder "
            "(DFF ships them in its data/ILSVRC2015/ImageSets), or pass the list's path"
        )
    return path


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: list file missing; {_LAYOUT_HINT}") from None


def _report(what: str, counts: Counter, skipped: Optional[Counter]) -> None:
    if skipped is not None:
        skipped.update(counts)
    if counts:
        logger.info("%s: skipped %s", what, ", ".join(f"{n} x {reason}" for reason, n in sorted(counts.items())))
