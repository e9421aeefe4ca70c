"""The "custom" labeled-video format (``semidff-video/1``): one COCO-style JSON file for your own videos.

    dataset = load_custom_dataset("my_videos/dataset.json")        # LabeledDataset, or CustomFormatError
    problems = validate_custom_dataset("my_videos/dataset.json")   # [] when clean; else every problem
    write_custom_dataset(dataset, "out/dataset.json")
    $ semidff data check my_videos/dataset.json [--probe]

Schema (every key is required unless marked optional; any other key is an error, so a typo such
as ``"ocluded"`` is caught instead of silently ignored)::

    {
      "format": "semidff-video/1",
      "info": {...},                                   # optional, free-form, ignored
      "categories": [{"id": 1, "name": "car"}, ...],
      "videos": [
        {"id": "street_01",                            # string or integer, unique
         "file": "videos/street_01.mp4",               # see "file" below
         "width": 1280, "height": 720,                 # pixels of the decoded frames
         "num_frames": 300,                            # frames of the decoded video
         "fps": 29.97,                                 # optional (null or omitted: unknown)
         "annotated_frames": [0, 30, 60]}              # optional, see below
      ],
      "annotations": [
        {"video_id": "street_01", "frame_index": 30, "category_id": 1,
         "bbox": [412.0, 200.5, 64.0, 40.0],           # COCO [x, y, w, h], see below
         "track_id": 7,                                # optional, default -1 (unknown)
         "occluded": false}                            # optional, default false
      ]
    }

* ``categories``: at least one; ``id`` a unique integer >= 1 (0 is the background), ``name`` a
  unique string. Ids need not be contiguous (COCO's are not): the categories sorted by id get
  the labels 1..K, so ids 1..K map to themselves.
* ``videos[].id`` and ``annotations[].video_id`` may be strings or integers; they are compared as
  text (``3`` and ``"3"`` are the same video), and the loaded ``video_id`` is that text.
* ``videos[].file``: a path relative to the folder of the JSON file, an absolute path, a
  ``file://`` URI, or a remote URI (``s3://``, ``gs://``; never checked unless ``--probe``). It
  is an encoded video file, or a folder of frame images (.jpg, .jpeg, .png, .bmp, .webp, any
  case) taken in sorted file-name order (zero-pad the numbers: ``000009.jpg`` < ``000010.jpg``),
  which must hold exactly ``num_frames`` images.
* ``frame_index``: 0-based index of the decoded frame (of the sorted listing for a folder),
  ``0 <= frame_index < num_frames``.
* ``annotated_frames``: which frames were labeled. Omitted: every frame, and a frame without
  annotations shows no object (detections there are false positives). Given: only those
  frames (sparse labeling, e.g. one per second); each annotation must fall on one of them.
* ``bbox``: COCO ``[x, y, w, h]`` in pixels of the decoded frame, floats allowed: the box covers
  the pixels ``x .. x + w - 1`` horizontally. Loading converts it to the inclusive corners the
  rest of semidff uses: ``x1 = x``, ``y1 = y``, ``x2 = x + w - 1``, ``y2 = y + h - 1``. So
  ``w >= 1`` and ``h >= 1`` (at least one pixel), ``x, y >= 0``, ``x + w <= width`` and
  ``y + h <= height`` (up to 0.001 px of rounding).
* ``track_id``: the same object has the same integer >= 0 in every frame of its video; -1 when
  unknown. A track appears at most once per frame.

The validator reports every problem it finds, each with a location in the document
(``annotations[17].bbox``, ``videos[2].file``, ``line 4, column 9`` for JSON syntax) and a
message; loading raises :class:`CustomFormatError` listing them. An entry with a missing key, an
unknown key or a value of the wrong type gets those problems only: its references (video,
category, frame range, box inside the frame) are checked once its keys and types are right.
"""
from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from semidff.atomic import write_text_atomically
from semidff.data.records import FrameAnnotation, LabeledDataset, LabeledVideo, ObjectAnnotation
from semidff.video.probe import is_local, normalize_uri

FORMAT = "semidff-video/1"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
BBOX_TOLERANCE = 1e-3  # pixels a box may reach past the frame edge (float rounding in annotation tools)
MAX_PROBLEMS_IN_ERROR = 20  # problems a CustomFormatError message lists; all are in .problems


