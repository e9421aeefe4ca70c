"""The true motion of a generated video, and the backward flow it gives between any two frames.

    motion = load_true_motion(motion_path_for(video.source))      # <video stem>.motion.npz beside the video
    pixels = true_backward_flow(motion, t=7, k=0)                   # frame size, pixels
    pixels.flow[y, x]          # (u, v): the content at (x, y) of frame 7 sits at (x + u, y + v) of frame 0
    pixels.visible             # ... and is seen there (inside frame 0, not hidden by another layer)
    cells = true_feature_flow(motion, t=7, k=0)                     # the stride-16 feature grid, in cells
    flow, mask = cells.as_tensors()                                 # (1, 2, h, w), (1, h, w): flow_diagnostics' input

Both flows follow the warp convention of :func:`semidff.ops.warp.warp_features` (channel 0 = x):
``warp_features(frame_k, flow)`` puts frame k's content where it is in frame t.

The scene model a :class:`TrueMotion` describes (``semidff.data.synthetic_motion`` draws videos
from it, so a frame and its true motion come from the same numbers):

* a **background** seen through a camera that pans and zooms: pixel p = (x, y) of frame t shows
  the world point ``camera_center[t] + (p - f) / camera_zoom[t]``, with f = ((W - 1) / 2, (H - 1) / 2)
  the frame's center;
* **layers** drawn over it in index order (a later layer covers an earlier one): a sprite, i.e. a
  mask of h x w pixels whose local coordinates q = (col - (w - 1) / 2, row - (h - 1) / 2) are
  centered on the sprite, placed in frame t by the affine map ``p = A q + c`` of
  ``layer_affine[l, t] = [A | c]`` (translation, rotation, scale, squash). A pixel belongs to layer l
  where the mask, sampled bilinearly at q, is at least 0.5. ``layer_track[l]`` is the track id of
  an annotated object, or -1 for an occluder that is never annotated (a pole, a branch);
  ``layer_gain[l, t]`` scales its brightness (appearance change that no motion explains).

The backward flow of a pixel follows its own layer: the background through the two camera
transforms, a layer through ``A_k A_t^-1``. Where the content is hidden in frame k (behind another
layer, or outside the frame) the flow still says where it *would* be, and ``visible`` is False.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semidff.atomic import atomic_path

FORMAT = "semidff-true-motion/1"
"""The ``format`` entry of a sidecar file; :func:`load_true_motion` refuses any other."""

SIDECAR_SUFFIX = ".motion.npz"

BACKGROUND = -1
"""The layer index of the background in :meth:`TrueMotion.layer_at`."""

FEATURE_STRIDE = 16
"""Image pixels per feature cell of the R-FCN (``semidff.models.rfcn.FEATURE_STRIDE``)."""

MASK_THRESHOLD = 0.5
"""A pixel is on a layer where its bilinearly sampled mask is at least this."""

_VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".ts", ".m4v")


class TrueMotionError(ValueError):
    """A true-motion sidecar is missing, unreadable or inconsistent; the message names the file."""


def motion_path_for(source: str) -> str:
    """The sidecar of a video: ``videos/a.mp4`` → ``videos/a.motion.npz``; a frame folder
    ``frames/a/`` → ``frames/a.motion.npz``. ``file://`` URIs are read as local paths."""
    path = source[len("file://"):] if source.startswith("file://") else source
    path = path.rstrip("/")
    stem, suffix = os.path.splitext(path)
    return (stem if suffix.lower() in _VIDEO_SUFFIXES else path) + SIDECAR_SUFFIX


def sample_bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray, outside: str = "zero") -> np.ndarray:
    """``image`` (H, W) or (H, W, C) sampled at float pixel positions (x, y) (any equal shapes),
    bilinearly; pixel (col, row) sits at x = col, y = row. outside: "zero" (taps outside read 0,
    as :func:`semidff.ops.warp.warp_features` does) or "clamp" (taps take the nearest edge pixel).
    Returns x.shape (+ (C,)) float64."""
    height, width = image.shape[:2]
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    result = 0.0
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            col, row = x0 + dx, y0 + dy
            if outside == "clamp":
                tap = image[np.clip(row, 0, height - 1), np.clip(col, 0, width - 1)].astype(np.float64)
            else:
                inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
                tap = image[np.clip(row, 0, height - 1), np.clip(col, 0, width - 1)].astype(np.float64)
                tap = np.where(inside[..., None] if tap.ndim > inside.ndim else inside, tap, 0.0)
            weight = wx * wy
            result = result + (weight[..., None] if tap.ndim > weight.ndim else weight) * tap
    return np.asarray(result, dtype=np.float64)


