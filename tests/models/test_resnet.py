"""Tests for semidff/models/resnet.py: stride-16 sizes, frozen BN / stages, torchvision checkpoint loading."""
import math

import pytest
import torch
from torch import nn

from semidff.models.resnet import (
    CheckpointError,
    FeatureExtractor,
    FrozenBatchNorm2d,
    ResNetBackbone,
    load_torchvision_resnet,
)

TINY = 0.125




def _randomize_norms(model: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics and affine values so that loading / freezing shows."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (FrozenBatchNorm2d, nn.BatchNorm2d)):
            n = module.num_features
            with torch.no_grad():
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))


def _torchvision_state_dict(backbone: ResNetBackbone) -> dict[str, torch.Tensor]:
    """The backbone's weights as a torchvision ResNet checkpoint: plus fc.* and BN num_batches_tracked."""
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    for name, module in backbone.named_modules():
        if isinstance(module, (FrozenBatchNorm2d, nn.BatchNorm2d)):
            state[f"{name}.num_batches_tracked"] = torch.tensor(7)
    state["fc.weight"] = torch.randn(1000, backbone.out_channels)
    state["fc.bias"] = torch.zeros(1000)
    return state


@pytest.mark.parametrize("depth, channels", [(18, 64), (34, 64), (50, 256), (101, 256)])
def test_feature_size_is_ceil_of_one_sixteenth_for_every_depth(depth, channels):
    backbone = ResNetBackbone(depth=depth, width_multiplier=TINY).eval()
    assert backbone.out_channels == channels
    # Known DFF sizes (spec): 600 -> 38, 1000 -> 63, 562 -> 36; plus odd and tiny sides.
    expected = {(600, 1000): (38, 63), (562, 1000): (36, 63), (97, 131): (7, 9), (33, 17): (3, 2), (16, 1): (1, 1)}
    with torch.no_grad():
        for (height, width), size in expected.items():
            assert size == (math.ceil(height / 16), math.ceil(width / 16))
            out = backbone(torch.zeros(1, 3, height, width))
            assert out.shape == (1, channels, *size)


def test_full_width_resnet101_shape_and_parameter_count():
    backbone = ResNetBackbone(depth=101).eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 40, 70))
    assert out.shape == (1, 2048, 3, 5)
    # torchvision resnet101 has 44,549,160 parameters; minus fc (2,049,000) and the BN affine pairs,
    # which FrozenBatchNorm2d holds as buffers (105 BNs, 2 * 52,672 values).
    assert sum(p.numel() for p in backbone.parameters()) == 44_549_160 - 2_049_000 - 105_344


def test_width_multiplier_scales_every_stage_and_stays_positive():
    backbone = ResNetBackbone(depth=50, width_multiplier=0.5)
    assert backbone.conv1.out_channels == 32
    assert [getattr(backbone, f"layer{i}")[0].conv1.out_channels for i in range(1, 5)] == [32, 64, 128, 256]
    assert backbone.out_channels == 1024
    minimal = ResNetBackbone(depth=18, width_multiplier=0.001)
    assert minimal.conv1.out_channels == 1 and minimal.out_channels == 1


def test_geometry_stride_in_1x1_dilated_layer4_and_no_conv_bias():
    v1 = ResNetBackbone(depth=50, width_multiplier=TINY)
    assert v1.layer2[0].conv1.stride == (2, 2) and v1.layer2[0].conv2.stride == (1, 1)
    assert v1.layer2[0].downsample[0].stride == (2, 2)
    v15 = ResNetBackbone(depth=50, width_multiplier=TINY, stride_in_1x1=False)
    assert v15.layer2[0].conv1.stride == (1, 1) and v15.layer2[0].conv2.stride == (2, 2)
    for block in v1.layer4:
        assert block.conv2.dilation == (2, 2) and block.conv2.padding == (2, 2) and block.conv2.stride == (1, 1)
    assert v1.layer4[0].downsample[0].stride == (1, 1)
    assert all(m.bias is None for m in v1.modules() if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        x = torch.randn(1, 3, 50, 70)
        assert v1.eval()(x).shape == v15.eval()(x).shape == (1, 256, 4, 5)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="depth=152"):
        ResNetBackbone(depth=152)
    with pytest.raises(ValueError, match="width_multiplier"):
        ResNetBackbone(width_multiplier=0)
    with pytest.raises(ValueError, match="frozen_stages"):
        ResNetBackbone(frozen_stages=6)


def test_frozen_batchnorm_matches_eval_batchnorm_and_loads_torchvision_names():
    bn = nn.BatchNorm2d(5).eval()
    _randomize_norms(bn)
    frozen = FrozenBatchNorm2d(5)
    frozen.load_state_dict(bn.state_dict())  # has num_batches_tracked, which must be dropped
    x = torch.randn(2, 5, 3, 4)
    torch.testing.assert_close(frozen(x), bn(x))
    assert list(frozen.parameters()) == []


def test_frozen_batchnorm_is_really_frozen():
    torch.manual_seed(0)
    backbone = ResNetBackbone(depth=18, width_multiplier=TINY, frozen_stages=0)
    _randomize_norms(backbone)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    x = torch.randn(2, 3, 48, 64)
    train_out = backbone.train()(x)
    eval_out = backbone.eval()(x)
    assert torch.equal(train_out, eval_out)
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_frozen_stages_get_no_gradients():
    torch.manual_seed(0)
    backbone = ResNetBackbone(depth=18, width_multiplier=TINY, frozen_stages=2)
    backbone(torch.randn(1, 3, 48, 64)).sum().backward()
    for name, param in backbone.named_parameters():
        frozen = name.startswith(("conv1.", "bn1.", "layer1."))
        assert param.requires_grad is not frozen, name
        assert (param.grad is None) is frozen, name
    assert backbone.layer2[0].conv1.weight.grad.abs().sum() > 0
    nothing_frozen = ResNetBackbone(depth=18, width_multiplier=TINY, frozen_stages=0)
    all_frozen = ResNetBackbone(depth=18, width_multiplier=TINY, frozen_stages=5)
    assert all(p.requires_grad for p in nothing_frozen.parameters())
    assert not any(p.requires_grad for p in all_frozen.parameters())


def test_trainable_batchnorm_in_frozen_stage_stays_in_eval_mode():
    backbone = ResNetBackbone(depth=18, width_multiplier=TINY, frozen_batchnorm=False, frozen_stages=2).train()
    assert not backbone.bn1.training and not backbone.layer1[0].bn1.training
    assert backbone.layer2[0].bn1.training
    stem_mean = backbone.bn1.running_mean.clone()
    layer2_mean = backbone.layer2[0].bn1.running_mean.clone()
    backbone(torch.randn(2, 3, 48, 64) + 3.0)
    assert torch.equal(backbone.bn1.running_mean, stem_mean)
    assert not torch.equal(backbone.layer2[0].bn1.running_mean, layer2_mean)


def test_torchvision_checkpoint_loads_and_changes_outputs(tmp_path):
    torch.manual_seed(0)
    source = ResNetBackbone(depth=18, width_multiplier=1.0).eval()
    _randomize_norms(source)
    path = tmp_path / "resnet18.pth"
    torch.save(_torchvision_state_dict(source), path)

    torch.manual_seed(1)
    target = ResNetBackbone(depth=18, width_multiplier=1.0).eval()
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        expected = source(x)
        before = target(x)
        ignored = load_torchvision_resnet(target, path)
        after = target(x)
    assert not torch.allclose(before, expected)
    torch.testing.assert_close(after, expected, rtol=0, atol=0)
    assert "fc.weight" in ignored and "fc.bias" in ignored and "layer1.0.bn1.num_batches_tracked" in ignored
    assert all(k.startswith("fc.") or k.endswith("num_batches_tracked") for k in ignored)


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_wrapped_checkpoint_loads_into_trainable_batchnorm_backbone(tmp_path, wrapper):
    source = ResNetBackbone(depth=18, width_multiplier=TINY).eval()
    _randomize_norms(source)
    path = tmp_path / "wrapped.pth"
    torch.save({wrapper: _torchvision_state_dict(source), "epoch": 3}, path)
    target = ResNetBackbone(depth=18, width_multiplier=TINY, frozen_batchnorm=False).eval()
    load_torchvision_resnet(target, path)
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))


