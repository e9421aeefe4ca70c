"""Stage 1 input: labeled frames → resized, flipped training images with boxes to match (no Ray).

    dataset = load_labeled_dataset(cfg.teacher_training.data, num_classes=cfg.model.num_classes)  # semidff.data.labeled
    frames = labeled_frames(dataset)                         # annotations only, nothing decoded
    shard = shard_for_rank(epoch_order(len(frames), cfg.seed, epoch), rank, world_size)
    for batch in iterate_batches(frames, shard, batch_size=2, short_side=160, max_long_side=288,
                                 flips=epoch_flips(len(frames), cfg.seed, epoch)):
        batch.images        # (N, 3, H, W) float32 network input, zero (= mean pixel) padded
        batch.gt_boxes[i]   # (G_i, 4) float32 inclusive (x1, y1, x2, y2) in input pixels

**How frames reach the Ray Train workers.** Each worker decodes its own shard of (video, frame)
samples, from the original files, on a background thread that prepares the next batches while
the current step runs (decord and PIL release the GIL). Why not a Ray Data dataset: the labeled
sets are small in frames (DFF trains on 15 frames per VID snippet plus DET stills) and one frame
decodes in milliseconds against a detector step of tens of milliseconds (tiny CPU model) to
seconds (ResNet-101); per-worker decoding needs no CPUs beyond the workers' own (a Ray Data reader
next to the train workers starves when they hold every CPU, ray-facts §0 #3-#5), keeps the
per-epoch shuffle deterministic, and lets a resumed run skip the batches of an interrupted epoch
without decoding them. Only the annotation table (:class:`LabeledFrames`, flat numpy arrays)
travels to the workers, once, through the object store.

Conventions:

* Frames without objects are **skipped** (DFF's ``filter_roidb`` drops images without GT boxes):
  they give the RPN negatives only and no R-FCN foreground.
* ImageNet VID ``train`` keeps DFF's 15 frames per snippet (``VID_train_15frames``).
* Frames are resized by the DFF rule of the config's ``preprocess`` section
  (:func:`semidff.preprocess.resize_frames`, in uint8), boxes multiplied by the same scale (DFF
  multiplies the inclusive corners by ``im_scale``) and clipped to the resized frame.
* Horizontal flip, with the +1 pixel convention of inclusive corners: ``x1' = W - 1 - x2``,
  ``x2' = W - 1 - x1`` (W = resized width). Each sample is flipped with probability 1/2, drawn
  from (seed, epoch): DFF instead appends a flipped copy of every image, which doubles an epoch;
  over several epochs both see each image about as often flipped as not.
* The order of an epoch is a permutation drawn from (seed, epoch). Rank r of W takes positions
  r, r + W, ... of it, after the order is extended cyclically to a multiple of W so that every
  rank runs the same number of steps (DDP needs that): the shards are disjoint and together
  complete, except for the fewer than W samples that extension repeats.
* A frame that cannot be read (damaged file, missing image) is left out of its batch with a
  warning and replaced by the next readable sample of the shard, so one bad file does not stop a
  long run; ``TeacherBatch.failures`` lists what was left out.
"""
from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import math
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from semidff.data.records import LabeledDataset
from semidff.preprocess import normalize_frames, resize_frames

logger = logging.getLogger(__name__)


class FrameReadError(RuntimeError):
    """A training frame could not be decoded or read; the message names the file and the frame."""


# ---------------------------------------------------------------------------------------------
# The annotation table


@dataclass
class LabeledFrames:
    """The training frames of a dataset as flat arrays (what the workers receive).

    Per video v: ``video_ids[v]``, ``sources[v]`` (an encoded file, or for image frames the
    folder / the still image). Per sample s (an annotated frame with at least one object):
    ``sample_video[s]``, ``sample_frame[s]`` (0-based frame index), ``image_paths[s]`` (the image
    file for image-folder videos, None for encoded video), and its objects
    ``boxes[box_offsets[s]:box_offsets[s + 1]]`` ((B, 4) float32 inclusive pixels of the original
    frame) with ``labels`` ((B,) int64, 1..num_classes).
    """

    class_names: list[str]
    video_ids: list[str]
    sources: list[str]
    sample_video: np.ndarray
    sample_frame: np.ndarray
    image_paths: list[Optional[str]]
    box_offsets: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    skipped_empty: int = 0  # annotated frames left out because they show no object

    def __len__(self) -> int:
        return int(self.sample_video.shape[0])

    def objects(self, sample: int) -> tuple[np.ndarray, np.ndarray]:
        """(boxes (G, 4) float32 original pixels, labels (G,) int64) of one sample."""
        start, stop = self.box_offsets[sample], self.box_offsets[sample + 1]
        return self.boxes[start:stop], self.labels[start:stop]