@dataclass(frozen=True)
class Problem:
    """One problem in a custom dataset file: where in the document, and what is wrong."""

    location: str  # e.g. "annotations[17].bbox", "videos[2].file", "line 4, column 9"
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class CustomFormatError(ValueError):
    """A custom dataset file has problems; ``problems`` lists every one."""

    def __init__(self, path: str | Path, problems: list[Problem]):
        self.path, self.problems = str(path), problems
        shown = "\n".join(f"  {p}" for p in problems[:MAX_PROBLEMS_IN_ERROR])
        more = len(problems) - MAX_PROBLEMS_IN_ERROR
        tail = f"\n  ... and {more} more (run `semidff data check {path}` to list all)" if more > 0 else ""
        super().__init__(f"{path}: {len(problems)} problem(s) in the {FORMAT} dataset file:\n{shown}{tail}")


# ---------------------------------------------------------------------------------------------
# Schema of the document's parts (strict: no "3" for 3, no 1 for true)

Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Id = Union[StrictStr, StrictInt]


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Document(_Part):
    format: str
    info: Optional[dict[str, Any]] = None
    categories: list[Any] = Field(min_length=1)
    videos: list[Any] = Field(min_length=1)
    annotations: list[Any]


class _Category(_Part):
    id: int = Field(ge=1)
    name: str = Field(min_length=1)


class _Video(_Part):
    id: Id
    file: str = Field(min_length=1)
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    num_frames: int = Field(ge=1)
    fps: Optional[Number] = Field(None, gt=0)
    annotated_frames: Optional[list[Annotated[int, Field(ge=0)]]] = None


class _Annotation(_Part):
    video_id: Id
    frame_index: int = Field(ge=0)
    category_id: int
    bbox: list[Number] = Field(min_length=4, max_length=4)
    track_id: int = Field(-1, ge=-1)
    occluded: bool = False


_ID_KEYS = ("id", "video_id")  # string-or-integer keys: pydantic adds "str" / "int" to their error locations
_UNION_TAGS = ("str", "int")


def _pydantic_problems(error: ValidationError, prefix: str, model: type[BaseModel]) -> list[Problem]:
    problems: list[Problem] = []
    seen: set[str] = set()
    for item in error.errors():
        raw_loc = item["loc"]
        loc = [p for i, p in enumerate(raw_loc) if not (i > 0 and raw_loc[i - 1] in _ID_KEYS and p in _UNION_TAGS)]
        location = (prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)).lstrip(".")
        given = item.get("input")
        if item["type"] == "missing":
            message = "required key is missing"
        elif item["type"] == "extra_forbidden":
            allowed = list(model.model_fields)
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            message = f"unknown key (allowed: {', '.join(allowed)}){hint}"
        elif location in seen:  # the second member of a failed union
            continue
        else:
            message = item["msg"] + ("" if isinstance(given, (dict, list)) else f", got {json.dumps(given)}")
            if len(loc) == 1 and loc[0] in _ID_KEYS and item["type"] in ("string_type", "int_type"):
                message = f"should be a string or an integer, got {json.dumps(given)}"
        seen.add(location)
        problems.append(Problem(location, message))
    return problems


def _raw_id(raw: Any, key: str) -> str:
    """The id of a part that failed validation, as text ("" when there is none)."""
    value = raw.get(key) if isinstance(raw, dict) else None
    return str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""


def _parse(model: type[BaseModel], data: Any, location: str, problems: list[Problem]):
    """``model`` validated from ``data``, or None after adding its problems."""
    if not isinstance(data, dict):
        problems.append(Problem(location or "<top level>", f"should be an object {{...}}, got {type(data).__name__} {json.dumps(data)[:40]}"))
        return None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, location, model))
        return None


# ---------------------------------------------------------------------------------------------
# Validation


@dataclass
class _Checked:
    """What validation learned, for loading (used only when there were no problems)."""

    categories: dict[int, _Category] = field(default_factory=dict)
    videos: dict[int, _Video] = field(default_factory=dict)
    sources: dict[int, str] = field(default_factory=dict)
    frame_paths: dict[int, list[str]] = field(default_factory=dict)
    annotations: list[_Annotation] = field(default_factory=list)


