"""Synthetic labeled videos that move like ImageNet VID, with their true motion stored beside them.

    dataset = generate_motion_dataset("runs/motion", num_videos=12, num_frames=60, seed=0)
    # runs/motion/videos/motion_000.mp4          H.264 (yuv420p), as semidff.data.synthetic writes it
    # runs/motion/videos/motion_000.motion.npz   its true motion (semidff.data.true_motion)
    # runs/motion/dataset.json                   the labels, semidff-video/1
    motion_bucket_shares(dataset)                # {"slow": ..., "medium": ..., "fast": ...}

Why another generator: in ``semidff.data.synthetic`` the objects are about 2.4 stride-16 feature
cells wide and almost all of them move fast by FGFA's measure, so even warping the key frame's
features by the true motion recovers only part of what copying the key frame loses. Here:

* **Objects several feature cells wide**: the sprite's longer side is 0.3-0.75 of the frame's
  short side (48-120 px, 3-7.5 cells of 16 px at the demo's 256x160; median box about 4.5 cells),
  log-uniform, 1-3 per video, of the classes of :data:`semidff.data.synthetic.CLASS_NAMES` (the same
  shapes and textures, softened by a 1-pixel Gaussian so that resampling them at sub-pixel positions
  stays faithful).
* **ImageNet VID's motion mix**: the target is :data:`MOTION_BUCKET_TARGET`, FGFA's split of the
  VID validation objects by motion IoU (the mean IoU of a box with the same object's boxes ±10
  frames away; slow > 0.9, medium 0.7-0.9, fast < 0.7). Each object gets a motion class
  (:data:`MOTION_CLASS_PROBABILITIES`), a target motion IoU inside it (:data:`MOTION_IOU_RANGE`),
  and the frame speed that gives that IoU to its box translating steadily
  (:func:`speed_for_motion_iou`). Measured with ``semidff.evaluation.vid_map`` over 600 videos
  (:func:`motion_bucket_shares`): 37.7 % slow, 35.8 % medium, 26.5 % fast boxes; a corpus of a
  few dozen videos scatters by a few points around that (its objects are few).
* **Camera**: still (30 % of videos), panning (40 %) or panning and zooming (30 %); the pan moves
  the background 0.2-1.5 px per frame, the zoom (about the frame's center, up to ~0.6 % per frame)
  scales the background and the objects alike.
* **Object motion**: speed varies ±25 % around the class speed, the heading wanders, objects
  rotate (more in faster classes), squash and stretch a little, and grow or shrink (moving
  towards or away from the camera); they turn back at the frame border, except *crossers* (40 %
  of medium and fast objects) that enter from outside the frame and may leave it.
* **Occlusion**: objects pass in front of each other (later objects are drawn on top), and 30 %
  of videos have an unlabeled pole or bar in front of everything, moving with parallax.
* **Appearance change**: besides rotation and squash, each object's brightness drifts by up to
  ±12 % (``layer_gain``), which no motion explains.

Labels: an object's box is the tight inclusive box of its visible pixels (clipped to the frame,
minus what is in front of it; ``occluded`` when another layer hides part of it); an object is
annotated in a frame when that box is at least :data:`MIN_VISIBLE_SIDE` px on both sides and at
least :data:`MIN_VISIBLE_FRACTION` of its sprite is visible. Every frame is annotated.

Rendering and the true motion are one model (:class:`~semidff.data.true_motion.TrueMotion`): a
pixel's color is its layer's texture sampled bilinearly where the motion says the pixel's content
is, so warping a frame by :func:`~semidff.data.true_motion.true_backward_flow` reproduces a later
frame wherever the content is visible in both (up to the textures' resampling error and the
brightness drift).

Deterministic: video ``i`` depends only on ``seed`` and ``i`` (:func:`motion_scene` rebuilds it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from semidff.data.custom_format import write_custom_dataset
from semidff.data.records import FrameAnnotation, LabeledDataset, LabeledVideo, ObjectAnnotation
from semidff.data.synthetic import CLASS_NAMES, encode_video, make_sprite, smooth_noise
from semidff.data.true_motion import TrueMotion, motion_path_for, sample_bilinear
from semidff.video.probe import normalize_uri

DATASET_FILE = "dataset.json"

MOTION_BUCKET_TARGET = {"slow": 0.379, "medium": 0.359, "fast": 0.262}
"""Share of ImageNet VID validation objects per motion bucket as FGFA (Zhu et al., ICCV 2017)
reports it; the generator draws each object's motion class with these probabilities."""