def labeled_frames(dataset: LabeledDataset) -> LabeledFrames:
    """The annotated frames of ``dataset`` that show at least one object, video by video."""
    sample_video, sample_frame, image_paths, counts, boxes, labels = [], [], [], [], [], []
    skipped = 0
    for v, video in enumerate(dataset.videos):
        for frame in video.frames:
            if not frame.objects:
                skipped += 1
                continue
            sample_video.append(v)
            sample_frame.append(frame.frame_index)
            image_paths.append(video.frame_paths[frame.frame_index] if video.frame_paths else None)
            counts.append(len(frame.objects))
            boxes.append(frame.boxes())
            labels.append(frame.labels())
    return LabeledFrames(
        class_names=list(dataset.class_names),
        video_ids=[v.video_id for v in dataset.videos],
        sources=[v.source for v in dataset.videos],
        sample_video=np.asarray(sample_video, dtype=np.int64),
        sample_frame=np.asarray(sample_frame, dtype=np.int64),
        image_paths=image_paths,
        box_offsets=np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64),
        boxes=np.concatenate(boxes).astype(np.float32) if boxes else np.zeros((0, 4), np.float32),
        labels=np.concatenate(labels).astype(np.int64) if labels else np.zeros((0,), np.int64),
        skipped_empty=skipped,
    )


# ---------------------------------------------------------------------------------------------
# Order, sharding and flips


