"""Synthetic labeled videos: textured objects moving over a panned, textured background.

    dataset = generate_synthetic_dataset("runs/synthetic", num_videos=4, num_frames=60, seed=0)
    # runs/synthetic/videos/synthetic_000.mp4 ...   H.264 (yuv420p) files
    # runs/synthetic/dataset.json                   the same dataset in the semidff-video/1 format
    load_custom_dataset("runs/synthetic/dataset.json") == dataset   # True

What a video shows, so that a detector can learn the classes and feature flow has motion to
recover (``copy`` mode, which reuses key-frame boxes, is measurably worse than ``frame`` here):

* a background of smooth color noise at three scales, larger than the frame, seen through a
  camera that pans on a sinusoid per axis (whole-pixel offsets, so no resampling blur);
* 1-3 objects, each of a class given by shape + texture + color (:data:`CLASS_NAMES`): striped
  disc, checkered square (or rectangle), noisy triangle, dotted ring, striped cross, ringed
  diamond. Each moves with a velocity that eases towards a new random target every 6-17 frames
  (speed-ups, slow-downs, turns; 1-4.5 px/frame at a 160 px short side), bounces back when its
  center leaves the frame, and may be partly outside the frame or behind a later object.

Labels are exact: an object's box is the tight inclusive box of the pixels it actually covers in
the rendered frame (clipped to the frame, minus what later objects hide; ``occluded`` is set
when another object hides part of it). An object whose visible box is narrower or lower than
:data:`MIN_VISIBLE_SIDE` pixels is not annotated in that frame. Every frame is annotated.

Deterministic: the same arguments give the same frames and annotations; video ``i`` depends only
on ``seed`` and ``i`` (:func:`synthetic_scene` rebuilds it, e.g. to compare decoded frames with
what was drawn), and with the same PyAV/FFmpeg build the files are byte-identical.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Optional

import av
import numpy as np

from semidff.atomic import atomic_path
from semidff.data.custom_format import write_custom_dataset
from semidff.data.records import FrameAnnotation, LabeledDataset, LabeledVideo, ObjectAnnotation
from semidff.video.probe import normalize_uri

CLASS_NAMES = ("striped_disc", "checkered_square", "noisy_triangle", "dotted_ring", "striped_cross", "ringed_diamond")
"""Name of label i + 1; ``num_classes`` takes the first ones."""

DATASET_FILE = "dataset.json"
"""The semidff-video/1 file written in the output folder (videos go to ``videos/``)."""

MIN_VISIBLE_SIDE = 4
"""Pixels: an object seen narrower or lower than this in a frame is not annotated there."""

MAX_OBJECTS = 3


@dataclass
class Sprite:
    """One object's appearance: colors and shape, cropped to the shape's tight box."""

    label: int
    pixels: np.ndarray  # (h, w, 3) uint8 RGB
    mask: np.ndarray  # (h, w) bool, True where the object is; touches all four borders


@dataclass
class SyntheticScene:
    """Everything one video shows: world texture, camera path and object paths."""

    background: np.ndarray  # (height + 2 m, width + 2 m, 3) uint8, the world the camera pans over
    camera: np.ndarray  # (num_frames, 2) int64 (x, y) of the view's top-left pixel in the background
    sprites: list[Sprite]  # in drawing order: later ones cover earlier ones
    positions: np.ndarray  # (num_objects, num_frames, 2) int64 (x, y) of each sprite's top-left pixel in the frame
    width: int
    height: int

    @property
    def num_frames(self) -> int:
        return len(self.camera)

    def background_frame(self, t: int) -> np.ndarray:
        """(height, width, 3) uint8 RGB view of the background alone at frame ``t``."""
        x, y = self.camera[t]
        return self.background[y : y + self.height, x : x + self.width].copy()

    def render(self, t: int) -> tuple[np.ndarray, list[ObjectAnnotation]]:
        """Frame ``t`` as drawn, (height, width, 3) uint8 RGB, and its objects with exact boxes."""
        frame = self.background_frame(t)
        owner = np.full((self.height, self.width), -1, dtype=np.int16)  # which sprite drew each pixel
        regions = []
        for k, sprite in enumerate(self.sprites):
            region = self._clip(sprite, self.positions[k, t])
            regions.append(region)
            if region is None:
                continue
            frame_part, sprite_part = region
            mask = sprite.mask[sprite_part]
            frame[frame_part][mask] = sprite.pixels[sprite_part][mask]
            owner[frame_part][mask] = k
        objects = []
        for k, (sprite, region) in enumerate(zip(self.sprites, regions)):
            if region is None:
                continue
            frame_part, sprite_part = region
            visible = owner[frame_part] == k
            rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
            if len(rows) == 0 or rows[-1] - rows[0] + 1 < MIN_VISIBLE_SIDE or cols[-1] - cols[0] + 1 < MIN_VISIBLE_SIDE:
                continue
            top, left = frame_part[0].start, frame_part[1].start
            box = (left + cols[0], top + rows[0], left + cols[-1], top + rows[-1])
            hidden = int(sprite.mask[sprite_part].sum()) > int(visible.sum())
            objects.append(ObjectAnnotation(track_id=k, label=sprite.label, box=box, occluded=hidden))
        return frame, objects

    def _clip(self, sprite: Sprite, position: np.ndarray):
        """(frame slices, sprite slices) of the part of ``sprite`` at ``position`` inside the frame, or None."""
        x, y = int(position[0]), int(position[1])
        h, w = sprite.mask.shape
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, self.width), min(y + h, self.height)
        if x0 >= x1 or y0 >= y1:
            return None
        return (slice(y0, y1), slice(x0, x1)), (slice(y0 - y, y1 - y), slice(x0 - x, x1 - x))


# ---------------------------------------------------------------------------------------------
# Appearance


def smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int, channels: int = 3) -> np.ndarray:
    """(height, width, channels) float noise, about N(0, 1), bilinearly interpolated from a grid
    with one random value every ``cell`` pixels."""
    grid = rng.normal(size=(height // cell + 2, width // cell + 2, channels))
    gy, gx = np.arange(height) / cell, np.arange(width) / cell
    y0, x0 = gy.astype(np.int64), gx.astype(np.int64)
    fy, fx = (gy - y0)[:, None, None], (gx - x0)[None, :, None]
    rows = grid[y0] * (1 - fy) + grid[y0 + 1] * fy  # (height, grid width, channels)
    return rows[:, x0] * (1 - fx) + rows[:, x0 + 1] * fx


def textured_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(height, width, 3) uint8: muted color noise at a coarse, a middle and a fine scale."""
    short = min(height, width)
    image = rng.uniform(80.0, 170.0, size=3)
    for fraction, amplitude in ((0.3, 40.0), (0.1, 22.0), (0.03, 12.0)):
        cell = max(2, round(short * fraction))
        gray, color = smooth_noise(rng, height, width, cell, 1), smooth_noise(rng, height, width, cell, 3)
        image = image + amplitude * (gray + 0.4 * color)
    return np.clip(image, 0, 255).astype(np.uint8)


