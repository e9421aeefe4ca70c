"""Generative (residual encoder-decoder) feature predictor: the Table 3a ablation of Semi-DFF.

Instead of warping, a small encoder-decoder looks at the current and key frames and predicts the
change of the stride-16 features between them, which is added to the key-frame features (paper
§4.1, "generative method"; residual learning because features of nearby frames are similar). It
is trained with the feature regression loss (Eq. 4) like the flow network.

The encoder repeats FlowNetS's first layers (same input preparation and resolution arithmetic),
so its 1/16 level has exactly the feature size ceil(n/16); one decoder level brings the 1/32
context back to 1/16. The residual head starts at zero, so at initialisation the predictor is the
"copy" baseline: it returns the key-frame features unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from semidff.models.flownet import check_feature_size, crop_to, stack_frame_pair
from semidff.models.resnet import scale_channels


def _leaky(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.1)  # FlowNetS's activation (dff-facts §1.2)


class ResidualFeaturePredictor(nn.Module):
    """Predicts current-frame features as ``key_features + residual(cur_images, key_images)``.

    Args:
        feature_channels: channels of the features to predict (1024 in DFF).
        width_multiplier: scales every internal channel count (not feature_channels).
        init_std: std of the normal init of the conv / deconv weights (biases 0), as FlowNetS;
            the residual head is initialised to zero instead.
    """

    def __init__(self, feature_channels: int = 1024, width_multiplier: float = 1.0, init_std: float = 0.02):
        super().__init__()
        if not width_multiplier > 0:
            raise ValueError(f"ResidualFeaturePredictor width_multiplier={width_multiplier} must be > 0")
        c64, c128, c256, c512 = (scale_channels(c, width_multiplier) for c in (64, 128, 256, 512))
        self.feature_channels = feature_channels

        # Encoder, resolutions relative to the original image (input is pooled to 1/2 first).
        self.conv1 = nn.Conv2d(6, c64, 7, 2, padding=3)  # 1/4
        self.conv2 = nn.Conv2d(c64, c128, 5, 2, padding=2)  # 1/8
        self.conv3 = nn.Conv2d(c128, c256, 5, 2, padding=2)  # 1/16
        self.conv3_1 = nn.Conv2d(c256, c256, 3, 1, padding=1)
        self.conv4 = nn.Conv2d(c256, c512, 3, 2, padding=1)  # 1/32
        self.conv4_1 = nn.Conv2d(c512, c512, 3, 1, padding=1)
        # Decoder back to 1/16, fused with the 1/16 skip.
        self.deconv3 = nn.ConvTranspose2d(c512, c256, 4, 2, padding=0)
        self.fuse = nn.Conv2d(c256 + c256, c256, 3, 1, padding=1)
        # 1x1 like DFF's scale-field head; a 3x3 here would cost more than all of FlowNetS at 600x1000.
        self.residual_head = nn.Conv2d(c256, feature_channels, 1)

        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(module.weight, mean=0.0, std=init_std)
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.residual_head.weight)  # start as the copy baseline

    def forward(self, cur_images: torch.Tensor, key_images: torch.Tensor) -> torch.Tensor:
        """Feature change from the key to the current frame.

        cur_images, key_images: (N, 3, H, W) detector-preprocessed images.
        Returns (N, feature_channels, ceil(H/16), ceil(W/16)), in feature units.
        """
        x = stack_frame_pair(cur_images, key_images)
        out3 = _leaky(self.conv3_1(_leaky(self.conv3(_leaky(self.conv2(_leaky(self.conv1(x))))))))
        out4 = _leaky(self.conv4_1(_leaky(self.conv4(out3))))
        up = crop_to(_leaky(self.deconv3(out4)), out3)
        fused = _leaky(self.fuse(torch.cat([out3, up], dim=1)))
        return self.residual_head(fused)

    def propagate(self, key_features: torch.Tensor, cur_images: torch.Tensor,
                  key_images: torch.Tensor) -> torch.Tensor:
        """Predicted current-frame features: key_features (N, C, h, w) + residual -> (N, C, h, w)."""
        residual = self(cur_images, key_images)
        check_feature_size(key_features, residual.shape[-2:])
        return key_features + residual