def _read_json(path: Path, problems: list[Problem]) -> Any:
    if not path.is_file():
        problems.append(Problem(str(path), "file does not exist" if not path.exists() else "not a file"))
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        problems.append(Problem(f"byte {exc.start}", "the file is not UTF-8 text (is it a JSON file?)"))
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        problems.append(Problem(f"line {exc.lineno}, column {exc.colno}", f"invalid JSON: {exc.msg}"))
        return None


def resolve_source(file: str, json_folder: str | Path) -> str:
    """The path or URI ``videos[].file`` names: relative paths are taken from ``json_folder``."""
    if "://" not in file and not os.path.isabs(os.path.expanduser(file)):
        file = os.path.join(os.path.abspath(json_folder), file)
    return normalize_uri(file)


def list_frame_images(folder: str | Path) -> list[str]:
    """Frame images of a folder (by extension, any case), in sorted file-name order."""
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith("."))
    return [os.path.join(folder, n) for n in names]


def _check_source(index: int, video: _Video, source: str, check_files: bool, probe: bool, checked: _Checked, problems: list[Problem]) -> None:
    where = f"videos[{index}].file"
    if is_local(source) and os.path.isdir(source):
        frames = list_frame_images(source)
        checked.frame_paths[index] = frames
        if check_files and len(frames) != video.num_frames:
            kinds = ", ".join(IMAGE_EXTENSIONS)
            problems.append(Problem(where, f"the folder {source} holds {len(frames)} frame images ({kinds}) but num_frames is {video.num_frames}"))
        return
    if check_files and is_local(source) and not os.path.exists(source):
        problems.append(Problem(where, f"{source} does not exist (relative paths are taken from the JSON file's folder)"))
        return
    if not probe:
        return
    from semidff.video.probe import probe_video  # decord: only when asked

    info = probe_video(source)
    if info.status != "ok":
        problems.append(Problem(where, info.error))
        return
    for key in ("width", "height", "num_frames"):
        declared, actual = getattr(video, key), getattr(info, key)
        if declared != actual:
            problems.append(Problem(f"videos[{index}].{key}", f"is {declared} but the decoded video has {actual}"))


def _check_bbox(bbox: list[float], video: _Video, problems: list[Problem], where: str) -> None:
    x, y, w, h = bbox
    shown = f"[x, y, w, h] = [{x:g}, {y:g}, {w:g}, {h:g}]"
    if w < 1 or h < 1:
        problems.append(Problem(where, f"{shown}: w and h must be >= 1 pixel (the box covers x .. x + w - 1)"))
    if x < 0 or y < 0:
        problems.append(Problem(where, f"{shown}: x and y must be >= 0 (the top-left pixel is 0, 0)"))
    if x + w > video.width + BBOX_TOLERANCE:
        problems.append(Problem(where, f"{shown}: reaches past the right edge, x + w = {x + w:g} > width {video.width}"))
    if y + h > video.height + BBOX_TOLERANCE:
        problems.append(Problem(where, f"{shown}: reaches past the bottom edge, y + h = {y + h:g} > height {video.height}"))