MOTION_CLASS_PROBABILITIES = {"slow": 0.366, "medium": 0.376, "fast": 0.258}
"""The probability of drawing each motion class for an object: the target shares corrected (once,
from 600 measured videos) for what then happens to the boxes: slow objects stay in view longer
(more boxes per object), and some boxes of each class land in a neighbouring bucket (turns, zoom,
occlusion, the frame border)."""

MOTION_IOU_RANGE = {"slow": (0.93, 0.99), "medium": (0.74, 0.87), "fast": (0.36, 0.64)}
"""The target motion IoU of an object of each class is drawn uniformly from this range (inside
the bucket, away from its edges: turns, zoom and occlusion lower a box's measured motion IoU)."""

MOTION_WINDOW = 10
"""Frames either side that motion IoU averages over (FGFA; ``vid_map.MOTION_WINDOW``)."""

OBJECT_SIZE_RANGE = (0.3, 0.75)
"""A sprite's longer side as a fraction of the frame's short side (log-uniform)."""

OBJECT_COUNT_PROBABILITIES = (0.4, 0.4, 0.2)
"""Probability of 1, 2, 3 objects in a video."""

CAMERA_REGIMES = {"still": 0.3, "pan": 0.4, "pan_zoom": 0.3}
CROSSER_PROBABILITY = 0.4
OCCLUDER_PROBABILITY = 0.3

MIN_VISIBLE_SIDE = 8
"""Pixels: an object whose visible box is narrower or lower than this is not annotated."""

MIN_VISIBLE_FRACTION = 0.1
"""An object with less than this share of its sprite visible is not annotated."""

TEXTURE_SIGMA = 1.0
"""Pixels: the Gaussian that softens sprite textures (stripes and checks stay sharp enough to tell
classes apart, and bilinear resampling at sub-pixel offsets changes them little)."""


# ---------------------------------------------------------------------------------------------
# The scene


