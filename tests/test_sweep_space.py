"""tune.search_space: every kind parses, every bad entry is refused before any compute with a
message naming the entry and the fix, and quasi-random points cover their range evenly."""
import math

import numpy as np
import pytest

from semidff.config import ConfigError, load_config
from semidff.sweep_space import (
    QUASI_POINT_KEY,
    SearchSpaceError,
    apply_values,
    fixed_key_reason,
    max_over_corners,
    parse_search_space,
)

FULL = (
    "tune.search_space={video.key_interval: {grid: [5, 10, 20]}, loss.semantic.temperature: {choice: [1, 2, 4]}, "
    "loss.semantic.box_weight: {uniform: [0.5, 2.0]}, training.lr: {loguniform: [1.0e-5, 1.0e-3]}, "
    "training.regression_epochs: {randint: [1, 3]}, training.joint_weights.semantic: {quasi_uniform: [0.1, 1.0]}, "
    "training.joint_weights.regression: {quasi_loguniform: [0.1, 10]}}"
)


def space_of(text: str, *more: str):
    return parse_search_space(load_config(None, [f"tune.search_space={text}", *more]))


def error_of(text: str, *more: str, check=None) -> str:
    with pytest.raises(SearchSpaceError) as caught:
        parse_search_space(load_config(None, [f"tune.search_space={text}", *more]), check=check)
    return str(caught.value)


def test_every_kind_parses_with_its_values_and_the_trial_count():
    space = parse_search_space(load_config(None, [FULL, "tune.num_samples=3"]))
    kinds = {d.key: (d.kind, d.values) for d in space.dimensions}
    assert kinds == {
        "video.key_interval": ("grid", (5, 10, 20)),
        "loss.semantic.temperature": ("choice", (1, 2, 4)),
        "loss.semantic.box_weight": ("uniform", (0.5, 2.0)),
        "training.lr": ("loguniform", (1e-5, 1e-3)),
        "training.regression_epochs": ("randint", (1, 3)),
        "training.joint_weights.semantic": ("quasi_uniform", (0.1, 1.0)),
        "training.joint_weights.regression": ("quasi_loguniform", (0.1, 10.0)),
    }
    assert space.grid_size == 3 and space.num_trials(3) == 9
    assert space.keys[0] == "video.key_interval"
    assert "video.key_interval: grid [5, 10, 20]" in space.describe()


def test_apply_values_sets_typed_values_and_refuses_bad_ones():
    cfg = load_config("jobs/configs/tiny.yaml")
    trial = apply_values(cfg, {"video.key_interval": np.int64(5), "training.lr": np.float64(2.5e-5),
                               "clips.offset_range": [0, 4], "evaluation.modes": ["flow"]})
    assert trial.video.key_interval == 5 and isinstance(trial.video.key_interval, int)
    assert trial.training.lr == 2.5e-5 and trial.clips.offset_range == (0, 4) and trial.evaluation.modes == ["flow"]
    assert trial.model.backbone.depth == 18  # the rest of the config is untouched
    assert cfg.video.key_interval == 10  # and the base config too
    with pytest.raises(ConfigError, match=r"video.key_interval=0: Input should be greater than or equal to 1"):
        apply_values(cfg, {"video.key_interval": 0})


@pytest.mark.parametrize(
    "text, expected",
    [
        ("{video.key_intervl: {grid: [5]}}", "'video.key_intervl' is not a config key. Did you mean: video.key_interval"),
        ("{loss.semantic: {grid: [1]}}", "'loss.semantic' is not a config key"),
        ("{cache.batch_size: {grid: [1, 2]}}", "cache.batch_size cannot be swept: it is fixed by the teacher cache"),
        ("{preprocess.short_side: {grid: [300, 600]}}", "cannot be swept: the frame size is fixed by the teacher cache"),
        ("{model.backbone.depth: {grid: [18, 50]}}", "cannot be swept: it is the teacher's architecture"),
        ("{tune.num_samples: {grid: [1, 2]}}", "cannot be swept: it is a setting of the sweep itself"),
        ("{training.num_workers: {grid: [1, 2]}}", "cannot be swept: it sets a trial's resources"),
        ("{training.lr: {grid: [1.0e-4], choice: [1.0e-3]}}", "give exactly one of grid, choice, uniform"),
        ("{training.lr: {between: [1, 2]}}", "give exactly one of grid, choice, uniform"),
        ("{training.lr: {grid: []}}", "tune.search_space.training.lr.grid: the list is empty"),
        ("{training.lr: {grid: [1.0e-4, 1.0e-4]}}", "repeated value(s) 0.0001"),
        ("{training.lr: {uniform: [1.0e-4]}}", "give [lo, hi] as two finite numbers"),
        ("{training.lr: {uniform: [1.0e-3, 1.0e-4]}}", "needs lo < hi"),
        ("{training.lr: {loguniform: [0, 1.0e-3]}}", "needs lo > 0 for a log scale"),
        ("{video.key_interval: {uniform: [2, 10]}}", "video.key_interval is an integer key; use randint, grid or choice"),
        ("{training.lr: {randint: [1, 3]}}", "randint: needs an integer key"),
        ("{video.mode: {uniform: [1, 3]}}", "video.mode is not a number; use grid or choice"),
        ("{video.key_interval: {grid: [0, 5]}}", "video.key_interval=0: Input should be greater than or equal to 1 (allowed: 1 <= key_interval <= 1000)"),
        ("{video.mode: {choice: [flow, warp]}}", "video.mode='warp': Input should be 'frame', 'copy' or 'flow'"),
        ("{loss.semantic.temperature: {uniform: [0.5, 200]}}", "uniform value 200"),
    ],
)
def test_a_bad_entry_is_refused_naming_it(text, expected):
    message = error_of(text)
    assert message.startswith("invalid tune.search_space")
    assert expected in message


