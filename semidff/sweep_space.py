"""The search space of a sweep (``tune.search_space``), parsed and validated before any trial runs.

    space = parse_search_space(cfg)                       # SearchSpaceError naming every bad entry
    trial_cfg = apply_values(cfg, {"video.key_interval": 5, "loss.semantic.temperature": 2.0})

In YAML, each entry maps a dotted config key to one kind of distribution::

    tune:
      search_space:
        video.key_interval: {grid: [5, 10, 20]}             # every value, crossed with the other grids
        loss.semantic.temperature: {choice: [1, 2, 4]}      # one value drawn per trial
        loss.semantic.box_weight: {uniform: [0.5, 2.0]}     # float drawn uniformly in [lo, hi]
        training.lr: {loguniform: [1.0e-5, 1.0e-3]}         # float drawn log-uniformly, 0 < lo < hi
        training.regression_epochs: {randint: [1, 3]}       # integer drawn in [lo, hi], both included
        training.joint_weights.semantic: {quasi_uniform: [0.1, 1.0]}   # scrambled Halton points
        training.joint_weights.regression: {quasi_loguniform: [0.1, 10]}

A sweep runs ``(product of the grid sizes) x tune.num_samples`` trials. Quasi-random entries share
one low-discrepancy sequence of ``tune.num_samples`` points (scrambled Halton, seeded by ``seed``):
the points cover the box more evenly than independent random draws, which matters with the few
trials a sweep can afford.

Validation (all before any cluster time is spent): every key is a real config key that a trial can
change (not fixed by the cache or the teacher), every grid/choice value and both ends of every
range validate against the config schema, ranges are numeric with lo < hi, and the corner
combinations of all entries validate together (cross-field rules such as a two-step schedule
needing epochs in both steps). No Ray here: ``jobs/tune.py`` turns a SearchSpace into Tune objects.
"""
from __future__ import annotations

import itertools
import json
import math
import typing
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional

from pydantic import ValidationError

from semidff.config import Config, ConfigError, _all_keys, _describe_errors, _suggest

VALUE_KINDS = ("grid", "choice")
RANGE_KINDS = ("uniform", "loguniform", "randint", "quasi_uniform", "quasi_loguniform")
KINDS = VALUE_KINDS + RANGE_KINDS
QUASI_KINDS = ("quasi_uniform", "quasi_loguniform")
QUASI_POINT_KEY = "quasirandom_point"  # the Tune config key holding a trial's index into the quasi-random points
MAX_CORNER_COMBINATIONS = 512

# Keys a trial cannot change, by prefix, and why (a sweep runs every trial over one cache and teacher).
FIXED_KEYS: tuple[tuple[str, str], ...] = (
    ("tune.", "it is a setting of the sweep itself"),
    ("ray.", "it says where the sweep runs; it is the same for every trial"),
    ("mlflow.", "it says where the sweep logs; it is the same for every trial"),
    ("clips.", "the clips are fixed by the teacher cache the sweep reads (build another cache to change them)"),
    ("cache.", "it is fixed by the teacher cache the sweep reads (build another cache to change it)"),
    ("preprocess.", "the frame size is fixed by the teacher cache the sweep reads (build another cache to change it)"),
    ("teacher_training.", "it configures stage 1; a sweep distills one fixed teacher"),
    ("evaluation.", "a trial trains and validates only; evaluate the best checkpoint with semidff evaluate"),
    ("training.num_workers", "it sets a trial's resources; set it for the whole sweep"),
    ("training.cpus_per_worker", "it sets a trial's resources; set it for the whole sweep"),
    ("training.use_gpu", "it sets a trial's resources; set it for the whole sweep"),
)
SWEEPABLE_MODEL_PREFIXES = ("model.flownet.", "model.predictor")


class SearchSpaceError(ConfigError):
    """``tune.search_space`` is invalid; the message names each entry, the value and the fix."""


@dataclass(frozen=True)
class Dimension:
    """One entry of the search space: a dotted config key and how its values are chosen.

    values: the grid/choice values, or (lo, hi) for a range kind (randint: both included).
    """

    key: str
    kind: str
    values: tuple[Any, ...]

    @property
    def is_quasi(self) -> bool:
        return self.kind in QUASI_KINDS

    @property
    def probe_values(self) -> tuple[Any, ...]:
        """The values checked before the sweep: every grid/choice value, both ends of a range."""
        return self.values

    def describe(self) -> str:
        """``key: grid [5, 10]`` as the README and progress lines show it."""
        shown = json.dumps(list(self.values))
        return f"{self.key}: {self.kind} {shown}"

    def value_at(self, unit: float) -> Any:
        """The value of a quasi-random entry at ``unit`` in [0, 1) (its coordinate in the point set)."""
        low, high = self.values
        if self.kind == "quasi_loguniform":
            return math.exp(math.log(low) + unit * (math.log(high) - math.log(low)))
        return low + unit * (high - low)