@dataclass
class TrueMotion:
    """Where everything of one video is in every frame (module docstring for the model).

    width, height: the frame size in pixels. camera_center: (T, 2) float64 world (x, y) at the
    frame's center; camera_zoom: (T,) float64 frame pixels per world pixel. layer_affine:
    (L, T, 2, 3) float64 [A | c], sprite-local (u, v) → frame (x, y). masks: L arrays (h, w) bool.
    layer_track: (L,) int64 track id, -1 for an occluder. layer_gain: (L, T) float64 brightness.
    """

    width: int
    height: int
    camera_center: np.ndarray
    camera_zoom: np.ndarray
    layer_affine: np.ndarray
    masks: list[np.ndarray]
    layer_track: np.ndarray
    layer_gain: np.ndarray

    def __post_init__(self) -> None:
        self.camera_center = np.asarray(self.camera_center, dtype=np.float64).reshape(-1, 2)
        self.camera_zoom = np.asarray(self.camera_zoom, dtype=np.float64).reshape(-1)
        frames, layers = len(self.camera_zoom), len(self.masks)
        self.layer_affine = np.asarray(self.layer_affine, dtype=np.float64).reshape(layers, frames, 2, 3)
        self.masks = [np.asarray(m, dtype=bool) for m in self.masks]
        self.layer_track = np.asarray(self.layer_track, dtype=np.int64).reshape(layers)
        self.layer_gain = np.asarray(self.layer_gain, dtype=np.float64).reshape(layers, frames)
        if len(self.camera_center) != frames:
            raise TrueMotionError(f"camera_center has {len(self.camera_center)} frames but camera_zoom {frames}")
        if np.any(self.camera_zoom <= 0):
            raise TrueMotionError("camera_zoom must be > 0 in every frame")
        if np.any(np.abs(np.linalg.det(self.layer_affine[..., :2])) < 1e-9):
            raise TrueMotionError("every layer_affine must be invertible (a sprite squashed to a line)")

    @property
    def num_frames(self) -> int:
        return len(self.camera_zoom)

    @property
    def num_layers(self) -> int:
        return len(self.masks)

    @property
    def center(self) -> np.ndarray:
        """f = ((W - 1) / 2, (H - 1) / 2): the frame point the camera zooms about."""
        return np.array([(self.width - 1) / 2.0, (self.height - 1) / 2.0])

    def _check_frame(self, t: int) -> None:
        if not 0 <= t < self.num_frames:
            raise IndexError(f"frame {t} is outside 0..{self.num_frames - 1}")

    # --- layers ---------------------------------------------------------------------------

    def to_sprite(self, layer: int, t: int, points: np.ndarray) -> np.ndarray:
        """(P, 2) frame points of frame t → (P, 2) sprite-local coordinates of ``layer``."""
        affine = self.layer_affine[layer, t]
        return (points - affine[:, 2]) @ np.linalg.inv(affine[:, :2]).T

    def from_sprite(self, layer: int, t: int, local: np.ndarray) -> np.ndarray:
        """(P, 2) sprite-local coordinates of ``layer`` → (P, 2) points of frame t."""
        affine = self.layer_affine[layer, t]
        return local @ affine[:, :2].T + affine[:, 2]

    def mask_alpha(self, layer: int, local: np.ndarray) -> np.ndarray:
        """(P,) the layer's mask sampled bilinearly (0 outside the sprite) at (P, 2) local points."""
        mask = self.masks[layer]
        h, w = mask.shape
        return sample_bilinear(mask.astype(np.float64), local[:, 0] + (w - 1) / 2.0, local[:, 1] + (h - 1) / 2.0)

    def coverage(self, t: int, points: np.ndarray) -> np.ndarray:
        """(L, P) bool: which layers' sprites cover each of (P, 2) points of frame t, hidden or not."""
        self._check_frame(t)
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        covered = np.zeros((self.num_layers, len(points)), dtype=bool)
        for layer, mask in enumerate(self.masks):
            h, w = mask.shape
            corners = self.from_sprite(layer, t, np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]]) * [(w + 1) / 2.0, (h + 1) / 2.0])
            low, high = corners.min(axis=0), corners.max(axis=0)  # only points near the sprite can be on it
            xs, ys = points[:, 0], points[:, 1]
            near = np.flatnonzero((xs >= low[0]) & (xs <= high[0]) & (ys >= low[1]) & (ys <= high[1]))
            covered[layer, near] = self.mask_alpha(layer, self.to_sprite(layer, t, points[near])) >= MASK_THRESHOLD
        return covered

    def layer_at(self, t: int, points: np.ndarray) -> np.ndarray:
        """(P,) int64: the layer seen at each of (P, 2) points of frame t (the top-most covering
        one), :data:`BACKGROUND` where none covers it."""
        covered = self.coverage(t, points)
        owner = np.full(covered.shape[1], BACKGROUND, dtype=np.int64)
        for layer in range(self.num_layers):  # later layers are drawn on top
            owner[covered[layer]] = layer
        return owner

    # --- where content goes -----------------------------------------------------------------

    def to_world(self, t: int, points: np.ndarray) -> np.ndarray:
        """(P, 2) points of frame t → the background's world points they show."""
        return self.camera_center[t] + (points - self.center) / self.camera_zoom[t]

    def from_world(self, t: int, world: np.ndarray) -> np.ndarray:
        """(P, 2) world points → where frame t shows them."""
        return self.center + self.camera_zoom[t] * (world - self.camera_center[t])

    def position_in(self, t: int, k: int, points: np.ndarray, layers: np.ndarray) -> np.ndarray:
        """(P, 2): where the content at (P, 2) points of frame t, each on its layer (``layers``,
        (P,), :data:`BACKGROUND` for the background), sits in frame k."""
        self._check_frame(t)
        self._check_frame(k)
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        moved = np.empty_like(points)
        on = layers == BACKGROUND
        moved[on] = self.from_world(k, self.to_world(t, points[on]))
        for layer in np.unique(layers[~on]):
            on = layers == layer
            moved[on] = self.from_sprite(int(layer), k, self.to_sprite(int(layer), t, points[on]))
        return moved

    # --- files --------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the sidecar (compressed NPZ, atomically)."""
        path = Path(path)
        shapes = np.array([m.shape for m in self.masks], dtype=np.int64).reshape(-1, 2)
        padded = np.zeros((self.num_layers, *(shapes.max(axis=0) if self.num_layers else (0, 0))), dtype=bool)
        for layer, mask in enumerate(self.masks):
            padded[layer, : mask.shape[0], : mask.shape[1]] = mask
        with atomic_path(path) as temporary:
            with open(temporary, "wb") as handle:  # a handle: np.savez would append ".npz" to the temporary name
                np.savez_compressed(
                    handle, format=np.array(FORMAT), size=np.array([self.width, self.height]),
                    camera_center=self.camera_center, camera_zoom=self.camera_zoom, layer_affine=self.layer_affine,
                    mask_shapes=shapes, masks=padded, layer_track=self.layer_track, layer_gain=self.layer_gain,
                )
        return path


