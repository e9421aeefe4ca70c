"""Config → modules: the one place that turns :class:`semidff.config.ModelConfig` into arguments."""
from __future__ import annotations

from torch import nn

from semidff.config import Config, ModelConfig
from semidff.models.flownet import FlowNetS
from semidff.models.residual_predictor import ResidualFeaturePredictor
from semidff.models.resnet import FeatureExtractor, ResNetBackbone, load_torchvision_resnet
from semidff.models.rfcn import RFCN
from semidff.models.video_detector import VideoDetector


def build_feature_extractor(cfg: ModelConfig) -> FeatureExtractor:
    """ResNet backbone (+ optional local ImageNet weights) and the dilated 3x3 feature conv."""
    backbone = ResNetBackbone(
        depth=cfg.backbone.depth,
        width_multiplier=cfg.backbone.width_multiplier,
        frozen_batchnorm=cfg.backbone.frozen_batchnorm,
        frozen_stages=cfg.backbone.frozen_stages,
        stride_in_1x1=cfg.backbone.stride_in_1x1,
    )
    if cfg.backbone.pretrained:
        load_torchvision_resnet(backbone, cfg.backbone.pretrained)
    return FeatureExtractor(backbone, feature_channels=cfg.feature_channels)


def build_rfcn(cfg: ModelConfig) -> RFCN:
    """The spatial module (teacher, and the student's task network) from the model config."""
    return RFCN(
        feature_extractor=build_feature_extractor(cfg),
        num_classes=cfg.num_classes,
        anchor_ratios=tuple(cfg.rpn.anchor_ratios),
        anchor_scales=tuple(cfg.rpn.anchor_scales),
        group_size=cfg.rfcn.group_size,
        pre_nms_top_n=cfg.rpn.pre_nms_top_n,
        post_nms_top_n=cfg.rpn.post_nms_top_n,
        proposal_nms_threshold=cfg.rpn.nms_threshold,
        test_score_threshold=cfg.rfcn.test_score_threshold,
        test_nms_threshold=cfg.rfcn.test_nms_threshold,
        max_detections=cfg.rfcn.max_detections,
    )


def build_propagator(cfg: ModelConfig) -> nn.Module:
    """The temporal module: FlowNetS + scale field (Eq. 1), or the residual predictor (Table 3a)."""
    if cfg.predictor == "flow":
        return FlowNetS(
            feature_channels=cfg.feature_channels,
            width_multiplier=cfg.flownet.width_multiplier,
            init_std=cfg.flownet.init_std,
            init=cfg.flownet.init,
        )
    return ResidualFeaturePredictor(
        feature_channels=cfg.feature_channels,
        width_multiplier=cfg.flownet.width_multiplier,
        init_std=cfg.flownet.init_std,
    )


def build_video_detector(cfg: Config, rfcn: RFCN, propagator: nn.Module | None) -> VideoDetector:
    """A VideoDetector with the config's key interval and mode."""
    return VideoDetector(rfcn, propagator, key_interval=cfg.video.key_interval, mode=cfg.video.mode)