@dataclass(frozen=True)
class SearchSpace:
    """The validated ``tune.search_space``: its entries in config order of appearance."""

    dimensions: tuple[Dimension, ...]

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.dimensions]

    @property
    def grid_size(self) -> int:
        """Trials per sample: the product of the grid sizes (1 without grids)."""
        return math.prod(len(d.values) for d in self.dimensions if d.kind == "grid")

    def num_trials(self, num_samples: int) -> int:
        return self.grid_size * num_samples

    @property
    def quasi_dimensions(self) -> list[Dimension]:
        return [d for d in self.dimensions if d.is_quasi]

    def quasi_points(self, num_samples: int, seed: int) -> list[dict[str, Any]]:
        """``num_samples`` points of a scrambled Halton sequence over the quasi-random entries,
        each a {key: value} dict; [] when the space has none."""
        dims = self.quasi_dimensions
        if not dims:
            return []
        from scipy.stats import qmc

        units = qmc.Halton(d=len(dims), scramble=True, seed=seed).random(num_samples)
        return [{d.key: float(d.value_at(float(u))) for d, u in zip(dims, row)} for row in units]

    def values_of(self, trial_config: Mapping[str, Any], quasi_points: list[dict[str, Any]]) -> dict[str, Any]:
        """A trial's {dotted key: value} from its Tune config (quasi-random entries resolved from
        the trial's point index)."""
        values = {key: trial_config[key] for key in self.keys if key in trial_config}
        if QUASI_POINT_KEY in trial_config:
            values.update(quasi_points[int(trial_config[QUASI_POINT_KEY])])
        missing = [key for key in self.keys if key not in values]
        if missing:
            raise SearchSpaceError(f"trial config {dict(trial_config)} lacks the swept keys {missing}")
        return {key: _plain(values[key]) for key in self.keys}

    def corner_assignments(self, limit: int = MAX_CORNER_COMBINATIONS) -> Iterator[dict[str, Any]]:
        """Every combination of the entries' probe values (grid/choice values, range ends), or,
        when there are more than ``limit``, each entry's probe values alone."""
        sizes = [len(d.probe_values) for d in self.dimensions]
        if math.prod(sizes) <= limit:
            for combo in itertools.product(*(d.probe_values for d in self.dimensions)):
                yield dict(zip(self.keys, combo))
            return
        for d in self.dimensions:
            for value in d.probe_values:
                yield {d.key: value}

    def describe(self) -> str:
        return "; ".join(d.describe() for d in self.dimensions)


def _plain(value: Any) -> Any:
    """numpy scalars (Tune samples them) → Python numbers, so configs and MLflow params stay plain."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (list, dict, str)) else value


def _field_annotation(key: str) -> Any:
    """The annotation of a dotted leaf key of Config (the key is known to exist)."""
    model: Any = Config
    annotation: Any = None
    for part in key.split("."):
        annotation = model.model_fields[part].annotation
        model = annotation
    return annotation


def _numeric_kind(annotation: Any) -> Optional[type]:
    """int or float when the field holds a number (also Optional[...]), else None."""
    candidates = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Union else (annotation,)
    for candidate in candidates:
        if candidate is float:
            return float
        if candidate is int:
            return int
    return None


def fixed_key_reason(key: str) -> Optional[str]:
    """Why a trial cannot change ``key``, or None when it can."""
    for prefix, reason in FIXED_KEYS:
        if key == prefix.rstrip(".") or key.startswith(prefix):
            return reason
    if key.startswith("model.") and not key.startswith(SWEEPABLE_MODEL_PREFIXES):
        return "it is the teacher's architecture, fixed by the teacher checkpoint (model.flownet.* and model.predictor can be swept)"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_entry(key: str, spec: Mapping[str, Any]) -> tuple[Optional[Dimension], list[str]]:
    """Parse one entry's shape (not its values against the schema); (dimension, problems)."""
    where = f"tune.search_space.{key}"
    if key not in _all_keys(Config):
        return None, [f"{where}: {key!r} is not a config key.{_suggest(key)}"]
    reason = fixed_key_reason(key)
    if reason:
        return None, [f"{where}: {key} cannot be swept: {reason}"]
    kinds = list(spec)
    if len(kinds) != 1 or kinds[0] not in KINDS:
        return None, [f"{where}: give exactly one of {', '.join(KINDS)} with a list, e.g. {{grid: [5, 10]}} (got {dict(spec)})"]
    kind, values = kinds[0], list(spec[kinds[0]])
    if kind in VALUE_KINDS:
        if not values:
            return None, [f"{where}.{kind}: the list is empty; give at least one value"]
        repeated = sorted({json.dumps(v) for v in values if sum(json.dumps(w) == json.dumps(v) for w in values) > 1})
        if repeated:
            return None, [f"{where}.{kind}: repeated value(s) {', '.join(repeated)} (each repeat would run the same trials again)"]
        return Dimension(key, kind, tuple(values)), []
    if len(values) != 2 or not all(_is_number(v) for v in values):
        return None, [f"{where}.{kind}: give [lo, hi] as two finite numbers (got {values})"]
    low, high = values
    if not low < high:
        return None, [f"{where}.{kind}: [lo, hi] = {values} needs lo < hi (for a single value use grid: [{low}])"]
    numeric = _numeric_kind(_field_annotation(key))
    if numeric is None:
        return None, [f"{where}.{kind}: {key} is not a number; use grid or choice"]
    if kind == "randint":
        if numeric is not int or not all(float(v).is_integer() for v in values):
            return None, [f"{where}.randint: needs an integer key and integer ends ({key} holds {numeric.__name__}, got {values}); "
                          "for a float key use uniform"]
        return Dimension(key, kind, (int(low), int(high))), []
    if numeric is int:
        return None, [f"{where}.{kind}: {key} is an integer key; use randint, grid or choice"]
    if kind in ("loguniform", "quasi_loguniform") and low <= 0:
        return None, [f"{where}.{kind}: [lo, hi] = {values} needs lo > 0 for a log scale"]
    return Dimension(key, kind, (float(low), float(high))), []