@dataclass
class MotionScene:
    """One video: its true motion and what each layer looks like.

    background: (Hb, Wb, 3) float64 world texture (world point (x, y) = array column x, row y).
    textures: one (h, w, 3) float64 RGB per layer, the size of its mask (colors carried past the
    mask's edge, so bilinear samples at the edge do not darken). labels: one per layer, 0 for an
    occluder. buckets: the motion class each object was drawn for ("" for an occluder).
    """

    motion: TrueMotion
    background: np.ndarray
    textures: list[np.ndarray]
    labels: list[int]
    buckets: list[str]

    @property
    def num_frames(self) -> int:
        return self.motion.num_frames

    @property
    def width(self) -> int:
        return self.motion.width

    @property
    def height(self) -> int:
        return self.motion.height

    def render(self, t: int) -> tuple[np.ndarray, np.ndarray, list[ObjectAnnotation]]:
        """Frame ``t``: (H, W, 3) uint8 RGB, the (H, W) int64 layer seen at each pixel (-1: the
        background) and the annotated objects with exact visible boxes."""
        motion = self.motion
        height, width = motion.height, motion.width
        points, covered, owner = self._layers(t)
        world = motion.to_world(t, points)
        colors = sample_bilinear(self.background, world[:, 0], world[:, 1], outside="clamp")
        for layer, texture in enumerate(self.textures):
            on = owner == layer
            if not on.any():
                continue
            local = motion.to_sprite(layer, t, points[on])
            h, w = texture.shape[:2]
            sampled = sample_bilinear(texture, local[:, 0] + (w - 1) / 2.0, local[:, 1] + (h - 1) / 2.0, outside="clamp")
            colors[on] = sampled * motion.layer_gain[layer, t]
        frame = np.clip(np.rint(colors), 0, 255).astype(np.uint8).reshape(height, width, 3)
        owner = owner.reshape(height, width)
        return frame, owner, self._annotations(t, owner, covered.reshape(-1, height, width))

    def annotate(self, t: int) -> list[ObjectAnnotation]:
        """The annotated objects of frame ``t`` (those of :meth:`render`), without drawing it."""
        _, covered, owner = self._layers(t)
        return self._annotations(t, owner.reshape(self.height, self.width), covered.reshape(-1, self.height, self.width))

    def _layers(self, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every pixel (H·W, 2) of frame t, which layers cover it (L, H·W) and which is seen (H·W,)."""
        ys, xs = np.mgrid[0:self.height, 0:self.width]
        points = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
        covered = self.motion.coverage(t, points)
        owner = np.full(len(points), -1, dtype=np.int64)
        for layer in range(self.motion.num_layers):  # later layers are drawn on top
            owner[covered[layer]] = layer
        return points, covered, owner

    def _annotations(self, t: int, owner: np.ndarray, covered: np.ndarray) -> list[ObjectAnnotation]:
        objects = []
        for layer, label in enumerate(self.labels):
            if label == 0:
                continue
            visible = owner == layer
            rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
            if len(rows) == 0 or rows[-1] - rows[0] + 1 < MIN_VISIBLE_SIDE or cols[-1] - cols[0] + 1 < MIN_VISIBLE_SIDE:
                continue
            full_area = self.motion.masks[layer].sum() * abs(np.linalg.det(self.motion.layer_affine[layer, t, :, :2]))
            if visible.sum() < MIN_VISIBLE_FRACTION * full_area:
                continue
            box = (int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1]))
            hidden = bool((covered[layer] & ~visible).any())  # in the frame but behind another layer
            objects.append(ObjectAnnotation(track_id=int(self.motion.layer_track[layer]), label=label, box=box, occluded=hidden))
        return objects


# ---------------------------------------------------------------------------------------------
# Appearance


def soften_texture(pixels: np.ndarray, mask: np.ndarray, sigma: float = TEXTURE_SIGMA) -> np.ndarray:
    """(h, w, 3) float64: the sprite's colors blurred inside its mask (a normalised Gaussian of
    ``sigma`` px) and carried outside it (wider blurs, then the mean color), so that bilinear samples
    at the mask's edge see the object's own colors."""
    weight = mask.astype(np.float64)
    values = pixels.astype(np.float64) * weight[..., None]
    result = np.zeros_like(values)
    filled = np.zeros(mask.shape, dtype=bool)
    for blur in (sigma, 3 * sigma, 9 * sigma):
        total, norm = _gaussian_blur(values, blur), _gaussian_blur(weight[..., None], blur)[..., 0]
        usable = ~filled & (norm > 1e-3)
        result[usable] = total[usable] / norm[usable, None]
        filled |= usable
    result[~filled] = pixels[mask].mean(axis=0)
    return result


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """(h, w, C) separable Gaussian blur with zero padding."""
    radius = max(1, int(math.ceil(3 * sigma)))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    for axis in (0, 1):
        padded = np.pad(image, [(radius, radius) if a == axis else (0, 0) for a in range(image.ndim)])
        size = image.shape[axis]
        image = sum(w * np.take(padded, np.arange(i, i + size), axis=axis) for i, w in enumerate(kernel))
    return image


def world_texture(rng: np.random.Generator, height: int, width: int, short_side: int) -> np.ndarray:
    """(height, width, 3) float64 background: muted color noise at 0.3, 0.1 and 0.04 of the
    frame's short side (the scales do not depend on how much world the camera needs)."""
    image = rng.uniform(80.0, 170.0, size=3)
    for fraction, amplitude in ((0.3, 40.0), (0.1, 22.0), (0.04, 12.0)):
        cell = max(2, round(short_side * fraction))
        gray, color = smooth_noise(rng, height, width, cell, 1), smooth_noise(rng, height, width, cell, 3)
        image = image + amplitude * (gray + 0.4 * color)
    return np.clip(image, 0, 255)


