"""The one configuration schema: typed, validated, loaded from YAML plus dotted overrides.

    cfg = load_config("jobs/configs/tiny.yaml", ["model.backbone.depth=50", "video.key_interval=5"])

Every section forbids unknown keys, so a typo fails before any compute is spent, and every
error names the dotted key, the value given and what is allowed. Values in overrides are parsed
as YAML scalars/lists (``true``, ``1e-4``, ``[0.5, 1, 2]``), never evaluated as code.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message says which key and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BackboneConfig(_Section):
    depth: Literal[18, 34, 50, 101] = 101
    width_multiplier: float = Field(1.0, gt=0.0, le=4.0, description="scales every ResNet stage's channels; <1 for tiny CPU models")
    frozen_batchnorm: bool = True
    frozen_stages: int = Field(2, ge=0, le=5, description="0: none, 1: conv1, 2: +layer1 (res2), ...; DFF freezes conv1 and res2")
    stride_in_1x1: bool = Field(True, description="ResNet v1 (Caffe/MSRA, as DFF) puts the stride on the 1x1 conv")
    pretrained: Optional[str] = Field(None, description="local torchvision-format ResNet state_dict (.pth); nothing is downloaded")


class RPNConfig(_Section):
    anchor_ratios: list[float] = Field(default_factory=lambda: [0.5, 1.0, 2.0], min_length=1)
    anchor_scales: list[float] = Field(default_factory=lambda: [8.0, 16.0, 32.0], min_length=1)
    pre_nms_top_n: int = Field(6000, ge=1)
    post_nms_top_n: int = Field(300, ge=1)
    nms_threshold: float = Field(0.7, gt=0.0, le=1.0)


class RFCNHeadConfig(_Section):
    group_size: int = Field(7, ge=1, le=15, description="k of the k x k position-sensitive grid")
    test_score_threshold: float = Field(1e-4, ge=0.0, lt=1.0)
    test_nms_threshold: float = Field(0.3, gt=0.0, le=1.0)
    max_detections: int = Field(300, ge=1)


class FlowNetConfig(_Section):
    width_multiplier: float = Field(1.0, gt=0.0, le=4.0)
    init_std: float = Field(0.02, gt=0.0, le=1.0, description="N(0, std) init of the flow network (paper §3.5)")
    init: Literal["normal", "fan_in"] = Field(
        "normal",
        description="normal: every conv N(0, init_std), the paper's (at width_multiplier << 1 the coarse levels start "
        "near zero: conv6_1 activations ~4e-7 at 0.125); fan_in: He-normal hidden layers (activations ~0.1-0.2 at "
        "every level and width), N(0, init_std) flow heads and a zero last flow layer, so training starts at zero flow",
    )


class ModelConfig(_Section):
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    feature_channels: int = Field(1024, ge=2, description="channels of the dilated 3x3 conv output; even (half RPN, half R-FCN)")
    num_classes: int = Field(30, ge=1, description="foreground classes (ImageNet VID: 30)")
    rpn: RPNConfig = Field(default_factory=RPNConfig)
    rfcn: RFCNHeadConfig = Field(default_factory=RFCNHeadConfig)
    flownet: FlowNetConfig = Field(default_factory=FlowNetConfig)
    predictor: Literal["flow", "residual"] = Field(
        "flow", description="flow: FlowNetS + scale field (Eq. 1); residual: the generative ablation of Table 3a"
    )

    @model_validator(mode="after")
    def _even_feature_channels(self) -> "ModelConfig":
        if self.feature_channels % 2:
            raise ValueError(
                f"model.feature_channels={self.feature_channels} must be even: the first half feeds the RPN, the second the R-FCN heads"
            )
        return self


class PreprocessConfig(_Section):
    short_side: int = Field(600, ge=32, le=4096, description="frames are resized so the short side has this length ...")
    max_long_side: int = Field(1000, ge=32, le=8192, description="... unless the long side would exceed this")

    @model_validator(mode="after")
    def _consistent_sides(self) -> "PreprocessConfig":
        if self.max_long_side < self.short_side:
            raise ValueError(
                f"preprocess.max_long_side={self.max_long_side} must be >= preprocess.short_side={self.short_side}"
            )
        return self


class SupervisedLossConfig(_Section):
    rpn_batch_size: int = Field(256, ge=1)
    ohem: bool = True
    ohem_rois: int = Field(128, ge=1)


class RegressionLossConfig(_Section):
    kind: Literal["l2", "l1", "steady"] = Field("l2", description="Eq. 4 L2 (default), L1, or the steady-feature triplet loss (Table 3b)")


class SemanticLossConfig(_Section):
    temperature: float = Field(1.0, gt=0.0, le=100.0, description="T of Eq. 7; the KD terms are scaled by T^2")
    box_weight: float = Field(1.0, ge=0.0, description="lambda of Eq. 6")
    class_knowledge: bool = Field(True, description="R-FCN class KD: inter-class relationship (Table 3c)")
    attention_knowledge: bool = Field(True, description="RPN objectness KD: attention maps (Table 3c)")
    box_knowledge: bool = Field(True, description="RPN and R-FCN box L2: box locations (Table 3c)")

    @model_validator(mode="after")
    def _some_knowledge(self) -> "SemanticLossConfig":
        if not (self.class_knowledge or self.attention_knowledge or self.box_knowledge):
            raise ValueError("loss.semantic: class_knowledge, attention_knowledge and box_knowledge are all false; enable at least one")
        return self


class LossConfig(_Section):
    supervised: SupervisedLossConfig = Field(default_factory=SupervisedLossConfig)
    regression: RegressionLossConfig = Field(default_factory=RegressionLossConfig)
    semantic: SemanticLossConfig = Field(default_factory=SemanticLossConfig)


class VideoConfig(_Section):
    key_interval: int = Field(10, ge=1, le=1000, description="Delta T: a key frame every this many frames (paper default 10)")
    mode: Literal["frame", "copy", "flow"] = Field(
        "flow", description="frame: detector on every frame; copy: reuse key-frame detections; flow: semi-DFF"
    )


class RayConfig(_Section):
    address: Optional[str] = Field(None, description="Ray cluster address; None: $RAY_ADDRESS if set, else a local Ray started for the run")
    num_cpus: Optional[int] = Field(None, ge=1, description="CPUs of the local Ray (ignored when joining a cluster); None: all")


class MLflowConfig(_Section):
    tracking_uri: Optional[str] = Field(
        None, description="MLflow tracking URI; None: sqlite:///<output dir>/mlflow.db (a server http://... for multi-node runs)"
    )
    experiment: str = Field("semidff", min_length=1)
    registered_model: Optional[str] = Field("semidff-flow", description="model name the final flow checkpoint is registered under; None: not registered")


class ClipsConfig(_Section):
    """Which (key, current) frames are taken from each unlabeled video (pipelines/clips.py)."""

    key_frames_per_second: Optional[float] = Field(1.0, gt=0.0, le=240.0, description="key frames per second of video (or use key_frames_per_video)")
    key_frames_per_video: Optional[int] = Field(None, ge=1, description="a fixed count of key frames per video instead of a rate")
    currents_per_key: int = Field(1, ge=1, le=64, description="m: current frames per key frame")
    offset_range: tuple[int, int] = Field(
        (0, 9), description="[lo, hi] inclusive: current = key + d; [0, 9] covers both the regression [1, 9] and semantic [0, 9] steps at key_interval 10"
    )
    seed: int = Field(0, ge=0)
    align_to_codec_keyframes: bool = Field(False, description="put key frames on the codec's keyframes (far cheaper to decode on long-GOP video)")
    chunk_frames: int = Field(16, ge=1, le=1024, description="full-size frames decoded per read (memory per task)")
    videos_per_task: Optional[int] = Field(None, ge=1, description="videos per decode task; None: 1, or more when the corpus is very large")
    num_cpus: float = Field(1.0, gt=0.0, le=64.0, description="CPUs per decode task")
    max_concurrent_tasks: Optional[int] = Field(None, ge=1, description="cap on decode tasks in flight (leave CPUs to the teacher actors)")
    block_bytes: int = Field(16 << 20, ge=1 << 20, description="target Ray Data block size in bytes")
    decoder: Literal["auto", "pyav", "decord"] = Field(
        "auto", description="auto: PyAV's selective decoding where its frame index matches decord's, else decord (the reference)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> "ClipsConfig":
        lo, hi = self.offset_range
        if lo < 0 or hi < lo:
            raise ValueError(f"clips.offset_range={list(self.offset_range)} must be [lo, hi] with 0 <= lo <= hi")
        if self.key_frames_per_video is not None and "key_frames_per_second" not in self.model_fields_set:
            self.__dict__["key_frames_per_second"] = None  # a count per video replaces the default rate
        if self.key_frames_per_second is not None and self.key_frames_per_video is not None:
            raise ValueError("clips: set key_frames_per_second or key_frames_per_video, not both (set the other to null)")
        if self.key_frames_per_second is None and self.key_frames_per_video is None:
            raise ValueError("clips: set one of key_frames_per_second or key_frames_per_video")
        return self


class CacheConfig(_Section):
    """The teacher cache (pipelines/teacher_cache.py): actor pool and storage format."""

    feature_precision: Literal["fp32", "fp16", "int8"] = Field("fp16", description="features on disk; int8 keeps one fp32 scale per channel")
    jpeg_quality: int = Field(90, ge=1, le=100, description="quality of the frames stored in the cache")
    compression_level: int = Field(3, ge=1, le=22, description="zstd level of the Parquet columns")
    clips_per_file: int = Field(64, ge=1, description="clips per Parquet file (a file is the unit of resume)")
    num_actors: int = Field(1, ge=1, description="teacher actors in the pool")
    batch_size: int = Field(4, ge=1, description="clips per teacher forward batch")
    num_gpus_per_actor: Optional[float] = Field(None, ge=0.0, description="None: 1 when the cluster has GPUs, else 0 (CPU)")
    num_cpus_per_actor: float = Field(1.0, gt=0.0, description="CPUs per teacher actor")


class TeacherDataConfig(_Section):
    """A labeled dataset for stage 1 and for evaluation."""

    format: Literal["custom", "imagenet_vid", "imagenet_det", "youtube_bb"] = Field("custom")
    path: Optional[str] = Field(None, description="custom: the JSON file; imagenet_*: the ILSVRC2015 root; youtube_bb: the CSV")
    video_dir: Optional[str] = Field(None, description="youtube_bb only: the folder of downloaded videos")
    split: str = Field("train", description="train/val (imagenet_vid: the image set list name is derived from it)")


class TeacherTrainingConfig(_Section):
    """Stage 1: supervised R-FCN training (Eq. 2-3) on Ray Train."""

    data: TeacherDataConfig = Field(default_factory=TeacherDataConfig)
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(1, ge=1, description="images per worker per step")
    base_lr: float = Field(0.00025, gt=0.0, description="SGD lr for reference_batch_size images; scaled linearly with the effective batch")
    reference_batch_size: int = Field(1, ge=1)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0005, ge=0.0)
    lr_decay_epochs: list[int] = Field(default_factory=list, description="epochs after which the lr is multiplied by 0.1")
    warmup_steps: int = Field(0, ge=0)
    horizontal_flip: bool = True
    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP)")
    use_gpu: Optional[bool] = Field(None, description="None: when the cluster has GPUs")
    cpus_per_worker: float = Field(1.0, gt=0.0)
    checkpoint_every_steps: int = Field(200, ge=1)
    max_failures: int = Field(1, ge=0, description="worker failures survived by restarting from the latest checkpoint")


class JointWeightsConfig(_Section):
    regression: float = Field(1.0, ge=0.0)
    semantic: float = Field(1.0, ge=0.0)


class FlowTrainingConfig(_Section):
    """Stage 2: feature-flow learning from the teacher (paper §3.4) on Ray Train."""

    schedule: Literal["two_step", "regression", "semantic", "joint"] = Field(
        "two_step", description="two_step: step A regression then step B semantic (paper default); or one loss alone; or joint weights"
    )
    finetune: Literal["flow", "flow_heads", "flow_spatial"] = Field(
        "flow_heads", description="what the semantic step trains (step A always trains the flow net only): flow, flow + task heads (paper default), flow + whole spatial module"
    )
    joint_weights: JointWeightsConfig = Field(default_factory=JointWeightsConfig)
    teacher_source: Literal["cache", "on_the_fly"] = Field("cache", description="read teacher outputs from the cache, or run the frozen teacher in the workers")
    optimizer: Literal["rmsprop", "sgd", "adam"] = Field("rmsprop")
    lr: float = Field(5e-5, gt=0.0)
    regression_epochs: int = Field(2, ge=0, description="epochs of step A (regression)")
    semantic_epochs: int = Field(2, ge=0, description="epochs of step B (semantic)")
    batch_size: int = Field(2, ge=1, description="clip pairs per worker per step")
    num_workers: int = Field(1, ge=1)
    use_gpu: Optional[bool] = Field(None, description="None: when the cluster has GPUs")
    cpus_per_worker: float = Field(1.0, gt=0.0)
    checkpoint_every_steps: int = Field(100, ge=1)
    validation_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of videos held out for the per-epoch validation")
    validation_max_videos: Optional[int] = Field(
        10, ge=1, description="labeled videos of evaluation.data scored for the per-epoch val mAP (when evaluation.data.path is set); None: all"
    )
    max_failures: int = Field(1, ge=0, description="worker failures survived by restarting from the latest checkpoint")


class TuneSchedulerConfig(_Section):
    kind: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1.0)


class TuneConfig(_Section):
    """Ray Tune sweeps over any config keys (jobs/tune.py)."""

    search_space: dict[str, dict[str, list[Any]]] = Field(
        default_factory=dict,
        description="dotted key -> {grid: [...]} | {choice: [...]} | {uniform: [lo, hi]} | {loguniform: [lo, hi]}",
    )
    num_samples: int = Field(1, ge=1)
    max_concurrent_trials: int = Field(2, ge=1)
    metric: str = Field("val/regression_error_vs_copy")
    mode: Literal["min", "max"] = "min"
    scheduler: TuneSchedulerConfig = Field(default_factory=TuneSchedulerConfig)
    cpus_per_trial: float = Field(0.1, gt=0.0)


class EvaluationConfig(_Section):
    data: TeacherDataConfig = Field(default_factory=lambda: TeacherDataConfig(split="val"))
    modes: list[Literal["frame", "copy", "flow", "oracle"]] = Field(
        default_factory=lambda: ["frame", "copy", "flow"], min_length=1,
        description="oracle: the teacher's key-frame features warped by the true motion (generated corpora only)",
    )
    key_intervals: list[int] = Field(default_factory=lambda: [1, 5, 10, 20], min_length=1)
    relaxed_small_objects: bool = Field(True, description="ImageNet VID per-GT threshold relaxation; false: plain IoU 0.5")

    @model_validator(mode="before")
    @classmethod
    def _val_split_by_default(cls, data: Any) -> Any:
        # The default_factory above applies only when `data` is absent; a partly given section
        # (evaluation.data.path=...) would otherwise take TeacherDataConfig's split "train".
        if isinstance(data, dict) and isinstance(data.get("data"), dict) and "split" not in data["data"]:
            data = {**data, "data": {**data["data"], "split": "val"}}
        return data


class DemoConfig(_Section):
    """``semidff demo``: the synthetic corpus it generates and the stage-2 variants it compares."""

    train_videos: int = Field(12, ge=1, description="labeled synthetic videos for the teacher (stage 1)")
    val_videos: int = Field(4, ge=1, description="labeled synthetic videos every mode is evaluated on")
    unlabeled_videos: int = Field(16, ge=1, description="synthetic videos whose labels are never read: stage 2's unlabeled corpus")
    frames_per_video: int = Field(60, ge=2, description="frames per synthetic video (25 fps)")
    width: int = Field(256, ge=32, description="synthetic frame width (even)")
    height: int = Field(160, ge=32, description="synthetic frame height (even)")
    variants: list[Literal["regression", "semantic", "two_step"]] = Field(
        default_factory=lambda: ["regression", "semantic", "two_step"], min_length=1,
        description="stage-2 schedules trained and compared (paper Table 1: semi-DFF reg, sem, two-step)",
    )
    example_key_interval: int = Field(10, ge=1, description="ΔT of the annotated example frames and the headline table")
    example_frames: int = Field(4, ge=1, le=16, description="annotated frames drawn per mode for the report")

    @model_validator(mode="after")
    def _even_size(self) -> "DemoConfig":
        for name in ("width", "height"):
            if getattr(self, name) % 2:
                raise ValueError(f"demo.{name}={getattr(self, name)}: must be even (4:2:0 video); e.g. {getattr(self, name) + 1}")
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"demo.variants={self.variants}: each variant once")
        return self


class Config(_Section):
    """The whole resolved configuration of a semidff run."""

    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available, else CPU")
    model: ModelConfig = Field(default_factory=ModelConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    video: VideoConfig = Field(default_factory=VideoConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    mlflow: MLflowConfig = Field(default_factory=MLflowConfig)
    clips: ClipsConfig = Field(default_factory=ClipsConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    teacher_training: TeacherTrainingConfig = Field(default_factory=TeacherTrainingConfig)
    training: FlowTrainingConfig = Field(default_factory=FlowTrainingConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    demo: DemoConfig = Field(default_factory=DemoConfig)

    def to_yaml(self) -> str:
        """The resolved config as YAML, in the same shape :func:`load_config` reads."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _all_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(_all_keys(annotation, dotted + "."))
        else:
            keys.append(dotted)
    return keys


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, _all_keys(Config), n=3, cutoff=0.6)
    return f" Did you mean: {', '.join(close)}?" if close else " Run `semidff config show` to list every key."


