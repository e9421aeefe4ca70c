"""ImageNet VID mAP with the official per-object IoU thresholds, and FGFA's motion-speed buckets.

The protocol (dff-facts §4.4, DFF ``lib/dataset/imagenet_vid_eval.py``):

1. Every ground-truth (GT) box gets its own IoU threshold, min(0.5, w·h / ((w+10)(h+10))), which
   relaxes the 0.5 of PASCAL VOC for objects only a few pixels wide.
2. In each frame, the detections of a class are taken in descending score order; each one matches
   the unmatched GT of its class with the highest IoU (+1 pixel convention) at or above that GT's
   threshold (a true positive, TP); a detection that matches nothing is a false positive (FP).
3. Detections of all frames are pooled per class and ranked by score; AP is the PASCAL VOC
   all-point interpolated area under the precision/recall curve; mAP is the mean over classes.

The motion buckets (dff-facts §4.5, FGFA ``lib/dataset/imagenet_vid_eval_motion.py``) rate every
GT by its *motion IoU*, the mean IoU of the object with itself in the frames ±10 around it
(:func:`motion_iou_from_tracks`), and score each bucket as if GTs outside it were not there:
they leave npos, a detection matched to one is neither TP nor FP, and an unmatched detection is an
FP only as far as its best overlap is with an in-bucket GT (the weights are in
:func:`match_detections`).

Usage::

    from semidff.evaluation.vid_map import FramePrediction, GroundTruth, evaluate_vid
    result = evaluate_vid(predictions, ground_truths, num_classes=30, class_names=names)
    print(result.format_table())

Ties in score are broken by input order: by the order of ``ground_truths`` across frames and by the
order of a frame's detections within a frame (a stable sort), so a result never depends on
numpy's sort algorithm.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from semidff.ops.boxes import box_iou

if TYPE_CHECKING:
    from semidff.models.rfcn import Detections

PIXEL_TOLERANCE = 10
"""pixelTolerance of the VID devkit: how many pixels of slack a small object's threshold allows."""

IOU_THRESHOLD = 0.5
"""The threshold of large objects (and of every object when the small-object relaxation is off)."""

MOTION_WINDOW = 10
"""Frames on either side of a GT that its motion IoU averages over (FGFA: "nearby frames ±10")."""

MOTION_BUCKETS = ("slow", "medium", "fast")
"""Bucket names in the order FGFA's README reports them."""


# ---------------------------------------------------------------------------------------------
# Records


