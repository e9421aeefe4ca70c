"""What an evaluation leaves behind: Markdown tables, COCO-style prediction files, a plot, metrics.

    files = write_outputs(results, "out/eval", class_names, category_ids, header=["dataset: ..."])
    print(format_report(results))                       # the table that evaluation.md holds
    predictions = read_coco_predictions(files["predictions/flow/dt10"], category_ids)

Files in the output folder (``write_outputs``):

* ``evaluation.md``: a summary table (mAP, motion-bucket mAPs and frames/s per mode and ΔT), the
  recovery table (:func:`recoveries`: how much of the copy → frame gap each propagating mode
  closes at each ΔT, and what share of the oracle's recovery that is), a per-class AP table (one
  column per run) and the evaluated settings.
* ``results.json``: the same numbers as data (APs as fractions, NaN as null).
* ``predictions/<mode>_dt<ΔT>.json``: the scored frames' detections in the COCO results format,
  a list of ``{"image_id": "<video_id>/<frame_index>", "video_id", "frame_index", "category_id",
  "bbox": [x, y, w, h], "score"}``. ``bbox`` follows the custom dataset format's convention: the
  box covers the pixels x .. x + w - 1, so inclusive corners (x1, y1, x2, y2) are written as
  [x1, y1, x2 - x1 + 1, y2 - y1 + 1] (the +1 of the VID devkit), in original-frame pixels.
  ``category_id`` is the dataset's category id (a custom file's own ids; else the label 1..K).
* ``evaluation.png``: mAP against ΔT and frames/s against ΔT, one line per mode (``frame`` mode
  does not depend on ΔT and is drawn as a dashed horizontal line).
"""
from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from semidff.atomic import atomic_path
from semidff.evaluation.run import ModeResult
from semidff.evaluation.vid_map import MOTION_BUCKETS, FramePrediction

TABLE_FILE = "evaluation.md"
RESULTS_FILE = "results.json"
PLOT_FILE = "evaluation.png"
PREDICTIONS_DIR = "predictions"
BBOX_DECIMALS = 2  # pixels: 0.01 px is far below any IoU that matters
SCORE_DIGITS = 6  # significant digits of a score


@dataclass
class EvaluationReport:
    """The outcome of ``jobs.evaluate.run``: one :class:`ModeResult` per (mode, ΔT), the Markdown
    table, the written files (key → path: "table", "results", "plot", "config",
    "predictions/<mode>/dt<ΔT>") and the MLflow run that holds them."""

    results: list[ModeResult]
    output_dir: Path
    table: str
    files: dict[str, Path] = field(default_factory=dict)
    run_id: Optional[str] = None
    tracking_uri: Optional[str] = None

    def result(self, mode: str, key_interval: Optional[int] = None) -> ModeResult:
        """The result of ``mode`` at ``key_interval`` (``frame`` mode: any or no interval)."""
        for result in self.results:
            if result.mode == mode and (mode == "frame" or key_interval is None or result.key_interval == key_interval):
                return result
        available = ", ".join(r.run.name for r in self.results)
        raise KeyError(f"no result for mode={mode!r}, key_interval={key_interval}; have {available}")


# ---------------------------------------------------------------------------------------------
# Tables


def _percent(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value:.1f}"