def _allowed_range(loc: tuple) -> str:
    """' (allowed: lo <= x <= hi)' for a numeric field with bounds, else ''."""
    model: Any = Config
    field = None
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return ""
        field = model.model_fields[part]
        model = field.annotation
    lower = upper = ""
    for bound in field.metadata if field else ():
        for name, symbol in (("ge", "<="), ("gt", "<")):
            if getattr(bound, name, None) is not None:
                lower = f"{getattr(bound, name)} {symbol} "
        for name, symbol in (("le", "<="), ("lt", "<")):
            if getattr(bound, name, None) is not None:
                upper = f" {symbol} {getattr(bound, name)}"
    return f" (allowed: {lower}{loc[-1]}{upper})" if lower or upper else ""


def _describe_errors(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key.{_suggest(key)}")
            continue
        given = item.get("input")
        shown = "" if isinstance(given, dict) else f"={given!r}"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"  {key or '<top level>'}{shown}: {message}{_allowed_range(item['loc'])}")
    return f"invalid configuration ({source}):\n" + "\n".join(lines)


def _parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. model.backbone.depth=50)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({exc})") from exc
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set each dotted ``key=value`` in a nested dict (a copy); missing sections are created."""
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy of plain data
    for text in overrides:
        path, value = _parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (or the embedded defaults when ``path`` is None) and apply overrides.

    Raises ConfigError naming every invalid key with its allowed values.
    """
    data: dict = {}
    source = "embedded defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist (shipped examples are in jobs/configs/)")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
        source = str(path)
    if overrides:
        data = apply_overrides(data, list(overrides))
        source += " + overrides"
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe_errors(exc, source)) from None