def _as_array(values: Any, dtype: type, name: str, shape_tail: tuple[int, ...] = ()) -> np.ndarray:
    """Copy a tensor / array / list into a numpy array of ``dtype`` and shape (N, *shape_tail)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=dtype)
    if array.size == 0:
        array = array.reshape((0, *shape_tail))
    if array.ndim != 1 + len(shape_tail) or array.shape[1:] != shape_tail:
        expected = "(N" + "".join(f", {n}" for n in shape_tail) + ")"
        raise ValueError(f"{name}: expected shape {expected}, got {tuple(array.shape)}")
    return array


@dataclass
class GroundTruth:
    """The annotated objects of one frame.

    frame_id: any hashable id, unique over the evaluated set (a global frame index or a path).
    boxes: (G, 4) float (x1, y1, x2, y2) in original-image pixels, inclusive corners.
    labels: (G,) int64 class indices in 1..num_classes.
    motion_iou: (G,) float motion IoU of each object (:func:`motion_iou_from_tracks`), or None;
        needed only for the motion buckets. NaN marks an object with no motion estimate, which
        every bucket ignores.

    A frame without objects is a GroundTruth with G = 0; it still counts, because detections
    in it are false positives. Tensors, arrays and lists are accepted and stored as numpy arrays.
    """

    frame_id: Hashable
    boxes: np.ndarray
    labels: np.ndarray
    motion_iou: np.ndarray | None = None

    def __post_init__(self) -> None:
        where = f"GroundTruth {self.frame_id!r}"
        self.boxes = _as_array(self.boxes, np.float64, f"{where} boxes", (4,))
        self.labels = _as_array(self.labels, np.int64, f"{where} labels")
        if len(self.labels) != len(self.boxes):
            raise ValueError(f"{where}: {len(self.boxes)} boxes but {len(self.labels)} labels")
        # A GT narrower than one pixel would get a threshold <= 0 and match any detection.
        if np.any(self.boxes[:, 2:] < self.boxes[:, :2]):
            raise ValueError(f"{where}: boxes need x2 >= x1 and y2 >= y1 (inclusive corners)")
        if self.motion_iou is not None:
            self.motion_iou = _as_array(self.motion_iou, np.float64, f"{where} motion_iou")
            if len(self.motion_iou) != len(self.boxes):
                raise ValueError(f"{where}: {len(self.boxes)} boxes but {len(self.motion_iou)} motion IoUs")


@dataclass
class FramePrediction:
    """The detections of one frame, as :class:`~semidff.models.rfcn.Detections` plus the frame id.

    boxes: (D, 4) float (x1, y1, x2, y2) in original-image pixels, inclusive corners.
    scores: (D,) float confidences; any order.
    labels: (D,) int64 class indices in 1..num_classes.
    """

    frame_id: Hashable
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        where = f"FramePrediction {self.frame_id!r}"
        self.boxes = _as_array(self.boxes, np.float64, f"{where} boxes", (4,))
        self.scores = _as_array(self.scores, np.float64, f"{where} scores")
        self.labels = _as_array(self.labels, np.int64, f"{where} labels")
        if not len(self.boxes) == len(self.scores) == len(self.labels):
            raise ValueError(
                f"{where}: {len(self.boxes)} boxes, {len(self.scores)} scores, {len(self.labels)} labels"
            )
        if not np.all(np.isfinite(self.scores)):
            raise ValueError(f"{where}: scores must be finite")

    @classmethod
    def from_detections(cls, frame_id: Hashable, detections: Detections) -> FramePrediction:
        """Wrap the R-FCN's output for one image."""
        return cls(frame_id, detections.boxes, detections.scores, detections.labels)


@dataclass(frozen=True)
class VIDEvalResult:
    """mAP and per-class AP on the whole set and per motion bucket; values are fractions in [0, 1].

    An AP is NaN where the class has no GT (in the set, or in the bucket): AP is undefined there,
    and the class is left out of that mean, as the devkit and FGFA (AP -1) do. ``map`` is NaN only
    if no class has any GT. The bucket fields are empty when buckets were not evaluated.
    """

    class_names: tuple[str, ...]
    map: float
    per_class_ap: dict[str, float]
    num_gt: dict[str, int]
    num_detections: dict[str, int]
    bucket_map: dict[str, float]
    bucket_per_class_ap: dict[str, dict[str, float]]
    bucket_num_gt: dict[str, dict[str, int]]
    num_frames: int
    relaxed_small_objects: bool

    def format_table(self) -> str:
        """A Markdown table: AP (%) and counts per class, then the means; "–" marks an undefined AP."""

        def percent(value: float) -> str:
            return "–" if math.isnan(value) else f"{100 * value:.1f}"

        buckets = list(self.bucket_map)
        header = ["class", "AP", "GT", "detections", *buckets]
        rows = ["| " + " | ".join(header) + " |", "|:--" + "|--:" * (len(header) - 1) + "|"]
        for name in self.class_names:
            cells = [name, percent(self.per_class_ap[name]), str(self.num_gt[name]),
                     str(self.num_detections[name])]
            cells += [percent(self.bucket_per_class_ap[bucket][name]) for bucket in buckets]
            rows.append("| " + " | ".join(cells) + " |")
        total = ["**mAP**", f"**{percent(self.map)}**", str(sum(self.num_gt.values())),
                 str(sum(self.num_detections.values()))]
        total += [f"**{percent(self.bucket_map[bucket])}**" for bucket in buckets]
        rows.append("| " + " | ".join(total) + " |")
        return "\n".join(rows)


# ---------------------------------------------------------------------------------------------
# Per-object quantities