def _rate(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.2f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def format_summary_table(results: Sequence[ModeResult]) -> str:
    """Markdown: one row per run with mAP and bucket mAPs (%) and frames/s."""
    header = ["mode", "ΔT", "mAP", *MOTION_BUCKETS, "detector frames/s", "end-to-end frames/s", "frames", "key frames"]
    lines = [_row(header), "|:--|--:" + "|--:" * (len(header) - 2) + "|"]
    for r in results:
        buckets = [_percent(r.result.bucket_map.get(b, math.nan)) for b in MOTION_BUCKETS]
        key_interval = "every frame" if r.mode == "frame" else str(r.key_interval)
        lines.append(_row([r.mode, key_interval, _percent(r.map), *buckets, _rate(r.fps), _rate(r.end_to_end_fps),
                           str(r.timing.frames), str(r.timing.key_frames)]))
    return "\n".join(lines)


@dataclass(frozen=True)
class Recovery:
    """How much of what copying key-frame detections loses a propagating mode wins back at one ΔT.

    gap: (mAP - copy) / (frame - copy): 0 = no better than copy, 1 = as good as the detector on
    every frame (the paper's semi-DFF: (58.68 - 54.12) / (59.31 - 54.12) = 0.88 at ΔT 10).
    of_oracle: (mAP - copy) / (oracle - copy), the same gain as a share of the gain of warping by
    the true motion; NaN without an oracle run at that ΔT. Both NaN when the denominator is 0.
    """

    mode: str
    key_interval: int
    map: float
    frame_map: float
    copy_map: float
    oracle_map: float = math.nan

    @staticmethod
    def _share(gain: float, whole: float) -> float:
        return gain / whole if whole != 0 and not math.isnan(whole) else math.nan

    @property
    def gap(self) -> float:
        return self._share(self.map - self.copy_map, self.frame_map - self.copy_map)

    @property
    def of_oracle(self) -> float:
        return self._share(self.map - self.copy_map, self.oracle_map - self.copy_map)

    def record(self) -> dict[str, Any]:
        return {"mode": self.mode, "key_interval": self.key_interval, "map": _finite_or_none(self.map),
                "frame_map": _finite_or_none(self.frame_map), "copy_map": _finite_or_none(self.copy_map),
                "oracle_map": _finite_or_none(self.oracle_map), "recovery": _finite_or_none(self.gap),
                "recovery_of_oracle": _finite_or_none(self.of_oracle)}


def recoveries(results: Sequence[ModeResult]) -> list[Recovery]:
    """One :class:`Recovery` per run of a propagating mode (oracle, flow, ...) at a ΔT that also has a
    ``copy`` run, when a ``frame`` run exists (``frame`` does not depend on ΔT); in run order."""
    frame = next((r for r in results if r.mode == "frame"), None)
    if frame is None:
        return []
    copy = {r.key_interval: r.map for r in results if r.mode == "copy"}
    oracle = {r.key_interval: r.map for r in results if r.mode == "oracle"}
    return [Recovery(r.mode, r.key_interval, r.map, frame.map, copy[r.key_interval], oracle.get(r.key_interval, math.nan))
            for r in results if r.mode not in ("frame", "copy") and r.key_interval in copy]


def format_recovery_table(results: Sequence[ModeResult]) -> str:
    """Markdown: per propagating run, its mAP, copy's and frame's (and oracle's) at that ΔT (%), the
    share of the copy → frame gap it recovers and the share of the oracle's recovery ("" without rows)."""
    rows = recoveries(results)
    if not rows:
        return ""
    header = ["mode", "ΔT", "mAP", "copy", "frame", "oracle", "recovery of the copy → frame gap", "share of oracle's recovery"]
    lines = [_row(header), "|:--|--:" + "|--:" * (len(header) - 2) + "|"]
    for r in rows:
        lines.append(_row([r.mode, str(r.key_interval), _percent(r.map), _percent(r.copy_map), _percent(r.frame_map),
                           _percent(r.oracle_map), _percent(r.gap), _percent(r.of_oracle)]))
    return "\n".join(lines)


def format_per_class_table(results: Sequence[ModeResult]) -> str:
    """Markdown: AP (%) of every class (rows) in every run (columns), with the class's GT count."""
    if not results:
        return ""
    names = results[0].result.class_names
    header = ["class", "GT", *(r.run.name for r in results)]
    lines = [_row(header), "|:--" + "|--:" * (len(header) - 1) + "|"]
    for name in names:
        lines.append(_row([name, str(results[0].result.num_gt[name]), *(_percent(r.result.per_class_ap[name]) for r in results)]))
    lines.append(_row(["**mAP**", str(sum(results[0].result.num_gt.values())), *(f"**{_percent(r.map)}**" for r in results)]))
    return "\n".join(lines)


def format_report(results: Sequence[ModeResult], header: Sequence[str] = ()) -> str:
    """The whole Markdown report: settings lines, the summary table and the per-class table."""
    relaxed = results[0].result.relaxed_small_objects if results else True
    protocol = ("ImageNet VID mAP@0.5 with the per-object threshold relaxation for small objects"
                if relaxed else "mAP at plain IoU 0.5 (no small-object relaxation)")
    lines = ["# Evaluation", "", *(f"- {line}" for line in header), f"- protocol: {protocol}; APs in %",
             "- frames/s: the detector's networks and post-processing; end-to-end adds decoding and resizing",
             "", "## Summary", "", format_summary_table(results), ""]
    recovery = format_recovery_table(results)
    if recovery:
        lines += ["## Recovery", "",
                  "Recovery = (mAP - copy) / (frame - copy) at the same ΔT; share of oracle's = (mAP - copy) / "
                  "(oracle - copy), where oracle warps the key frame's features by the true motion (all in %).",
                  "", recovery, ""]
    lines += ["## AP per class", "", format_per_class_table(results), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Numbers as data and as metrics


def _finite_or_none(value: float) -> Optional[float]:
    return None if value is None or math.isnan(value) else float(value)


def result_record(result: ModeResult) -> dict[str, Any]:
    """One run as plain JSON data (APs as fractions, NaN as None, seconds)."""
    r, t = result.result, result.timing
    return {
        "mode": result.mode,
        "key_interval": result.key_interval,
        "map": _finite_or_none(r.map),
        "bucket_map": {b: _finite_or_none(v) for b, v in r.bucket_map.items()},
        "per_class_ap": {n: _finite_or_none(v) for n, v in r.per_class_ap.items()},
        "bucket_per_class_ap": {b: {n: _finite_or_none(v) for n, v in aps.items()} for b, aps in r.bucket_per_class_ap.items()},
        "num_gt": dict(r.num_gt),
        "num_detections": dict(r.num_detections),
        "annotated_frames": r.num_frames,
        "relaxed_small_objects": r.relaxed_small_objects,
        "fps": _finite_or_none(result.fps),
        "end_to_end_fps": _finite_or_none(result.end_to_end_fps),
        "frames": t.frames,
        "key_frames": t.key_frames,
        "compute_seconds": t.compute_seconds,
        "decode_seconds": t.decode_seconds,
        "preprocess_seconds": t.preprocess_seconds,
    }


_METRIC_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. :]")


def metric_safe(name: str) -> str:
    """A class name as one part of an MLflow metric name: letters, digits, ``_ - . :`` and spaces
    stay, anything else (``/`` too, which would read as another level) becomes ``_``."""
    return _METRIC_UNSAFE.sub("_", name)


def metrics_for(results: Sequence[ModeResult]) -> dict[str, float]:
    """MLflow metrics of every run, e.g. ``mAP/flow/dt10``, ``mAP_fast/flow/dt10``,
    ``AP/flow/dt10/<class>``, ``fps/flow/dt10``, ``fps_end_to_end/flow/dt10``; APs as fractions.
    Undefined values (an AP without ground truth) are left out."""
    metrics: dict[str, float] = {}
    for result in results:
        run = result.run.name
        metrics[f"mAP/{run}"] = result.map
        for bucket, value in result.result.bucket_map.items():
            metrics[f"mAP_{bucket}/{run}"] = value
        for name, value in result.result.per_class_ap.items():
            metrics[f"AP/{run}/{metric_safe(name)}"] = value
        metrics[f"fps/{run}"] = result.fps
        metrics[f"fps_end_to_end/{run}"] = result.end_to_end_fps
    for recovery in recoveries(results):
        run = f"{recovery.mode}/dt{recovery.key_interval}"
        metrics[f"recovery/{run}"] = recovery.gap
        metrics[f"recovery_of_oracle/{run}"] = recovery.of_oracle
    return {k: float(v) for k, v in metrics.items() if not math.isnan(v)}


# ---------------------------------------------------------------------------------------------
# COCO-style prediction files


def predictions_path(output_dir: str | Path, result: ModeResult) -> Path:
    """``<output_dir>/predictions/<mode>_dt<ΔT>.json``."""
    return Path(output_dir) / PREDICTIONS_DIR / f"{result.mode}_dt{result.key_interval}.json"


def write_coco_predictions(path: str | Path, predictions: Sequence[FramePrediction], category_ids: Sequence[int]) -> Path:
    """Write detections as a COCO results list (module docstring), one detection per line,
    atomically (a temporary file, then a rename). category_ids[label - 1] is label's id."""
    path = Path(path)
    first = True
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write("[")
            for prediction in predictions:
                video_id, _, index = str(prediction.frame_id).rpartition("/")
                boxes = prediction.boxes
                widths = boxes[:, 2:] - boxes[:, :2] + 1.0  # inclusive corners → pixel counts (+1)
                xywh = np.round(np.concatenate([boxes[:, :2], widths], axis=1), BBOX_DECIMALS)
                for box, score, label in zip(xywh.tolist(), prediction.scores.tolist(), prediction.labels.tolist()):
                    record = {"image_id": str(prediction.frame_id), "video_id": video_id, "frame_index": int(index),
                              "category_id": int(category_ids[label - 1]), "bbox": box,
                              "score": float(f"{score:.{SCORE_DIGITS}g}")}
                    handle.write(("\n" if first else ",\n") + json.dumps(record))
                    first = False
            handle.write("\n]\n")
    return path


def read_coco_predictions(path: str | Path, category_ids: Sequence[int]) -> list[FramePrediction]:
    """Read a file of :func:`write_coco_predictions` (or any COCO results list whose image_id is
    "<video_id>/<frame_index>") back into one FramePrediction per frame with detections, in file
    order; boxes back to inclusive corners (x2 = x + w - 1)."""
    label_of = {int(c): label for label, c in enumerate(category_ids, start=1)}
    by_frame: dict[str, list[dict]] = defaultdict(list)
    records = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of detections (COCO results format)")
    for position, record in enumerate(records):
        if record.get("category_id") not in label_of:
            raise ValueError(f"{path}: detection {position} has category_id {record.get('category_id')!r}, "
                             f"not one of {sorted(label_of)}")
        by_frame[str(record["image_id"])].append(record)
    predictions = []
    for image_id, items in by_frame.items():
        xywh = np.array([r["bbox"] for r in items], dtype=np.float64).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:] - 1.0], axis=1)
        predictions.append(FramePrediction(image_id, boxes, [r["score"] for r in items],
                                           [label_of[r["category_id"]] for r in items]))
    return predictions