def _two_colors(rng: np.random.Generator, first: tuple, second: tuple) -> tuple[np.ndarray, np.ndarray]:
    jitter = rng.uniform(-20.0, 20.0, size=(2, 3))
    return np.array(first) + jitter[0], np.array(second) + jitter[1]


def make_sprite(rng: np.random.Generator, label: int, size: int) -> Sprite:
    """An object of class ``label`` (1..len(CLASS_NAMES)) about ``size`` pixels across."""
    if not 1 <= label <= len(CLASS_NAMES):
        raise ValueError(f"label {label} is outside 1..{len(CLASS_NAMES)}")
    name = CLASS_NAMES[label - 1]
    h = w = size
    if name == "checkered_square":
        w = max(8, round(size * rng.uniform(0.75, 1.33)))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = (xx + 0.5 - w / 2) / (w / 2), (yy + 0.5 - h / 2) / (h / 2)  # -1..1 across the sprite
    radius = np.hypot(u, v)
    if name == "striped_disc":
        mask = radius <= 1.0
        angle = rng.uniform(0, np.pi)
        period = max(4.0, size / 6)
        pattern = ((xx * np.cos(angle) + yy * np.sin(angle)) // (period / 2)) % 2 == 0
        a, b = _two_colors(rng, (220, 40, 40), (245, 235, 220))
    elif name == "checkered_square":
        mask = np.ones((h, w), dtype=bool)
        cell = max(3, size // 5)
        pattern = ((xx // cell + yy // cell) % 2) == 0
        a, b = _two_colors(rng, (30, 60, 210), (245, 215, 40))
    elif name == "noisy_triangle":
        mask = np.abs(u) <= (v + 1.0) / 2.0  # apex at the top
        pattern = np.ones((h, w), dtype=bool)
        a, b = _two_colors(rng, (40, 175, 60), (40, 175, 60))
    elif name == "dotted_ring":
        mask = (radius <= 1.0) & (radius >= 0.55)
        pattern = ~((xx % 5 < 2) & (yy % 5 < 2))
        a, b = _two_colors(rng, (150, 40, 185), (250, 250, 250))
    elif name == "striped_cross":
        mask = (np.abs(u) <= 0.33) | (np.abs(v) <= 0.33)
        pattern = (yy // 2) % 2 == 0
        a, b = _two_colors(rng, (250, 140, 20), (20, 20, 20))
    else:  # ringed_diamond
        mask = np.abs(u) + np.abs(v) <= 1.0
        pattern = ((np.abs(u) + np.abs(v)) * 4).astype(np.int64) % 2 == 0
        a, b = _two_colors(rng, (30, 210, 220), (10, 70, 80))
    pixels = np.where(pattern[..., None], a, b)
    if name == "noisy_triangle":
        pixels = pixels + rng.normal(0.0, 45.0, size=pixels.shape)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    crop = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))  # tight: the box is where the mask is
    return Sprite(label=label, pixels=np.clip(pixels, 0, 255).astype(np.uint8)[crop], mask=mask[crop])


# ---------------------------------------------------------------------------------------------
# Motion


def _camera_path(rng: np.random.Generator, num_frames: int, margin: int) -> np.ndarray:
    """(num_frames, 2) int64 view offsets in [0, 2 margin]: a sinusoid per axis, random phase and period."""
    t = np.arange(num_frames)
    path = []
    for _ in range(2):
        amplitude, period, phase = rng.uniform(0.5, 1.0) * margin, rng.uniform(40.0, 100.0), rng.uniform(0, 2 * np.pi)
        path.append(np.rint(margin + amplitude * np.sin(2 * np.pi * t / period + phase)))
    return np.clip(np.stack(path, axis=1), 0, 2 * margin).astype(np.int64)


def _object_path(rng: np.random.Generator, size: np.ndarray, camera: np.ndarray, width: int, height: int, speed_scale: float) -> np.ndarray:
    """(num_frames, 2) int64 top-left (x, y) in the frame of an object of ``size`` (w, h).

    The object moves in the world (so the camera pan adds to its motion in the frame); its
    velocity eases towards a target that changes every 6-17 frames, and turns back towards the
    frame when its center leaves it.
    """
    frame_size = np.array([width, height], dtype=np.float64)
    world = rng.uniform(0.2, 0.8, size=2) * frame_size - size / 2 + camera[0]  # top-left in the world
    velocity = np.zeros(2)
    target = np.zeros(2)
    next_change = 0
    path = np.empty((len(camera), 2), dtype=np.int64)
    for t in range(len(camera)):
        if t == next_change:
            angle, speed = rng.uniform(0, 2 * np.pi), rng.uniform(1.0, 4.5) * speed_scale
            target = speed * np.array([np.cos(angle), np.sin(angle)])
            next_change += int(rng.integers(6, 18))
        velocity += 0.35 * (target - velocity)  # eases in: speed-ups and turns take a few frames
        world += velocity
        center = world + size / 2 - camera[t]
        for axis in range(2):  # bounce: the center stays near the frame, the object may leave it partly
            if center[axis] < 0:
                velocity[axis], target[axis] = abs(velocity[axis]), abs(target[axis])
            elif center[axis] > frame_size[axis]:
                velocity[axis], target[axis] = -abs(velocity[axis]), -abs(target[axis])
        path[t] = np.rint(world - camera[t])
    return path


def synthetic_scene(
    seed: int, video_index: int, num_frames: int = 60, width: int = 256, height: int = 160, num_classes: int = 3
) -> SyntheticScene:
    """The scene of video ``video_index`` of :func:`generate_synthetic_dataset` with ``seed``."""
    rng = np.random.default_rng([seed, video_index])
    short = min(width, height)
    margin = max(8, round(0.15 * short))
    background = textured_background(rng, height + 2 * margin, width + 2 * margin)
    camera = _camera_path(rng, num_frames, margin)
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    sprites, paths = [], []
    for j in range(count):
        label = (seed + video_index + j) % num_classes + 1  # consecutive classes: every class appears once num_videos >= num_classes
        sprite = make_sprite(rng, label, size=round(short * rng.uniform(0.2, 0.38)))
        size = np.array(sprite.mask.shape[::-1], dtype=np.float64)
        sprites.append(sprite)
        paths.append(_object_path(rng, size, camera, width, height, speed_scale=short / 160))
    return SyntheticScene(background=background, camera=camera, sprites=sprites, positions=np.stack(paths), width=width, height=height)


# ---------------------------------------------------------------------------------------------
# Files


def encode_video(
    frames: Iterable[np.ndarray], path: str | Path, fps: float, codec: str = "libx264",
    gop: Optional[int] = None, crf: int = 18, exact_gop: bool = False,
) -> Path:
    """Encode (height, width, 3) uint8 RGB frames to ``path`` as yuv420p with PyAV.

    The container follows the suffix (.mp4, .webm, ...). Written to a temp file and renamed, so
    a crash never leaves a partial video under the final name. libx264 is tuned for quality
    (crf 18) and a keyframe every second, so random access (clip decoding) stays cheap.
    gop: frames between keyframes (default: one second); exact_gop: libx264 puts a keyframe exactly
    every ``gop`` frames (no scene-cut keyframes), as the decode benchmark needs; crf: libx264 quality.
    """
    path = Path(path)
    rate = Fraction(fps).limit_denominator(1001)
    with atomic_path(path) as temp:
        with av.open(str(temp), mode="w", format=_container_for(path)) as container:
            stream = None
            for frame in frames:
                if stream is None:
                    stream = container.add_stream(codec, rate=rate)
                    stream.height, stream.width = frame.shape[:2]
                    stream.pix_fmt = "yuv420p"
                    stream.codec_context.gop_size = gop or max(1, round(fps))
                    if codec == "libx264":
                        options = {"preset": "veryfast", "crf": str(crf)}
                        if exact_gop:
                            keyint = stream.codec_context.gop_size
                            options["x264-params"] = f"keyint={keyint}:min-keyint={keyint}:scenecut=0"
                        stream.codec_context.options = options
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            if stream is None:
                raise ValueError(f"{path}: no frames to encode")
            for packet in stream.encode(None):
                container.mux(packet)
    return path


def _container_for(path: Path) -> str:
    formats = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}
    if path.suffix.lower() not in formats:
        raise ValueError(f"{path}: unknown video suffix; use one of {', '.join(formats)}")
    return formats[path.suffix.lower()]


def generate_synthetic_dataset(
    output_dir: str | Path,
    num_videos: int = 4,
    num_frames: int = 60,
    width: int = 256,
    height: int = 160,
    num_classes: int = 3,
    fps: float = 25,
    seed: int = 0,
    codec: str = "libx264",
) -> LabeledDataset:
    """Write ``num_videos`` labeled videos to ``output_dir/videos/`` and their annotations to
    ``output_dir/dataset.json`` (:data:`DATASET_FILE`, the semidff-video/1 format, written last:
    when it exists, every video is complete). Returns the dataset, equal to what
    :func:`~semidff.data.custom_format.load_custom_dataset` reads back from that file.

    width and height must be even (4:2:0 video stores color at half resolution in each
    direction) and at least 32; num_classes at most len(CLASS_NAMES). Videos are .webm for
    ``libvpx*`` codecs, else .mp4.
    """
    if width % 2 or height % 2:
        raise ValueError(
            f"width={width}, height={height}: both must be even for yuv420p video (color is stored at half "
            f"resolution); use {width + width % 2}x{height + height % 2}"
        )
    if min(width, height) < 32:
        raise ValueError(f"width={width}, height={height}: both must be >= 32 so that the objects fit")
    if not 1 <= num_classes <= len(CLASS_NAMES):
        raise ValueError(f"num_classes={num_classes}: the generator draws 1..{len(CLASS_NAMES)} classes ({', '.join(CLASS_NAMES)})")
    if num_videos < 1 or num_frames < 1:
        raise ValueError(f"num_videos={num_videos}, num_frames={num_frames}: both must be >= 1")
    if not fps > 0:
        raise ValueError(f"fps={fps} must be > 0")
    output_dir = Path(output_dir)
    (output_dir / "videos").mkdir(parents=True, exist_ok=True)
    suffix = ".webm" if codec.startswith("libvpx") else ".mp4"
    videos = []
    for index in range(num_videos):
        scene = synthetic_scene(seed, index, num_frames, width, height, num_classes)
        video_id = f"synthetic_{index:03d}"
        path = output_dir / "videos" / f"{video_id}{suffix}"
        annotations: list[FrameAnnotation] = []

        def frames(scene: SyntheticScene = scene, annotations: list[FrameAnnotation] = annotations) -> Iterator[np.ndarray]:
            for t in range(scene.num_frames):
                frame, objects = scene.render(t)
                annotations.append(FrameAnnotation(t, objects))
                yield frame

        encode_video(frames(), path, fps, codec)
        videos.append(LabeledVideo(
            video_id=video_id, source=normalize_uri(str(path)), width=width, height=height,
            num_frames=num_frames, fps=float(fps), frames=annotations,
        ))
    dataset = LabeledDataset(class_names=list(CLASS_NAMES[:num_classes]), videos=videos)
    write_custom_dataset(dataset, output_dir / DATASET_FILE)
    return dataset
