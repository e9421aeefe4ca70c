"""The demo's report: the paper's Table 1 and Table 3g in miniature, its qualitative claims checked,
a plot of mAP and frames/s against ΔT, and annotated example frames.

    methods = load_methods({"teacher": eval_dir, "two_step": flow_eval_dir, ...}, LABELS)
    claims = check_claims(methods, key_interval=10)
    written = write_report(report_dir, methods, key_interval=10, frames=[...], steps=[...], ...)

Inputs are the ``results.json`` files ``semidff evaluate`` writes (:mod:`semidff.evaluation.report`):
``frame`` and ``copy`` of the teacher, ``flow`` of each stage-2 variant. mAPs are fractions in
[0, 1] here and percent in the report; frames/s are the detector's (networks and post-processing,
as DFF reports speed).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from semidff.evaluation.report import RESULTS_FILE, Curve, plot_curves

REPORT_FILE = "report.md"
REPORT_JSON = "report.json"
PLOT_FILE = "map_fps_vs_interval.png"
SPEED_NOISE = 0.05
"""Relative frames/s differences below this are timing noise when checking 'speed rises with ΔT'."""


@dataclass(frozen=True)
class Point:
    """One evaluated (method, ΔT): mAP@0.5 as a fraction and the detector's frames/s."""

    key_interval: int
    map: float
    fps: float


@dataclass
class Method:
    """One row of the paper's Table 1: ``key`` is frame | copy | a stage-2 variant (regression,
    semantic, two_step); ``points`` its result per ΔT (``frame`` has one, at ΔT = 1)."""

    key: str
    label: str
    points: dict[int, Point]

    @property
    def is_baseline(self) -> bool:
        return self.key in ("frame", "copy")

    def at(self, key_interval: int) -> Optional[Point]:
        """The result at ``key_interval`` (``frame`` mode: the same at every ΔT)."""
        if self.key == "frame":
            return next(iter(self.points.values()), None)
        return self.points.get(key_interval)


def load_methods(evaluations: dict[str, Path], labels: dict[str, str]) -> list[Method]:
    """Methods from evaluation folders: ``evaluations["teacher"]`` holds frame and copy runs, every
    other key a stage-2 variant's flow runs. Raises FileNotFoundError / ValueError naming a folder
    without a usable results.json."""
    methods: list[Method] = []
    for name, folder in evaluations.items():
        path = Path(folder) / RESULTS_FILE
        runs = json.loads(path.read_text(encoding="utf-8"))["runs"]
        modes = ("frame", "copy") if name == "teacher" else ("flow",)
        for mode in modes:
            points = {int(r["key_interval"]): Point(int(r["key_interval"]), _number(r["map"]), _number(r["fps"]))
                      for r in runs if r["mode"] == mode}
            if not points:
                raise ValueError(f"{path}: no {mode} runs (modes there: {sorted({r['mode'] for r in runs})})")
            key = mode if name == "teacher" else name
            methods.append(Method(key, labels.get(key, key), points))
    return methods


def _number(value: Optional[float]) -> float:
    return float("nan") if value is None else float(value)


# ---------------------------------------------------------------------------------------------
# The paper's qualitative claims