def _occluder_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    base = rng.uniform([60, 40, 20], [110, 80, 50])  # dark, woody
    return np.clip(base + 18.0 * smooth_noise(rng, height, width, 6, 3), 0, 255)


# ---------------------------------------------------------------------------------------------
# Motion


def mean_shift_iou(width: float, height: float, velocity: tuple[float, float], window: int = MOTION_WINDOW) -> float:
    """Motion IoU of a ``width`` x ``height`` box translating steadily by ``velocity`` (px/frame):
    the mean IoU with itself 1..window frames away (the same either side)."""
    lags = np.arange(1, window + 1)
    overlap_w = np.clip(width - abs(velocity[0]) * lags, 0, None)
    overlap_h = np.clip(height - abs(velocity[1]) * lags, 0, None)
    intersection = overlap_w * overlap_h
    return float(np.mean(intersection / (2 * width * height - intersection)))


def speed_for_motion_iou(target: float, width: float, height: float, heading: float) -> float:
    """The speed (px/frame) along ``heading`` (radians) that gives a ``width`` x ``height`` box the
    motion IoU ``target`` (:func:`mean_shift_iou`), by bisection."""
    direction = (math.cos(heading), math.sin(heading))
    low, high = 0.0, 2.0 * max(width, height)
    for _ in range(50):
        middle = (low + high) / 2
        if mean_shift_iou(width, height, (middle * direction[0], middle * direction[1])) > target:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def _wave(rng: np.random.Generator, num_frames: int, amplitude: float, period: tuple[float, float]) -> np.ndarray:
    """(num_frames,) amplitude · sin(2π t / P + phase), P uniform in ``period``."""
    t = np.arange(num_frames)
    return amplitude * np.sin(2 * np.pi * t / rng.uniform(*period) + rng.uniform(0, 2 * np.pi))


def _camera(rng: np.random.Generator, num_frames: int, regime: str) -> tuple[np.ndarray, np.ndarray]:
    """(T, 2) world center and (T,) zoom of the camera."""
    zoom = np.ones(num_frames)
    if regime == "pan_zoom":
        log_zoom = _wave(rng, num_frames, rng.uniform(0.04, 0.1), (100.0, 200.0))
        zoom = np.exp(log_zoom - log_zoom[0])
    center = np.zeros((num_frames, 2))
    if regime != "still":
        speed, heading = rng.uniform(0.2, 1.5), rng.uniform(0, 2 * np.pi)
        turns = np.cumsum(rng.normal(0.0, 0.03, size=num_frames))
        frame_velocity = speed * np.stack([np.cos(heading + turns), np.sin(heading + turns)], axis=1)
        # the background moves by -velocity in the frame: the camera's world center moves by velocity / zoom
        center[1:] = np.cumsum(frame_velocity[1:] / zoom[1:, None], axis=0)
    return center, zoom


def _object_path(
    rng: np.random.Generator, box: np.ndarray, speed: float, heading: float, crosser: bool,
    width: int, height: int, num_frames: int, turn_sd: float,
) -> np.ndarray:
    """(T, 2) own center of an object (before the camera zoom) in the frame.

    ``box`` (w, h) is its initial size. The speed varies ±25 % around ``speed``, the heading
    wanders by ``turn_sd`` rad/frame; an object turns back when its center is within 0.3 of its
    size of the frame's edge, unless it is a crosser, which starts just outside the frame heading in.
    """
    frame = np.array([width, height], dtype=np.float64)
    margin = 0.3 * box
    if crosser:
        side = int(rng.integers(4))  # 0 left, 1 right, 2 top, 3 bottom
        axis, sign = side // 2, (-1.0 if side % 2 == 0 else 1.0)
        position = rng.uniform(0.25, 0.75, size=2) * frame
        position[axis] = (0.0 if sign < 0 else frame[axis]) + sign * (0.5 * box[axis] + rng.uniform(0.0, 0.2) * box[axis])
        aim = rng.uniform(0.3, 0.7, size=2) * frame
        heading = math.atan2(aim[1] - position[1], aim[0] - position[0])
    else:
        low, high = np.minimum(margin, frame / 2), np.maximum(frame - margin, frame / 2)
        position = rng.uniform(low, high)
    speeds = speed * (1.0 + _wave(rng, num_frames, 0.25, (20.0, 60.0)))
    path = np.empty((num_frames, 2))
    for t in range(num_frames):
        path[t] = position
        heading += rng.normal(0.0, turn_sd)
        velocity = speeds[t] * np.array([math.cos(heading), math.sin(heading)])
        if not crosser:
            for axis in range(2):  # bounce back towards the frame
                if (position[axis] < margin[axis] and velocity[axis] < 0) or (position[axis] > frame[axis] - margin[axis] and velocity[axis] > 0):
                    velocity[axis] = -velocity[axis]
            heading = math.atan2(velocity[1], velocity[0])
        position = position + velocity
    return path


def _affine(center: np.ndarray, scale: np.ndarray, angle: np.ndarray, squash: np.ndarray) -> np.ndarray:
    """(T, 2, 3) [A | c] with A = scale · R(angle) · diag(squash, 1 / squash)."""
    cos, sin = np.cos(angle), np.sin(angle)
    linear = np.empty((len(center), 2, 2))
    linear[:, 0, 0], linear[:, 0, 1] = cos * squash, -sin / squash
    linear[:, 1, 0], linear[:, 1, 1] = sin * squash, cos / squash
    linear *= scale[:, None, None]
    return np.concatenate([linear, center[:, :, None]], axis=2)


_ROTATION_DEG = {"slow": 0.15, "medium": 0.6, "fast": 1.5}  # max |degrees per frame|
_TURN_SD = {"slow": 0.05, "medium": 0.06, "fast": 0.06}  # heading wander, rad per frame
_APPROACH = {"slow": 0.03, "medium": 0.08, "fast": 0.12}  # max log-scale amplitude of moving towards / away