def _validate(path: str | Path, check_files: bool, probe: bool) -> tuple[list[Problem], _Checked]:
    path = Path(path)
    problems: list[Problem] = []
    checked = _Checked()
    data = _read_json(path, problems)
    if problems:
        return problems, checked
    _parse(_Document, data, "", problems)  # top-level keys and the types of the sections
    if not isinstance(data, dict):
        return problems, checked
    if isinstance(data.get("format"), str) and data["format"] != FORMAT:
        problems.append(Problem("format", f"is {data['format']!r}; this reader understands {FORMAT!r}"))
    # Sections that are lists are checked even when another part of the top level is wrong.
    sections = {name: value if isinstance(value := data.get(name), list) else [] for name in ("categories", "videos", "annotations")}
    broken_ids: set[str] = set()  # ids of categories and videos that failed: no "unknown id" for them

    category_at: dict[int, int] = {}
    name_at: dict[str, int] = {}
    for i, raw in enumerate(sections["categories"]):
        category = _parse(_Category, raw, f"categories[{i}]", problems)
        if category is None:
            broken_ids.add(f"category {_raw_id(raw, 'id')}")
            continue
        if category.id in category_at:
            problems.append(Problem(f"categories[{i}].id", f"duplicate id {category.id} (also categories[{category_at[category.id]}])"))
            continue
        if category.name in name_at:
            problems.append(Problem(f"categories[{i}].name", f"duplicate name {category.name!r} (also categories[{name_at[category.name]}])"))
        category_at[category.id], name_at[category.name] = i, i
        checked.categories[i] = category

    video_at: dict[str, int] = {}
    annotated: dict[int, set[int]] = {}
    for i, raw in enumerate(sections["videos"]):
        video = _parse(_Video, raw, f"videos[{i}]", problems)
        if video is None:
            broken_ids.add(f"video {_raw_id(raw, 'id')}")
            continue
        key = str(video.id)
        if key in video_at:
            problems.append(Problem(f"videos[{i}].id", f"duplicate id {json.dumps(video.id)} (also videos[{video_at[key]}])"))
            continue
        video_at[key] = i
        if video.annotated_frames is not None:
            seen: set[int] = set()
            for j, frame_index in enumerate(video.annotated_frames):
                if frame_index >= video.num_frames:
                    problems.append(Problem(f"videos[{i}].annotated_frames[{j}]", f"frame {frame_index} >= num_frames {video.num_frames}"))
                elif frame_index in seen:
                    problems.append(Problem(f"videos[{i}].annotated_frames[{j}]", f"frame {frame_index} is listed twice"))
                seen.add(frame_index)
            annotated[i] = seen
        source = resolve_source(video.file, path.parent)
        _check_source(i, video, source, check_files, probe, checked, problems)
        checked.videos[i], checked.sources[i] = video, source

    tracks_seen: dict[tuple[int, int, int], int] = {}
    for i, raw in enumerate(sections["annotations"]):
        where = f"annotations[{i}]"
        annotation = _parse(_Annotation, raw, where, problems)
        if annotation is None:
            continue
        checked.annotations.append(annotation)
        if annotation.category_id not in category_at and f"category {annotation.category_id}" not in broken_ids:
            known = ", ".join(str(c) for c in sorted(category_at))
            problems.append(Problem(f"{where}.category_id", f"unknown category {annotation.category_id} (categories: {known})"))
        video_index = video_at.get(str(annotation.video_id))
        if video_index is None:
            if f"video {annotation.video_id}" not in broken_ids:
                problems.append(Problem(f"{where}.video_id", f"unknown video {json.dumps(annotation.video_id)}"))
            continue
        video = checked.videos[video_index]
        frame_index, of_video = annotation.frame_index, f"of video {json.dumps(video.id)}"
        if frame_index >= video.num_frames:
            problems.append(Problem(f"{where}.frame_index", f"frame {frame_index} >= num_frames {video.num_frames} {of_video}"))
        elif video_index in annotated and frame_index not in annotated[video_index]:
            problems.append(Problem(f"{where}.frame_index", f"frame {frame_index} is not in annotated_frames {of_video}"))
        _check_bbox(annotation.bbox, video, problems, f"{where}.bbox")
        if annotation.track_id >= 0:
            key = (video_index, annotation.frame_index, annotation.track_id)
            if key in tracks_seen:
                first = f"annotations[{tracks_seen[key]}]"
                problems.append(Problem(f"{where}.track_id", f"track {annotation.track_id} already appears in frame {frame_index} ({first})"))
            else:
                tracks_seen[key] = i
    return problems, checked


def validate_custom_dataset(path: str | Path, check_files: bool = True, probe: bool = False) -> list[Problem]:
    """Every problem of the ``semidff-video/1`` file at ``path``, in document order ([] when clean).

    check_files: local video files and frame folders must exist (and folders hold num_frames
    images). probe: also open every video file with decord (remote URIs too) and compare its
    size and frame count with the declared ones (slower: decodes two frames per video).
    """
    return _validate(path, check_files, probe)[0]


# ---------------------------------------------------------------------------------------------
# Loading and writing


