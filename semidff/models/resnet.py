"""ResNet-v1 backbone at output stride 16 and the 1024-channel DFF feature extractor.

The layout follows the MSRA/Caffe ResNet-v1 used by DFF and Semi-DFF (dff-facts §2.1): stride on
the 1x1 conv of the first bottleneck of a stage, frozen BatchNorm (global statistics, eps 1e-5), no
conv biases, and layer4 (res5) with stride 1 and dilation 2 so the output stride is 16. Parameter
names are torchvision's (``conv1``, ``bn1``, ``layer1.0.downsample.0`` ...) so that a torchvision
ImageNet checkpoint loads with :func:`load_torchvision_resnet`.

Feature size for an image side ``n`` (conv1 k7 s2 p3, max-pool k3 s2 p1, two stride-2 stages) is
``ceil(n / 16)``: 600 -> 38, 1000 -> 63, 562 -> 36.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from semidff.safe_load import UnreadableFileError, UnsafeFileError, load_weights_only

# depth -> (block kind, units per stage); dff-facts §2.1 gives (3, 4, 23, 3) for ResNet-101.
_STAGE_UNITS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}
_STEM_CHANNELS = 64
_STAGE_PLANES = (64, 128, 256, 512)


class CheckpointError(ValueError):
    """A checkpoint file could not be loaded into a model (wrong architecture, unsafe pickle, ...)."""


def scale_channels(channels: int, width_multiplier: float) -> int:
    """Channel count ``channels`` scaled by ``width_multiplier``, rounded, at least 1."""
    return max(1, round(channels * width_multiplier))


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters (DFF "use global stats", eps 1e-5).

    Holds ``weight``, ``bias``, ``running_mean`` and ``running_var`` as buffers, so nothing is
    trained and train/eval mode give the same output; the names match ``nn.BatchNorm2d`` so a
    torchvision state_dict loads (its ``num_batches_tracked`` is dropped).
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) -> (N, C, H, W)."""
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        # in x's dtype, so fp16 autocast activations are not promoted to fp32 by the fp32 buffers
        return x * scale.to(x.dtype).view(1, -1, 1, 1) + shift.to(x.dtype).view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def _norm(channels: int, frozen: bool) -> nn.Module:
    return FrozenBatchNorm2d(channels) if frozen else nn.BatchNorm2d(channels, eps=1e-5)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34 unit). The stride sits on the first 3x3 conv."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int, dilation: int, frozen_batchnorm: bool,
                 stride_in_1x1: bool):
        super().__init__()
        del stride_in_1x1  # a basic block has no 1x1 conv
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = _norm(planes, frozen_batchnorm)
        self.conv2 = nn.Conv2d(planes, out_channels, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = _norm(out_channels, frozen_batchnorm)
        self.downsample = _shortcut(in_channels, out_channels, stride, frozen_batchnorm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 unit (ResNet-50/101). ResNet-v1 puts the stride on the first 1x1 conv."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, dilation: int, frozen_batchnorm: bool,
                 stride_in_1x1: bool):
        super().__init__()
        out_channels = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, planes, 1, stride_1x1, bias=False)
        self.bn1 = _norm(planes, frozen_batchnorm)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride_3x3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = _norm(planes, frozen_batchnorm)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, 1, bias=False)
        self.bn3 = _norm(out_channels, frozen_batchnorm)
        self.downsample = _shortcut(in_channels, out_channels, stride, frozen_batchnorm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


def _shortcut(in_channels: int, out_channels: int, stride: int, frozen_batchnorm: bool) -> nn.Sequential | None:
    """Projection shortcut (DFF ``branch1``) where the shape changes, else identity (None)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
        _norm(out_channels, frozen_batchnorm),
    )


class ResNetBackbone(nn.Module):
    """ResNet-v1 trunk, conv1 .. layer4, at output stride 16 (dff-facts §2.1).

    Args:
        depth: 18, 34, 50 or 101.
        width_multiplier: scales every stage's channel count (``max(1, round(c * m))``); 1.0 is the
            standard network, small values (e.g. 0.125) give tiny models for CPU tests.
        frozen_batchnorm: use :class:`FrozenBatchNorm2d` (DFF default) instead of ``nn.BatchNorm2d``.
        frozen_stages: 0 freezes nothing, 1 freezes conv1 + bn1, 2 also layer1, ... 5 everything.
            Frozen parameters get ``requires_grad=False`` and trainable BatchNorms in frozen stages
            stay in eval mode. DFF itself freezes conv1 and res2, i.e. ``frozen_stages=2``.
        stride_in_1x1: ResNet-v1 (MSRA/Caffe, DFF) puts the stride of a bottleneck on its first 1x1
            conv; False puts it on the 3x3 conv as torchvision ("v1.5") does.

    ``forward(images)`` maps (N, 3, H, W) preprocessed images to (N, out_channels, ceil(H/16),
    ceil(W/16)) res5c features; ``out_channels`` is 2048 for depth 50/101 and 512 for 18/34 at width 1.
    """

    def __init__(self, depth: int = 101, width_multiplier: float = 1.0, frozen_batchnorm: bool = True,
                 frozen_stages: int = 2, stride_in_1x1: bool = True):
        super().__init__()
        if depth not in _STAGE_UNITS:
            raise ValueError(f"ResNetBackbone depth={depth} is not supported; use one of {sorted(_STAGE_UNITS)}")
        if not width_multiplier > 0:
            raise ValueError(f"ResNetBackbone width_multiplier={width_multiplier} must be > 0")
        if not 0 <= frozen_stages <= 5:
            raise ValueError(f"ResNetBackbone frozen_stages={frozen_stages} must be in 0..5 (0 = none, 5 = all)")
        kind, units = _STAGE_UNITS[depth]
        block = Bottleneck if kind == "bottleneck" else BasicBlock
        self.depth = depth
        self.width_multiplier = width_multiplier
        self.frozen_stages = frozen_stages

        stem = scale_channels(_STEM_CHANNELS, width_multiplier)
        self.conv1 = nn.Conv2d(3, stem, 7, 2, padding=3, bias=False)
        self.bn1 = _norm(stem, frozen_batchnorm)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)  # pool1, floor mode

        in_channels = stem
        # (stride, dilation) per stage: res5 keeps stride 16 by dilating instead (dff-facts §2.1).
        stage_geometry = ((1, 1), (2, 1), (2, 1), (1, 2))
        for index, (planes, count, (stride, dilation)) in enumerate(zip(_STAGE_PLANES, units, stage_geometry)):
            planes = scale_channels(planes, width_multiplier)
            blocks = []
            for unit in range(count):
                blocks.append(block(in_channels, planes, stride if unit == 0 else 1, dilation, frozen_batchnorm,
                                    stride_in_1x1))
                in_channels = planes * block.expansion
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
        self.out_channels = in_channels

        self._init_weights()
        for stage in self._frozen_modules():
            stage.requires_grad_(False)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _frozen_modules(self) -> list[nn.Module]:
        stages = [[self.conv1, self.bn1], [self.layer1], [self.layer2], [self.layer3], [self.layer4]]
        return [module for stage in stages[: self.frozen_stages] for module in stage]

    def train(self, mode: bool = True) -> "ResNetBackbone":
        """Set train/eval mode; BatchNorms inside frozen stages always stay in eval mode."""
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (N, 3, H, W) mean-subtracted RGB -> (N, out_channels, ceil(H/16), ceil(W/16))."""
        x = self.maxpool(F.relu(self.bn1(self.conv1(images))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


def _unwrap_state_dict(loaded: object, path: Path) -> Mapping[str, torch.Tensor]:
    """The tensor mapping inside a raw state_dict or a ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper."""
    if isinstance(loaded, Mapping):
        for wrapper_key in ("state_dict", "model"):
            if isinstance(loaded.get(wrapper_key), Mapping):
                loaded = loaded[wrapper_key]
                break
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(
            f"{path}: expected a ResNet state_dict (a mapping of parameter names to tensors, possibly under "
            f"'state_dict' or 'model'), got {type(loaded).__name__}"
        )
    return loaded


def _preview(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _is_ignored(key: str) -> bool:
    """The ImageNet classifier and BatchNorm step counters have no place in the backbone."""
    return key.startswith("fc.") or key.endswith("num_batches_tracked")


def load_torchvision_resnet(backbone: ResNetBackbone, path: str | Path) -> list[str]:
    """Load a torchvision-format ResNet checkpoint into ``backbone``; returns the keys it ignored.

    ``fc.*`` (the classifier) and BatchNorm ``num_batches_tracked`` counters are ignored; every other
    key must match the backbone's names and shapes exactly. Note that torchvision's own ImageNet
    weights were trained with the stride on the 3x3 conv (``stride_in_1x1=False``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is not a plain tensor checkpoint (``weights_only=True`` refuses
            arbitrary pickled objects) or its keys / shapes do not fit this depth and width.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: ResNet checkpoint not found; pass the path of a torchvision ResNet-{backbone.depth} "
            f"state_dict (.pth)"
        )
    try:
        loaded = load_weights_only(path)
    except (UnsafeFileError, UnreadableFileError) as error:
        raise CheckpointError(
            f"{path}: refused to load; only plain tensor checkpoints are accepted (weights_only=True): {error}"
        ) from None
    state = _unwrap_state_dict(loaded, path)

    ignored = sorted(k for k in state if _is_ignored(k))
    provided = {k: v for k, v in state.items() if not _is_ignored(k)}
    expected = {k: v for k, v in backbone.state_dict().items() if not k.endswith("num_batches_tracked")}
    architecture = f"ResNet-{backbone.depth} width_multiplier={backbone.width_multiplier}"
    if not provided.keys() & expected.keys():
        raise CheckpointError(
            f"{path}: no key matches a {architecture}; is it a torchvision ResNet state_dict? "
            f"First keys: {_preview(sorted(state), 5)}"
        )
    missing = sorted(expected.keys() - provided.keys())
    unexpected = sorted(provided.keys() - expected.keys())
    wrong_shape = sorted(
        f"{k} (file {tuple(provided[k].shape)}, model {tuple(expected[k].shape)})"
        for k in provided.keys() & expected.keys()
        if provided[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong_shape:
        problems = [
            f"{len(keys)} {label}: {_preview(keys)}"
            for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                ("shape mismatches", wrong_shape))
            if keys
        ]
        raise CheckpointError(
            f"{path} does not fit a {architecture}: " + "; ".join(problems)
            + ". Check depth and width_multiplier (pretrained weights need width_multiplier=1.0)."
        )
    # Trainable BatchNorm keeps its own num_batches_tracked, hence strict=False; all else was checked.
    backbone.load_state_dict(provided, strict=False)
    return ignored


class FeatureExtractor(nn.Module):
    """Backbone followed by DFF's ``feat_conv_3x3``: 3x3 conv, dilation 6, pad 6, bias, then ReLU.

    Its output is the feature that DFF warps and Semi-DFF regresses (dff-facts §2.1). Channels
    [0, C/2) feed the RPN and [C/2, C) the R-FCN heads.
    ``forward(images)``: (N, 3, H, W) -> (N, feature_channels, ceil(H/16), ceil(W/16)).
    """

    def __init__(self, backbone: ResNetBackbone, feature_channels: int = 1024):
        super().__init__()
        self.backbone = backbone
        self.out_channels = feature_channels
        self.feat_conv = nn.Conv2d(backbone.out_channels, feature_channels, 3, padding=6, dilation=6, bias=True)
        nn.init.normal_(self.feat_conv.weight, mean=0.0, std=0.01)  # dff-facts §2.1
        nn.init.zeros_(self.feat_conv.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.relu(self.feat_conv(self.backbone(images)))