def apply_values(cfg: Config, values: Mapping[str, Any], source: str = "sweep values") -> Config:
    """``cfg`` with dotted ``{key: value}`` set, validated; ConfigError naming each bad key.

    Keys are leaf keys of the schema (parse_search_space checks them). The values are already
    typed (from YAML or from Tune), so unlike command-line overrides nothing is parsed: they are
    set in the config's dict and the whole config is validated again (fast enough to check
    hundreds of combinations before a sweep).
    """
    data = cfg.model_dump(mode="json")  # a fresh dict: setting values never touches cfg
    for key, value in values.items():
        *sections, name = key.split(".")
        node = data
        for part in sections:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"{source}: {key!r} is not a config key.{_suggest(key)}")
            node = node[part]
        node[name] = _plain(value)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe_errors(exc, source)) from None


def parse_search_space(cfg: Config, check: Optional[Callable[[Config], None]] = None) -> SearchSpace:
    """Validate ``cfg.tune.search_space`` and return it as a SearchSpace.

    check: a further test of one trial's config (e.g. that the cache covers its key interval);
    it raises ConfigError (or a ValueError) and runs on every corner combination.
    Raises SearchSpaceError listing every problem found.
    """
    entries = cfg.tune.search_space
    if not entries:
        raise SearchSpaceError(
            "tune.search_space is empty, so there is nothing to sweep; add entries such as\n"
            "  tune:\n    search_space:\n      video.key_interval: {grid: [5, 10]}\n      training.lr: {loguniform: [1.0e-5, 1.0e-3]}\n"
            "(or on the command line: 'tune.search_space={video.key_interval: {grid: [5, 10]}}')"
        )
    problems: list[str] = []
    dimensions: list[Dimension] = []
    for key, spec in entries.items():
        dimension, found = _check_entry(key, spec)
        problems += found
        if dimension is not None:
            dimensions.append(dimension)
    if problems:
        raise SearchSpaceError("invalid tune.search_space:\n  " + "\n  ".join(problems))

    space = SearchSpace(tuple(dimensions))
    # Each value alone first: the message then names the one value that is wrong.
    for d in space.dimensions:
        for value in d.probe_values:
            try:
                apply_values(cfg, {d.key: value}, f"tune.search_space.{d.key}: {d.kind} value {json.dumps(value)}")
            except ConfigError as exc:
                problems.append(str(exc).replace("\n", "\n  "))
    if problems:
        raise SearchSpaceError("invalid tune.search_space:\n  " + "\n  ".join(problems))
    seen: set[str] = set()
    for assignment in space.corner_assignments():
        shown = ", ".join(f"{key}={json.dumps(value)}" for key, value in assignment.items())
        try:
            trial_cfg = apply_values(cfg, assignment, f"tune.search_space combination {shown}")
            if check is not None:
                check(trial_cfg)
        except (ConfigError, ValueError) as exc:
            message = f"{shown}: {exc}".replace("\n", "\n    ")
            if message not in seen:
                seen.add(message)
                problems.append(message)
    if problems:
        raise SearchSpaceError("invalid tune.search_space: these trial configurations would fail:\n  " + "\n  ".join(problems[:10])
                               + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""))
    return space


def max_over_corners(space: SearchSpace, cfg: Config, measure: Callable[[Config], int]) -> int:
    """The largest ``measure(trial config)`` over the corner combinations (e.g. the most epochs a
    trial can run, or the largest key interval), for settings that must cover every trial."""
    return max(measure(apply_values(cfg, assignment)) for assignment in space.corner_assignments())


__all__ = [
    "KINDS",
    "QUASI_POINT_KEY",
    "Dimension",
    "SearchSpace",
    "SearchSpaceError",
    "apply_values",
    "fixed_key_reason",
    "max_over_corners",
    "parse_search_space",
]