def motion_scene(
    seed: int, video_index: int, num_frames: int = 60, width: int = 256, height: int = 160, num_classes: int = 3,
) -> MotionScene:
    """Video ``video_index`` of :func:`generate_motion_dataset` with ``seed`` (see the module docstring)."""
    rng = np.random.default_rng([seed, video_index, 1])  # 1: a stream of its own, not synthetic.py's
    short = min(width, height)
    frame_center = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    regime = str(rng.choice(list(CAMERA_REGIMES), p=list(CAMERA_REGIMES.values())))
    camera_center, camera_zoom = _camera(rng, num_frames, regime)
    relative_zoom = camera_zoom / camera_zoom[0]

    affines, masks, textures, labels, gains, drawn_buckets = [], [], [], [], [], []
    count = int(rng.choice(len(OBJECT_COUNT_PROBABILITIES), p=OBJECT_COUNT_PROBABILITIES)) + 1
    buckets = list(MOTION_CLASS_PROBABILITIES)
    for j in range(count):
        label = (seed + video_index + j) % num_classes + 1  # consecutive classes: every class appears
        size = short * math.exp(rng.uniform(*np.log(OBJECT_SIZE_RANGE)))
        sprite = make_sprite(rng, label, size=max(8, round(size)))
        masks.append(sprite.mask)
        textures.append(soften_texture(sprite.pixels, sprite.mask))
        labels.append(label)
        bucket = str(rng.choice(buckets, p=[MOTION_CLASS_PROBABILITIES[b] for b in buckets]))
        drawn_buckets.append(bucket)
        box = np.array(sprite.mask.shape[::-1], dtype=np.float64)
        heading = rng.uniform(0, 2 * np.pi)
        speed = speed_for_motion_iou(rng.uniform(*MOTION_IOU_RANGE[bucket]), box[0], box[1], heading)
        crosser = bucket != "slow" and rng.uniform() < CROSSER_PROBABILITY
        own = _object_path(rng, box, speed, heading, crosser, width, height, num_frames, _TURN_SD[bucket])
        rotation = math.radians(rng.uniform(-1.0, 1.0) * _ROTATION_DEG[bucket])
        angle = rng.uniform(-0.3, 0.3) + rotation * np.arange(num_frames)
        squash = np.exp(_wave(rng, num_frames, rng.uniform(0.0, 0.05), (20.0, 60.0)))
        approach = _wave(rng, num_frames, rng.uniform(0.0, _APPROACH[bucket]), (60.0, 150.0))
        scale = relative_zoom * np.exp(approach - approach[0])
        center = frame_center + relative_zoom[:, None] * (own - frame_center)  # the zoom scales about the frame center
        affines.append(_affine(center, scale, angle, squash))
        gains.append(1.0 + _wave(rng, num_frames, rng.uniform(0.0, 0.12), (30.0, 90.0)))

    if rng.uniform() < OCCLUDER_PROBABILITY:
        vertical = rng.uniform() < 0.7
        thickness, length = int(rng.integers(8, 21)), 2 * max(width, height)
        shape = (length, thickness) if vertical else (thickness, length)
        masks.append(np.ones(shape, dtype=bool))
        textures.append(_occluder_texture(rng, *shape))
        labels.append(0)
        drawn_buckets.append("")
        # nearer than the background: it moves with the pan times a parallax factor, plus a drift of its own
        background_motion = np.zeros((num_frames, 2))
        background_motion[1:] = -np.diff(camera_center, axis=0) * camera_zoom[1:, None]
        drift = rng.uniform(-0.5, 0.5, size=2)
        own = rng.uniform(0.2, 0.8, size=2) * np.array([width, height]) + np.cumsum(
            background_motion * rng.uniform(1.2, 2.0) + drift, axis=0)
        center = frame_center + relative_zoom[:, None] * (own - frame_center)
        affines.append(_affine(center, relative_zoom, np.full(num_frames, rng.uniform(-0.15, 0.15)), np.ones(num_frames)))
        gains.append(np.ones(num_frames))

    # The world the camera sees over the whole video, plus a margin, as one texture.
    corners = np.array([[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1]], dtype=np.float64)
    seen = np.concatenate([camera_center[t] + (corners - frame_center) / camera_zoom[t] for t in range(num_frames)])
    origin = np.floor(seen.min(axis=0)) - 4
    extent = np.ceil(seen.max(axis=0) - origin) + 5
    background = world_texture(rng, int(extent[1]), int(extent[0]), short)
    motion = TrueMotion(
        width=width, height=height, camera_center=camera_center - origin, camera_zoom=camera_zoom,
        layer_affine=np.stack(affines), masks=masks,
        layer_track=np.array([j if label else -1 for j, label in enumerate(labels)]), layer_gain=np.stack(gains),
    )
    return MotionScene(motion=motion, background=background, textures=textures, labels=labels, buckets=drawn_buckets)


# ---------------------------------------------------------------------------------------------
# Files and measures


