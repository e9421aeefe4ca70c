"""What a sweep produced, as tables and plots (no Ray): one :class:`TrialRecord` per Tune trial.

    write_trial_tables(trials, keys, metric, "runs/sweep")   # trials.md + trials.csv
    plot_sweep(trials, space, metric, mode, "runs/sweep/plots")

``jobs/tune.py`` builds the records from Tune's results and logs these files to the sweep's
MLflow run.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from semidff.atomic import write_text_atomically
from semidff.sweep_space import SearchSpace

FINISHED = "finished"
STOPPED_EARLY = "stopped early"
ERROR = "error"
NOT_RUN = "not run"
KEY_INTERVAL = "video.key_interval"
BEST_FILE = "best.json"  # in the sweep folder: the best trial's values, metric, run and checkpoints
PLOTS_DIR = "plots"


@dataclass
class TrialRecord:
    """One trial of a sweep.

    values: the swept {dotted key: value}; status: finished | stopped early | error | not run;
    epochs: epochs completed (the scheduler's time unit); max_epochs: the trial's full budget;
    metric: the last reported value of the sweep's metric (None: never reported);
    history: [(epoch, metric value)] in epoch order (the learning curve);
    run_id: its MLflow child run; checkpoint_path: its last Ray Train checkpoint;
    flow_checkpoint: its flow.pt (trials that finished); error: the message of a failed trial.
    """

    trial_id: str
    values: dict[str, Any]
    status: str
    epochs: int
    max_epochs: int
    metric: Optional[float]
    history: list[tuple[int, float]] = field(default_factory=list)
    run_id: Optional[str] = None
    output_dir: Optional[str] = None
    checkpoint_path: Optional[str] = None
    flow_checkpoint: Optional[str] = None
    error: str = ""

    def best_metric(self, mode: str) -> Optional[float]:
        values = [v for _, v in self.history if _finite(v)]
        if not values:
            return None
        return min(values) if mode == "min" else max(values)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def pick_best(trials: Sequence[TrialRecord], mode: str) -> Optional[TrialRecord]:
    """The trial with the best last metric among those that finished their whole budget (their
    metrics compare like with like; an early-stopped trial's value is from an earlier epoch); among
    all trials with a metric when none finished. None when no trial reported the metric."""
    def rank(candidates: list[TrialRecord]) -> Optional[TrialRecord]:
        scored = [t for t in candidates if _finite(t.metric)]
        if not scored:
            return None
        return (min if mode == "min" else max)(scored, key=lambda t: t.metric)

    return rank([t for t in trials if t.status == FINISHED]) or rank(list(trials))


def compute_summary(trials: Sequence[TrialRecord]) -> dict[str, float]:
    """Epochs run against the full budget (every trial to its max): the share early stopping saved."""
    run = sum(t.epochs for t in trials)
    budget = sum(t.max_epochs for t in trials)
    return {
        "trials": float(len(trials)),
        "trials_finished": float(sum(t.status == FINISHED for t in trials)),
        "trials_stopped_early": float(sum(t.status == STOPPED_EARLY for t in trials)),
        "trials_failed": float(sum(t.status == ERROR for t in trials)),
        "epochs_run": float(run),
        "epochs_full_budget": float(budget),
        "compute_saved": 1.0 - run / budget if budget else 0.0,
    }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def trial_rows(trials: Sequence[TrialRecord], keys: Sequence[str], metric: str) -> tuple[list[str], list[list[Any]]]:
    """(header, rows) of the trial table, one row per trial in trial-id order."""
    header = ["trial", *keys, "status", "epochs", metric, "run_id", "flow_checkpoint"]
    rows = [
        [t.trial_id, *(t.values.get(k) for k in keys), t.status, f"{t.epochs}/{t.max_epochs}", t.metric, t.run_id, t.flow_checkpoint]
        for t in sorted(trials, key=lambda t: t.trial_id)
    ]
    return header, rows


def format_trials_markdown(trials: Sequence[TrialRecord], keys: Sequence[str], metric: str, best: Optional[TrialRecord] = None) -> str:
    """A Markdown table of every trial, the best one marked."""
    header, rows = trial_rows(trials, keys, metric)
    header = header[:-1]  # paths are in the CSV; the Markdown table stays readable
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [_cell(value) for value in row[:-1]]
        if best is not None and row[0] == best.trial_id:
            cells[0] = f"**{cells[0]}** (best)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_trial_tables(trials: Sequence[TrialRecord], keys: Sequence[str], metric: str, output_dir: str | Path,
                       best: Optional[TrialRecord] = None) -> tuple[Path, Path]:
    """Write ``trials.md`` and ``trials.csv`` into ``output_dir``; returns both paths."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    markdown = output / "trials.md"
    markdown.write_text(format_trials_markdown(trials, keys, metric, best))
    header, rows = trial_rows(trials, keys, metric)
    table = output / "trials.csv"
    with table.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        for row in rows:
            writer.writerow(["" if v is None else (json.dumps(v) if isinstance(v, (list, dict)) else v) for v in row])
    return markdown, table


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)  # Agg: no display and no global pyplot state
    return figure


def _scatter(axes: Any, trials: Sequence[TrialRecord], key: str, default: Any, metric: str, best: Optional[TrialRecord]) -> None:
    """Each trial's last metric against its value of ``key``; early-stopped trials hollow."""
    for status, style in ((FINISHED, dict(marker="o", color="tab:blue")), (STOPPED_EARLY, dict(marker="o", facecolors="none", edgecolors="tab:orange"))):
        points = [(t.values.get(key, default), t.metric) for t in trials if t.status == status and _finite(t.metric)]
        if points:
            axes.scatter([p[0] for p in points], [p[1] for p in points], label=status, **style)
    if best is not None and _finite(best.metric):
        axes.scatter([best.values.get(key, default)], [best.metric], marker="*", s=200, color="tab:green", label="best", zorder=3)
    axes.set_xlabel(key)
    axes.set_ylabel(f"{metric} (last epoch run)")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)