def load_custom_dataset(path: str | Path, check_files: bool = True, probe: bool = False) -> LabeledDataset:
    """Read a ``semidff-video/1`` file into a :class:`LabeledDataset`.

    Raises :class:`CustomFormatError` listing every problem (``check_files`` and ``probe`` as in
    :func:`validate_custom_dataset`).
    Videos keep the file's order; each video's frames are sorted by index, and objects keep the
    order of their annotations in the file.
    """
    problems, checked = _validate(path, check_files, probe)
    if problems:
        raise CustomFormatError(path, problems)
    categories = sorted(checked.categories.values(), key=lambda c: c.id)
    label_of = {c.id: label for label, c in enumerate(categories, start=1)}
    objects: dict[str, dict[int, list[ObjectAnnotation]]] = {}
    for a in checked.annotations:
        x, y, w, h = a.bbox
        obj = ObjectAnnotation(track_id=a.track_id, label=label_of[a.category_id], box=(x, y, x + w - 1, y + h - 1), occluded=a.occluded)
        objects.setdefault(str(a.video_id), {}).setdefault(a.frame_index, []).append(obj)
    videos = []
    for i in sorted(checked.videos):
        video = checked.videos[i]
        by_frame = objects.get(str(video.id), {})
        indices = range(video.num_frames) if video.annotated_frames is None else sorted(video.annotated_frames)
        videos.append(LabeledVideo(
            video_id=str(video.id), source=checked.sources[i], width=video.width, height=video.height,
            num_frames=video.num_frames, fps=video.fps,
            frames=[FrameAnnotation(f, by_frame.get(f, [])) for f in indices],
            frame_paths=checked.frame_paths.get(i),
        ))
    return LabeledDataset(class_names=[c.name for c in categories], videos=videos)


def _number(value: float) -> float | int:
    """Integral floats as ints, so that pixel boxes read naturally in the file."""
    return int(value) if float(value).is_integer() else float(value)


def _relative_file(source: str, json_folder: str) -> str:
    """``source`` relative to the JSON's folder when it lies inside it, else as given."""
    if "://" in source:
        return source
    source = os.path.abspath(source)
    if os.path.commonpath([source, json_folder]) == json_folder:
        return Path(os.path.relpath(source, json_folder)).as_posix()
    return source


def write_custom_dataset(dataset: LabeledDataset, path: str | Path) -> Path:
    """Write ``dataset`` as a ``semidff-video/1`` file (atomically: a temp file, then a rename).

    Category ids are the labels 1..K. Sources inside the JSON's folder are written relative to it.
    ``annotated_frames`` is written only for videos whose frames are not all annotated. A video
    read from a frame folder is written as that folder (its frames are listed again on load).
    """
    path = Path(path)
    folder = os.path.abspath(path.parent)
    categories = [{"id": label, "name": name} for label, name in enumerate(dataset.class_names, start=1)]
    videos, annotations = [], []
    for video in dataset.videos:
        entry: dict[str, Any] = {
            "id": video.video_id, "file": _relative_file(video.source, folder), "width": video.width,
            "height": video.height, "num_frames": video.num_frames, "fps": video.fps,
        }
        indices = [f.frame_index for f in video.frames]
        if indices != list(range(video.num_frames)):
            entry["annotated_frames"] = indices
        videos.append(entry)
        for frame in video.frames:
            for obj in frame.objects:
                x1, y1, x2, y2 = obj.box
                annotation = {
                    "video_id": video.video_id, "frame_index": frame.frame_index, "track_id": obj.track_id,
                    "category_id": obj.label, "bbox": [_number(x1), _number(y1), _number(x2 - x1 + 1), _number(y2 - y1 + 1)],
                }
                if obj.occluded:
                    annotation["occluded"] = True
                annotations.append(annotation)

    def items(values: list) -> str:  # one item per line: readable, and diffs stay small
        return "[\n" + ",\n".join(f"    {json.dumps(v)}" for v in values) + ("\n  ]" if values else "]")

    text = (
        f'{{\n  "format": {json.dumps(FORMAT)},\n  "categories": {items(categories)},\n'
        f'  "videos": {items(videos)},\n  "annotations": {items(annotations)}\n}}\n'
    )
    write_text_atomically(path, text)
    return path
