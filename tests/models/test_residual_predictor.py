"""Tests for semidff/models/residual_predictor.py: the generative (residual) ablation of Table 3a."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semidff.models.residual_predictor import ResidualFeaturePredictor

TINY = 1 / 16




def _images(height: int, width: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 60.0 * torch.randn(batch, 3, height, width, generator=generator)


def test_equals_key_features_at_init_for_several_sizes():
    torch.manual_seed(0)
    predictor = ResidualFeaturePredictor(feature_channels=8, width_multiplier=TINY)
    for (height, width), size in {(600, 1000): (38, 63), (562, 1000): (36, 63), (97, 131): (7, 9),
                                  (1, 1): (1, 1)}.items():
        key_features = torch.rand(1, 8, *size)
        with torch.no_grad():
            predicted = predictor.propagate(key_features, _images(height, width, seed=1), _images(height, width))
        assert torch.equal(predicted, key_features)


def test_init_std_and_zero_residual_head():
    torch.manual_seed(0)
    predictor = ResidualFeaturePredictor()
    assert abs(predictor.conv4_1.weight.std().item() - 0.02) < 0.0002
    for name, module in predictor.named_modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            assert torch.count_nonzero(module.bias) == 0, name
    assert torch.count_nonzero(predictor.residual_head.weight) == 0
    assert predictor.residual_head.out_channels == 1024
    # conv1, conv2, conv3, conv3_1, conv4, conv4_1, deconv3, fuse, residual_head (weights + biases).
    expected = [6 * 64 * 49 + 64, 64 * 128 * 25 + 128, 128 * 256 * 25 + 256, 256 * 256 * 9 + 256,
                256 * 512 * 9 + 512, 512 * 512 * 9 + 512, 512 * 256 * 16 + 256, 512 * 256 * 9 + 256,
                256 * 1024 + 1024]
    assert sum(p.numel() for p in predictor.parameters()) == sum(expected) == 8_713_792


def test_uses_both_frames_in_order():
    torch.manual_seed(0)
    predictor = ResidualFeaturePredictor(feature_channels=4, width_multiplier=TINY)
    with torch.no_grad():
        nn.init.normal_(predictor.residual_head.weight, std=0.1)
        cur, key = _images(64, 80, seed=1), _images(64, 80, seed=2)
        assert not torch.allclose(predictor(cur, key), predictor(key, cur))


def test_learns_an_image_dependent_residual():
    torch.manual_seed(0)
    predictor = ResidualFeaturePredictor(feature_channels=4, width_multiplier=0.125)
    cur, key = _images(64, 64, batch=4, seed=1), _images(64, 64, batch=4, seed=2)
    key_features = torch.rand(4, 4, 4, 4)
    # Target: the frame difference, pooled to stride 16, as every feature channel's change.
    target = key_features + F.avg_pool2d((cur - key).mean(1, keepdim=True) / 60.0, 16).expand(-1, 4, -1, -1)
    optimizer = torch.optim.Adam(predictor.parameters(), lr=1e-3)
    losses = []
    for step in range(40):
        optimizer.zero_grad()
        loss = F.mse_loss(predictor.propagate(key_features, cur, key), target)  # Eq. 4 (L2)
        loss.backward()
        if step == 0:
            # The zero head passes no gradient into the encoder on the first step, but itself gets one.
            assert predictor.residual_head.weight.grad.abs().sum() > 0
            assert predictor.conv1.weight.grad.abs().sum() == 0
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert predictor.conv1.weight.grad.abs().sum() > 0


def test_rejects_features_of_another_size():
    predictor = ResidualFeaturePredictor(feature_channels=8, width_multiplier=TINY)
    with pytest.raises(ValueError, match=r"\(N, C, 4, 5\)"):
        predictor.propagate(torch.zeros(1, 8, 5, 5), _images(64, 80), _images(64, 80))