def load_true_motion(path: str | Path) -> TrueMotion:
    """Read a sidecar written by :meth:`TrueMotion.save`; raises TrueMotionError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise TrueMotionError(f"{path}: no true-motion file")
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["format"]) != FORMAT:
                raise TrueMotionError(f"{path}: format {str(data['format'])!r}; this reader understands {FORMAT!r}")
            shapes = data["mask_shapes"]
            masks = [data["masks"][layer, :h, :w].copy() for layer, (h, w) in enumerate(shapes.tolist())]
            width, height = (int(v) for v in data["size"])
            return TrueMotion(width, height, data["camera_center"], data["camera_zoom"], data["layer_affine"], masks,
                              data["layer_track"], data["layer_gain"])
    except TrueMotionError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise TrueMotionError(f"{path}: not a readable {FORMAT} file ({exc})") from None


# ---------------------------------------------------------------------------------------------
# Flows


@dataclass
class BackwardFlow:
    """The true backward flow from frame t to frame k on a pixel grid.

    flow: (H, W, 2) float32 (u, v) in pixels of that grid: the content at (x, y) of frame t sits at
    (x + u, y + v) of frame k. layer: (H, W) int64 layer seen at each pixel of frame t
    (:data:`BACKGROUND` = -1). object_mask: (H, W) bool, an annotated object's layer (occluders are
    not objects). visible: (H, W) bool, the content is seen at that place in frame k (inside the frame,
    on the same layer), i.e. warping frame k reproduces it there.
    """

    flow: np.ndarray
    layer: np.ndarray
    object_mask: np.ndarray
    visible: np.ndarray


@dataclass
class FeatureFlow:
    """The true backward flow on the stride-16 feature grid, in feature cells.

    flow: (h, w, 2) float32, the flow of each cell's center pixel divided by the stride (the
    displacement ``semidff.ops.warp.warp_features`` takes on the feature map). object_mask: (h, w)
    bool, the cell's center pixel is on an annotated object in frame t.
    """

    flow: np.ndarray
    object_mask: np.ndarray

    def as_tensors(self):
        """(1, 2, h, w) float32 flow and (1, h, w) bool mask, the shapes of
        :func:`semidff.training.flow_diagnostics.flow_error_sums` (concatenate along dim 0 for a batch)."""
        import torch

        return torch.from_numpy(np.ascontiguousarray(self.flow.transpose(2, 0, 1)))[None], torch.from_numpy(self.object_mask)[None]


def _flow_at(motion: TrueMotion, t: int, k: int, points: np.ndarray, height: int, width: int):
    """Flow (P, 2) in pixels of a ``height`` x ``width`` grid at (P, 2) points of that grid,
    the layers there and whether each is visible in frame k."""
    scale = np.array([width / motion.width, height / motion.height])
    original = (points + 0.5) / scale - 0.5  # pixel centers of a resized grid (align_corners=False)
    layers = motion.layer_at(t, original)
    moved = motion.position_in(t, k, original, layers)
    moved = np.round(moved, 9)  # float noise of the transforms (1e-14 px) must not move a point off the frame's edge or a mask's
    inside = (moved[:, 0] >= 0) & (moved[:, 0] <= motion.width - 1) & (moved[:, 1] >= 0) & (moved[:, 1] <= motion.height - 1)
    visible = inside & (motion.layer_at(k, moved) == layers)
    flow = (moved + 0.5) * scale - 0.5 - points
    return flow, layers, visible


def _object_layers(motion: TrueMotion, layers: np.ndarray) -> np.ndarray:
    annotated = np.flatnonzero(motion.layer_track >= 0)
    return np.isin(layers, annotated)


def true_backward_flow(motion: TrueMotion, t: int, k: int, height: int | None = None, width: int | None = None) -> BackwardFlow:
    """The true backward flow from frame ``t`` to frame ``k`` (any two frames) at every pixel.

    height, width: the grid (default the video's frame size); another size is the frame resized
    to it (pixel centers map as in a bilinear resize with align_corners=False) and the flow is in
    its pixels.
    """
    height, width = height or motion.height, width or motion.width
    ys, xs = np.mgrid[0:height, 0:width]
    points = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    flow, layers, visible = _flow_at(motion, t, k, points, height, width)
    return BackwardFlow(
        flow=flow.reshape(height, width, 2).astype(np.float32), layer=layers.reshape(height, width),
        object_mask=_object_layers(motion, layers).reshape(height, width), visible=visible.reshape(height, width),
    )


def feature_grid_shape(height: int, width: int, stride: int = FEATURE_STRIDE) -> tuple[int, int]:
    """(h, w) of the stride-16 feature map of a ``height`` x ``width`` image: ceil(side / 16), the
    size the ResNet's stride-2 convolutions (pad k // 2) and FlowNetS both give (dff-facts §1.2)."""
    return math.ceil(height / stride), math.ceil(width / stride)


def true_feature_flow(
    motion: TrueMotion, t: int, k: int, height: int | None = None, width: int | None = None,
    stride: int = FEATURE_STRIDE, feature_shape: tuple[int, int] | None = None,
) -> FeatureFlow:
    """The true backward flow from frame ``t`` to frame ``k`` on the feature grid of a
    ``height`` x ``width`` network input (default the frame size), in feature cells.

    Cell (i, j) stands for the pixels 16 i .. 16 i + 15 (the anchors' convention, ``rfcn.grid_anchors``):
    its flow and object flag are those of its center pixel (16 j + 7.5, 16 i + 7.5). feature_shape:
    the map's (h, w) when it is not :func:`feature_grid_shape`.
    """
    height, width = height or motion.height, width or motion.width
    rows, cols = feature_shape or feature_grid_shape(height, width, stride)
    ys, xs = np.mgrid[0:rows, 0:cols]
    points = np.stack([xs.ravel(), ys.ravel()], axis=1) * float(stride) + (stride - 1) / 2.0
    flow, layers, _ = _flow_at(motion, t, k, points, height, width)
    return FeatureFlow(flow=(flow / stride).reshape(rows, cols, 2).astype(np.float32),
                       object_mask=_object_layers(motion, layers).reshape(rows, cols))