def generate_motion_dataset(
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
    """Write ``num_videos`` videos to ``output_dir/videos/`` with their true motion beside each
    (``<id>.motion.npz``, ``semidff.data.true_motion``) and the labels to ``output_dir/dataset.json``
    (written last: when it exists, every video and sidecar is complete). Returns the dataset, equal
    to what ``load_custom_dataset`` reads back. width and height must be even (yuv420p) and >= 64.
    """
    if width % 2 or height % 2:
        raise ValueError(f"width={width}, height={height}: both must be even for yuv420p video; use "
                         f"{width + width % 2}x{height + height % 2}")
    if min(width, height) < 64:
        raise ValueError(f"width={width}, height={height}: both must be >= 64 so that objects several feature cells wide fit")
    if not 1 <= num_classes <= len(CLASS_NAMES):
        raise ValueError(f"num_classes={num_classes}: the generator draws 1..{len(CLASS_NAMES)} classes ({', '.join(CLASS_NAMES)})")
    if num_videos < 1 or num_frames < 2:
        raise ValueError(f"num_videos={num_videos}, num_frames={num_frames}: need >= 1 video of >= 2 frames")
    output_dir = Path(output_dir)
    (output_dir / "videos").mkdir(parents=True, exist_ok=True)
    suffix = ".webm" if codec.startswith("libvpx") else ".mp4"
    videos = []
    for index in range(num_videos):
        scene = motion_scene(seed, index, num_frames, width, height, num_classes)
        video_id = f"motion_{index:03d}"
        path = output_dir / "videos" / f"{video_id}{suffix}"
        annotations: list[FrameAnnotation] = []

        def frames(scene: MotionScene = scene, annotations: list[FrameAnnotation] = annotations) -> Iterator[np.ndarray]:
            for t in range(scene.num_frames):
                frame, _, objects = scene.render(t)
                annotations.append(FrameAnnotation(t, objects))
                yield frame

        encode_video(frames(), path, fps, codec)
        scene.motion.save(motion_path_for(str(path)))
        videos.append(LabeledVideo(video_id=video_id, source=normalize_uri(str(path)), width=width, height=height,
                                   num_frames=num_frames, fps=float(fps), frames=annotations))
    dataset = LabeledDataset(class_names=list(CLASS_NAMES[:num_classes]), videos=videos)
    write_custom_dataset(dataset, output_dir / DATASET_FILE)
    return dataset


def scene_annotations(scene: MotionScene) -> list[FrameAnnotation]:
    """The labels of every frame of ``scene`` (what :func:`generate_motion_dataset` writes), without encoding."""
    return [FrameAnnotation(t, scene.annotate(t)) for t in range(scene.num_frames)]


def motion_bucket_shares(dataset: LabeledDataset, window: int = MOTION_WINDOW) -> dict[str, float]:
    """The share of annotated boxes in each motion bucket (slow, medium, fast), their motion IoU
    computed as the evaluation does (``semidff.evaluation.vid_map``); boxes without a neighbour
    within ``window`` frames have no motion IoU and are not counted."""
    from semidff.evaluation.vid_map import MOTION_BUCKETS, in_motion_bucket, motion_iou_from_tracks

    values = [value for video in dataset.videos for track in motion_iou_from_tracks(video.tracks(), window).values()
              for value in track.values()]
    values = np.array([v for v in values if not math.isnan(v)])
    if len(values) == 0:
        return {bucket: math.nan for bucket in MOTION_BUCKETS}
    return {bucket: float(in_motion_bucket(values, bucket).mean()) for bucket in MOTION_BUCKETS}


def scene_dataset(seed: int, num_videos: int, num_frames: int = 60, width: int = 256, height: int = 160,
                  num_classes: int = 3, first_video: int = 0) -> LabeledDataset:
    """The labels of :func:`generate_motion_dataset`'s videos without writing any file (sources are
    placeholders): for measuring a corpus, e.g. with :func:`motion_bucket_shares`."""
    videos = []
    for index in range(first_video, first_video + num_videos):
        scene = motion_scene(seed, index, num_frames, width, height, num_classes)
        videos.append(LabeledVideo(f"motion_{index:03d}", f"motion_{index:03d}.mp4", width, height, num_frames, None,
                                   scene_annotations(scene)))
    return LabeledDataset(class_names=list(CLASS_NAMES[:num_classes]), videos=videos)