def plot_sweep(trials: Sequence[TrialRecord], space: SearchSpace, default_values: dict[str, Any], metric: str, mode: str,
               output_dir: str | Path) -> list[Path]:
    """PNG plots: the metric against the key interval, against each other swept number, and the
    learning curve (metric per epoch) of every trial. default_values: the base config's value of
    each plotted key (the key interval when it is not swept). Returns the written paths."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    best = pick_best(trials, mode)
    paths = []

    figure = _new_figure(6, 4)
    axes = figure.subplots()
    _scatter(axes, trials, KEY_INTERVAL, default_values.get(KEY_INTERVAL), metric, best)
    axes.set_xticks(sorted({t.values.get(KEY_INTERVAL, default_values.get(KEY_INTERVAL)) for t in trials} - {None}))
    axes.set_xlabel("key-frame interval ΔT (video.key_interval)")
    axes.set_title(f"{metric} vs key interval")
    figure.tight_layout()
    paths.append(output / "metric_vs_key_interval.png")
    figure.savefig(paths[-1], format="png")

    numeric = [d for d in space.dimensions if d.key != KEY_INTERVAL
               and all(isinstance(t.values.get(d.key), (int, float)) and not isinstance(t.values.get(d.key), bool) for t in trials)]
    if numeric:
        figure = _new_figure(5 * len(numeric), 4)
        panels = figure.subplots(1, len(numeric), squeeze=False)[0]
        for axes, dimension in zip(panels, numeric):
            _scatter(axes, trials, dimension.key, default_values.get(dimension.key), metric, best)
            shown = [t.values[dimension.key] for t in trials]
            if dimension.kind in ("loguniform", "quasi_loguniform") or (min(shown) > 0 and max(shown) >= 100 * min(shown)):
                axes.set_xscale("log")
            axes.set_title(f"{metric} vs {dimension.key}", fontsize=9)
        figure.tight_layout()
        paths.append(output / "metric_vs_swept_values.png")
        figure.savefig(paths[-1], format="png")

    figure = _new_figure(7, 4.5)
    axes = figure.subplots()
    for trial in sorted(trials, key=lambda t: t.trial_id):
        if not trial.history:
            continue
        shown = ", ".join(f"{k.rsplit('.', 1)[-1]}={_cell(v)}" for k, v in trial.values.items())
        line_style = "-" if trial.status == FINISHED else "--"
        axes.plot([e for e, _ in trial.history], [v for _, v in trial.history], line_style, marker="o",
                  label=f"{trial.trial_id[-5:]} {shown}" + (" (stopped)" if trial.status == STOPPED_EARLY else ""))
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric)
    axes.set_title("learning curves (dashed: stopped early)")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    paths.append(output / "learning_curves.png")
    figure.savefig(paths[-1], format="png")
    return paths


def log_sweep_report(trials: Sequence[TrialRecord], space: SearchSpace, default_values: dict[str, Any], metric: str, mode: str,
                     output_dir: str | Path, best: Optional[TrialRecord], registered_model: Optional[str],
                     model_version: Optional[str]) -> tuple[dict[str, float], dict[str, Path]]:
    """Write the sweep's report into ``output_dir`` (trials.md / .csv, best.json, plots/) and log it
    to the active MLflow run (the sweep's parent run): the files as artifacts, the summary as
    ``sweep/<name>`` metrics, the best trial as ``best/<metric>``, ``best/<key>`` and tags.
    Returns (summary, {"trials_md", "trials_csv", "best", <plot name>: path})."""
    import mlflow

    output_dir = Path(output_dir)
    summary = compute_summary(trials)
    markdown, table = write_trial_tables(trials, space.keys, metric, output_dir, best)
    plots = plot_sweep(trials, space, default_values, metric, mode, output_dir / PLOTS_DIR)
    best_record = {
        "trial_id": best.trial_id, "values": best.values, "metric": metric, "value": best.metric,
        "status": best.status, "run_id": best.run_id, "checkpoint_path": best.checkpoint_path,
        "flow_checkpoint": best.flow_checkpoint, "registered_model": registered_model, "model_version": model_version,
    } if best else {"trial_id": None}
    best_path = output_dir / BEST_FILE
    write_text_atomically(best_path, json.dumps(best_record, indent=2, default=str))
    for path in (markdown, table, best_path, *plots):
        mlflow.log_artifact(str(path), artifact_path=PLOTS_DIR if path.suffix == ".png" else None)
    mlflow.log_metrics({f"sweep/{k}": v for k, v in summary.items()})
    if best is not None:
        if best.metric is not None:
            mlflow.log_metric(f"best/{metric}", best.metric)
        mlflow.set_tags({"semidff.tune.best_trial": best.trial_id, "semidff.tune.best_run_id": best.run_id or "",
                         "semidff.tune.best_values": json.dumps(best.values)})
        for key, value in best.values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                mlflow.log_metric(f"best/{key}", float(value))
    return summary, {"trials_md": markdown, "trials_csv": table, "best": best_path, **{p.stem: p for p in plots}}