def epoch_order(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """(num_samples,) int64 permutation of the sample ids for one epoch; the same on every rank."""
    return np.random.default_rng([seed, epoch]).permutation(num_samples).astype(np.int64)


def epoch_flips(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """(num_samples,) bool: whether sample s is flipped in this epoch (probability 1/2 each)."""
    return np.random.default_rng([seed, epoch, 1]).random(num_samples) < 0.5


def shard_for_rank(order: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """The samples rank ``rank`` of ``world_size`` trains on this epoch: positions rank, rank + W, ...
    of ``order`` extended cyclically to a multiple of W, so every rank gets ceil(n / W) samples."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank}, world_size={world_size}: need world_size >= 1 and 0 <= rank < world_size")
    if len(order) == 0:
        return np.zeros((0,), dtype=np.int64)
    padded = np.resize(np.asarray(order, dtype=np.int64), math.ceil(len(order) / world_size) * world_size)
    return padded[rank::world_size]


def batches_per_epoch(num_samples: int, world_size: int, batch_size: int) -> int:
    """Optimiser steps in one epoch: every rank has ceil(n / W) samples, in batches of batch_size
    (the last one possibly smaller)."""
    return math.ceil(math.ceil(num_samples / world_size) / batch_size)


# ---------------------------------------------------------------------------------------------
# Geometry


def scale_boxes(boxes: np.ndarray, scale: float, height: int, width: int) -> np.ndarray:
    """(G, 4) inclusive boxes of the original frame → the resized (height, width) frame's pixels:
    corners multiplied by ``scale`` (as DFF), clipped to [0, width - 1] x [0, height - 1]."""
    scaled = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * np.float32(scale)
    scaled[:, 0::2] = scaled[:, 0::2].clip(0, width - 1)
    scaled[:, 1::2] = scaled[:, 1::2].clip(0, height - 1)
    return scaled


def flip_horizontal(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror an (H, W, 3) image and its (G, 4) inclusive boxes: x1' = W - 1 - x2, x2' = W - 1 - x1."""
    width = image.shape[1]
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    flipped = boxes.copy()
    flipped[:, 0] = width - 1 - boxes[:, 2]
    flipped[:, 2] = width - 1 - boxes[:, 0]
    return np.ascontiguousarray(image[:, ::-1]), flipped


# ---------------------------------------------------------------------------------------------
# Reading frames


def read_frames(
    frames: LabeledFrames, samples: Sequence[int], short_side: int, max_long_side: int
) -> list[tuple[np.ndarray, float]]:
    """Decode and resize the frames of ``samples``: one ((h, w, 3) uint8 RGB, scale) per sample.

    Encoded videos go through :func:`semidff.video.decode.decode_clips` (each video opened once,
    its frames read in ascending order), image frames through PIL; both are resized by
    :func:`semidff.preprocess.resize_frames`. Raises :class:`FrameReadError` for a frame that
    cannot be read.
    """
    from semidff.video.clip_plan import ClipSpec
    from semidff.video.decode import ClipFailure, decode_clips

    out: dict[int, tuple[np.ndarray, float]] = {}
    by_video: dict[int, list[int]] = collections.defaultdict(list)
    for sample in samples:
        if frames.image_paths[sample] is not None:
            image = _read_image(frames.image_paths[sample])
            resized, scale = resize_frames(image[None], short_side, max_long_side)
            out[sample] = (resized[0].numpy(), scale)
        else:
            by_video[int(frames.sample_video[sample])].append(sample)
    for video, video_samples in by_video.items():
        video_id, uri = frames.video_ids[video], frames.sources[video]
        indices = sorted({int(frames.sample_frame[s]) for s in video_samples})
        # A one-frame clip per wanted frame: the clip decoder's sorted, chunked reads do the rest.
        clips = [ClipSpec(f"{video_id}:{i}", video_id, uri, i, (i,), (0,)) for i in indices]
        decoded = {}
        for result in decode_clips(uri, clips, short_side=short_side, max_long_side=max_long_side):
            if isinstance(result, ClipFailure):
                raise FrameReadError(f"{uri}: frame {result.clip.key_index} of video {video_id}: {result.error}")
            decoded[result.clip.key_index] = (result.key_frame, result.scale)
        for s in video_samples:
            out[s] = decoded[int(frames.sample_frame[s])]
    return [out[s] for s in samples]


def _read_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file (local path or pyarrow URI)."""
    from PIL import Image

    try:
        if "://" in path and not path.startswith("file://"):
            import pyarrow.fs as pafs

            filesystem, inner = pafs.FileSystem.from_uri(path)
            with filesystem.open_input_file(inner) as handle, Image.open(handle) as image:
                return np.array(image.convert("RGB"))
        with Image.open(path.removeprefix("file://")) as image:
            return np.array(image.convert("RGB"))
    except Exception as exc:  # noqa: BLE001 - PIL and pyarrow raise many types for bad files
        raise FrameReadError(f"{path}: cannot read the image ({type(exc).__name__}: {exc})") from None


# ---------------------------------------------------------------------------------------------
# Batches


@dataclass
class TrainingImage:
    """One training sample, ready for the network.

    image: (h, w, 3) uint8 RGB, resized (and flipped when ``flipped``).
    boxes: (G, 4) float32 inclusive corners in ``image`` pixels; labels: (G,) int64 in 1..C.
    scale: resized / original pixels.
    """

    sample: int
    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    scale: float
    flipped: bool


@dataclass
class TeacherBatch:
    """A batch of training images sharing one input size (smaller ones zero-padded right/bottom).

    images: (N, 3, H, W) float32 RGB minus the pixel means (padding 0 = the mean pixel).
    gt_boxes / gt_labels: per image, (G_i, 4) float32 inclusive input pixels / (G_i,) int64.
    image_size: (H, W). samples: the sample ids, in order. failures: messages of samples that
    could not be read and were replaced.
    """

    images: torch.Tensor
    gt_boxes: list[torch.Tensor]
    gt_labels: list[torch.Tensor]
    image_size: tuple[int, int]
    samples: list[int]
    failures: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def to(self, device: torch.device | str) -> "TeacherBatch":
        return TeacherBatch(
            images=self.images.to(device, non_blocking=True),
            gt_boxes=[b.to(device) for b in self.gt_boxes],
            gt_labels=[l.to(device) for l in self.gt_labels],
            image_size=self.image_size,
            samples=list(self.samples),
            failures=list(self.failures),
        )


def training_images(
    frames: LabeledFrames, samples: Sequence[int], flips: np.ndarray | None, short_side: int, max_long_side: int
) -> list[TrainingImage]:
    """Read, resize and (per ``flips[sample]``) flip ``samples``, boxes scaled to match."""
    out = []
    for sample, (image, scale) in zip(samples, read_frames(frames, samples, short_side, max_long_side)):
        boxes, labels = frames.objects(sample)
        boxes = scale_boxes(boxes, scale, image.shape[0], image.shape[1])
        flipped = bool(flips[sample]) if flips is not None else False
        if flipped:
            image, boxes = flip_horizontal(image, boxes)
        out.append(TrainingImage(sample, image, boxes, labels.copy(), scale, flipped))
    return out


def collate(images: Sequence[TrainingImage], failures: Sequence[str] = ()) -> TeacherBatch:
    """Normalise (:func:`semidff.preprocess.normalize_frames`) and pad to the largest H and W."""
    if not images:
        raise ValueError("collate: no images")
    height = max(i.image.shape[0] for i in images)
    width = max(i.image.shape[1] for i in images)
    batch = torch.zeros((len(images), 3, height, width), dtype=torch.float32)
    for k, item in enumerate(images):
        h, w = item.image.shape[:2]
        batch[k, :, :h, :w] = normalize_frames(item.image[None])[0]
    return TeacherBatch(
        images=batch,
        gt_boxes=[torch.from_numpy(i.boxes) for i in images],
        gt_labels=[torch.from_numpy(i.labels) for i in images],
        image_size=(height, width),
        samples=[i.sample for i in images],
        failures=list(failures),
    )


def load_batch(
    frames: LabeledFrames,
    samples: Sequence[int],
    flips: np.ndarray | None,
    short_side: int,
    max_long_side: int,
    spares: Iterable[int] = (),
    max_failures: int = 16,
) -> TeacherBatch:
    """One batch of ``samples``; a sample that cannot be read is replaced by the next readable one
    of ``spares`` (the rest of the shard), at most ``max_failures`` times, then FrameReadError."""
    try:
        return collate(training_images(frames, samples, flips, short_side, max_long_side))
    except FrameReadError:
        pass  # find the bad sample(s): read one by one
    good: list[TrainingImage] = []
    failures: list[str] = []
    queue = collections.deque(samples)
    spare = iter(spares)
    while queue and len(good) < len(samples):
        sample = queue.popleft()
        try:
            good.extend(training_images(frames, [sample], flips, short_side, max_long_side))
        except FrameReadError as exc:
            logger.warning("left out of training: %s", exc)
            failures.append(str(exc))
            if len(failures) >= max_failures:
                raise FrameReadError(
                    f"{len(failures)} frames in a row could not be read, the last: {exc}; "
                    "check the dataset with `semidff data check --probe`"
                ) from None
            replacement = next(spare, None)
            if replacement is not None:
                queue.append(replacement)
    if not good:
        raise FrameReadError(f"no frame of the batch could be read: {failures[-1]}")
    return collate(good, failures)


def iterate_batches(
    frames: LabeledFrames,
    shard: np.ndarray,
    batch_size: int,
    short_side: int,
    max_long_side: int,
    flips: np.ndarray | None = None,
    start_batch: int = 0,
    prefetch: int = 2,
) -> Iterator[TeacherBatch]:
    """The batches of one rank's shard, from batch ``start_batch`` on (earlier ones are skipped
    without reading them), read ``prefetch`` batches ahead on a background thread."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    shard = np.asarray(shard, dtype=np.int64)
    starts = list(range(start_batch * batch_size, len(shard), batch_size))

    def load(start: int) -> TeacherBatch:
        samples = shard[start : start + batch_size].tolist()
        spares = (int(s) for s in itertools.chain(shard[start + batch_size :], shard[:start]))  # the rest of the shard, lazily
        return load_batch(frames, samples, flips, short_side, max_long_side, spares=spares)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="teacher-data") as pool:
        pending = collections.deque(pool.submit(load, s) for s in starts[: max(1, prefetch)])
        next_start = len(pending)
        try:
            while pending:
                batch = pending.popleft().result()
                if next_start < len(starts):
                    pending.append(pool.submit(load, starts[next_start]))
                    next_start += 1
                yield batch
        finally:
            for future in pending:
                future.cancel()
