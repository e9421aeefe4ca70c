"""The config schema: defaults, YAML + overrides, and errors that name the key and the range."""
from pathlib import Path

import pytest

from semidff.config import Config, ConfigError, apply_overrides, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "jobs" / "configs"


def test_embedded_defaults_are_the_papers_setting():
    cfg = load_config()
    assert cfg.model.backbone.depth == 101
    assert cfg.model.feature_channels == 1024
    assert cfg.model.rpn.pre_nms_top_n == 6000 and cfg.model.rpn.post_nms_top_n == 300
    assert cfg.model.rpn.nms_threshold == 0.7
    assert cfg.model.rfcn.test_nms_threshold == 0.3 and cfg.model.rfcn.max_detections == 300
    assert cfg.model.flownet.init_std == 0.02
    assert cfg.loss.semantic.temperature == 1.0 and cfg.loss.semantic.box_weight == 1.0
    assert cfg.video.key_interval == 10
    assert (cfg.preprocess.short_side, cfg.preprocess.max_long_side) == (600, 1000)


def test_shipped_default_yaml_equals_embedded_defaults():
    assert load_config(CONFIGS / "default.yaml") == Config()


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    load_config(path)


def test_overrides_parse_yaml_values_and_nest():
    cfg = load_config(
        CONFIGS / "tiny.yaml",
        ["model.backbone.depth=50", "model.rpn.anchor_ratios=[1, 2]", "loss.semantic.box_knowledge=false", "device=cpu"],
    )
    assert cfg.model.backbone.depth == 50
    assert cfg.model.rpn.anchor_ratios == [1.0, 2.0]
    assert cfg.loss.semantic.box_knowledge is False
    # keys the override did not touch keep the file's values
    assert cfg.model.feature_channels == 64


def test_overrides_never_evaluate_code():
    with pytest.raises(ConfigError, match="seed"):
        load_config(None, ["seed=__import__('os').getpid()"])


def test_apply_overrides_does_not_mutate_input():
    data = {"video": {"key_interval": 3}}
    out = apply_overrides(data, ["video.key_interval=7"])
    assert data["video"]["key_interval"] == 3 and out["video"]["key_interval"] == 7


@pytest.mark.parametrize(
    "override, expected",
    [
        ("video.key_interval=0", r"video\.key_interval=0: .*allowed: 1 <= key_interval <= 1000"),
        ("model.backbone.depth=42", r"model\.backbone\.depth=42: Input should be 18, 34, 50 or 101"),
        ("loss.semantic.temperature=-1", r"loss\.semantic\.temperature=-1: .*0\.0 < temperature"),
        ("video.mode=fast", r"video\.mode='fast': Input should be 'frame', 'copy' or 'flow'"),
        ("model.feature_channels=7", r"feature_channels=7 must be even"),
        ("preprocess.max_long_side=100", r"max_long_side=100 must be >= preprocess.short_side=600"),
    ],
)
def test_invalid_values_name_key_and_allowed_values(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, [override])


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match=r"model\.backbone\.dpeth: unknown key\. Did you mean: model\.backbone\.depth"):
        load_config(None, ["model.backbone.dpeth=50"])


def test_all_semantic_knowledge_switched_off_is_rejected():
    overrides = [f"loss.semantic.{k}_knowledge=false" for k in ("class", "attention", "box")]
    with pytest.raises(ConfigError, match="enable at least one"):
        load_config(None, overrides)


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(None, ["video.key_interval"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)


def test_to_yaml_round_trips(tmp_path):
    cfg = load_config(CONFIGS / "tiny.yaml", ["video.key_interval=4"])
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg
