"""Tests for semidff/models/flownet.py: DFF FlowNetS geometry, 2.5x flow, scale field, Eq. 1 propagation."""
import math

import pytest
import torch
from torch import nn

from semidff.models.flownet import FLOW_SCALE, FlowNetS, FlowOutput, crop_to, stack_frame_pair
from semidff.models.resnet import FeatureExtractor, ResNetBackbone
from semidff.ops.warp import warp_features

TINY = 1 / 16




def _tiny_flownet(feature_channels: int = 8, seed: int = 0) -> FlowNetS:
    torch.manual_seed(seed)
    return FlowNetS(feature_channels=feature_channels, width_multiplier=TINY)


def _images(height: int, width: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 60.0 * torch.randn(batch, 3, height, width, generator=generator)


def test_flow_and_scale_have_the_feature_extractor_size():
    net = _tiny_flownet().eval()
    extractor = FeatureExtractor(ResNetBackbone(depth=18, width_multiplier=TINY), feature_channels=8).eval()
    known = {(600, 1000): (38, 63), (562, 1000): (36, 63), (97, 131): (7, 9), (31, 17): (2, 2), (1, 1): (1, 1)}
    with torch.no_grad():
        for (height, width), size in known.items():
            images = _images(height, width)
            output = net(images, images)
            assert isinstance(output, FlowOutput)
            assert output.flow.shape == (1, 2, *size)
            assert output.scale.shape == (1, 8, *size)
            assert extractor(images).shape[-2:] == size


def test_flow_size_equals_resnet_feature_size_for_a_sweep_of_sides():
    net = _tiny_flownet().eval()
    backbone = ResNetBackbone(depth=18, width_multiplier=TINY).eval()
    with torch.no_grad():
        for side in range(1, 49):  # three periods of 16 in H, all residues in W
            images = torch.zeros(1, 3, side, 2 * side + 1)
            flow_size = net(images, images).flow.shape[-2:]
            expected = (math.ceil(side / 16), math.ceil((2 * side + 1) / 16))
            assert flow_size == backbone(images).shape[-2:] == expected


def test_flow_is_2_5_times_the_raw_prediction():
    net = _tiny_flownet()
    captured = {}
    net.predict_flow.register_forward_hook(lambda module, args, output: captured.update(raw=output))
    with torch.no_grad():
        flow = net(_images(70, 90), _images(70, 90, seed=1)).flow
    assert FLOW_SCALE == 2.5
    assert captured["raw"].abs().max() > 0
    torch.testing.assert_close(flow, 2.5 * captured["raw"], rtol=0, atol=0)


def test_scale_is_exactly_one_at_init_and_its_bias_never_trains():
    net = _tiny_flownet(feature_channels=16)
    output = net(_images(64, 96), _images(64, 96, seed=1))
    assert torch.equal(output.scale, torch.ones_like(output.scale))
    (output.flow.sum() + (output.scale * torch.randn_like(output.scale)).sum()).backward()
    bias = net.scale_field.bias
    assert not bias.requires_grad and bias.grad is None
    assert all(param is not bias for param in net.parameters())
    assert net.scale_field.weight.grad.abs().sum() > 0  # the scale field does learn
    net.requires_grad_(True)  # e.g. a trainer unfreezing the whole temporal module
    assert not net.scale_field.bias.requires_grad
    assert torch.equal(net.state_dict()["scale_field.bias"], torch.ones(16))


def test_input_order_is_current_then_key():
    net = _tiny_flownet()
    cur, key = _images(48, 64, seed=1), _images(48, 64, seed=2)
    with torch.no_grad():
        forward = net(cur, key).flow
        swapped = net(key, cur).flow
    assert not torch.allclose(forward, swapped)
    # The first conv sees [cur / 255, key / 255] (pooled): zeroing the key half of its kernels removes key.
    with torch.no_grad():
        net.conv1.weight[:, 3:] = 0
        assert torch.equal(net(cur, key).flow, net(cur, torch.zeros_like(key)).flow)
        assert not torch.equal(net(cur, key).flow, net(torch.zeros_like(cur), key).flow)


def test_stack_frame_pair_divides_by_255_and_pools_with_ceil():
    cur = torch.arange(9.0).view(1, 1, 3, 3).expand(1, 3, 3, 3) * 255
    key = torch.full((1, 3, 3, 3), -255.0)
    pair = stack_frame_pair(cur, key)
    assert pair.shape == (1, 6, 2, 2)
    # Partial windows at the right/bottom edge average only the pixels inside the image.
    expected_cur = torch.tensor([[(0 + 1 + 3 + 4) / 4, (2 + 5) / 2], [(6 + 7) / 2, 8.0]])
    torch.testing.assert_close(pair[0, 0], expected_cur)
    torch.testing.assert_close(pair[0, 3:], -torch.ones(3, 2, 2))
    with pytest.raises(ValueError, match="same shape"):
        stack_frame_pair(cur, key[..., :2])


def test_crop_to_takes_offset_one():
    upsampled = torch.arange(36.0).view(1, 1, 6, 6)  # a 4x4 s2 deconv of a 2x2 map
    cropped = crop_to(upsampled, torch.zeros(1, 1, 3, 4))
    torch.testing.assert_close(cropped[0, 0], upsampled[0, 0, 1:4, 1:5])


def test_full_width_layer_table_and_init_std():
    torch.manual_seed(0)
    net = FlowNetS()
    # Encoder channels and the decoder concat widths of dff-facts §1.2.
    assert [net.conv1.out_channels, net.conv2.out_channels, net.conv3_1.out_channels, net.conv4_1.out_channels,
            net.conv5_1.out_channels, net.conv6_1.out_channels] == [64, 128, 256, 512, 512, 1024]
    assert [net.predict_flow5.in_channels, net.predict_flow4.in_channels, net.predict_flow3.in_channels,
            net.predict_flow.in_channels] == [1026, 770, 386, 194]
    assert net.conv1.kernel_size == (7, 7) and net.conv2.kernel_size == (5, 5) and net.conv3.kernel_size == (5, 5)
    assert net.deconv2.kernel_size == (4, 4) and net.deconv2.stride == (2, 2) and net.deconv2.padding == (0, 0)
    assert net.scale_field.weight.shape == (1024, 194, 1, 1)
    encoder = [(6, 64, 7), (64, 128, 5), (128, 256, 5), (256, 256, 3), (256, 512, 3), (512, 512, 3),
               (512, 512, 3), (512, 512, 3), (512, 1024, 3), (1024, 1024, 3)]
    deconvs = [(1024, 512), (1026, 256), (770, 128), (386, 64)] + [(2, 2)] * 4
    predictors = (1024, 1026, 770, 386, 194)
    expected = (sum(i * o * k * k + o for i, o, k in encoder) + sum(i * 2 * 9 + 2 for i in predictors)
                + sum(i * o * 16 + o for i, o in deconvs) + 194 * 1024)  # the scale field's bias is a buffer
    assert sum(p.numel() for p in net.parameters()) == expected == 38_875_170
    # Paper §3.5: every conv / deconv weight ~ N(0, 0.02), biases 0; the scale field starts at 0 / 1.
    assert abs(net.conv6_1.weight.std().item() - 0.02) < 0.0002
    assert abs(net.conv6_1.weight.mean().item()) < 0.0002
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            assert torch.count_nonzero(module.bias) == 0
            assert 0.015 < module.weight.std().item() < 0.025
    assert torch.count_nonzero(net.scale_field.weight) == 0
    torch.manual_seed(0)
    wide_init = FlowNetS(feature_channels=4, width_multiplier=0.25, init_std=0.05)
    assert abs(wide_init.conv6_1.weight.std().item() - 0.05) < 0.001


def _with_constant_flow(net: FlowNetS, u: float, v: float) -> FlowNetS:
    """Force the final flow predictor to a constant displacement (u, v) in feature pixels."""
    with torch.no_grad():
        net.predict_flow.weight.zero_()
        net.predict_flow.bias.copy_(torch.tensor([u, v]) / FLOW_SCALE)
    return net


def test_propagate_with_zero_flow_and_key_equal_cur_returns_key_features():
    net = _with_constant_flow(_tiny_flownet(feature_channels=8), 0.0, 0.0)
    images = _images(97, 131)
    key_features = torch.rand(1, 8, 7, 9)
    with torch.no_grad():
        propagated = net.propagate(key_features, images, images)
    torch.testing.assert_close(propagated, key_features, rtol=0, atol=1e-6)


def test_propagate_applies_eq1_with_a_known_shift_and_scale():
    net = _with_constant_flow(_tiny_flownet(feature_channels=2), 1.0, 0.0)
    images = _images(64, 64)
    key_features = torch.tensor([[1.0, 4, 3, 6], [1, 8, 8, 9], [0, 4, 1, 5], [1, 0, 1, 3]]).expand(1, 2, 4, 4)
    with torch.no_grad():
        propagated = net.propagate(key_features, images, _images(64, 64, seed=5))
    # MXNet BilinearSampler doc example (dff-facts §1.5): u = +1 shifts content left, last column 0.
    expected = torch.tensor([[4.0, 3, 6, 0], [8, 8, 9, 0], [4, 1, 5, 0], [0, 1, 3, 0]])
    torch.testing.assert_close(propagated[0, 0], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(propagated[0, 1], expected, rtol=0, atol=1e-5)


def test_propagate_multiplies_by_the_scale_field_and_gradients_reach_the_encoder():
    net = _tiny_flownet(feature_channels=4)
    with torch.no_grad():
        net.scale_field.weight.fill_(0.01)
    cur, key = _images(64, 80, batch=2, seed=1), _images(64, 80, batch=2, seed=2)
    key_features = torch.rand(2, 4, 4, 5)
    output = net(cur, key)
    expected = warp_features(key_features, output.flow) * output.scale
    propagated = net.propagate(key_features, cur, key)
    assert not torch.allclose(output.scale, torch.ones_like(output.scale))
    torch.testing.assert_close(propagated, expected)
    propagated.square().mean().backward()
    assert net.conv1.weight.grad.abs().sum() > 0
    assert net.predict_flow.weight.grad.abs().sum() > 0


def test_propagate_rejects_features_of_another_size():
    net = _tiny_flownet(feature_channels=8)
    with pytest.raises(ValueError, match=r"\(N, C, 4, 5\)"):
        net.propagate(torch.zeros(1, 8, 4, 6), _images(64, 80), _images(64, 80))


def _activation_stds(net, images):
    stds = {}
    hooks = [getattr(net, name).register_forward_hook(lambda m, i, o, name=name: stds.__setitem__(name, float(o.detach().std())))
             for name in ("conv1", "conv3_1", "conv5_1", "conv6_1")]
    with torch.no_grad():
        out = net(images, images.roll(3, dims=-1))
    for hook in hooks:
        hook.remove()
    return stds, out


def test_fan_in_init_keeps_the_coarse_levels_alive_at_a_small_width_and_starts_at_zero_flow():
    torch.manual_seed(0)
    images = 60.0 * torch.randn(2, 3, 160, 288)  # mean-subtracted pixels, as the detector's preprocessing gives
    paper, _ = _activation_stds(FlowNetS(64, width_multiplier=0.125, init="normal"), images)
    fan_in, out = _activation_stds(FlowNetS(64, width_multiplier=0.125, init="fan_in"), images)
    # The paper's N(0, 0.02) shrinks every level ~10x at width 0.125 (measured on real frames: conv6_1 at
    # ~4e-7, conv1 at ~5e-2); He-normal keeps the scale of conv1 down to conv6_1.
    assert paper["conv6_1"] / paper["conv1"] < 1e-3 and fan_in["conv6_1"] / fan_in["conv1"] > 0.1, (paper, fan_in)
    assert torch.equal(out.flow, torch.zeros_like(out.flow)) and torch.equal(out.scale, torch.ones_like(out.scale))
    with pytest.raises(ValueError, match="init"):
        FlowNetS(64, init="xavier")