def per_gt_iou_threshold(boxes: Any, relaxed_small_objects: bool = True) -> np.ndarray:
    """IoU a detection needs to match each of (G, 4) GT boxes → (G,) float64.

    Relaxed (the VID devkit): min(0.5, w·h / ((w+10)(h+10))) with w = x2 - x1 + 1, so an 8×8
    object needs 64/324 ≈ 0.198. Otherwise 0.5 for every box.
    """
    boxes = _as_array(boxes, np.float64, "boxes", (4,))
    if not relaxed_small_objects:
        return np.full(len(boxes), IOU_THRESHOLD)
    widths = boxes[:, 2] - boxes[:, 0] + 1.0
    heights = boxes[:, 3] - boxes[:, 1] + 1.0
    relaxed = widths * heights / ((widths + PIXEL_TOLERANCE) * (heights + PIXEL_TOLERANCE))
    return np.minimum(IOU_THRESHOLD, relaxed)


def in_motion_bucket(motion_iou: Any, bucket: str) -> np.ndarray:
    """Which objects of (G,) motion IoUs fall in ``bucket`` → (G,) bool; NaN is in none.

    FGFA paper: slow > 0.9, medium 0.7..0.9, fast < 0.7. FGFA's code uses the closed ranges
    [0.9, 1], [0.7, 0.9], [0, 0.7], which put a value of exactly 0.7 or 0.9 in two buckets; here
    the buckets are disjoint and 0.7 and 0.9 both count as medium.
    """
    motion_iou = _as_array(motion_iou, np.float64, "motion_iou")
    if bucket == "slow":
        return motion_iou > 0.9
    if bucket == "medium":
        return (motion_iou >= 0.7) & (motion_iou <= 0.9)
    if bucket == "fast":
        return motion_iou < 0.7
    raise ValueError(f"unknown motion bucket {bucket!r}; expected one of {MOTION_BUCKETS}")


def motion_iou_from_tracks(
    tracks: Mapping[Hashable, Mapping[int, Any]],
    window: int = MOTION_WINDOW,
    isolated_value: float = math.nan,
) -> dict[Hashable, dict[int, float]]:
    """Motion IoU of every annotated box of one video: its mean IoU with the same object in the
    other frames at most ``window`` frames away (FGFA paper; +1 pixel convention).

    tracks: track id → {frame index → (4,) box}, the GT of one snippet (VID's ``trackid``).
    Returns the same nesting with a float per box. Frames where the object is not annotated do
    not count. A box with no other annotation of its object within the window has no motion
    estimate and gets ``isolated_value``: NaN by default, which keeps it out of every bucket
    rather than calling an unobserved motion slow (pass 1.0 to count it as static).
    """
    motion: dict[Hashable, dict[int, float]] = {}
    block = 256  # rows per IoU block: bounds memory on long snippets
    for track_id, boxes_by_frame in tracks.items():
        frames = np.array(sorted(boxes_by_frame), dtype=np.int64)
        boxes = _as_array(
            [np.asarray(boxes_by_frame[f], dtype=np.float64).reshape(-1) for f in frames.tolist()],
            np.float64, f"track {track_id!r} boxes", (4,),
        )
        boxes = torch.from_numpy(boxes)
        values = np.full(len(frames), isolated_value, dtype=np.float64)
        for start in range(0, len(frames), block):
            stop = min(start + block, len(frames))
            lo = int(np.searchsorted(frames, frames[start] - window, side="left"))
            hi = int(np.searchsorted(frames, frames[stop - 1] + window, side="right"))
            iou = box_iou(boxes[start:stop], boxes[lo:hi]).numpy()
            distance = np.abs(frames[start:stop, None] - frames[None, lo:hi])
            nearby = (distance <= window) & (distance > 0)
            counts = nearby.sum(axis=1)
            sums = np.where(nearby, iou, 0.0).sum(axis=1)
            has_neighbour = counts > 0
            values[start:stop][has_neighbour] = sums[has_neighbour] / counts[has_neighbour]
        motion[track_id] = dict(zip(frames.tolist(), values.tolist()))
    return motion


# ---------------------------------------------------------------------------------------------
# Matching


def _pairwise_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    return box_iou(torch.from_numpy(boxes_a), torch.from_numpy(boxes_b)).numpy()