@dataclass
class Claim:
    """One of the paper's qualitative claims and whether this run reproduced it (None: not
    checked, a method it needs was not run)."""

    statement: str
    reproduced: Optional[bool]
    evidence: str

    def verdict(self) -> str:
        return {True: "reproduced", False: "NOT reproduced", None: "not checked"}[self.reproduced]

    def line(self) -> str:
        return f"claim: {self.statement}: {self.verdict()} ({self.evidence})"


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def check_claims(methods: Sequence[Method], key_interval: int) -> list[Claim]:
    """The paper's claims (§4.1, Table 1 and 3g) on this run: at ``key_interval``, frame ≥
    two-step ≥ regression-only > copy; and for the two-step model (else the last variant) mAP falls
    and speed rises as ΔT grows (mAP never higher at a larger ΔT and lower at the largest than
    at the smallest; frames/s never lower at a larger ΔT by more than :data:`SPEED_NOISE` and
    higher at the largest than at the smallest)."""
    by_key = {m.key: m for m in methods}
    claims: list[Claim] = []
    order = [("frame", "two_step", ">="), ("two_step", "regression", ">="), ("regression", "copy", ">")]
    for first, second, relation in order:
        a, b = by_key.get(first), by_key.get(second)
        statement = f"{_label(first, by_key)} {'≥' if relation == '>=' else '>'} {_label(second, by_key)} at ΔT = {key_interval}"
        pa, pb = (a.at(key_interval) if a else None), (b.at(key_interval) if b else None)
        if pa is None or pb is None:
            missing = first if pa is None else second
            claims.append(Claim(statement, None, f"{missing} was not evaluated at ΔT = {key_interval}"))
            continue
        holds = pa.map >= pb.map if relation == ">=" else pa.map > pb.map
        claims.append(Claim(statement, bool(holds), f"mAP {_pct(pa.map)} vs {_pct(pb.map)}"))

    variants = [m for m in methods if not m.is_baseline]
    model = by_key.get("two_step") or (variants[-1] if variants else None)
    if model is None or len(model.points) < 2:
        for what in ("mAP falls", "speed rises"):
            claims.append(Claim(f"{what} as ΔT grows", None, "no stage-2 model evaluated at two or more ΔT"))
        return claims
    points = [model.points[k] for k in sorted(model.points)]
    intervals = ", ".join(str(p.key_interval) for p in points)
    maps = [p.map for p in points]
    falls = all(later <= earlier for earlier, later in zip(maps, maps[1:])) and maps[-1] < maps[0]
    claims.append(Claim(f"{model.label}: mAP falls as ΔT grows", falls,
                        f"mAP {' → '.join(_pct(v) for v in maps)} at ΔT {intervals}"))
    rates = [p.fps for p in points]
    rises = all(later >= earlier * (1 - SPEED_NOISE) for earlier, later in zip(rates, rates[1:])) and rates[-1] > rates[0]
    claims.append(Claim(f"{model.label}: speed rises as ΔT grows", rises,
                        f"frames/s {' → '.join(f'{v:.1f}' for v in rates)} at ΔT {intervals}"))
    return claims


def _label(key: str, by_key: dict[str, Method]) -> str:
    return by_key[key].label if key in by_key else key


# ---------------------------------------------------------------------------------------------
# Tables


def table_1(methods: Sequence[Method], key_interval: int) -> str:
    """Markdown in the shape of the paper's Table 1: approach, mAP (%), runtime (frames/s), at
    ``key_interval`` (``frame`` runs the teacher on every frame)."""
    lines = ["| Approach | mAP (%) | runtime (fps) | trained on |", "|---|---|---|---|"]
    for method in methods:
        point = method.at(key_interval)
        if point is None:
            continue
        data = "labeled frames" if method.is_baseline else "labeled frames + unlabeled videos"
        lines.append(f"| {method.label} | {_pct(point.map)} | {point.fps:.1f} | {data} |")
    return "\n".join(lines)


def table_3g(methods: Sequence[Method]) -> str:
    """Markdown in the shape of the paper's Table 3g, for every method: one row per ΔT, mAP (%)
    and frames/s per method (``frame`` repeated: it does not depend on ΔT)."""
    intervals = sorted({k for m in methods if m.key != "frame" for k in m.points})
    header = "| Interval | " + " | ".join(f"{m.label} mAP (%) | fps" for m in methods) + " |"
    lines = [header, "|---|" + "---|---|" * len(methods)]
    for k in intervals:
        cells = []
        for method in methods:
            point = method.at(k)
            cells.append(f"{_pct(point.map)} | {point.fps:.1f}" if point else "– | –")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Example frames


def example_indices(key_interval: int, count: int) -> list[int]:
    """Frame indices from the first key frame (0) to the farthest propagated frame (ΔT - 1),
    ``count`` of them spread evenly (fewer when ΔT has fewer frames)."""
    if count == 1 or key_interval == 1:
        return [0]
    return sorted({round(i * (key_interval - 1) / (count - 1)) for i in range(count)})


def draw_example_frames(
    dataset_path: str | Path,
    teacher_checkpoint: str,
    flow_checkpoint: Optional[str],
    output_dir: str | Path,
    key_interval: int,
    count: int,
    device: str = "auto",
) -> list[Path]:
    """Annotated frames of the dataset's first video in frame, copy and (with a flow checkpoint)
    flow mode at ``key_interval``: one PNG per (mode, frame) and ``sheet.png`` (a row per mode, a
    column per frame; border and banner green on key frames, orange on propagated ones). Returns the sheet
    first, then the single frames."""
    from PIL import Image

    from semidff.data.custom_format import load_custom_dataset
    from semidff.evaluation.run import video_frames
    from semidff.inference import annotated_frames, load_detector
    from semidff.models.video_detector import VideoTiming

    video = load_custom_dataset(dataset_path).videos[0]
    indices = example_indices(min(key_interval, video.num_frames), count)
    frames = list(video_frames(video, indices[-1] + 1))
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    modes = [("frame", None), ("copy", None)] + ([("flow", flow_checkpoint)] if flow_checkpoint else [])
    rows: list[list[np.ndarray]] = []
    paths: list[Path] = []
    for mode, flow in modes:
        loaded = load_detector(teacher_checkpoint, flow, mode=mode, key_interval=key_interval, device=device)
        drawn = [image for _, image in annotated_frames(loaded, frames, VideoTiming())]
        rows.append([drawn[i] for i in indices])
        for i in indices:
            paths.append(output / f"{mode}_frame{i:03d}.png")
            Image.fromarray(drawn[i]).save(paths[-1])
    sheet = np.concatenate([np.concatenate(row, axis=1) for row in rows], axis=0)
    sheet_path = output / "sheet.png"
    Image.fromarray(sheet).save(sheet_path)
    return [sheet_path, *paths]


