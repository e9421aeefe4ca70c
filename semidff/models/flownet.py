"""FlowNetS with DFF's stride-16 flow head and scale field: the temporal module of Semi-DFF.

Predicts, from a current frame and a key frame, the feature flow F and the scale field S at the
stride-16 feature resolution, and propagates key-frame features with Eq. 1 of the paper:
``f_cur = W(f_key, F(I_key, I_cur)) * S(I_key, I_cur)``. The layer table is DFF's ``get_flownet``
(dff-facts §1.2-1.4); initialisation N(0, 0.02) is Semi-DFF's (paper §3.5).

Resolution arithmetic: the input is average-pooled 2x2 with ceil, and every stride-2 conv halves
with ceil, so conv2 sits at ceil(n/8) and the pooled last decoder level at ceil(n/16), exactly the
ResNet feature size (see ``semidff.models.resnet``). No resize or crop of the flow is needed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from semidff.models.resnet import scale_channels
from semidff.ops.warp import warp_features

FLOW_SCALE = 2.5
"""Raw FlowNetS output -> displacement in stride-16 feature pixels (dff-facts §1.4: 40 / 16)."""

_LEAKY_SLOPE = 0.1  # dff-facts §1.2


@dataclass
class FlowOutput:
    """What FlowNetS predicts for a (current, key) pair at the stride-16 feature resolution.

    flow: (N, 2, h, w) backward displacement in feature-map pixels, channel 0 = x (width),
        channel 1 = y; the current frame's feature at p is read from the key frame at p + flow(p).
    scale: (N, C, h, w) multiplicative scale field, exactly 1 at initialisation.
    """

    flow: torch.Tensor
    scale: torch.Tensor


def stack_frame_pair(cur_images: torch.Tensor, key_images: torch.Tensor) -> torch.Tensor:
    """DFF FlowNet input: [cur, key] on channels, / 255, avg-pooled 2x2 with ceil (dff-facts §1.1).

    cur_images, key_images: (N, 3, H, W) detector-preprocessed images (0..255 minus pixel mean).
    Returns (N, 6, ceil(H/2), ceil(W/2)).
    """
    if cur_images.dim() != 4 or cur_images.shape[1] != 3 or cur_images.shape != key_images.shape:
        raise ValueError(
            f"cur_images and key_images must both be (N, 3, H, W) with the same shape, got "
            f"{tuple(cur_images.shape)} and {tuple(key_images.shape)}"
        )
    pair = torch.cat([cur_images, key_images], dim=1) / 255.0
    # padding 0 + ceil_mode: a partial edge window averages only its in-image pixels, as MXNet's "full" pooling.
    return F.avg_pool2d(pair, kernel_size=2, stride=2, ceil_mode=True)


def crop_to(upsampled: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Crop a 4x4 stride-2 pad-0 deconv output (size 2n+2) to ``reference``'s size at offset (1, 1).

    This is MXNet's Crop layer after DFF's deconvs (dff-facts §1.2).
    """
    height, width = reference.shape[-2:]
    if upsampled.shape[-2] < height + 1 or upsampled.shape[-1] < width + 1:
        raise ValueError(f"cannot crop {tuple(upsampled.shape)} at offset (1, 1) to {height}x{width}")
    return upsampled[..., 1 : 1 + height, 1 : 1 + width]


def check_feature_size(key_features: torch.Tensor, size: torch.Size) -> None:
    """Raise unless key_features (N, C, h, w) has the spatial size the temporal module predicted."""
    if key_features.dim() != 4 or key_features.shape[-2:] != size:
        raise ValueError(
            f"key_features {tuple(key_features.shape)} must be (N, C, {size[0]}, {size[1]}): the stride-16 "
            f"feature size of the images given to the temporal module"
        )


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=True)