def test_mismatched_width_names_keys_and_shapes(tmp_path):
    path = tmp_path / "wide.pth"
    torch.save(_torchvision_state_dict(ResNetBackbone(depth=18, width_multiplier=0.25)), path)
    with pytest.raises(CheckpointError) as error:
        load_torchvision_resnet(ResNetBackbone(depth=18, width_multiplier=TINY), path)
    message = str(error.value)
    assert str(path) in message and "width_multiplier" in message
    assert "conv1.weight (file (16, 3, 7, 7), model (8, 3, 7, 7))" in message


def test_wrong_depth_names_missing_and_unexpected_keys(tmp_path):
    path18 = tmp_path / "r18.pth"
    torch.save(_torchvision_state_dict(ResNetBackbone(depth=18, width_multiplier=TINY)), path18)
    with pytest.raises(ValueError, match=r"80 missing keys: layer1\.2\.bn1\.bias, "):
        load_torchvision_resnet(ResNetBackbone(depth=34, width_multiplier=TINY), path18)
    path34 = tmp_path / "r34.pth"
    torch.save(_torchvision_state_dict(ResNetBackbone(depth=34, width_multiplier=TINY)), path34)
    with pytest.raises(ValueError, match=r"80 unexpected keys: layer1\.2\.bn1\.bias, "):
        load_torchvision_resnet(ResNetBackbone(depth=18, width_multiplier=TINY), path34)


def test_not_a_resnet_and_missing_file(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="no key matches"):
        load_torchvision_resnet(ResNetBackbone(depth=18, width_multiplier=TINY), path)
    torch.save([torch.zeros(3)], path)
    with pytest.raises(CheckpointError, match="expected a ResNet state_dict"):
        load_torchvision_resnet(ResNetBackbone(depth=18, width_multiplier=TINY), path)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_torchvision_resnet(ResNetBackbone(depth=18, width_multiplier=TINY), tmp_path / "nowhere.pth")


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (print, ("UNPICKLED-ARBITRARY-CODE",))


def test_arbitrary_pickled_objects_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7), "payload": _RunsCodeWhenUnpickled()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_torchvision_resnet(ResNetBackbone(depth=18, width_multiplier=TINY), path)
    assert "UNPICKLED-ARBITRARY-CODE" not in capsys.readouterr().out


def test_feature_extractor_shape_init_and_relu():
    torch.manual_seed(0)
    extractor = FeatureExtractor(ResNetBackbone(depth=50, width_multiplier=TINY), feature_channels=64).eval()
    assert extractor.out_channels == 64
    conv = extractor.feat_conv
    assert conv.dilation == (6, 6) and conv.padding == (6, 6) and conv.in_channels == 256
    assert torch.count_nonzero(conv.bias) == 0
    assert abs(conv.weight.std().item() - 0.01) < 0.0005
    with torch.no_grad():
        out = extractor(torch.randn(2, 3, 97, 131) * 50)
    assert out.shape == (2, 64, 7, 9)
    assert out.min() >= 0 and out.max() > 0


def test_frozen_batchnorm_keeps_the_input_dtype():
    bn = FrozenBatchNorm2d(3)
    assert bn(torch.randn(1, 3, 4, 4, dtype=torch.bfloat16)).dtype == torch.bfloat16