# ---------------------------------------------------------------------------------------------
# The report


def _step_time(step: dict[str, Any]) -> str:
    if step["reused"]:
        return f"reused (built in {step.get('built_seconds', 0.0) / 60:.1f} min)"
    return f"{step['seconds'] / 60:.1f} min"


@dataclass
class WrittenReport:
    """The report's files and the checked claims."""

    markdown: Path
    json: Path
    plot: Path
    frames: list[Path]
    claims: list[Claim]


def write_report(
    report_dir: str | Path,
    methods: Sequence[Method],
    key_interval: int,
    frames: Sequence[Path],
    steps: Sequence[dict[str, Any]],
    machine: str,
    wall_s: float,
    tracking_uri: str,
    command: str,
    config_yaml: str,
) -> WrittenReport:
    """Write report.md, report.json and the plot into ``report_dir``; see the module docstring.
    steps: per step {name, folder, reused, seconds, built_seconds}."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    claims = check_claims(methods, key_interval)
    curves = [Curve(m.label, tuple((p.key_interval, p.map, p.fps) for p in m.points.values()), constant=m.key == "frame")
              for m in methods]
    plot = plot_curves(curves, report_dir / PLOT_FILE)
    reproduced = sum(c.reproduced is True for c in claims)
    checked = sum(c.reproduced is not None for c in claims)
    step_lines = [f"| {step['name']} | {_step_time(step)} |" for step in steps]
    relative = lambda path: Path(path).relative_to(report_dir).as_posix() if Path(path).is_relative_to(report_dir) else str(path)  # noqa: E731
    lines = [
        "# semidff demo: Semi-Supervised DFF in miniature",
        "",
        f"Machine: {machine}. Wall time of this run: {wall_s / 60:.1f} min. Command: `{command}`.",
        f"MLflow: `{tracking_uri}` (every stage's run, inputs by digest; `semidff lineage` follows them).",
        "",
        f"## Table 1 in miniature (ΔT = {key_interval})",
        "",
        "A tiny R-FCN teacher trained on labeled synthetic frames; the flow network learned from",
        "unlabeled synthetic videos by distilling it (the paper's R-FCN flow row, FlowNet pre-trained",
        "on Flying Chairs, has no counterpart: nothing is downloaded).",
        "",
        table_1(methods, key_interval),
        "",
        "## Table 3g in miniature: accuracy and speed against the key-frame interval",
        "",
        table_3g(methods),
        "",
        f"![mAP and frames/s against ΔT]({relative(plot)})",
        "",
        f"## The paper's qualitative claims: {reproduced} of {checked} reproduced",
        "",
        "| claim | this run | evidence |",
        "|---|---|---|",
        *[f"| {c.statement} | {c.verdict()} | {c.evidence} |" for c in claims],
        "",
        "## Example frames",
        "",
        f"Rows: frame, copy, flow mode at ΔT = {key_interval}; columns: the key frame, then propagated frames",
        "(green border: the teacher ran on this frame; orange: detections from propagated features or copied).",
        "",
        *([f"![example frames]({relative(frames[0])})"] if frames else ["(none drawn)"]),
        "",
        "## Steps",
        "",
        "| step | time |",
        "|---|---|",
        *step_lines,
        "",
        "## Config",
        "",
        "```yaml",
        config_yaml.rstrip(),
        "```",
        "",
    ]
    markdown = report_dir / REPORT_FILE
    markdown.write_text("\n".join(lines), encoding="utf-8")
    record = {
        "key_interval": key_interval,
        "methods": [{"key": m.key, "label": m.label, "points": [asdict(p) for p in m.points.values()]} for m in methods],
        "claims": [asdict(c) for c in claims],
        "steps": list(steps),
        "machine": machine,
        "wall_s": wall_s,
        "tracking_uri": tracking_uri,
    }
    json_path = report_dir / REPORT_JSON
    json_path.write_text(json.dumps(record, indent=2), encoding="utf-8")
    return WrittenReport(markdown, json_path, plot, list(frames), claims)