def _deconv(in_channels: int, out_channels: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(in_channels, out_channels, kernel_size=4, stride=2, padding=0, bias=True)


def _leaky(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, _LEAKY_SLOPE)


class ScaleField(nn.Module):
    """DFF ``Convolution5_scale``: 1x1 conv with weights starting at 0 and a bias fixed at 1.

    DFF trains the bias with lr_mult 0 (dff-facts §1.3); here it is a buffer, so it has no
    gradient and stays 1 even if a caller runs ``requires_grad_(True)`` on the whole model.
    ``forward``: (N, C_in, h, w) -> (N, C_out, h, w), exactly 1 at initialisation.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, 1, 1))
        self.register_buffer("bias", torch.ones(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias)


class FlowNetS(nn.Module):
    """FlowNet "Simple" with DFF's stride-16 flow and scale-field outputs (dff-facts §1.2-1.4).

    Layer names map to the DFF symbol: conv1 = flow_conv1, predict_flow6..3 = Convolution1..4,
    predict_flow = Convolution5, scale_field = Convolution5_scale.

    Args:
        feature_channels: channels of the features to propagate (the scale field's output), 1024 in DFF.
        width_multiplier: scales every internal channel count (not the 2-channel flows nor the
            scale output); 1.0 is DFF's network, small values give a tiny CPU model.
        init_std: std of the normal init of every conv / deconv weight (biases 0); 0.02 in the paper.
        init: "normal" (the paper: N(0, init_std) everywhere) or "fan_in": He-normal for the hidden
            convs and deconvs (LeakyReLU 0.1), so that activations keep their scale through the
            ten encoder levels at any width; N(0, init_std) for the intermediate flow predictions
            and upsamplers; zeros for the last flow layer, so the initial flow is exactly zero
            (the key features are copied, as the scale field starts at 1).
    """

    def __init__(self, feature_channels: int = 1024, width_multiplier: float = 1.0, init_std: float = 0.02, init: str = "normal"):
        super().__init__()
        if not width_multiplier > 0:
            raise ValueError(f"FlowNetS width_multiplier={width_multiplier} must be > 0")
        c64, c128, c256, c512, c1024 = (scale_channels(c, width_multiplier) for c in (64, 128, 256, 512, 1024))
        self.feature_channels = feature_channels

        # Encoder: resolutions relative to the original image in comments.
        self.conv1 = _conv(6, c64, 7, 2)  # 1/4
        self.conv2 = _conv(c64, c128, 5, 2)  # 1/8
        self.conv3 = _conv(c128, c256, 5, 2)  # 1/16
        self.conv3_1 = _conv(c256, c256, 3, 1)
        self.conv4 = _conv(c256, c512, 3, 2)  # 1/32
        self.conv4_1 = _conv(c512, c512, 3, 1)
        self.conv5 = _conv(c512, c512, 3, 2)  # 1/64
        self.conv5_1 = _conv(c512, c512, 3, 1)
        self.conv6 = _conv(c512, c1024, 3, 2)  # 1/128
        self.conv6_1 = _conv(c1024, c1024, 3, 1)

        # Decoder: each level concatenates [skip, deconv(previous level), upsampled flow].
        concat5 = c512 + c512 + 2  # 1026 at width 1
        concat4 = c512 + c256 + 2  # 770
        concat3 = c256 + c128 + 2  # 386
        concat2 = c128 + c64 + 2  # 194
        self.predict_flow6 = _conv(c1024, 2, 3, 1)
        self.deconv5 = _deconv(c1024, c512)
        self.upsample_flow6to5 = _deconv(2, 2)
        self.predict_flow5 = _conv(concat5, 2, 3, 1)
        self.deconv4 = _deconv(concat5, c256)
        self.upsample_flow5to4 = _deconv(2, 2)
        self.predict_flow4 = _conv(concat4, 2, 3, 1)
        self.deconv3 = _deconv(concat4, c128)
        self.upsample_flow4to3 = _deconv(2, 2)
        self.predict_flow3 = _conv(concat3, 2, 3, 1)
        self.deconv2 = _deconv(concat3, c64)
        self.upsample_flow3to2 = _deconv(2, 2)

        # DFF addition: the 1/8 level is pooled to 1/16 and predicts the flow and the scale field there.
        self.predict_flow = _conv(concat2, 2, 3, 1)
        self.scale_field = ScaleField(concat2, feature_channels)

        if init not in ("normal", "fan_in"):
            raise ValueError(f"FlowNetS init={init!r}: must be 'normal' or 'fan_in'")
        for name, module in self.named_modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.zeros_(module.bias)
                flow_layer = name.startswith(("predict_flow", "upsample_flow"))
                if init == "normal" or flow_layer:
                    nn.init.normal_(module.weight, mean=0.0, std=init_std)  # paper §3.5
                else:
                    nn.init.kaiming_normal_(module.weight, a=_LEAKY_SLOPE, mode="fan_in", nonlinearity="leaky_relu")
        if init == "fan_in":
            nn.init.zeros_(self.predict_flow.weight)

    @staticmethod
    def _decoder_level(skip: torch.Tensor, previous: torch.Tensor, flow: torch.Tensor, deconv: nn.Module,
                       upsample_flow: nn.Module) -> torch.Tensor:
        """[skip, LeakyReLU(deconv(previous)), upsample_flow(flow)], deconvs cropped to the skip size."""
        features = crop_to(_leaky(deconv(previous)), skip)
        upsampled_flow = crop_to(upsample_flow(flow), skip)  # no activation on flow upsamplers
        return torch.cat([skip, features, upsampled_flow], dim=1)

    def forward(self, cur_images: torch.Tensor, key_images: torch.Tensor) -> FlowOutput:
        """Flow and scale field from the key frame to the current frame.

        cur_images, key_images: (N, 3, H, W) detector-preprocessed images.
        Returns FlowOutput with flow (N, 2, h, w) and scale (N, feature_channels, h, w),
        h = ceil(H / 16), w = ceil(W / 16).
        """
        x = stack_frame_pair(cur_images, key_images)
        out2 = _leaky(self.conv2(_leaky(self.conv1(x))))
        out3 = _leaky(self.conv3_1(_leaky(self.conv3(out2))))
        out4 = _leaky(self.conv4_1(_leaky(self.conv4(out3))))
        out5 = _leaky(self.conv5_1(_leaky(self.conv5(out4))))
        out6 = _leaky(self.conv6_1(_leaky(self.conv6(out5))))

        flow6 = self.predict_flow6(out6)
        level5 = self._decoder_level(out5, out6, flow6, self.deconv5, self.upsample_flow6to5)
        flow5 = self.predict_flow5(level5)
        level4 = self._decoder_level(out4, level5, flow5, self.deconv4, self.upsample_flow5to4)
        flow4 = self.predict_flow4(level4)
        level3 = self._decoder_level(out3, level4, flow4, self.deconv3, self.upsample_flow4to3)
        flow3 = self.predict_flow3(level3)
        level2 = self._decoder_level(out2, level3, flow3, self.deconv2, self.upsample_flow3to2)

        pooled = F.avg_pool2d(level2, kernel_size=2, stride=2, ceil_mode=True)  # 1/8 -> 1/16 (dff-facts §1.2)
        flow = FLOW_SCALE * self.predict_flow(pooled)  # dff-facts §1.4
        return FlowOutput(flow=flow, scale=self.scale_field(pooled))

    def propagate(self, key_features: torch.Tensor, cur_images: torch.Tensor,
                  key_images: torch.Tensor) -> torch.Tensor:
        """Eq. 1: warp key-frame features to the current frame and multiply by the scale field.

        key_features: (N, feature_channels, h, w) features of key_images; returns (N, feature_channels, h, w).
        """
        prediction = self(cur_images, key_images)
        check_feature_size(key_features, prediction.flow.shape[-2:])
        return warp_features(key_features, prediction.flow) * prediction.scale