# ---------------------------------------------------------------------------------------------
# Plot


@dataclass(frozen=True)
class Curve:
    """One line of the mAP / frames/s against ΔT plot.

    points: (ΔT, mAP as a fraction, detector frames/s), any order. constant: the same detector at
    every ΔT (``frame`` mode, one point), drawn as a dashed level across the plotted ΔT range.
    """

    label: str
    points: tuple[tuple[int, float, float], ...]
    constant: bool = False


def curves_for(results: Sequence[ModeResult]) -> list[Curve]:
    """One curve per mode of ``results`` (``frame`` constant), in the order the modes appear."""
    return [
        Curve(mode, tuple((r.key_interval, r.map, r.fps) for r in results if r.mode == mode), constant=mode == "frame")
        for mode in dict.fromkeys(r.mode for r in results)
    ]


_STYLES = {"frame": ("tab:gray", "--"), "copy": ("tab:orange", "-"), "flow": ("tab:blue", "-"), "oracle": ("tab:green", ":")}


def plot_curves(curves: Sequence[Curve], path: str | Path) -> Path:
    """A PNG with mAP (%) against ΔT (left) and detector frames/s against ΔT (right), one line per
    curve (``frame``, ``copy``, ``flow`` and ``oracle`` keep fixed colours; other labels take the next ones)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(figure)  # Agg: no display and no global pyplot state
    map_axes, fps_axes = figure.subplots(1, 2)
    intervals = sorted({point[0] for curve in curves for point in curve.points})
    span = (min(intervals), max(intervals))
    for curve in curves:
        points = sorted(curve.points)
        color, line = _STYLES.get(curve.label, (None, "-"))
        for axes, values in ((map_axes, [100 * p[1] for p in points]), (fps_axes, [p[2] for p in points])):
            if curve.constant and span[0] < span[1]:
                axes.plot(span, [values[0]] * 2, "--", color=color, label=f"{curve.label} (every frame)")
            else:
                axes.plot([p[0] for p in points], values, line, marker="o", color=color, label=curve.label)
    rates = [p[2] for curve in curves for p in curve.points if p[2] > 0]
    if rates and max(rates) > 10 * min(rates):  # copy mode's rate would flatten every other line
        fps_axes.set_yscale("log")
    for axes, ylabel, title in ((map_axes, "mAP@0.5 (%)", "accuracy"), (fps_axes, "frames/s (detector)", "speed")):
        axes.set_xlabel("key-frame interval ΔT (frames)")
        axes.set_ylabel(ylabel)
        axes.set_title(title)
        axes.set_xticks(intervals)
        axes.grid(True, alpha=0.3)
        axes.legend()
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def plot_map_and_fps(results: Sequence[ModeResult], path: str | Path) -> Path:
    """A PNG with mAP (%) against ΔT and detector frames/s against ΔT, one line per mode."""
    return plot_curves(curves_for(results), path)


# ---------------------------------------------------------------------------------------------
# Everything


def write_outputs(
    results: Sequence[ModeResult],
    output_dir: str | Path,
    category_ids: Sequence[int],
    header: Sequence[str] = (),
) -> dict[str, Path]:
    """Write evaluation.md, results.json, one predictions file per run and evaluation.png into
    ``output_dir``; returns key → path ("table", "results", "plot", "predictions/<mode>/dt<ΔT>")."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for result in results:
        files[f"predictions/{result.run.name}"] = write_coco_predictions(
            predictions_path(output_dir, result), result.predictions, category_ids
        )
    files["table"] = output_dir / TABLE_FILE
    files["table"].write_text(format_report(results, header), encoding="utf-8")
    files["results"] = output_dir / RESULTS_FILE
    files["results"].write_text(json.dumps({"runs": [result_record(r) for r in results],
                                            "recovery": [r.record() for r in recoveries(results)]}, indent=2), encoding="utf-8")
    files["plot"] = plot_map_and_fps(results, output_dir / PLOT_FILE)
    return files
