"""Sweep results as tables and plots: the best trial is the best finished one, the compute early
stopping saved is counted in epochs, and the files hold every trial."""
import csv

from semidff.config import load_config
from semidff.sweep_report import (
    ERROR,
    FINISHED,
    STOPPED_EARLY,
    TrialRecord,
    compute_summary,
    format_trials_markdown,
    pick_best,
    plot_sweep,
    write_trial_tables,
)
from semidff.sweep_space import parse_search_space


def trials() -> list[TrialRecord]:
    return [
        TrialRecord("ab_00000", {"video.key_interval": 5, "training.lr": 1e-4}, FINISHED, 4, 4, 0.80,
                    [(1, 0.95), (2, 0.9), (3, 0.85), (4, 0.80)], run_id="r0", flow_checkpoint="/s/trials/ab_00000/flow.pt"),
        TrialRecord("ab_00001", {"video.key_interval": 10, "training.lr": 1e-3}, FINISHED, 4, 4, 0.70,
                    [(1, 0.9), (2, 0.8), (3, 0.75), (4, 0.70)], run_id="r1", flow_checkpoint="/s/trials/ab_00001/flow.pt"),
        # Better than both at epoch 1, but that is not comparable with a full budget.
        TrialRecord("ab_00002", {"video.key_interval": 5, "training.lr": 1e-5}, STOPPED_EARLY, 1, 4, 0.60, [(1, 0.60)], run_id="r2"),
        TrialRecord("ab_00003", {"video.key_interval": 10, "training.lr": 1e-5}, STOPPED_EARLY, 2, 4, 1.2, [(1, 1.3), (2, 1.2)], run_id="r3"),
        TrialRecord("ab_00004", {"video.key_interval": 20, "training.lr": 1e-5}, ERROR, 0, 4, None, [], error="boom"),
    ]


def test_best_is_the_best_finished_trial_in_the_sweeps_mode():
    assert pick_best(trials(), "min").trial_id == "ab_00001"
    assert pick_best(trials(), "max").trial_id == "ab_00000"
    only_stopped = [t for t in trials() if t.status != FINISHED]
    assert pick_best(only_stopped, "min").trial_id == "ab_00002"  # none finished: the best reported metric
    assert pick_best(trials()[4:], "min") is None
    assert trials()[0].best_metric("min") == 0.80 and trials()[3].best_metric("max") == 1.3


def test_summary_counts_epochs_against_the_full_budget():
    summary = compute_summary(trials())
    assert summary["epochs_run"] == 4 + 4 + 1 + 2 + 0 and summary["epochs_full_budget"] == 20
    assert summary["compute_saved"] == 1 - 11 / 20
    assert (summary["trials"], summary["trials_finished"], summary["trials_stopped_early"], summary["trials_failed"]) == (5, 2, 2, 1)


def test_tables_hold_every_trial_and_mark_the_best(tmp_path):
    best = pick_best(trials(), "min")
    text = format_trials_markdown(trials(), ["video.key_interval", "training.lr"], "val/error", best)
    lines = text.splitlines()
    assert lines[0] == "| trial | video.key_interval | training.lr | status | epochs | val/error | run_id |"
    assert "| **ab_00001** (best) | 10 | 0.001 | finished | 4/4 | 0.7 | r1 |" in lines
    assert "| ab_00002 | 5 | 1e-05 | stopped early | 1/4 | 0.6 | r2 |" in lines
    assert "| ab_00004 | 20 | 1e-05 | error | 0/4 | - | - |" in lines
    markdown, table = write_trial_tables(trials(), ["video.key_interval", "training.lr"], "val/error", tmp_path, best)
    assert markdown.read_text() == text
    rows = list(csv.DictReader(table.open()))
    assert [r["trial"] for r in rows] == [f"ab_0000{i}" for i in range(5)]
    assert rows[1]["flow_checkpoint"] == "/s/trials/ab_00001/flow.pt" and rows[4]["val/error"] == ""


def test_plots_are_written_as_png(tmp_path):
    cfg = load_config(None, ["tune.search_space={video.key_interval: {grid: [5, 10, 20]}, training.lr: {loguniform: [1.0e-5, 1.0e-3]}}"])
    paths = plot_sweep(trials(), parse_search_space(cfg), {"video.key_interval": 10, "training.lr": 5e-5}, "val/error", "min", tmp_path)
    assert [p.name for p in paths] == ["metric_vs_key_interval.png", "metric_vs_swept_values.png", "learning_curves.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000 for p in paths)
    # Without other swept numbers there is no second plot; the key interval comes from the config.
    only_choice = load_config(None, ["tune.search_space={model.predictor: {grid: [flow, residual]}}"])
    records = [TrialRecord("x_00000", {"model.predictor": "flow"}, FINISHED, 2, 2, 0.5, [(1, 0.6), (2, 0.5)])]
    names = [p.name for p in plot_sweep(records, parse_search_space(only_choice), {"video.key_interval": 10}, "val/error", "min", tmp_path / "b")]
    assert names == ["metric_vs_key_interval.png", "learning_curves.png"]