def _match_with_iou(
    iou: np.ndarray,
    det_scores: np.ndarray,
    gt_thresholds: np.ndarray,
    gt_ignored: np.ndarray,
    empty_frame_fp_weight: float,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`match_detections` on a precomputed (D, G) IoU matrix."""
    num_dets, num_gts = iou.shape
    tp = np.zeros(num_dets)
    if num_gts == 0:
        return tp, np.full(num_dets, float(empty_frame_fp_weight))

    # Weight of a detection left unmatched (FGFA): whole FP when its best overlap is with an
    # in-bucket GT, none when with an ignored one, and on a tie (typically both 0) the share of
    # *ignored* GTs in the frame, as FGFA's code has it (dff-facts §4.5), although the in-bucket
    # share would be the symmetric choice. -1 stands for "no GT of that kind", so a tie needs both.
    best_in_bucket = np.where(gt_ignored[None, :], -1.0, iou).max(axis=1)
    best_ignored = np.where(gt_ignored[None, :], iou, -1.0).max(axis=1)
    fp = np.where(
        best_in_bucket > best_ignored, 1.0, np.where(best_ignored > best_in_bucket, 0.0, gt_ignored.mean())
    )

    eligible = iou >= gt_thresholds[None, :]
    taken = np.zeros(num_gts, dtype=bool)
    order = np.argsort(-det_scores, kind="stable")
    for d in order[eligible[order].any(axis=1)]:  # only detections that can match anything
        available = eligible[d] & ~taken
        if not available.any():
            continue
        best = iou[d][available].max()
        ties = available & (iou[d] == best)
        # On an exact IoU tie an in-bucket GT wins over an ignored one (FGFA / MEGA), then the first.
        preferred = ties & ~gt_ignored
        j = int(np.flatnonzero(preferred if preferred.any() else ties)[0])
        taken[j] = True
        tp[d] = 0.0 if gt_ignored[j] else 1.0
        fp[d] = 0.0
    return tp, fp


def match_detections(
    det_boxes: Any,
    det_scores: Any,
    gt_boxes: Any,
    gt_thresholds: Any,
    gt_ignored: Any = None,
    empty_frame_fp_weight: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy VID matching of one frame's detections and GTs of one class → (tp, fp), each (D,)
    float64 in the detections' input order.

    det_boxes (D, 4), det_scores (D,); gt_boxes (G, 4), gt_thresholds (G,) from
    :func:`per_gt_iou_threshold`; gt_ignored (G,) bool marks GTs outside the evaluated motion
    bucket (None: none ignored).

    Detections go in descending score (ties: input order); each takes the unmatched GT with the
    highest IoU >= that GT's threshold. Matched to an in-bucket GT: tp = 1, fp = 0; matched to an
    ignored GT: tp = fp = 0. Unmatched: fp = 1 if its highest IoU over all GTs is with an in-bucket
    GT, 0 if with an ignored GT, and on a tie the share of ignored GTs among ``gt_boxes`` (FGFA's
    rule). With no GTs (none of this class in the frame), fp = ``empty_frame_fp_weight`` (FGFA:
    the share of in-bucket objects, all classes, in the whole set; 1 for the overall mAP).
    """
    det_boxes = _as_array(det_boxes, np.float64, "det_boxes", (4,))
    det_scores = _as_array(det_scores, np.float64, "det_scores")
    gt_boxes = _as_array(gt_boxes, np.float64, "gt_boxes", (4,))
    gt_thresholds = _as_array(gt_thresholds, np.float64, "gt_thresholds")
    if gt_ignored is None:
        gt_ignored = np.zeros(len(gt_boxes), dtype=bool)
    gt_ignored = _as_array(gt_ignored, bool, "gt_ignored")
    if len(det_scores) != len(det_boxes) or not len(gt_boxes) == len(gt_thresholds) == len(gt_ignored):
        raise ValueError("match_detections: det_boxes/det_scores and gt_boxes/gt_thresholds/gt_ignored "
                         "must have matching lengths")
    if len(det_boxes) == 0 or len(gt_boxes) == 0:
        iou = np.zeros((len(det_boxes), len(gt_boxes)))
    else:
        iou = _pairwise_iou(det_boxes, gt_boxes)
    return _match_with_iou(iou, det_scores, gt_thresholds, gt_ignored, empty_frame_fp_weight)


# ---------------------------------------------------------------------------------------------
# Average precision


def voc_average_precision(recall: Any, precision: Any) -> float:
    """PASCAL VOC all-point AP of a ranked list's (N,) recall and precision values.

    The precision is replaced by its monotone envelope (the highest precision at any equal or
    higher recall), and AP = Σ Δrecall × envelope over the points where recall grows. An empty
    list has AP 0.
    """
    recall = _as_array(recall, np.float64, "recall")
    precision = _as_array(precision, np.float64, "precision")
    padded_recall = np.concatenate(([0.0], recall, [1.0]))
    envelope = np.concatenate(([0.0], precision, [0.0]))
    envelope = np.maximum.accumulate(envelope[::-1])[::-1]
    steps = np.flatnonzero(padded_recall[1:] != padded_recall[:-1])
    return float(np.sum((padded_recall[steps + 1] - padded_recall[steps]) * envelope[steps + 1]))


def _ranked_average_precision(
    scores: np.ndarray, tp: np.ndarray, fp: np.ndarray, num_positives: float
) -> float:
    """AP of pooled detections with (possibly fractional) TP / FP weights; NaN without positives."""
    if num_positives <= 0:
        return math.nan
    order = np.argsort(-scores, kind="stable")
    tp_cumulative = np.cumsum(tp[order])
    fp_cumulative = np.cumsum(fp[order])
    recall = tp_cumulative / num_positives
    counted = tp_cumulative + fp_cumulative
    # 0/0 happens only before the first counted detection, at recall 0, where it cannot matter.
    precision = np.divide(tp_cumulative, counted, out=np.zeros_like(counted), where=counted > 0)
    return voc_average_precision(recall, precision)


def _mean_defined(values: Iterable[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else math.nan


# ---------------------------------------------------------------------------------------------
# Evaluation


class _ClassPool:
    """Scores and TP/FP weights of every detection of every class, pooled over frames."""

    def __init__(self, num_classes: int):
        self.scores: list[list[np.ndarray]] = [[] for _ in range(num_classes + 1)]
        self.tp: list[list[np.ndarray]] = [[] for _ in range(num_classes + 1)]
        self.fp: list[list[np.ndarray]] = [[] for _ in range(num_classes + 1)]
        self.num_positives = np.zeros(num_classes + 1, dtype=np.int64)

    def add(self, label: int, scores: np.ndarray, tp: np.ndarray, fp: np.ndarray) -> None:
        self.scores[label].append(scores)
        self.tp[label].append(tp)
        self.fp[label].append(fp)

    def average_precision(self, label: int) -> float:
        if not self.scores[label]:
            return math.nan if self.num_positives[label] == 0 else 0.0
        return _ranked_average_precision(
            np.concatenate(self.scores[label]),
            np.concatenate(self.tp[label]),
            np.concatenate(self.fp[label]),
            float(self.num_positives[label]),
        )


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    if len(labels) and (labels.min() < 1 or labels.max() > num_classes):
        raise ValueError(f"{where}: labels must lie in 1..{num_classes} (0 is background), "
                         f"got {labels.min()}..{labels.max()}")


def evaluate_vid(
    predictions: Iterable[FramePrediction],
    ground_truths: Sequence[GroundTruth],
    num_classes: int,
    class_names: Sequence[str] | None = None,
    relaxed_small_objects: bool = True,
    buckets: bool = True,
) -> VIDEvalResult:
    """ImageNet VID mAP of ``predictions`` on the frames of ``ground_truths`` (module docstring).

    ground_truths: one record per evaluated frame, frames without objects included; their order
        breaks score ties. predictions: at most one record per frame; a frame without one has
        no detections. relaxed_small_objects: the devkit's per-object thresholds (True) or 0.5
        for every object. buckets: also evaluate FGFA's slow / medium / fast buckets, which needs
        ``motion_iou`` on every GroundTruth with objects.
    class_names: names of classes 1..num_classes, keys of the result's dicts; default
        "class_1", "class_2", ...
    """
    if class_names is None:
        class_names = [f"class_{c}" for c in range(1, num_classes + 1)]
    names = tuple(class_names)
    if len(names) != num_classes or len(set(names)) != num_classes:
        raise ValueError(f"class_names: need {num_classes} distinct names, "
                         f"got {len(names)} ({len(set(names))} distinct)")

    frames = list(ground_truths)
    frame_ids: set[Hashable] = set()
    for gt in frames:
        if gt.frame_id in frame_ids:
            raise ValueError(f"ground_truths: frame {gt.frame_id!r} appears twice")
        frame_ids.add(gt.frame_id)
        _check_labels(gt.labels, num_classes, f"GroundTruth {gt.frame_id!r}")
        if buckets and gt.motion_iou is None and len(gt.boxes):
            raise ValueError(f"GroundTruth {gt.frame_id!r}: motion_iou is missing; compute it with "
                             "motion_iou_from_tracks or call evaluate_vid(..., buckets=False)")
    predicted: dict[Hashable, FramePrediction] = {}
    for prediction in predictions:
        if prediction.frame_id not in frame_ids:
            raise ValueError(f"FramePrediction {prediction.frame_id!r}: no GroundTruth for this frame "
                             "(every evaluated frame needs one, even without objects)")
        if prediction.frame_id in predicted:
            raise ValueError(f"predictions: frame {prediction.frame_id!r} appears twice")
        _check_labels(prediction.labels, num_classes, f"FramePrediction {prediction.frame_id!r}")
        predicted[prediction.frame_id] = prediction

    # Subsets of GTs to score: None = all of them, else a motion bucket.
    subsets: list[str | None] = [None, *(MOTION_BUCKETS if buckets else ())]
    # FGFA: a detection in a frame without GT of its class weighs the set's in-bucket share.
    empty_frame_fp_weight = {subset: 1.0 for subset in subsets}
    if buckets:
        all_motion = np.concatenate([np.zeros(0), *(gt.motion_iou for gt in frames if len(gt.boxes))])
        if len(all_motion):
            for bucket in MOTION_BUCKETS:
                empty_frame_fp_weight[bucket] = float(in_motion_bucket(all_motion, bucket).mean())
    pools = {subset: _ClassPool(num_classes) for subset in subsets}
    num_detections = np.zeros(num_classes + 1, dtype=np.int64)
    no_detections = FramePrediction(None, np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))

    for gt in frames:
        prediction = predicted.get(gt.frame_id, no_detections)
        thresholds = per_gt_iou_threshold(gt.boxes, relaxed_small_objects)
        motion = gt.motion_iou if gt.motion_iou is not None else np.zeros(len(gt.boxes))
        ignored_by_subset = {None: np.zeros(len(gt.boxes), dtype=bool)}
        for bucket in subsets[1:]:
            ignored_by_subset[bucket] = ~in_motion_bucket(motion, bucket)
        np.add.at(num_detections, prediction.labels, 1)
        if len(prediction.boxes) and len(gt.boxes):
            iou = _pairwise_iou(prediction.boxes, gt.boxes)
        else:
            iou = np.zeros((len(prediction.boxes), len(gt.boxes)))
        for label in np.unique(np.concatenate([gt.labels, prediction.labels])).tolist():
            is_det = prediction.labels == label
            is_gt = gt.labels == label
            class_iou = iou[np.ix_(is_det, is_gt)]
            class_scores = prediction.scores[is_det]
            for subset in subsets:
                ignored = ignored_by_subset[subset][is_gt]
                pool = pools[subset]
                pool.num_positives[label] += int((~ignored).sum())
                if len(class_scores):
                    tp, fp = _match_with_iou(
                        class_iou, class_scores, thresholds[is_gt], ignored, empty_frame_fp_weight[subset]
                    )
                    pool.add(label, class_scores, tp, fp)

    def ap_by_name(pool: _ClassPool) -> dict[str, float]:
        return {name: pool.average_precision(label) for label, name in enumerate(names, start=1)}

    def count_by_name(counts: np.ndarray) -> dict[str, int]:
        return {name: int(counts[label]) for label, name in enumerate(names, start=1)}

    per_class_ap = ap_by_name(pools[None])
    bucket_per_class_ap = {bucket: ap_by_name(pools[bucket]) for bucket in subsets if bucket is not None}
    return VIDEvalResult(
        class_names=names,
        map=_mean_defined(per_class_ap.values()),
        per_class_ap=per_class_ap,
        num_gt=count_by_name(pools[None].num_positives),
        num_detections=count_by_name(num_detections),
        bucket_map={bucket: _mean_defined(aps.values()) for bucket, aps in bucket_per_class_ap.items()},
        bucket_per_class_ap=bucket_per_class_ap,
        bucket_num_gt={bucket: count_by_name(pools[bucket].num_positives) for bucket in bucket_per_class_ap},
        num_frames=len(frames),
        relaxed_small_objects=relaxed_small_objects,
    )