def test_every_problem_is_listed_at_once():
    message = error_of("{video.key_intervl: {grid: [5]}, training.lr: {loguniform: [0, 1]}, cache.batch_size: {grid: [1, 2]}}")
    assert "video.key_intervl" in message and "lo > 0" in message and "cache.batch_size cannot be swept" in message


def test_an_empty_space_says_how_to_write_one():
    with pytest.raises(SearchSpaceError, match=r"(?s)tune.search_space is empty.*video.key_interval: \{grid: \[5, 10\]\}"):
        parse_search_space(load_config(None))


def test_fixed_keys_and_sweepable_model_keys():
    assert fixed_key_reason("model.flownet.width_multiplier") is None and fixed_key_reason("model.predictor") is None
    assert fixed_key_reason("loss.semantic.temperature") is None and fixed_key_reason("video.key_interval") is None
    assert "teacher's architecture" in fixed_key_reason("model.rpn.anchor_scales")
    assert "fixed by the teacher cache" in fixed_key_reason("clips.offset_range")


def test_combinations_are_checked_together_and_by_the_callers_check():
    # Each value is valid alone; a two-step schedule with 0 regression epochs is refused by the check.
    def check(cfg):
        if cfg.training.schedule == "two_step" and cfg.training.regression_epochs == 0:
            raise ConfigError("two_step needs regression_epochs > 0")
        if cfg.video.key_interval > 10:
            raise ValueError(f"the cache covers key intervals up to 10, not {cfg.video.key_interval}")

    message = error_of("{training.regression_epochs: {grid: [0, 1]}, video.key_interval: {grid: [5, 20]}}", check=check)
    assert "these trial configurations would fail" in message
    assert "training.regression_epochs=0, video.key_interval=5: two_step needs regression_epochs > 0" in message
    assert "training.regression_epochs=1, video.key_interval=20: the cache covers key intervals up to 10, not 20" in message


def test_corners_and_their_maximum_cover_every_range_end():
    cfg = load_config(None, ["tune.search_space={training.regression_epochs: {randint: [1, 3]}, training.semantic_epochs: {grid: [2, 4]}}"])
    space = parse_search_space(cfg)
    corners = list(space.corner_assignments())
    assert len(corners) == 4 and {"training.regression_epochs": 3, "training.semantic_epochs": 4} in corners
    assert max_over_corners(space, cfg, lambda c: c.training.regression_epochs + c.training.semantic_epochs) == 7
    # More corners than the limit: each entry's values alone.
    assert len(list(space.corner_assignments(limit=3))) == 4


def test_quasi_random_points_are_seeded_in_range_and_evenly_spread():
    space = space_of("{training.joint_weights.semantic: {quasi_uniform: [0.0, 1.0]}, training.lr: {quasi_loguniform: [1.0e-5, 1.0e-3]}, "
                     "video.key_interval: {grid: [5, 10]}}")
    points = space.quasi_points(8, seed=3)
    assert points == space.quasi_points(8, seed=3) and points != space.quasi_points(8, seed=4)
    semantic = [p["training.joint_weights.semantic"] for p in points]
    lr = [p["training.lr"] for p in points]
    assert all(0.0 <= v < 1.0 for v in semantic) and all(1e-5 <= v < 1e-3 for v in lr)
    # A scrambled Halton sequence in base 2 puts exactly one of 8 points in each eighth of the range,
    # and (base 3 for the second entry) its log-values spread over the decades.
    assert sorted(int(v * 8) for v in semantic) == list(range(8))
    decades = [math.log10(v) for v in lr]
    assert min(decades) < -4.5 and max(decades) > -3.5
    # A trial's config holds the index of its point; values_of resolves it.
    values = space.values_of({"video.key_interval": 10, QUASI_POINT_KEY: 2}, points)
    assert values == {"training.joint_weights.semantic": semantic[2], "training.lr": lr[2], "video.key_interval": 10}
    assert space_of("{video.key_interval: {grid: [5]}}").quasi_points(4, 0) == []


def test_values_of_turns_numpy_scalars_into_plain_numbers_and_needs_every_key():
    space = space_of("{training.lr: {loguniform: [1.0e-5, 1.0e-3]}, video.key_interval: {grid: [5, 10]}}")
    values = space.values_of({"training.lr": np.float64(1e-4), "video.key_interval": np.int64(5), "other": 1}, [])
    assert values == {"training.lr": 1e-4, "video.key_interval": 5}
    assert type(values["training.lr"]) is float and type(values["video.key_interval"]) is int
    with pytest.raises(SearchSpaceError, match="lacks the swept keys"):
        space.values_of({"training.lr": 1e-4}, [])
